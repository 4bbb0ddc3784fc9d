"""Placement policies: pure functions from a pipeline, a profile and offers to a Plan.

``get_policy(name)`` returns one of ``POLICIES`` (local-first, cheapest, fastest, balanced); each
satisfies ``policies.base.Policy``. The shared cost model is ``policies.problem.Problem``.
"""

from policies.base import Policy, StageEstimates
from policies.model import Offer, Placement, Plan

__all__ = ["Policy", "StageEstimates", "Offer", "Placement", "Plan", "get_policy", "POLICIES"]


def __getattr__(name: str):  # lazy: policies.model is imported by providers without the search code
    if name in ("get_policy", "POLICIES"):
        from policies import builtin

        return getattr(builtin, name)
    raise AttributeError(name)
