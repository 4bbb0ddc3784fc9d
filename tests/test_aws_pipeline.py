"""A pipeline with a cloud stage on AWS (moto's server over HTTP), its head stood in for by a second
local Ray cluster: what is launched, how it is locked down, and that nothing is left afterwards."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import boto3
import pytest
from hybrid import DOUBLE, hybrid_pipeline
from pydantic import SecretStr

from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.machine.profiler import load_profile_file
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.providers.aws.provider import AwsProvider
from lhorch.providers.aws.settings import AwsSettings

pytestmark = pytest.mark.ray
PROFILE = Path(__file__).parent / "fixtures" / "profiles" / "cpu_4core.json"
VERSIONS = {"python": "3.11", "ray": "2.60.0", "lhorch": "0.1.0"}


class RayStandIn:
    """HeadConnector: every head EC2 "starts" is reached at the stand-in Ray cluster."""

    def __init__(self, cluster):
        self.cluster = cluster

    def connect(self, head):
        return self.cluster.address, SecretStr(self.cluster.token.get_secret_value())

    def close(self, head):
        pass


def _pipeline(write_pipeline, first_attempt_sleep: int = 0):
    cloud = "cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge], idle_minutes: 5}"
    double = f'if [ "$LHORCH_ATTEMPT" = 1 ]; then sleep {first_attempt_sleep}; fi\n' + DOUBLE
    return write_pipeline(hybrid_pipeline("aws-hybrid", cloud, double, retries=1))


class StandInAws(AwsProvider):
    """Its clusters' "nodes" are the stand-in Ray cluster on this machine: stages run with this
    interpreter, not the node venv's (tests/test_cloudbox.py runs them on booted nodes)."""

    def acquire(self, request):
        return super().acquire(request).model_copy(update={"python": sys.executable})


def _aws(store, pipeline, remote_cluster) -> AwsProvider:
    """The AWS provider on moto, its heads reached at the stand-in Ray cluster."""
    settings = AwsSettings.from_cloud(pipeline.cloud, versions=VERSIONS, host="laptop", poll_interval=0.01)
    # The stand-in is one Ray node standing for every node of the cluster: all of them have joined.
    return StandInAws.from_cloud(pipeline.cloud, store, settings=settings, connector=RayStandIn(remote_cluster),
                                 node_count=lambda address, token: pipeline.cloud.max_instances,
                                 sleep=lambda s: None)


def _run(store, path, ray_node, remote_cluster, on_acquired=None, heartbeat_seconds=60.0):
    pipeline = load_pipeline(path)
    provider = _aws(store, pipeline, remote_cluster)
    plan = make_plan(pipeline, load_profile_file(PROFILE))
    assert any(p.provider == "aws" for p in plan.placements.values())
    runner = Runner(store, pipeline, path, providers={"local": ray_node, "aws": provider}, plan=plan,
                    options=RunOptions(), on_cluster_acquired=on_acquired, heartbeat_seconds=heartbeat_seconds)
    return runner.run()


def _lhorch_left(ec2):
    instances = [i for r in ec2.describe_instances(Filters=[{"Name": "tag-key", "Values": ["lhorch:run-id"]}])["Reservations"]
                 for i in r["Instances"] if i["State"]["Name"] != "terminated"]
    groups = [g for g in ec2.describe_security_groups()["SecurityGroups"]
              if any(t["Key"].startswith("lhorch:") for t in g.get("Tags", []))]
    keys = [k for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("lhorch-")]
    return instances, groups, keys


