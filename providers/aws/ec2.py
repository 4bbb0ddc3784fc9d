"""EC2 lifecycle: AMI lookup, launching one node with every safety setting, finding lhorch's
instances by tag, terminating and waiting. No policy here beyond "try the next candidate when a
zone has no capacity"; the provider decides which candidates to offer.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from lhorch.orchestrator.core.errors import CapacityError, CloudError
from lhorch.providers.aws.names import (  # noqa: F401  (the tag names, re-exported where they were first defined)
    TAG_EXPIRES,
    TAG_GROUP,
    TAG_HEARTBEAT,
    TAG_HOST,
    TAG_INSTALL,
    TAG_MARKET,
    TAG_NODE,
    TAG_OWNER,
    TAG_PRICE,
    TAG_ROLE,
    TAG_RUN,
)
from lhorch.providers.aws.retry import THROTTLING_CODES, Backoff, error_code
from lhorch.providers.aws.security import tag_list

# Every state in which an instance (or its volumes) can still cost money.
BILLABLE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
UP_STATES = ("pending", "running")
ALL_STATES = ("pending", "running", "shutting-down", "terminated", "stopping", "stopped")

# No capacity for this type/market in this zone right now: try another zone, type or market.
CAPACITY_CODES = frozenset({
    "InsufficientInstanceCapacity", "InsufficientCapacity", "InsufficientHostCapacity",
    "InsufficientReservedInstanceCapacity", "Unsupported", "SpotMaxPriceTooLow",
    "MaxSpotInstanceCountExceeded", "InsufficientFreeAddressesInSubnet",
})

# Same size class, interchangeable for lhorch's jobs, most preferred first.
SIBLING_FAMILIES: tuple[tuple[str, ...], ...] = (
    ("g6", "g5", "g6e", "g4dn"), ("p5", "p4d", "p4de"), ("g5g", "g4dn"),
    ("c7i", "c6i", "c6a", "c5", "c7a"), ("m7i", "m6i", "m6a", "m5", "m7a"), ("r7i", "r6i", "r6a", "r5"),
    ("c7g", "c6g"), ("m7g", "m6g"), ("t3", "t3a", "t2"),
)

AMI_PARAMETERS = {
    # (arch, gpu) → SSM public parameter
    ("x86_64", True): "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
    ("arm64", True): "/aws/service/deeplearning/ami/arm64/base-oss-nvidia-driver-gpu-amazon-linux-2023/latest/ami-id",
    ("x86_64", False): "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
    ("arm64", False): "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
}
AMI_NAME_PATTERNS = {
    True: ["Deep Learning Base OSS Nvidia Driver GPU AMI (Amazon Linux 2023)*", "Deep Learning*Amazon Linux*"],
    False: ["al2023-ami-2023*-kernel-*"],
}


def sibling_types(instance_type: str) -> list[str]:
    family, _, size = instance_type.partition(".")
    for group in SIBLING_FAMILIES:
        if family in group:
            return [f"{f}.{size}" for f in group if f != family]
    return []


def client_token(run_id: str, group: str, index: int, candidate: int, launch_id: str = "") -> str:
    """Stable per (run, group, node, candidate) within one acquisition (``launch_id``): a retried
    RunInstances with it never starts a second instance, and a later acquisition of the same group
    (after a spot loss, on a resume) gets a token of its own, since EC2 would answer a reused one with
    the old, terminated instance or IdempotentParameterMismatch. (moto does not enforce client tokens,
    so the provider also looks for tagged instances and keeps an intent row; the token is the
    cloud-side half of the same guarantee.)"""
    digest = hashlib.sha256(f"{run_id}\0{group}\0{index}\0{launch_id}".encode()).hexdigest()[:32]
    return f"lhorch-{digest}-{candidate}"


def find_ami(ssm: Any, ec2: Any, arch: str, gpu: bool) -> tuple[str, str]:
    """(image id, root device name): the SSM public parameter, else the newest Amazon-owned image
    matching the name pattern."""
    image_id = None
    try:
        image_id = ssm.get_parameter(Name=AMI_PARAMETERS[(arch, gpu)])["Parameter"]["Value"]
    except ClientError as exc:
        if error_code(exc) not in ("ParameterNotFound", "AccessDeniedException"):
            raise
    if image_id:
        images = ec2.describe_images(ImageIds=[image_id])["Images"]
    else:
        images = []
        for pattern in AMI_NAME_PATTERNS[gpu]:
            images = ec2.describe_images(Owners=["amazon"], Filters=[
                {"Name": "name", "Values": [pattern]}, {"Name": "architecture", "Values": [arch]},
                {"Name": "state", "Values": ["available"]}])["Images"]
            if images:
                break
    if not images:
        raise CloudError(f"no {'GPU ' if gpu else ''}Amazon Linux 2023 image for {arch} found",
                         hint="Set cloud.ami in the pipeline file to an image id in this region.")
    best = max(images, key=lambda i: i.get("CreationDate", ""))
    return best["ImageId"], best.get("RootDeviceName") or "/dev/xvda"


def instance_facts(ec2: Any, types: Iterable[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    types = sorted(set(types))
    for start in range(0, len(types), 100):
        try:
            resp = ec2.describe_instance_types(InstanceTypes=types[start:start + 100])
        except ClientError as exc:
            if error_code(exc) != "InvalidInstanceType":
                raise
            continue
        for it in resp["InstanceTypes"]:
            gpus = it.get("GpuInfo", {}).get("Gpus", [])
            out[it["InstanceType"]] = {
                "vcpus": it["VCpuInfo"]["DefaultVCpus"],
                "memory_gb": it["MemoryInfo"]["SizeInMiB"] / 1024,
                "gpus": sum(g.get("Count", 0) for g in gpus),
                "gpu_model": gpus[0]["Name"] if gpus else None,
                "gpu_memory_gb": (gpus[0].get("MemoryInfo", {}).get("SizeInMiB", 0) / 1024) if gpus else 0.0,
                "arch": "arm64" if "arm64" in it.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
                        else "x86_64",
            }
    return out


def default_subnets(ec2: Any, subnet_ids: list[str] | None = None) -> list[dict[str, str]]:
    """Subnets to launch in, one per zone: the given ones, else the default VPC's."""
    if subnet_ids:
        subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    else:
        subnets = ec2.describe_subnets(Filters=[{"Name": "default-for-az", "Values": ["true"]}])["Subnets"]
    if not subnets:
        raise CloudError("no subnet to launch in (this region has no default VPC)",
                         hint="Set cloud.subnet_ids in the pipeline file.")
    return [{"id": s["SubnetId"], "zone": s["AvailabilityZone"], "vpc": s["VpcId"]}
            for s in sorted(subnets, key=lambda s: s["AvailabilityZone"])]


