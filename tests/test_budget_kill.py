"""Issue 16, finding 2: a `lhorch run` killed with kill -9 while its cloud stage's instance bills, then
`lhorch gc`: `lhorch cost RUN` shows the instance's whole lifetime (EC2's launch to EC2's termination)
at the price it was launched at, and the run shows as interrupted. Real processes, moto's server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import boto3
import pytest

PROFILE = Path(__file__).parent / "fixtures" / "profiles" / "cpu_4core.json"
DRIVER = Path(__file__).parent / "budget_run_driver.py"
LHORCH = [sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()"]
PIPELINE = """\
    name: killed-cloud
    cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge]}
    budget: {max_usd: 5}
    stages:
      train:
        placement: cloud
        run: echo hi
    """


def _instances(ec2) -> list[dict]:
    return [i for r in ec2.describe_instances(Filters=[{"Name": "tag:lhorch:run-id", "Values": ["*"]}])["Reservations"]
            for i in r["Instances"]]


def _cli(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([*LHORCH, *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_kill_9_mid_cloud_stage_then_gc_costs_the_whole_lifetime(write_pipeline, home, aws):
    path = write_pipeline(PIPELINE)
    env = dict(os.environ, LHORCH_HOME=str(home),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])))
    ec2 = boto3.client("ec2", region_name="us-east-1")
    proc = subprocess.Popen([sys.executable, str(DRIVER), str(path), str(PROFILE)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [i for i in _instances(ec2) if i["State"]["Name"] == "running"]:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "no instance came up in 60 s"
            time.sleep(0.2)
        time.sleep(2)  # the instance runs (and bills) while the stage waits for its head
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    (inst,) = _instances(ec2)
    run_id = {t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:run-id"]
    price = float({t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:price-per-hour"])
    before = json.loads(_cli(env, "cost", run_id, "--json"))["run"]
    assert before["open_usd"] > 0  # counted at its worst case while nobody watches
    assert "still open" in _cli(env, "cost", run_id)

    gc_started = datetime.now(timezone.utc)
    _cli(env, "gc")
    (inst,) = _instances(ec2)
    assert inst["State"]["Name"] == "terminated"
    report = json.loads(_cli(env, "cost", run_id, "--json"))["run"]
    assert report["status"] == "interrupted"
    assert report["open_usd"] == 0
    (row,) = [r for r in report["items"] if r["kind"] == "instance"]
    assert row["resource_id"] == inst["InstanceId"] and row["state"] == "closed"
    assert row["usd_per_hour"] == pytest.approx(price)  # at the price it was launched at
    lifetime = (gc_started - inst["LaunchTime"]).total_seconds()  # it ran at least until gc terminated it
    assert row["quantity"] >= max(60.0, lifetime - 1)
    assert row["usd"] == pytest.approx(price * row["quantity"] / 3600, abs=1e-6)
    assert report["actual_usd"] >= row["usd"] and {r["kind"] for r in report["items"]} >= {"volume", "ipv4"}
    assert "still open" not in _cli(env, "cost", run_id)