def test_cloud_stage_runs_on_ec2_locked_down_and_nothing_is_left(store, write_pipeline, ray_node, remote_cluster, aws):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    seen = {}

    def inspect(cluster):
        if cluster.provider != "aws":
            return
        # While the cluster is up: its security group and instances as AWS sees them.
        seen["instances"] = [i for r in ec2.describe_instances(InstanceIds=cluster.instance_ids)["Reservations"]
                             for i in r["Instances"]]
        group_ids = {g["GroupId"] for i in seen["instances"] for g in i["SecurityGroups"]}
        assert len(group_ids) == 1, group_ids
        seen["group"] = ec2.describe_security_groups(GroupIds=list(group_ids))["SecurityGroups"][0]
        seen["shutdown"] = [ec2.describe_instance_attribute(InstanceId=i, Attribute="instanceInitiatedShutdownBehavior")
                            ["InstanceInitiatedShutdownBehavior"]["Value"] for i in cluster.instance_ids]

    result = _run(store, _pipeline(write_pipeline), ray_node, remote_cluster, on_acquired=inspect)
    assert result.status == "succeeded", result.message
    assert "result=42" in (result.run_dir / "stages" / "report" / "attempt-1.log").read_text()

    (instance,) = seen["instances"]
    tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
    assert tags["lhorch:run-id"] == result.run_id
    assert {"lhorch:owner", "lhorch:expires-at", "lhorch:group"} <= set(tags)
    assert instance["InstanceType"] == "c6i.xlarge"
    assert instance["MetadataOptions"]["HttpTokens"] == "required"
    assert seen["shutdown"] == ["terminate"]
    for rule in seen["group"]["IpPermissions"]:
        assert all(r["CidrIp"] != "0.0.0.0/0" for r in rule.get("IpRanges", [])), rule
        assert all(r["CidrIpv6"] != "::/0" for r in rule.get("Ipv6Ranges", [])), rule
    # The artifacts went through the bucket lhorch made, private and encrypted.
    s3 = boto3.client("s3")
    (bucket,) = [b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"].startswith("lhorch-")]
    assert s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]["BlockPublicAcls"]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"lhorch/runs/{result.run_id}/stages/double/outputs/n2" in keys

    instances, groups, keys = _lhorch_left(ec2)
    assert (instances, groups, keys) == ([], [], [])


def test_spot_interruption_reruns_the_stage_on_a_fresh_cluster(store, write_pipeline, ray_node, remote_cluster, aws):
    ec2 = boto3.client("ec2", region_name="us-east-1")
    acquired = []

    def interrupt(cluster):
        if cluster.provider != "aws":
            return
        acquired.append(list(cluster.instance_ids))
        if len(acquired) == 1:
            # The first cluster's node is reclaimed while its stage runs, as a spot interruption does.
            threading.Timer(2.0, lambda: ec2.terminate_instances(InstanceIds=cluster.instance_ids)).start()

    started = time.monotonic()
    result = _run(store, _pipeline(write_pipeline, first_attempt_sleep=300), ray_node, remote_cluster,
                  on_acquired=interrupt, heartbeat_seconds=0.5)
    assert time.monotonic() - started < 200
    assert result.status == "succeeded", result.message
    attempts = store.attempts(result.run_id, "double")
    assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    assert "cluster lost" in attempts[0]["error"]
    assert len(acquired) == 2 and acquired[0] != acquired[1]
    assert _lhorch_left(ec2) == ([], [], [])
    # A real interruption takes the first attempt down with its node; the stand-in cluster
    # outlives it, so stop that attempt here rather than leave it sleeping after the tests.
    from ray.job_submission import JobSubmissionClient

    JobSubmissionClient(remote_cluster.address, headers=remote_cluster.auth_headers()).stop_job(
        f"lhorch-{result.run_id}-double-1")


def test_a_stage_failing_because_a_worker_node_died_retries_on_a_fresh_cluster(store, write_pipeline, ray_node,
                                                                               remote_cluster, aws):
    """A two-node stage whose worker node goes away fails at once (its partner is gone), long before
    the next heartbeat: the failed attempt is put down to the lost node, the cluster torn down and the
    retry run on a fresh two-node cluster, not on what is left of the old one."""
    ec2 = boto3.client("ec2", region_name="us-east-1")
    acquired: list[list[str]] = []

    def lose_worker(cluster):
        if cluster.provider == "aws":
            acquired.append(list(cluster.instance_ids))
            if len(acquired) == 1:
                ec2.terminate_instances(InstanceIds=cluster.instance_ids[1:])

    path = write_pipeline("""\
        name: aws-two-nodes
        cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge], idle_minutes: 5}
        stages:
          train:
            placement: cloud
            retries: 1
            resources: {nodes: 2}
            run: |
              if [ "$LHORCH_ATTEMPT" = 1 ]; then echo "my partner is gone"; exit 1; fi
              echo "attempt $LHORCH_ATTEMPT on $LHORCH_NODES nodes"
        """)
    result = _run(store, path, ray_node, remote_cluster, on_acquired=lose_worker, heartbeat_seconds=600)
    assert result.status == "succeeded", result.message
    attempts = store.attempts(result.run_id, "train")
    assert [a["status"] for a in attempts] == ["failed", "succeeded"]
    assert "cluster lost" in attempts[0]["error"] and "no longer running" in attempts[0]["error"], attempts[0]
    assert len(acquired) == 2 and not set(acquired[0]) & set(acquired[1]) and len(acquired[1]) == 2
    assert _lhorch_left(ec2) == ([], [], [])


