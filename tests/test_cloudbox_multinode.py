"""Multi-node clusters on the cloud box (issue 14): nodes of one VPC reach each other and nothing
outside the box; a two-node cluster runs jobs.finetune with a worker on each node, survives losing
its worker by retrying on a fresh cluster from the checkpoint, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cloudbox import net
from cloudbox.fixtures import cloudbox  # noqa: F401 - the session's box
from cloudbox.laptop import NOTHING, leftovers, lhorch, start

pytestmark = [pytest.mark.cloudbox]

CONNECT = ("import socket, sys, time\n"
           "t = time.monotonic()\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close(); print('connected')\n"
           "except OSError as e:\n"
           "    print('refused' if isinstance(e, ConnectionRefusedError) else type(e).__name__, e.errno)\n"
           "print(round(time.monotonic() - t, 2))\n")


def _connect_from(ns: str, host: str, port: int) -> tuple[str, float]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, host, str(port)],
                         capture_output=True, text=True, timeout=30)
    outcome, took = out.stdout.strip().splitlines()
    return outcome, float(took)


def test_nodes_of_the_vpc_reach_each_other_and_nothing_outside_the_box(cloudbox):
    a, b = f"{net.PREFIX}-test-a", f"{net.PREFIX}-test-b"
    try:
        net.create_node_network(a, 240, "172.31.250.1", "10.213.0.1")
        net.create_node_network(b, 241, "172.31.250.2", "10.213.0.1")
        server = net.listen_in_netns(b, ("172.31.250.2", 0))
        port = server.getsockname()[1]
        assert _connect_from(a, "172.31.250.2", port)[0] == "connected"
        server.close()
        # Outside the box (a registry's address, say): refused at once by the host, never sent out.
        outcome, took = _connect_from(a, "203.0.113.80", 443)
        assert outcome.startswith("OSError 113") or outcome.startswith("OSError 101"), outcome
        assert took < 5, took
        # A VPC address no node has: unreachable too, as on EC2.
        assert _connect_from(a, "172.31.250.9", 22)[0].startswith("OSError")
    finally:
        net.kill_netns(a)
        net.kill_netns(b)


TWO_NODES = """\
    name: box-two-nodes
    cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge], connector: direct,
            idle_minutes: 2, max_instances: 2}
    stages:
      data:
        uses: jobs.preprocess
        with: {dataset: digits, seed: 0}
        placement: local
      pretrain:
        uses: jobs.pretrain
        needs: [data]
        with: {epochs: 2, hidden: [32], seed: 0}
        placement: local
      train:
        uses: jobs.finetune
        needs: [pretrain]
        placement: cloud
        retries: 1
        resources: {nodes: 2, cpus: 1, memory_gb: 1}
        hints: {checkpoint_minutes: 0.02}
        with: {epochs: 30, num_workers: 2, engine: ray, batch_size: 16, checkpoint_every: 20, freeze_epochs: 0,
               seed: 0}
    """


def _logs(home) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(home.glob("runs/*/stages/train/attempt-*.log")))


@pytest.mark.slow
@pytest.mark.timeout(600)  # two clusters boot one after the other on 2 shared cores
def test_two_node_finetune_survives_losing_its_worker(cloudbox, tmp_path):
    """jobs.finetune with a Ray Train worker on each of two nodes. The first cluster's worker node is
    taken away mid-training: the attempt fails, that cluster is torn down, and the retry starts a fresh
    two-node cluster that resumes from the checkpoint the head sent off; the model comes back."""
    known = set(cloudbox.nodes)
    proc, home = start(cloudbox, tmp_path, TWO_NODES)
    try:
        assert cloudbox.wait(lambda: "checkpoints sent" in _logs(home), 400), _logs(home)[-3000:]
        first = {iid: n for iid, n in cloudbox.nodes.items() if iid not in known and n.ended is None}
        assert len(first) == 2, first
        roles = {iid: _tag(cloudbox, iid, "lhorch:role") for iid in first}
        (worker,) = [iid for iid, role in roles.items() if role == "worker"]
        cloudbox.interrupt(worker)  # the worker node is gone (a spot loss, a hardware fault)
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = _logs(home)
    assert proc.returncode == 0, out[-3000:] + logs[-3000:]
    assert "resuming from step" in logs, logs[-3000:]  # the retry continued from the lost cluster's checkpoint
    second = {iid: n for iid, n in cloudbox.nodes.items() if iid not in known | set(first)}
    assert len(second) == 2 and all(n.ended is not None for n in {**first, **second}.values())

    run_id = json.loads(lhorch(cloudbox, home, "runs", "--json").stdout)[0]["id"]
    status = json.loads(lhorch(cloudbox, home, "status", run_id, "--json").stdout)
    (train,) = [s for s in status["stages"] if s["stage"] == "train"]
    assert train["status"] == "succeeded" and train["attempt"] == 2, train
    # The outputs came back to the laptop: the model, and where each worker ran (one per node).
    outputs = {o["name"]: Path(o["path"]) for o in train["outputs"]}
    assert (outputs["model"] / "model.pt").is_file(), outputs
    run = json.loads((outputs["history"] / "run.json").read_text())
    assert run["world"] == 2
    assert {w["ip"] for w in run["workers"]} == {n.private_ip for n in second.values()}, run["workers"]
    # Every node of both clusters is billed and closed.
    cost = json.loads(lhorch(cloudbox, home, "cost", run_id, "--json").stdout)["run"]
    billed = {i["resource_id"] for i in cost["items"] if i["kind"] == "instance" and i["state"] == "closed"}
    assert billed == set(first) | set(second), cost["items"]
    assert leftovers(cloudbox, run_id) == NOTHING


def _tag(box, iid: str, key: str) -> str:
    (inst,) = [i for r in box.ec2.describe_instances(InstanceIds=[iid])["Reservations"] for i in r["Instances"]]
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}.get(key, "")
