"""Cloud execution against a second Ray cluster on 127.0.0.1 and moto's S3 over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from hybrid import DOUBLE, hybrid_pipeline

from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.machine.profiler import load_profile_file
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.providers.local import free_port
from lhorch.providers.ray_cluster import RayClusterProvider

pytestmark = pytest.mark.ray
PROFILE = Path(__file__).parent / "fixtures" / "profiles" / "cpu_4core.json"
BUCKET = "lhorch-remote-test"


@pytest.fixture
def bucket(aws):
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    return BUCKET


def _pipeline(write_pipeline, address: str):
    cloud = (f'cloud: {{provider: ray, address: "{address}", bucket: {BUCKET}, prefix: tests, '
             'token_env: TEST_RAY_TOKEN}')
    return write_pipeline(hybrid_pipeline("hybrid", cloud, DOUBLE + "; echo out=$LHORCH_OUTPUT_DIR"))


def _runner(store, path, ray_node, provider, **options):
    pipeline = load_pipeline(path)
    plan = make_plan(pipeline, load_profile_file(PROFILE))
    assert plan.placements["double"].target == "cloud" and plan.placements["double"].provider == "ray"
    return Runner(store, pipeline, path, providers={"local": ray_node, "ray": provider}, plan=plan,
                  options=RunOptions(**options))


def test_middle_stage_runs_on_the_remote_cluster_through_s3(store, write_pipeline, ray_node, remote_cluster, bucket,
                                                            monkeypatch):
    token = remote_cluster.token.get_secret_value()
    monkeypatch.setenv("TEST_RAY_TOKEN", token)
    path = _pipeline(write_pipeline, remote_cluster.address)
    pipeline = load_pipeline(path)
    provider = RayClusterProvider.from_config(pipeline.cloud)
    result = _runner(store, path, ray_node, provider).run()
    assert result.status == "succeeded", result.message
    # The last local stage consumed what the remote stage wrote.
    log = (result.run_dir / "stages" / "report" / "attempt-1.log").read_text()
    assert "result=42" in log
    # The remote stage wrote into scratch space on its node, not into the local run directory …
    remote_log = (result.run_dir / "stages" / "double" / "attempt-1.log").read_text()
    assert "out=/tmp/lhorch-stage-" in remote_log
    # … its job is on the other cluster …
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(remote_cluster.address, headers=remote_cluster.auth_headers()).list_jobs()
    assert f"lhorch-{result.run_id}-double-1" in {j.submission_id for j in jobs}
    # … its input went up and its output came back through S3.
    keys = {o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"tests/runs/{result.run_id}/stages/make/outputs/n" in keys
    assert f"tests/runs/{result.run_id}/stages/double/outputs/n2" in keys
    assert (result.run_dir / "stages" / "double" / "outputs" / "n2").read_text() == "42\n"
    # The token is nowhere in lhorch's state, logs or events.
    for file in [store.path, *result.run_dir.rglob("*")]:
        if file.is_file():
            assert token.encode() not in file.read_bytes(), file


def test_unreachable_cluster_fails_clearly_and_the_run_resumes(store, write_pipeline, ray_node, remote_cluster, bucket,
                                                              monkeypatch):
    monkeypatch.setenv("TEST_RAY_TOKEN", remote_cluster.token.get_secret_value())
    dead = f"http://127.0.0.1:{free_port()}"
    path = _pipeline(write_pipeline, dead)
    provider = RayClusterProvider(dead, "whatever", bucket=bucket, prefix="tests", ready_timeout=2)
    with pytest.raises(ClusterUnreachable) as info:
        _runner(store, path, ray_node, provider).run()
    assert "does not answer" in str(info.value) and "whatever" not in str(info.value)
    run = store.list_runs()[0]
    assert run["status"] == "interrupted"
    # Point the pipeline at the live cluster: the finished local stage is kept, the rest runs.
    path = _pipeline(write_pipeline, remote_cluster.address)
    provider = RayClusterProvider.from_config(load_pipeline(path).cloud)
    result = _runner(store, path, ray_node, provider).run()
    assert result.run_id == run["id"] and result.status == "succeeded"
    assert result.stages["make"] == "cached"


def test_ctrl_c_stops_the_remote_stage(write_pipeline, home, remote_cluster, bucket, tmp_path):
    path = write_pipeline(f"""\
        name: long-remote
        cloud: {{provider: ray, address: "{remote_cluster.address}", bucket: {BUCKET}, token_env: TEST_RAY_TOKEN}}
        stages:
          train:
            placement: cloud
            run: echo started; sleep 120
        """)
    env = dict(os.environ, LHORCH_HOME=str(home), LHORCH_PROFILE=str(PROFILE),
               TEST_RAY_TOKEN=remote_cluster.token.get_secret_value())
    proc = subprocess.Popen([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "run", str(path)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(remote_cluster.address, headers=remote_cluster.auth_headers())
    deadline = time.monotonic() + 90
    job = None
    while time.monotonic() < deadline and job is None:
        job = next((j for j in client.list_jobs()
                    if (j.submission_id or "").startswith("lhorch-long-remote") and j.status.value == "RUNNING"), None)
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.3)
    assert job is not None, "the remote stage never started"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    deadline = time.monotonic() + 30
    while client.get_job_status(job.submission_id).value != "STOPPED" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert client.get_job_status(job.submission_id).value == "STOPPED"
