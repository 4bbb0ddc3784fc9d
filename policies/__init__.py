"""Placement policies: pure functions from a pipeline, a profile and offers to a Plan.

``get_policy(name)`` returns one of ``POLICIES``, one per ``lhorch.orchestrator.core.policy_name.PolicyName``;
each satisfies ``lhorch.policies.base.Policy``. The shared cost model is ``lhorch.policies.problem.Problem``.
"""

from lhorch.policies.base import Policy, StageEstimates
from lhorch.policies.builtin import POLICIES, get_policy

__all__ = ["POLICIES", "Policy", "StageEstimates", "get_policy"]
