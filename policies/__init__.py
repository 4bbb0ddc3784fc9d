"""Placement policies: pure functions from a pipeline, a profile and offers to a Plan.

``get_policy(name)`` returns one of ``POLICIES`` (local-first, cheapest, fastest, balanced); each
satisfies ``lhorch.policies.base.Policy``. The shared cost model is ``lhorch.policies.problem.Problem``.
"""

from lhorch.policies.base import Policy, StageEstimates
from lhorch.orchestrator.core.plan import Offer, Placement, Plan

__all__ = ["Policy", "StageEstimates", "Offer", "Placement", "Plan", "get_policy", "POLICIES"]


def __getattr__(name: str):  # lazy: lhorch.orchestrator.core.plan is imported by providers without the search code
    if name in ("get_policy", "POLICIES"):
        from lhorch.policies import builtin

        return getattr(builtin, name)
    raise AttributeError(name)
