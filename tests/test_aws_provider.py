"""AwsProvider against moto's server over HTTP: launch, safety settings, idempotency, fallback,
throttling, release, spot interruption, gc after kill -9, CLI."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from moto_server import StandInConnector, aws, moto_endpoint, stand_in_head  # noqa: F401 - fixtures

from lhorch.orchestrator.core.cluster import ClusterRequest
from lhorch.orchestrator.core.errors import CapacityError, ClusterUnreachable
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws.ec2 import BILLABLE_STATES
from lhorch.providers.aws.provider import AwsProvider
from lhorch.providers.aws.retry import Backoff
from lhorch.providers.aws.settings import AwsSettings
from lhorch.providers.base import Provider

CALLER_IP = "203.0.113.7"
VERSIONS = {"python": "3.11", "ray": "2.60.0", "lhorch": "0.1.0"}
ROOT = Path(__file__).resolve().parent.parent


def offer(instance_type="m5.large", market="on-demand", price=0.096, **kw) -> Offer:
    return Offer(provider="aws", instance_type=instance_type, market=market, region="us-east-1", vcpus=2,
                 memory_gb=8, price_per_hour=price, **kw)


def no_catalogue(region, spot):
    return []


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def run(request) -> str:
    """A run id unique to the test: tests share one moto server and only look at their own run."""
    return "run-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:40]


@pytest.fixture
def make_provider(moto_endpoint, home, stand_in_head, sleeps):
    made = []

    def make(clock=None, **kw) -> AwsProvider:
        store = Store(home)
        collaborators = kw.pop("collaborators", {})
        settings = AwsSettings(**{"versions": VERSIONS, "host": "laptop", "poll_interval": 0.01, **kw})
        args = {"store": store, "settings": settings, "connector": StandInConnector(stand_in_head),
                    "ip_lookup": lambda: CALLER_IP, "sleep": sleeps.append, "price_fallback": no_catalogue}
        args.update(collaborators)
        if clock is not None:
            args["clock"] = clock
        p = AwsProvider(boto3.Session(region_name="us-east-1"), **args)
        made.append(p)
        return p

    return make


def request(run: str, group="train", nodes=1, **kw) -> ClusterRequest:
    kw.setdefault("offer", offer())
    return ClusterRequest(run_id=run, group=group, nodes=nodes, owner="alice",
                          expires_at=datetime.now(timezone.utc) + timedelta(hours=2), **kw)


def lhorch_instances(ec2, run=None):
    filters = [{"Name": "tag-key", "Values": ["lhorch:run-id"]},
               {"Name": "instance-state-name", "Values": list(BILLABLE_STATES)}]
    if run:
        filters.append({"Name": "tag:lhorch:run-id", "Values": [run]})
    return [i for r in ec2.describe_instances(Filters=filters)["Reservations"] for i in r["Instances"]]


def leftovers(p: AwsProvider, run: str) -> dict[str, list]:
    """Everything lhorch-tagged for ``run`` that still exists (instances: in any billable state)."""
    tagged = [{"Name": "tag:lhorch:run-id", "Values": [run]}]
    params = p.ssm.describe_parameters(ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [f"/lhorch/{run}"]}])
    return {"instances": [i["InstanceId"] for i in lhorch_instances(p.ec2, run)],
            "security_groups": [g["GroupId"] for g in p.ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]],
            "key_pairs": [k["KeyName"] for k in p.ec2.describe_key_pairs(Filters=tagged)["KeyPairs"]],
            "parameters": [x["Name"] for x in params["Parameters"]]}


def fail_run_instances(p: AwsProvider, code: str, when) -> list[dict]:
    """A fault switch on botocore's public event system: RunInstances calls for which ``when(params)``
    is true fail with ``code`` before reaching the server."""
    calls: list[dict] = []

    def hook(params, **_):
        calls.append(dict(params))
        if when(params, len(calls)):
            raise ClientError({"Error": {"Code": code, "Message": f"injected {code}"}}, "RunInstances")

    p.ec2.meta.events.register("before-parameter-build.ec2.RunInstances", hook)
    return calls


def test_provider_satisfies_protocol(make_provider):
    assert isinstance(make_provider(), Provider)


def test_acquire_launches_tagged_locked_down_cluster(make_provider, stand_in_head, run):
    p = make_provider()
    cluster = p.acquire(request(run, nodes=2))
    assert cluster.address == stand_in_head.address and cluster.token.get_secret_value() == stand_in_head.token
    assert stand_in_head.token not in repr(cluster) and cluster.remote
    assert len(cluster.instance_ids) == 2 and cluster.price_per_hour == pytest.approx(2 * 0.096)

    insts = lhorch_instances(p.ec2, run)
    assert len(insts) == 2
    for inst in insts:
        tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
        assert tags["lhorch:run-id"] == run and tags["lhorch:group"] == "train"
        assert tags["lhorch:owner"] == "alice" and tags["Name"].startswith(f"lhorch-{run}-train")
        assert datetime.fromisoformat(tags["lhorch:expires-at"]) > datetime.now(timezone.utc)
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        assert inst["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert inst["InstanceType"] == "m5.large"
        attr = p.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
        assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
        assert all(b["Ebs"]["DeleteOnTermination"] for b in inst["BlockDeviceMappings"])
        user_data = p.ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData")
        script = base64.b64decode(user_data["UserData"]["Value"]).decode()
        token = p.ssm.get_parameter(Name=f"/lhorch/{run}/train/ray-token", WithDecryption=True)["Parameter"]["Value"]
        assert token not in script and "ray[default,train]==2.60.0" in script and "lhorch-watchdog" in script
        # lhorch itself: its own wheel, uploaded to the bucket, checked on the node; never from an index by name.
        (wheel_uri,) = re.findall(r"aws s3 cp --only-show-errors --region us-east-1 (s3://\S+)", script)
        bucket, key = wheel_uri[len("s3://"):].split("/", 1)
        body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() in script and "lhorch==" not in script
    roles = sorted({t["Value"] for i in insts for t in i["Tags"] if t["Key"] == "lhorch:role"})
    assert roles == ["head", "worker"]
    volumes = p.ec2.describe_volumes(Filters=[{"Name": "tag:lhorch:run-id", "Values": [run]}])["Volumes"]
    assert len(volumes) >= 2

    (sg,) = p.ec2.describe_security_groups(Filters=[{"Name": "tag:lhorch:run-id", "Values": [run]}])["SecurityGroups"]
    cidrs = [r["CidrIp"] for perm in sg["IpPermissions"] for r in perm.get("IpRanges", [])]
    cidrs += [r["CidrIpv6"] for perm in sg["IpPermissions"] for r in perm.get("Ipv6Ranges", [])]
    # No connector here needs SSH: no address rule at all, no SSH port, no key pair, no IP lookup.
    assert cidrs == []
    assert not [perm for perm in sg["IpPermissions"] if perm.get("FromPort") == 22]
    self_ref = [perm for perm in sg["IpPermissions"] if perm.get("UserIdGroupPairs")]
    assert self_ref and self_ref[0]["UserIdGroupPairs"][0]["GroupId"] == sg["GroupId"]
    assert self_ref[0]["IpProtocol"] == "-1"  # Ray's 6379/8265/10001 and its random ports: group members only
    assert all(i["SecurityGroups"][0]["GroupId"] == sg["GroupId"] for i in insts)

    assert not p.ec2.describe_key_pairs(Filters=[{"Name": "tag:lhorch:run-id", "Values": [run]}])["KeyPairs"]
    assert all("KeyName" not in i for i in insts)
    rows = p.store.query("SELECT kind, state FROM cloud_resources WHERE run_id=?", (run,))
    assert {r["state"] for r in rows} == {"created"}
    assert {r["kind"] for r in rows} >= {"cluster", "instance", "security_group", "parameter"}

    p.release(cluster)


def test_instance_role_is_scoped_to_run_bucket_prefix(make_provider, run):
    p = make_provider(bucket="lhorch-artifacts", prefix="team/proj")
    cluster = p.acquire(request(run))
    (inst,) = lhorch_instances(p.ec2, run)
    assert inst["IamInstanceProfile"]["Arn"].endswith(p.instance_profile)
    doc = p.iam.get_role_policy(RoleName=p.instance_profile, PolicyName="lhorch-node")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    resources = [s["Resource"] for s in doc["Statement"]]
    assert "arn:aws:s3:::lhorch-artifacts/team/proj/*" in resources
    assert not any(r in ("arn:aws:s3:::*", "arn:aws:s3:::lhorch-artifacts/*") for r in resources)
    p.release(cluster)


def test_spot_offer_launches_spot(make_provider, run):
    p = make_provider()
    cluster = p.acquire(request(run, offer=offer(market="spot", price=0.03)))
    (inst,) = lhorch_instances(p.ec2, run)
    assert inst.get("InstanceLifecycle") == "spot"
    assert cluster.market == "spot"
    p.release(cluster)


def test_acquire_twice_is_idempotent(make_provider, run):
    p = make_provider()
    first = p.acquire(request(run, nodes=2))
    again = make_provider().acquire(request(run, nodes=2))  # a new process, same store and tags
    assert again.instance_ids == first.instance_ids
    assert len(lhorch_instances(p.ec2, run)) == 2
    p.release(again)


CRASH = textwrap.dedent("""
    import os, signal, sys, boto3
    from datetime import datetime, timedelta, timezone
    sys.path[:0] = [{root!r}, {tests!r}]
    from moto_server import StandInConnector
    from lhorch.orchestrator.state.store import Store
    from lhorch.orchestrator.core.plan import Offer
    from lhorch.providers.aws.provider import AwsProvider
    from lhorch.providers.aws.settings import AwsSettings
    from lhorch.providers.base import ClusterRequest
    settings = AwsSettings(versions={{"python": "3.11", "ray": "2.60.0", "lhorch": "0.1.0"}}, host="laptop")
    p = AwsProvider(boto3.Session(region_name="us-east-1"), store=Store({home!r}), settings=settings,
                    ip_lookup=lambda: "203.0.113.7", price_fallback=lambda r, s: [],
                    connector=StandInConnector(None), sleep=lambda s: None)
    # kill -9 the moment RunInstances has answered: no except/finally, no cleanup.
    p.ec2.meta.events.register("after-call.ec2.RunInstances", lambda **kw: os.kill(os.getpid(), signal.SIGKILL))
    offer = Offer(provider="aws", instance_type="m5.large", market="on-demand", vcpus=2, memory_gb=8, price_per_hour=0.096)
    p.acquire(ClusterRequest(run_id={run!r}, group="train", offer=offer, nodes=2,
                             expires_at=datetime.now(timezone.utc) + timedelta(hours=2)))
