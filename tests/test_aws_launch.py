"""Launch and health on moto (issue 13): a client token per acquisition, check-ins from the moment
the first instance exists, a failed bootstrap reported by the node ending the wait at once, the
connectors (no key pair, SSH rule or IP lookup unless one needs it) and the cloud fields of the
pipeline file reaching RunInstances."""

from __future__ import annotations

import threading
import time

import pytest
from moto_server import StandInConnector, aws, moto_endpoint, stand_in_head  # noqa: F401 - fixtures
from pydantic import SecretStr
from test_aws_provider import lhorch_instances, make_provider, request, run, sleeps  # noqa: F401 - fixtures

from lhorch.orchestrator.core.errors import CloudError
from lhorch.orchestrator.core.spec import Cloud
from lhorch.providers.aws import records
from lhorch.providers.aws.connect import DirectConnector, HeadNode, SshTunnel, alive_nodes
from lhorch.providers.aws.settings import AwsSettings


def test_each_acquisition_gets_its_own_client_tokens(make_provider, run):
    p = make_provider()
    calls: list[str] = []
    p.ec2.meta.events.register("before-parameter-build.ec2.RunInstances",
                               lambda params, **_: calls.append(params["ClientToken"]))
    first = p.acquire(request(run))
    p.release(first)
    second = p.acquire(request(run))  # the same (run, group) again, as after a spot loss or on a resume
    p.release(second)
    assert len(calls) == 2 and calls[0] != calls[1], calls


def test_an_open_acquisition_keeps_its_launch_id_until_released(make_provider, run):
    """While the cluster's intent row is open (a crashed process's successor resumes it), acquire uses
    the same launch id, so a RunInstances EC2 already answered is not run again; once released, the
    next acquisition is a new one."""
    p = make_provider()
    cluster = p.acquire(request(run))
    (row,) = [r for r in records.open_rows(p.store, run) if r["kind"] == "cluster"]
    launch_id = row["details"]["launch_id"]
    assert make_provider()._launch_id(run, cluster.name) == launch_id  # another process, same store
    p.release(cluster)
    assert p._launch_id(run, cluster.name) != launch_id


def test_a_failed_bootstrap_ends_the_wait_with_its_reason(make_provider, run):
    p = make_provider(ready_timeout=600, collaborators={"probe": lambda address, token: False,
                                                       "sleep": lambda s: time.sleep(0.05)})

    def node_reports_failure():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            insts = lhorch_instances(p.ec2, run)
            if insts:
                # What the node's bootstrap does with its role when a step fails.
                p.ec2.create_tags(Resources=[insts[0]["InstanceId"]],
                                  Tags=[{"Key": "lhorch:boot", "Value": "failed:lhorch wheel sha256 mismatch"}])
                return
            time.sleep(0.05)

    reporter = threading.Thread(target=node_reports_failure)
    reporter.start()
    started = time.monotonic()
    with pytest.raises(CloudError, match="failed to boot: lhorch wheel sha256 mismatch") as info:
        p.acquire(request(run))
    reporter.join()
    assert time.monotonic() - started < 30  # not the 600 s ready timeout
    assert info.value.exit_code == 5
    assert lhorch_instances(p.ec2, run) == []  # and the cluster was released


def test_heartbeats_start_while_the_head_is_still_booting(make_provider, run):
    """A slow start must not trip the node's dead-man switch: check-ins go out while acquire waits."""
    answers = iter([False] * 5 + [True] * 100)
    beats: list[str] = []
    p = make_provider(collaborators={"probe": lambda address, token: next(answers)})
    p.ec2.meta.events.register("before-parameter-build.ec2.CreateTags", lambda params, **_: beats.extend(
        t["Key"] for t in params["Tags"]))
    clock = iter(range(0, 10_000, 30))  # each look at the clock: 30 s later
    p.ctx.monotonic = lambda: float(next(clock))
    p.launcher.ctx.monotonic = p.ctx.monotonic
    cluster = p.acquire(request(run, idle_minutes=2))
    p.release(cluster)
    assert beats.count("lhorch:heartbeat") >= 2, beats


def test_direct_connector_reaches_the_private_address():
    head = HeadNode(cluster="c", instance_id="i-1", region="us-east-1", private_ip="10.0.3.4", public_ip=None,
                    token=SecretStr("t"))
    address, token = DirectConnector().connect(head)
    assert address == "http://10.0.3.4:8265" and token.get_secret_value() == "t"


