"""The names of the built-in placement policies: the one list the pipeline file's schema, the policy
registry (``lhorch.policies.builtin.POLICIES``) and the CLI's ``--policy`` choices are made from."""

from __future__ import annotations

from lhorch.orchestrator.core.status import StrEnum  # with its Python 3.10 fallback


class PolicyName(StrEnum):
    LOCAL_FIRST = "local-first"
    """As few voluntary cloud stages as possible; cloud only where a stage does not fit or the deadline needs it."""
    CHEAPEST = "cheapest"
    """Least cost that meets the deadline, then least time."""
    FASTEST = "fastest"
    """Least time within the budget, then least cost."""
    BALANCED = "balanced"
    """Least cost + value_of_time x time (the default)."""