""")


def crash_after_run_instances(home: Path, run: str) -> None:
    code = CRASH.format(root=str(ROOT), tests=str(ROOT / "tests"), home=str(home), run=run)
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]


def test_crash_after_run_instances_then_acquire_reuses(make_provider, home, run):
    crash_after_run_instances(home, run)
    p = make_provider()
    rows = p.store.query("SELECT state FROM cloud_resources WHERE run_id=? AND kind='instance'", (run,))
    assert [r["state"] for r in rows] == ["intent"]  # recorded before the call, never confirmed
    assert len(lhorch_instances(p.ec2, run)) == 1
    cluster = p.acquire(request(run, nodes=2))
    assert len(lhorch_instances(p.ec2, run)) == 2  # the head reused, one worker added
    assert cluster.instance_ids[0] in {i["InstanceId"] for i in lhorch_instances(p.ec2, run)}
    p.release(cluster)


def test_gc_after_kill_9_deletes_everything(make_provider, home, run):
    crash_after_run_instances(home, run)
    p = make_provider()
    assert leftovers(p, run)["instances"]
    now = datetime.now(timezone.utc)
    planned = p.sweep(now, live_runs=set(), dry_run=True)
    assert any(d.startswith("instance ") for d in planned) and leftovers(p, run)["instances"]
    done = p.sweep(now, live_runs=set())
    assert sorted(done) == sorted(planned)
    assert leftovers(p, run) == {"instances": [], "security_groups": [], "key_pairs": [], "parameters": []}
    assert {r["state"] for r in p.store.query("SELECT state FROM cloud_resources WHERE run_id=?", (run,))} == {"released"}


def test_sweep_spares_live_runs_and_other_hosts_until_expiry(make_provider, run):
    p = make_provider()
    live, elsewhere = run + "-live", run + "-elsewhere"
    p.acquire(request(live))
    make_provider(host="other-laptop").acquire(request(elsewhere))
    now = datetime.now(timezone.utc)
    assert p.sweep(now, live_runs={live}) == []  # a live run here, and another machine's run
    later = now + timedelta(hours=3)  # past both clusters' expires-at
    gone = p.sweep(later, live_runs={live})
    assert any("expired" in d for d in gone)
    assert leftovers(p, live)["instances"] == [] and leftovers(p, elsewhere)["instances"] == []


def test_release_leaves_nothing_and_is_safe_twice(make_provider, stand_in_head, run):
    p = make_provider()
    cluster = p.acquire(request(run, nodes=2))
    p.release(cluster)
    assert leftovers(p, run) == {"instances": [], "security_groups": [], "key_pairs": [], "parameters": []}
    assert not (p.store.home / "keys" / f"lhorch-{run}-train.pem").exists()
    p.release(cluster)  # already gone: not an error
    states = {i["State"]["Name"] for r in p.ec2.describe_instances(InstanceIds=cluster.instance_ids)["Reservations"]
              for i in r["Instances"]}
    assert states == {"terminated"}  # terminated, never stopped
    assert {r["state"] for r in p.store.query("SELECT state FROM cloud_resources")} == {"released"}
    assert p.connector.closed[0] == cluster.instance_ids[0]  # the port-forward to the head is stopped


def test_capacity_error_falls_back_to_another_zone(make_provider, run):
    p = make_provider()
    calls = fail_run_instances(p, "InsufficientInstanceCapacity", lambda params, n: n == 1)
    cluster = p.acquire(request(run))
    (inst,) = lhorch_instances(p.ec2, run)
    assert len(calls) == 2 and calls[0]["SubnetId"] != calls[1]["SubnetId"]
    assert calls[0]["ClientToken"] != calls[1]["ClientToken"]  # a different launch, so a different token
    assert inst["InstanceType"] == "m5.large" and inst["SubnetId"] == calls[1]["SubnetId"]
    p.release(cluster)


def test_capacity_error_everywhere_falls_back_to_sibling_type(make_provider, run):
    p = make_provider()
    fail_run_instances(p, "InsufficientInstanceCapacity", lambda params, n: params["InstanceType"] == "m5.large")
    cluster = p.acquire(request(run, offer=offer(market="spot")))
    (inst,) = lhorch_instances(p.ec2, run)
    assert inst["InstanceType"] != "m5.large" and inst["InstanceType"].endswith(".large")
    assert cluster.instance_types == [inst["InstanceType"]]
    p.release(cluster)


def test_no_capacity_anywhere_raises_and_leaves_nothing(make_provider, run):
    p = make_provider()
    fail_run_instances(p, "InsufficientInstanceCapacity", lambda params, n: True)
    with pytest.raises(CapacityError) as info:
        p.acquire(request(run))
    assert info.value.hint
    assert leftovers(p, run)["instances"] == []


def test_throttling_backs_off_then_succeeds(make_provider, sleeps, run):
    p = make_provider()
    calls = fail_run_instances(p, "RequestLimitExceeded", lambda params, n: n <= 2)
    cluster = p.acquire(request(run))
    assert len(calls) == 3 and len(sleeps) >= 2
    assert len({c["ClientToken"] for c in calls}) == 1  # retries of one launch reuse its token
    assert len(lhorch_instances(p.ec2, run)) == 1
    p.release(cluster)


def test_throttling_is_bounded():
    slept: list[float] = []
    backoff = Backoff(sleep=slept.append, max_attempts=5, max_seconds=30)
    err = ClientError({"Error": {"Code": "Throttling", "Message": "slow down"}}, "X")

    def always():
        raise err

    with pytest.raises(ClientError):
        backoff.call(always)
    assert len(slept) == 4 and sum(slept) <= 30


def test_spot_interruption_is_reported(make_provider, run):
    p = make_provider()
    cluster = p.acquire(request(run, offer=offer(market="spot")))
    p.heartbeat(cluster)
    (inst,) = lhorch_instances(p.ec2, run)
    assert any(t["Key"] == "lhorch:heartbeat" for t in inst["Tags"])
    p.ec2.terminate_instances(InstanceIds=cluster.instance_ids)  # AWS reclaims the spot instance
    with pytest.raises(ClusterUnreachable):
        p.heartbeat(cluster)
    assert all(c.run_id != run for c in p.clusters())
    p.release(cluster)


def test_heartbeat_moves_the_tag_forward(make_provider, run):
    clock = [datetime(2030, 1, 1, tzinfo=timezone.utc)]
    p = make_provider(clock=lambda: clock[0])
    cluster = p.acquire(ClusterRequest(run_id=run, group="g", offer=offer(), expires_at=clock[0] + timedelta(hours=1)))
    clock[0] += timedelta(minutes=5)
    p.heartbeat(cluster)
    (inst,) = lhorch_instances(p.ec2, run)
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:heartbeat"] == "2030-01-01T00:05:00+00:00"
    p.release(cluster)


def test_clusters_lists_what_is_up_with_price(make_provider, run):
    p = make_provider()
    a = p.acquire(request(run, nodes=2))
    listed = {c.run_id: c for c in p.clusters()}
    assert listed[run].price_per_hour == pytest.approx(0.192)
    assert listed[run].instance_ids == a.instance_ids
    p.release(a)
    assert run not in {c.run_id for c in p.clusters()}


def test_cli_clusters_down_gc(make_provider, home, run):
    from lhorch.orchestrator.cli import main

    p = make_provider(host=socket.gethostname())  # the CLI judges this host's runs
    p.acquire(request(run=run))
    runner = CliRunner()
    out = runner.invoke(main, ["clusters", "--json"], obj={})
    assert out.exit_code == 0, out.output
    listed = json.loads(out.output)
    (mine,) = [c for c in listed if c["run_id"] == run]
    assert mine["price_per_hour"] == pytest.approx(0.096) and "token" not in mine

    out = runner.invoke(main, ["gc", "--dry-run"], obj={})
    assert out.exit_code == 0 and run in out.output and "would delete" in out.output
    assert leftovers(p, run)["instances"]

    out = runner.invoke(main, ["down", run], obj={})
    assert out.exit_code == 0 and f"released lhorch-{run}-train" in out.output, out.output
    assert out.exit_code == 0, out.output
    assert leftovers(p, run) == {"instances": [], "security_groups": [], "key_pairs": [], "parameters": []}
    out = runner.invoke(main, ["clusters"], obj={})
    assert out.exit_code == 0 and run not in out.output