def instances(ec2: Any, filters: list[dict[str, Any]], states: Iterable[str] = BILLABLE_STATES) -> list[dict[str, Any]]:
    filters = [*filters, {"Name": "instance-state-name", "Values": list(states)}]
    out = []
    for page in ec2.get_paginator("describe_instances").paginate(Filters=filters):
        for reservation in page["Reservations"]:
            out.extend(reservation["Instances"])
    return out


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def cluster_instances(ec2: Any, run_id: str, group: str,
                      states: Iterable[str] = BILLABLE_STATES) -> list[dict[str, Any]]:
    return instances(ec2, [{"Name": f"tag:{TAG_RUN}", "Values": [run_id]},
                           {"Name": f"tag:{TAG_GROUP}", "Values": [group]}], states)


@dataclass(frozen=True)
class Candidate:
    instance_type: str
    market: str  # on-demand | spot
    subnet: dict[str, str]


def run_instance(ec2: Any, *, candidate: Candidate, image_id: str, root_device: str, security_groups: list[str],
                 key_name: str | None, user_data: str, instance_profile: str | None, tags: dict[str, str],
                 token: str, volume_gb: int, backoff: Backoff) -> dict[str, Any]:
    """One node with every safety setting: IMDSv2 only (hop limit 1, tags readable by the node for
    the dead-man switch), shutdown terminates, volumes deleted on termination, everything tagged."""
    kwargs: dict[str, Any] = {
        "ImageId": image_id, "InstanceType": candidate.instance_type, "MinCount": 1, "MaxCount": 1,
        "ClientToken": token, "SubnetId": candidate.subnet["id"], "SecurityGroupIds": security_groups,
        "UserData": user_data,  # botocore base64-encodes it
        "InstanceInitiatedShutdownBehavior": "terminate",
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1, "HttpEndpoint": "enabled",
                            "InstanceMetadataTags": "enabled"},
        "BlockDeviceMappings": [{"DeviceName": root_device, "Ebs": {
            "VolumeSize": volume_gb, "VolumeType": "gp3", "DeleteOnTermination": True, "Encrypted": True}}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list(tags)},
                              {"ResourceType": "volume", "Tags": tag_list(tags)}],
    }
    if key_name:
        kwargs["KeyName"] = key_name
    if instance_profile:
        kwargs["IamInstanceProfile"] = {"Name": instance_profile}
    if candidate.market == "spot":
        kwargs["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": {
            "SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}
    for attempt in range(6):
        try:
            return backoff.call(lambda: ec2.run_instances(**kwargs))["Instances"][0]
        except ClientError as exc:
            # A just-created instance profile takes a few seconds to be usable (IAM is eventually consistent).
            if (error_code(exc) == "InvalidParameterValue" and "iamInstanceProfile" in str(exc)
                    and attempt < 5):
                backoff.sleep(2.0 * (attempt + 1))
                continue
            raise
    raise AssertionError("unreachable")


def launch_first_fit(candidates: list[Candidate], launch: Callable[[Candidate, int], dict[str, Any]]
                     ) -> tuple[dict[str, Any], Candidate]:
    """Try candidates in order; a capacity error moves to the next one. ``launch`` receives the
    candidate and its index (part of the client token)."""
    errors: list[str] = []
    for index, candidate in enumerate(candidates):
        try:
            return launch(candidate, index), candidate
        except ClientError as exc:
            code = error_code(exc)
            if code in CAPACITY_CODES:
                errors.append(f"{candidate.instance_type}/{candidate.market} in {candidate.subnet['zone']}: {code}")
                continue
            if code == "VcpuLimitExceeded":
                raise CloudError(f"vCPU quota exceeded for {candidate.instance_type}: {exc}",
                                 hint="Ask AWS for a higher quota (Service Quotas → EC2) "
                                      "or use a smaller instance type.") from exc
            if code in THROTTLING_CODES:
                raise  # aws_errors() says so, with its hint
            raise CloudError(f"could not launch {candidate.instance_type}: {exc}") from exc
    raise CapacityError("no capacity for any candidate: " + "; ".join(errors),
                        hint="Try again later, another region (cloud.region), or allow other instance types.")


def terminate(ec2: Any, ids: list[str], backoff: Backoff) -> None:
    """Terminate (never stop). Ids already gone are not an error."""
    remaining = list(ids)
    while remaining:
        try:
            backoff.call(lambda ids=remaining: ec2.terminate_instances(InstanceIds=ids))
            return
        except ClientError as exc:
            if error_code(exc) != "InvalidInstanceID.NotFound":
                raise
            missing = {i for i in remaining if i in str(exc)}
            if not missing:
                return
            remaining = [i for i in remaining if i not in missing]


def wait_until(ec2: Any, ids: list[str], done: Callable[[str | None], bool], timeout: float,
               sleep: Callable[[float], None], clock: Callable[[], float] = time.monotonic,
               interval: float = 5.0, on_poll: Callable[[dict[str, dict[str, Any]]], None] | None = None
               ) -> dict[str, dict[str, Any]]:
    """Poll until ``done(state)`` for every id (state None: the instance no longer exists);
    ``on_poll`` sees every poll's instances first (it may raise to end the wait)."""
    deadline = clock() + timeout
    while True:
        found = {i["InstanceId"]: i for i in instances(ec2, [{"Name": "instance-id", "Values": ids}],
                                                      states=ALL_STATES)}
        if on_poll is not None:
            on_poll(found)
        if all(done(found[i]["State"]["Name"] if i in found else None) for i in ids):
            return found
        if clock() >= deadline:
            states = {i: (found[i]["State"]["Name"] if i in found else "gone") for i in ids}
            raise CloudError(f"instances did not reach the expected state in {timeout:.0f}s: {states}")
        sleep(interval)
