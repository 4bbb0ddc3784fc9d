"""What a finished attempt means: the outcome and retry rules, as pure functions.

Nothing here talks to Ray, the store or the disk. The runner gathers the facts of an attempt that
ended (Ray's job status and message, the exit code the stage wrapper wrote into its usage file, the
declared outputs that are missing, whether lhorch asked to stop, how many attempts were made) and
asks ``decide`` what follows; it then records and reports that. So every rule is in one place, and
tests/test_outcome.py checks each without starting a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

from lhorch.orchestrator.core.stage_message import EXIT_TIMEOUT
from lhorch.orchestrator.core.status import JobStatus, RunStatus, StageStatus

# The node enforces a stage's timeout; the runner stops the job itself only this long after it, as a
# backstop for a node that cannot (its wrapper killed, the node hung).
TIMEOUT_GRACE_S = 30.0


class Decision(Enum):
    SUCCEEDED = "succeeded"  # record outputs and history; later stages may start
    STOPPED = "stopped"  # lhorch stopped it (budget, Ctrl-C) or Ray reports it stopped: never retried
    RETRY = "retry"  # this attempt failed; another one runs
    FAILED = "failed"  # failed with no retries left: stages that need it are skipped


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    error: str | None = None  # why it did not succeed; None when it did

    @property
    def attempt_status(self) -> StageStatus:
        """What the attempt's row records."""
        if self.decision is Decision.SUCCEEDED:
            return StageStatus.SUCCEEDED
        if self.decision is Decision.STOPPED:
            return StageStatus.STOPPED
        return StageStatus.FAILED

    @property
    def stage_status(self) -> StageStatus:
        """The stage's state in the run afterwards: a stage to retry waits for its next attempt."""
        return StageStatus.WAITING if self.decision is Decision.RETRY else self.attempt_status


def failure_text(exit_code: int | None, message: str) -> str:
    """Why an attempt failed, in the words a user needs: a timeout, the stage's exit code, or, when
    the stage never wrote one (it did not start, the node went away), what Ray said."""
    if exit_code == EXIT_TIMEOUT:
        return "timed out"
    if exit_code is not None:
        return f"exit code {exit_code}"
    return message


def decide(status: JobStatus, *, exit_code: int | None, message: str = "", missing_outputs: Sequence[str] = (),
           stop_requested: bool = False, attempts_made: int, retries: int) -> Outcome:
    """The outcome of an attempt whose Ray job ended with ``status``.

    ``attempts_made`` counts this run's attempts of the stage including this one; ``retries`` is
    the stage's ``retries:``, so a stage runs at most ``retries + 1`` times per run. A job that
    succeeded without writing a declared output failed. A stop (asked by lhorch, or Ray's STOPPED)
    is never retried: the run is ending or someone stopped the job on purpose.
    """
    if not status.terminal:
        raise ValueError(f"the job has not ended: {status}")
    if status is JobStatus.SUCCEEDED:
        if not missing_outputs:
            return Outcome(Decision.SUCCEEDED)
        error = f"finished without writing declared output(s): {', '.join(missing_outputs)}"
    else:
        error = failure_text(exit_code, message)
    if stop_requested or status is JobStatus.STOPPED:
        return Outcome(Decision.STOPPED, error)
    if attempts_made <= retries:
        return Outcome(Decision.RETRY, error)
    return Outcome(Decision.FAILED, error)


def past_backstop(timeout: float | None, elapsed: float) -> bool:
    """True when a running attempt has outlived its timeout by the grace period: stop it from here."""
    return timeout is not None and elapsed > timeout + TIMEOUT_GRACE_S


def blocked(needs: Sequence[StageStatus]) -> bool:
    """A waiting stage one of whose upstream stages ended without outputs is skipped."""
    return any(status in StageStatus.blocking() for status in needs)


def ready(status: StageStatus, needs: Sequence[StageStatus]) -> bool:
    """A waiting stage starts once every stage it needs has its outputs."""
    return status == StageStatus.WAITING and all(s in StageStatus.done() for s in needs)


def run_status(stages: Mapping[str, StageStatus]) -> tuple[RunStatus, str]:
    """A run whose loop ended succeeded when every stage has its outputs; else it failed, saying which not."""
    unfinished = [name for name, status in stages.items() if status not in StageStatus.done()]
    if not unfinished:
        return RunStatus.SUCCEEDED, ""
    return RunStatus.FAILED, "stage(s) did not finish: " + ", ".join(f"{s} ({stages[s]})" for s in unfinished)
