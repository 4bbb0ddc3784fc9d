"""End to end on the cloud box (tests/cloudbox): `lhorch run`, the real CLI in its own process,
launches EC2 nodes on moto that boot lhorch's real user data in namespaces of this host.

What each test shows: a local → cloud → local pipeline works with artifacts both ways and leaves
nothing behind; a node whose bootstrap fails terminates itself and `lhorch run` says why at once;
a node whose laptop is gone terminates itself within idle_minutes plus one check."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from cloudbox.fixtures import cloudbox  # noqa: F401 - the session's box
from cloudbox.laptop import LHORCH, NOTHING, instances, laptop, leftovers, lhorch, new_node, stage_log, start, write
from hybrid import DOUBLE, hybrid_pipeline

from lhorch.providers.aws.launch import EC2_MIN_BILLED_S

pytestmark = [pytest.mark.cloudbox, pytest.mark.slow]
CLOUD = "cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge], connector: direct"


def test_local_cloud_local_pipeline_on_a_box_node(cloudbox, tmp_path):
    double = ('echo "node address $(hostname -I)"\n'
              'python -c "import sys; print(\'interpreter\', sys.executable)"\n' + DOUBLE)
    path = write(tmp_path, hybrid_pipeline("box-hybrid", CLOUD + ", idle_minutes: 2}", double))
    home = tmp_path / "home"
    done = lhorch(cloudbox, home, "run", str(path), "--json")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    run_id = result["run_id"]
    assert result["status"] == "succeeded"

    launched = {i["InstanceId"] for i in instances(cloudbox, run_id, ("terminated",))}
    (node,) = [n for n in cloudbox.nodes.values() if n.instance_id in launched]
    logs = lhorch(cloudbox, home, "logs", run_id, "double").stdout
    # It ran on the node (its private address), under the venv's interpreter the bootstrap made.
    assert f"node address {node.private_ip}" in logs, logs
    assert "interpreter /opt/lhorch/venv/bin/python" in logs, logs
    assert "result=42" in lhorch(cloudbox, home, "logs", run_id, "report").stdout
    assert list(node.boot_steps()) == ["started", "installing", "installed", "starting-ray", "ready"]
    # The user data is what lhorch sends to EC2: nothing in it knows about the box.
    user_data = (node.dir / "user-data").read_text()
    assert cloudbox.endpoint not in user_data and "10.213." not in user_data
    assert not {"cloudbox", "moto", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "testing"} & set(user_data.split())
    assert "cloudbox" not in user_data and "moto" not in user_data
    # The node installed the wheel lhorch shipped, not anything from an index by name.
    assert "lhorch wheel" not in node.log() and "failed" not in node.log()

    status = json.loads(lhorch(cloudbox, home, "status", run_id, "--json").stdout)
    stages = {s["stage"]: s for s in status["stages"]}
    assert {k: s["status"] for k, s in stages.items()} == dict.fromkeys(("make", "double", "report"), "succeeded")
    assert stages["double"]["target"].startswith("aws:") and stages["make"]["target"] == "local"
    # What it cost: the node, billed from launch to termination (EC2's 60 s minimum), closed.
    cost = json.loads(lhorch(cloudbox, home, "cost", run_id, "--json").stdout)["run"]
    (billed,) = [i for i in cost["items"] if i["kind"] == "instance"]
    assert billed["resource_id"] == node.instance_id and billed["state"] == "closed"
    assert billed["quantity"] >= 60 and billed["usd_per_hour"] > 0
    assert cost["actual_usd"] == pytest.approx(status["actual_usd"], abs=1e-5) and cost["actual_usd"] > 0
    assert cost["open_usd"] == 0
    assert leftovers(cloudbox, run_id) == NOTHING


def test_a_node_whose_bootstrap_fails_powers_off_and_run_says_why(cloudbox, tmp_path):
    home = tmp_path / "home"
    path = write(tmp_path, f"""\
        name: box-broken
        {CLOUD}}}
        stages:
          train:
            placement: cloud
            run: echo never
        """)
    cloudbox.corrupt_wheels = True  # the wheel lhorch uploads is tampered with before the node fetches it
    started = time.monotonic()
    try:
        done = lhorch(cloudbox, home, "run", str(path), timeout=120)
    finally:
        cloudbox.corrupt_wheels = False
        _delete_wheels(cloudbox)
    took = time.monotonic() - started
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-2000:]
    assert "failed to boot" in done.stderr and "sha256 mismatch" in done.stderr, done.stderr
    assert took < 90, took  # not the 900 s ready timeout
    (node,) = [n for n in cloudbox.nodes.values() if "sha256 mismatch" in n.log()]
    assert "installed" not in node.boot_steps() and "ready" not in node.boot_steps()
    # The node powered itself off: its instance is terminated and its namespace gone; lhorch released the rest.
    (inst,) = [i for r in cloudbox.ec2.describe_instances(InstanceIds=[node.instance_id])["Reservations"]
               for i in r["Instances"]]
    assert inst["State"]["Name"] == "terminated"
    run_id = {t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:run-id"]
    assert leftovers(cloudbox, run_id) == NOTHING


def _delete_wheels(box) -> None:
    s3 = box.client("s3")
    for bucket in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=bucket["Name"], Prefix="lhorch/wheels/").get("Contents", []):
            s3.delete_object(Bucket=bucket["Name"], Key=obj["Key"])


def test_laptop_gone_the_node_terminates_itself(cloudbox, tmp_path):
    idle_s = 30
    path = write(tmp_path, f"""\
        name: box-orphan
        {CLOUD}, idle_minutes: {idle_s / 60}}}
        stages:
          train:
            placement: cloud
            run: echo started; sleep 600
        """)
    home = tmp_path / "home"
    proc = subprocess.Popen([*LHORCH, "run", str(path)],
                            env=laptop(cloudbox, home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert cloudbox.wait(lambda: any(n.boot_steps().get("ready") for n in cloudbox.nodes.values()
                                         if n.ended is None), 180), "no node became ready"
        node = next(n for n in cloudbox.nodes.values() if n.ended is None)
        assert cloudbox.wait(lambda: "started" in stage_log(home), 60), "the cloud stage never started"
    finally:
        proc.send_signal(signal.SIGKILL)  # the laptop is gone: no teardown, no gc
        proc.wait(10)
    killed = time.monotonic()
    check = max(5, min(30, idle_s / 4))
    assert cloudbox.wait(lambda: node.ended is not None, idle_s + check + 20), "the node outlived its dead-man switch"
    took = time.monotonic() - killed
    assert took >= idle_s - 15, took  # it was the idle clock, not something else
    assert "no check-in from lhorch" in (node.dir / "fs" / "log" / "lhorch-watchdog.log").read_text()
    run_id = proc.stdout.read().split()[1]  # "Run <id>" comes first
    before = json.loads(lhorch(cloudbox, home, "cost", run_id, "--json").stdout)["run"]
    assert before["open_usd"] > 0  # nobody closed the node's row: counted at its worst case meanwhile
    gc = lhorch(cloudbox, home, "gc", "--yes")  # the security group, role and token the dead laptop left
    assert gc.returncode == 0, gc.stderr
    # Issue 16: the ledger has the node's whole lifetime, launch to EC2's termination, at its launched price.
    (inst,) = instances(cloudbox, run_id, states=("terminated",))
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    report = json.loads(lhorch(cloudbox, home, "cost", run_id, "--json").stdout)["run"]
    assert report["status"] == "interrupted" and report["open_usd"] == 0, report
    (row,) = [r for r in report["items"] if r["kind"] == "instance"]
    assert row["state"] == "closed" and row["usd_per_hour"] == pytest.approx(float(tags["lhorch:price-per-hour"]))
    up_to_gc = time.time() - inst["LaunchTime"].timestamp()
    # EC2 bills at least a minute: a node that lived less is billed the minute.
    assert idle_s <= row["quantity"] <= max(EC2_MIN_BILLED_S, up_to_gc + 1), (row, up_to_gc)


@pytest.mark.parametrize("when", ["boot", "stage"])
def test_ctrl_c_during_boot_or_stage_leaves_nothing(cloudbox, tmp_path, when):
    known = set(cloudbox.nodes)
    proc, home = start(cloudbox, tmp_path, f"""\
        name: box-ctrl-c-{when}
        {CLOUD}, idle_minutes: 2}}
        stages:
          train:
            placement: cloud
            run: echo started; sleep 600
        """)
    try:
        node = new_node(cloudbox, known, "installing" if when == "boot" else "ready", 180)
        if when == "stage":
            assert cloudbox.wait(lambda: "started" in stage_log(home), 90), "the cloud stage never started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out[-3000:]
    (inst,) = [i for r in cloudbox.ec2.describe_instances(InstanceIds=[node.instance_id])["Reservations"]
               for i in r["Instances"]]
    run_id = {t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:run-id"]
    assert leftovers(cloudbox, run_id) == NOTHING
    if when == "boot":
        assert "ready" not in node.boot_steps()  # it really was cut off while booting


def test_spot_interruption_mid_stage_retries_on_a_fresh_node_from_its_checkpoint(cloudbox, tmp_path):
    known = set(cloudbox.nodes)
    proc, home = start(cloudbox, tmp_path, f"""\
        name: box-spot
        {CLOUD}, idle_minutes: 1}}
        stages:
          train:
            placement: cloud
            retries: 1
            hints: {{checkpoint_minutes: 0.02}}
            run: |
              echo "attempt $LHORCH_ATTEMPT on $(hostname -I)"
              ckpt=$LHORCH_OUTPUT_DIR/checkpoints
              echo "resuming from $(cat $ckpt/latest 2>/dev/null || echo nothing)"
              if [ "$LHORCH_ATTEMPT" = 1 ]; then mkdir -p $ckpt && echo step-7 > $ckpt/latest && sleep 600; fi
        """)
    try:
        first = new_node(cloudbox, known, "ready", 180)
        assert cloudbox.wait(lambda: "attempt 1" in stage_log(home), 90), "the cloud stage never started"
        assert cloudbox.wait(lambda: "checkpoints sent" in stage_log(home), 60), "no checkpoint left the node"
        cloudbox.interrupt(first.instance_id)  # the spot market takes the node back
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-3000:]
    (second,) = [n for iid, n in cloudbox.nodes.items() if iid not in known | {first.instance_id}]
    logs = "".join(p.read_text() for p in sorted(home.glob("runs/*/stages/train/attempt-*.log")))
    assert "attempt 2 on " + second.private_ip in logs, logs
    assert "resuming from step-7" in logs, logs  # the retry continues from the lost node's checkpoint
    (inst,) = [i for r in cloudbox.ec2.describe_instances(InstanceIds=[second.instance_id])["Reservations"]
               for i in r["Instances"]]
    assert leftovers(cloudbox, {t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:run-id"]) == NOTHING
