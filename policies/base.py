"""The policy seam: what a policy is given and what it must return.

A policy is pure: the same pipeline, offers, estimates and budget give the same Plan, with no I/O,
no clock and no globals, so it can be tested and benchmarked exhaustively.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# Models only (core): policies never touch the orchestrator's I/O.
from lhorch.orchestrator.core.plan import Offer, Plan
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.core.spec import Budget, Pipeline, Stage


class StageEstimates(Protocol):
    """What policies ask of an estimator; lhorch.orchestrator.planning.estimator.Estimator implements it."""

    def fit_problem(self, name: str, stage: Stage, offer: Offer) -> str | None:
        """Why the stage cannot run on the offer, or None when it fits."""
        ...

    def run_seconds(self, name: str, stage: Stage, offer: Offer) -> float:
        """Expected seconds of the stage on the offer (spot interruptions included)."""
        ...

    def basis(self, name: str, stage: Stage) -> str:
        """Where the time estimate comes from (history, a hint, the default)."""
        ...

    def input_gb(self, name: str, stage: Stage) -> float: ...
    def output_gb(self, name: str, stage: Stage) -> float: ...
    def upload_seconds(self, gb: float) -> float: ...
    def download_seconds(self, gb: float) -> float: ...
    def cloud_copy_seconds(self, gb: float) -> float: ...


@runtime_checkable
class Policy(Protocol):
    name: str

    def plan(self, pipeline: Pipeline, profile: Profile, offers: list[Offer],
             estimates: StageEstimates, budget: Budget | None) -> Plan:
        """A placement for every stage. Never a feasible plan above ``budget.max_usd`` or past
        ``pipeline.deadline``: such a plan comes back with ``feasible=False`` and ``problems``."""
        ...