def test_no_key_pair_ssh_rule_or_ip_lookup_unless_the_connector_needs_ssh(make_provider, run):
    def no_lookup():
        raise AssertionError("looked up the caller's IP although no connector needs it")

    p = make_provider(collaborators={"ip_lookup": no_lookup})
    p.release(p.acquire(request(run)))
    assert not p.ec2.describe_key_pairs(Filters=[{"Name": "tag:lhorch:run-id", "Values": [run]}])["KeyPairs"]

    ssh = make_provider(collaborators={"connector": SshTunnel(), "ip_lookup": lambda: "203.0.113.9",
                                       "probe": lambda a, t: True})
    ssh.launcher.connector = StandInForSsh()
    cluster = ssh.acquire(request(run + "-ssh"))
    try:
        assert ssh.ec2.describe_key_pairs(Filters=[{"Name": "tag:lhorch:run-id", "Values": [run + "-ssh"]}])["KeyPairs"]
        (sg,) = ssh.ec2.describe_security_groups(Filters=[{"Name": "tag:lhorch:run-id", "Values": [run + "-ssh"]}])[
            "SecurityGroups"]
        assert [r["CidrIp"] for perm in sg["IpPermissions"] for r in perm.get("IpRanges", [])] == ["203.0.113.9/32"]
    finally:
        ssh.release(cluster)


class StandInForSsh:
    needs_ssh = True

    def connect(self, head):
        return "http://127.0.0.1:1", head.token

    def close(self, head):
        pass


def test_cloud_fields_reach_the_launch(make_provider, run):
    cloud = Cloud(provider="aws", connector="direct", ami="ami-12345678", subnet_ids=["subnet-1"],
                  security_group_ids=["sg-1"])
    settings = AwsSettings.from_cloud(cloud)
    assert (settings.connector, settings.ami, settings.subnet_ids, settings.security_group_ids) == (
        "direct", "ami-12345678", ["subnet-1"], ["sg-1"])
    p = make_provider()
    vpc = p.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]["VpcId"]
    subnet = p.ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"][-1]
    mine = p.ec2.create_security_group(GroupName=f"{run}-vpn", Description="vpn", VpcId=vpc)["GroupId"]
    image = p.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    p = make_provider(ami=image, subnet_ids=[subnet["SubnetId"]], security_group_ids=[mine])
    cluster = p.acquire(request(run))
    try:
        (inst,) = lhorch_instances(p.ec2, run)
        assert inst["ImageId"] == image and inst["SubnetId"] == subnet["SubnetId"]
        assert mine in {g["GroupId"] for g in inst["SecurityGroups"]} and len(inst["SecurityGroups"]) == 2
    finally:
        p.release(cluster)
        p.ec2.delete_security_group(GroupId=mine)


def test_a_multi_node_cluster_is_ready_when_ray_reports_every_node(make_provider, run):
    """The head answering is not enough for two nodes: acquire waits until Ray counts both alive
    (the worker has joined), and says how many joined when they never do."""
    joined = iter([1, 1, 1, 2])
    p = make_provider(collaborators={"probe": lambda a, t: True, "node_count": lambda a, t: next(joined)})
    cluster = p.acquire(request(run, nodes=2))
    try:
        assert len(cluster.instance_ids) == 2
        assert next(joined, "drained") == "drained"  # asked until both nodes were there
    finally:
        p.release(cluster)

    lonely = make_provider(ready_timeout=0.2, collaborators={"probe": lambda a, t: True,
                                                            "node_count": lambda a, t: 1,
                                                            "sleep": lambda s: time.sleep(0.02)})
    with pytest.raises(CloudError, match="only 1 of its 2 nodes joined"):
        lonely.acquire(request(run + "-lonely", nodes=2))
    assert lhorch_instances(lonely.ec2, run + "-lonely") == []


def test_alive_nodes_reads_rays_state_api(stand_in_head):
    token = SecretStr(stand_in_head.token)
    assert alive_nodes(stand_in_head.address, token) == stand_in_head.alive
    assert alive_nodes(stand_in_head.address, SecretStr("wrong")) == 0  # refused: nobody counted
    assert alive_nodes("http://127.0.0.1:9", token, timeout=1) == 0  # nothing listening