class FastClock:
    """Real time, sped up: one real second is `factor` seconds of billing, so an hour of spend
    passes in a minute while the cluster (moto + a real Ray stand-in) runs for real."""

    def __init__(self, factor: float):
        from datetime import datetime, timezone

        self.factor, self.t0, self.start = factor, time.monotonic(), datetime.now(timezone.utc)

    def now(self):
        from datetime import timedelta

        return self.start + timedelta(seconds=(time.monotonic() - self.t0) * self.factor)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds / self.factor)


def test_a_stage_that_would_run_past_the_cap_is_stopped_before_it(store, write_pipeline, ray_node, remote_cluster, aws):
    from lhorch.orchestrator.budget.guard import BudgetGuard
    from lhorch.orchestrator.state import ledger

    path = write_pipeline("""\
        name: capped
        budget: {max_usd: 6, check_interval: 60s}
        cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [p4d.24xlarge]}
        stages:
          train:
            placement: cloud
            hints: {minutes: 1}
            run: sleep 300
        """)
    pipeline = load_pipeline(path)
    clock = FastClock(60)
    provider = _aws(store, pipeline, remote_cluster)
    plan = make_plan(pipeline, load_profile_file(PROFILE))
    guard = BudgetGuard(store, pipeline, clock=clock)
    runner = Runner(store, pipeline, path, providers={"local": ray_node, "aws": provider}, plan=plan,
                    options=RunOptions(), guard=guard)
    started = time.monotonic()
    result = runner.run()
    assert time.monotonic() - started < 120
    assert result.status == "budget_exceeded", result.message
    assert result.stages["train"] == "stopped"
    spent = ledger.run_total(store, result.run_id)
    burn = plan.placements["train"].offer.price_per_hour / 3600
    teardown = max(plan.placements["train"].offer.teardown_seconds, 120)
    assert spent <= 6.0
    # Stopped with at most one check interval (plus the teardown it must leave room for) to spare.
    assert 6.0 - spent <= burn * (60 + teardown) + burn * 10, (spent, burn)
    # The nodes' own hard stop was set from the cap, not from cloud.max_hours.
    ec2 = boto3.client("ec2", region_name="us-east-1")
    (inst,) = [i for r in ec2.describe_instances(Filters=[{"Name": "tag:lhorch:run-id", "Values": [result.run_id]}])["Reservations"]
               for i in r["Instances"]]
    expires = {t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:expires-at"]
    from datetime import datetime

    assert (datetime.fromisoformat(expires) - clock.start).total_seconds() < 3600
    assert _lhorch_left(ec2) == ([], [], [])


class _CtrlCWhenRunning:
    """A reporter that delivers Ctrl-C (KeyboardInterrupt, as SIGINT/SIGTERM do in `lhorch run`)
    to the runner's loop the moment the cloud stage is running."""

    def __init__(self, stage: str):
        self.target = stage

    def stage(self, stage, status, detail=""):
        if stage == self.target and status == "running":
            raise KeyboardInterrupt

    def log(self, stage, line): ...
    def info(self, message): ...
    def close(self): ...


@pytest.mark.parametrize("fault", ["stage fails", "ctrl-c"])
def test_faults_leave_nothing_tagged_running(fault, store, write_pipeline, ray_node, remote_cluster, aws):
    path = write_pipeline("""\
        name: faulty
        cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge]}
        stages:
          train:
            placement: cloud
            run: echo going; sleep 30; exit 7
        """)
    pipeline = load_pipeline(path)
    provider = _aws(store, pipeline, remote_cluster)
    if fault == "stage fails":
        path.write_text(path.read_text().replace("sleep 30; ", ""))
        pipeline = load_pipeline(path)
    runner = Runner(store, pipeline, path, providers={"local": ray_node, "aws": provider},
                    plan=make_plan(pipeline, load_profile_file(PROFILE)), options=RunOptions(),
                    reporter=_CtrlCWhenRunning("train") if fault == "ctrl-c" else None)
    if fault == "ctrl-c":
        with pytest.raises(KeyboardInterrupt):
            runner.run()
        assert store.list_runs()[0]["status"] == "interrupted"
        assert [a["status"] for a in store.attempts(runner.run_id, "train")] == ["stopped"]
    else:
        assert runner.run().status == "failed"
        assert store.attempts(runner.run_id, "train")[-1]["exit_code"] == 7
    ec2 = boto3.client("ec2", region_name="us-east-1")
    launched = ec2.describe_instances(Filters=[{"Name": "tag:lhorch:run-id", "Values": [runner.run_id]}])["Reservations"]
    assert launched, "the cloud stage never launched an instance"
    assert _lhorch_left(ec2) == ([], [], [])
