"""A remote stage's step checkpoints reach the artifact store while it runs (issue 13): a node lost to
a spot interruption cannot send them at the end, and the retry resumes from the last ones sent."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
from moto_server import aws, moto_endpoint  # noqa: F401 - fixtures

from lhorch.orchestrator.core.stage_message import RemoteArtifacts
from lhorch.orchestrator.execution.stage_wrapper import _CheckpointSync, _fetch_checkpoints


def _wait_for(check, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return False


def test_changed_checkpoints_are_sent_while_the_stage_runs_and_a_retry_gets_them(aws, tmp_path):  # noqa: F811
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="art")
    remote = RemoteArtifacts(output_uri="s3://art/runs/r1/train/")
    out = tmp_path / "outputs"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-7")

    def sent() -> str | None:
        try:
            return s3.get_object(Bucket="art", Key="runs/r1/train/checkpoints/latest")["Body"].read().decode()
        except s3.exceptions.NoSuchKey:
            return None

    sync = _CheckpointSync(remote, out, every=0.05)
    sync.start()
    try:
        assert _wait_for(lambda: sent() == "step-7"), "the checkpoint was not sent while the stage ran"
        (out / "checkpoints" / "latest").write_text("step-14")
        assert _wait_for(lambda: sent() == "step-14"), "a newer checkpoint was not sent"
    finally:
        sync.stop()
    # The retry, on a fresh node: it starts from what was sent.
    fresh = tmp_path / "fresh"
    _fetch_checkpoints(remote, fresh)
    assert (fresh / "checkpoints" / "latest").read_text() == "step-14"


def test_unchanged_checkpoints_are_not_sent_again(aws, tmp_path):  # noqa: F811
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="art")
    out = tmp_path / "outputs"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "latest").write_text("step-7")
    sync = _CheckpointSync(RemoteArtifacts(output_uri="s3://art/o/"), out, every=0.05)
    sync.start()
    try:
        assert _wait_for(lambda: bool(sync._sent))
        first = s3.head_object(Bucket="art", Key="o/checkpoints/latest")["LastModified"]
        time.sleep(1.2)  # many rounds; S3's LastModified has one-second resolution
        assert s3.head_object(Bucket="art", Key="o/checkpoints/latest")["LastModified"] == first
    finally:
        sync.stop()


def test_no_checkpoints_folder_sends_nothing(aws, tmp_path):  # noqa: F811
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="art")
    sync = _CheckpointSync(RemoteArtifacts(output_uri="s3://art/o/"), Path(tmp_path), every=0.05)
    sync.start()
    time.sleep(0.3)
    sync.stop()
    assert s3.list_objects_v2(Bucket="art").get("KeyCount", 0) == 0


def test_a_send_is_of_the_folder_as_it_was_whatever_the_stage_deletes_meanwhile(tmp_path):
    """The stage keeps only its newest checkpoints: one deleted while a send is under way must neither
    fail the send nor vanish from it: the send reads hard links made at its start."""
    out = tmp_path / "outputs"
    (out / "checkpoints").mkdir(parents=True)
    for step in (7, 14):
        (out / "checkpoints" / f"step-{step}.pt").write_bytes(b"x" * step)
    sync = _CheckpointSync(RemoteArtifacts(output_uri="s3://art/o/"), out, every=60)
    scratch, held = sync._linked_copy()
    (out / "checkpoints" / "step-7.pt").unlink()  # the stage prunes its older checkpoint mid-send
    assert [name for name, _, _ in held] == ["step-14.pt", "step-7.pt"]
    assert (scratch / "step-7.pt").read_bytes() == b"x" * 7
    assert scratch.parent == tmp_path and not (out / scratch.name).exists()  # beside the outputs, not in them
