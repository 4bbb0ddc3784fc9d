"""Every status lhorch records or reads, as enums: runs, stage attempts, scheduled fires, models, and
the one mapping from Ray's job states.

They are ``StrEnum``s so that the store keeps plain text (``"succeeded"``) and older rows, JSON and
comparisons with strings keep working.
"""

from __future__ import annotations

import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # Python 3.10: the same behaviour, spelled out
    class StrEnum(str, Enum):
        def __str__(self) -> str:
            return str(self.value)


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    BUDGET_EXCEEDED = "budget_exceeded"
    REFUSED = "refused"
    SKIPPED = "skipped"

    @classmethod
    def finished(cls) -> frozenset[RunStatus]:
        """A run in one of these is over: nothing of it runs any more."""
        return frozenset({cls.SUCCEEDED, cls.FAILED, cls.INTERRUPTED, cls.BUDGET_EXCEEDED, cls.REFUSED, cls.SKIPPED})

    @classmethod
    def unfinished(cls) -> frozenset[RunStatus]:
        """A run in one of these may still have a process working on it."""
        return frozenset({cls.PENDING, cls.RUNNING})

    @classmethod
    def resumable(cls) -> frozenset[RunStatus]:
        """A later `lhorch run` of the same file continues a run in one of these."""
        return frozenset({cls.PENDING, cls.RUNNING, cls.FAILED, cls.INTERRUPTED})

    @property
    def ok(self) -> bool:
        return self in (RunStatus.SUCCEEDED, RunStatus.SKIPPED)


class StageStatus(StrEnum):
    """A stage within a run, and each of its attempts (an attempt is never waiting)."""

    WAITING = "waiting"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    CACHED = "cached"
    FAILED = "failed"
    SKIPPED = "skipped"
    STOPPED = "stopped"

    @classmethod
    def done(cls) -> frozenset[StageStatus]:
        """Finished with outputs that later stages can use."""
        return frozenset({cls.SUCCEEDED, cls.CACHED})

    @classmethod
    def blocking(cls) -> frozenset[StageStatus]:
        """Finished without outputs: stages that need this one cannot run."""
        return frozenset({cls.FAILED, cls.SKIPPED, cls.STOPPED})

    @classmethod
    def terminal(cls) -> frozenset[StageStatus]:
        return cls.done() | cls.blocking()


class JobStatus(StrEnum):
    """Ray's job states, as its Jobs API reports them."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)

    @classmethod
    def parse(cls, value: object) -> JobStatus:
        """Ray's ``JobStatus`` enum, its value or its name; an unknown state counts as running so that
        polling goes on rather than ending an attempt it does not understand."""
        text = str(getattr(value, "value", value)).upper()
        try:
            return cls(text)
        except ValueError:
            return cls.RUNNING

    def stage_status(self) -> StageStatus:
        """The one mapping from a Ray job state to the stage attempt's."""
        return _JOB_TO_STAGE[self]


_JOB_TO_STAGE = {
    JobStatus.PENDING: StageStatus.PENDING,
    JobStatus.RUNNING: StageStatus.RUNNING,
    JobStatus.SUCCEEDED: StageStatus.SUCCEEDED,
    JobStatus.FAILED: StageStatus.FAILED,
    JobStatus.STOPPED: StageStatus.STOPPED,
}


class FireStatus(StrEnum):
    """One fire of a schedule: what its run ended as (a run's status, or what the exit code of
    `lhorch run` means when it printed none), or what the scheduler did with the fire instead."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    MISSED = "missed"
    BUDGET_EXCEEDED = "budget_exceeded"
    REFUSED = "refused"
    INTERRUPTED = "interrupted"
    INVALID = "invalid"
    INFEASIBLE = "infeasible"
    CLOUD_ERROR = "cloud_error"
    PROMOTED = "promoted"
    NOT_PROMOTED = "not_promoted"
    LOST = "lost"

    @classmethod
    def active(cls) -> frozenset[FireStatus]:
        """The fire's run is going, or waiting for the previous one."""
        return frozenset({cls.RUNNING, cls.QUEUED})

    @classmethod
    def finished_ok(cls) -> frozenset[FireStatus]:
        """Nothing went wrong: a later failure count starts again after one of these."""
        return frozenset({cls.SUCCEEDED, cls.PROMOTED, cls.NOT_PROMOTED, cls.SKIPPED})

    @classmethod
    def parse(cls, value: object) -> FireStatus:
        """The status a run reported; one lhorch does not know counts as failed."""
        try:
            return cls(str(value))
        except ValueError:
            return cls.FAILED


class ModelStatus(StrEnum):
    """A version in the model registry."""

    CANDIDATE = "candidate"
    CURRENT = "current"
    REJECTED = "rejected"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"


class ResourceState(StrEnum):
    """A cloud resource in lhorch's own records: the intent is written before the API call."""

    INTENT = "intent"
    CREATED = "created"
    RELEASED = "released"
