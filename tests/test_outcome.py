"""What an ended attempt means, and the stage message the wrapper reads: pure rules, no Ray, no store."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from lhorch.orchestrator.core.stage_message import EXIT_TIMEOUT, RemoteArtifacts, StageMessage
from lhorch.orchestrator.core.status import JobStatus, RunStatus, StageStatus
from lhorch.orchestrator.execution.outcome import (
    TIMEOUT_GRACE_S,
    Decision,
    Outcome,
    blocked,
    decide,
    failure_text,
    past_backstop,
    ready,
    run_status,
)


def _decide(status: JobStatus, **facts) -> Outcome:
    return decide(status, **{"exit_code": None, "attempts_made": 1, "retries": 0, **facts})


# --- decide ------------------------------------------------------------------------------------

def test_a_job_that_succeeded_with_its_outputs_succeeded():
    outcome = _decide(JobStatus.SUCCEEDED, exit_code=0)
    assert outcome == Outcome(Decision.SUCCEEDED)
    assert outcome.attempt_status == outcome.stage_status == StageStatus.SUCCEEDED


def test_missing_declared_outputs_fail_a_job_that_succeeded():
    outcome = _decide(JobStatus.SUCCEEDED, exit_code=0, missing_outputs=["model", "report"])
    assert outcome.decision is Decision.FAILED
    assert outcome.error == "finished without writing declared output(s): model, report"
    assert outcome.attempt_status == StageStatus.FAILED


def test_missing_outputs_are_retried_like_any_failure():
    outcome = _decide(JobStatus.SUCCEEDED, exit_code=0, missing_outputs=["model"], attempts_made=1, retries=1)
    assert outcome.decision is Decision.RETRY
    assert outcome.error.startswith("finished without writing")


def test_timeout_exit_code_reads_timed_out():
    assert EXIT_TIMEOUT == 124
    outcome = _decide(JobStatus.FAILED, exit_code=124, message="Job entrypoint command failed with exit code 124")
    assert outcome == Outcome(Decision.FAILED, "timed out")


def test_a_stage_exit_code_is_reported_as_such():
    assert _decide(JobStatus.FAILED, exit_code=7, message="ray says").error == "exit code 7"


def test_unknown_exit_code_falls_back_to_rays_message():
    # No usage file: the wrapper never finished (the node went away, the job never started).
    outcome = _decide(JobStatus.FAILED, exit_code=None, message="cluster lost: head terminated")
    assert outcome == Outcome(Decision.FAILED, "cluster lost: head terminated")
    assert failure_text(None, "") == ""


def test_a_failure_is_retried_while_retries_remain():
    first = _decide(JobStatus.FAILED, exit_code=1, attempts_made=1, retries=2)
    second = _decide(JobStatus.FAILED, exit_code=1, attempts_made=2, retries=2)
    assert first.decision is second.decision is Decision.RETRY
    assert first.attempt_status == StageStatus.FAILED  # the attempt's row says what it was
    assert first.stage_status == StageStatus.WAITING  # the stage waits for its next attempt


def test_retries_exhausted_fails_the_stage():
    outcome = _decide(JobStatus.FAILED, exit_code=1, attempts_made=3, retries=2)
    assert outcome == Outcome(Decision.FAILED, "exit code 1")
    assert outcome.stage_status == StageStatus.FAILED
    assert _decide(JobStatus.FAILED, exit_code=1, attempts_made=1, retries=0).decision is Decision.FAILED


def test_rays_stopped_status_stops_the_stage_without_retrying():
    outcome = _decide(JobStatus.STOPPED, exit_code=None, message="Job was intentionally stopped.", retries=5)
    assert outcome == Outcome(Decision.STOPPED, "Job was intentionally stopped.")
    assert outcome.attempt_status == outcome.stage_status == StageStatus.STOPPED


def test_a_requested_stop_wins_over_retries():
    outcome = _decide(JobStatus.FAILED, exit_code=143, stop_requested=True, retries=5)
    assert outcome == Outcome(Decision.STOPPED, "exit code 143")


def test_a_job_that_succeeded_before_the_stop_is_kept():
    assert _decide(JobStatus.SUCCEEDED, exit_code=0, stop_requested=True).decision is Decision.SUCCEEDED


@pytest.mark.parametrize("status", [JobStatus.PENDING, JobStatus.RUNNING])
def test_a_job_that_has_not_ended_has_no_outcome(status):
    with pytest.raises(ValueError):
        _decide(status)


def test_rays_job_states_map_to_one_enum():
    assert JobStatus.parse("SUCCEEDED") is JobStatus.SUCCEEDED
    assert JobStatus.parse("stopped") is JobStatus.STOPPED
    assert JobStatus.parse("SOMETHING_NEW") is JobStatus.RUNNING  # polled on, not ended
    assert JobStatus.FAILED.terminal and not JobStatus.PENDING.terminal


# --- timing and scheduling rules ----------------------------------------------------------------

def test_the_runner_stops_a_job_only_past_the_nodes_timeout_and_grace():
    assert not past_backstop(None, 10_000)
    assert not past_backstop(60, 60 + TIMEOUT_GRACE_S)
    assert past_backstop(60, 60 + TIMEOUT_GRACE_S + 1)


def test_a_stage_waits_for_outputs_and_is_skipped_after_a_failure_upstream():
    assert ready(StageStatus.WAITING, [StageStatus.SUCCEEDED, StageStatus.CACHED])
    assert ready(StageStatus.WAITING, [])
    assert not ready(StageStatus.WAITING, [StageStatus.RUNNING])
    assert not ready(StageStatus.RUNNING, [])
    assert blocked([StageStatus.SUCCEEDED, StageStatus.STOPPED])
    assert not blocked([StageStatus.RUNNING, StageStatus.WAITING])


def test_a_run_succeeds_only_when_every_stage_has_its_outputs():
    assert run_status({"a": StageStatus.SUCCEEDED, "b": StageStatus.CACHED}) == (RunStatus.SUCCEEDED, "")
    status, message = run_status({"a": StageStatus.FAILED, "b": StageStatus.SKIPPED, "c": StageStatus.SUCCEEDED})
    assert status == RunStatus.FAILED
    assert message == "stage(s) did not finish: a (failed), b (skipped)"


# --- the stage message ---------------------------------------------------------------------------

def test_the_stage_message_round_trips_through_json():
    message = StageMessage(kind="uses", module="lhorch.jobs.finetune", cwd="/p", timeout=60.0,
                           remote=RemoteArtifacts(inputs={"data": "s3://b/runs/r/external/x"},
                                                  output_uri="s3://b/runs/r/stages/train/outputs/"))
    assert StageMessage.model_validate_json(message.model_dump_json()) == message


def test_the_stage_message_refuses_unknown_fields_and_nothing_to_run():
    with pytest.raises(ValidationError):
        StageMessage.model_validate_json('{"kind": "run", "command": "true", "comand": "typo"}')
    with pytest.raises(ValidationError):
        StageMessage(kind="uses", command="echo")
    with pytest.raises(ValidationError):
        StageMessage(kind="run")
