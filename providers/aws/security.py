"""What guards a cluster: its security group, its key pair and the nodes' instance role.

The security group has no rule open to 0.0.0.0/0. SSH (22) is open to the caller's own public IP
(/32) only, for the SSH-tunnel connector; everything else (Ray's GCS 6379, dashboard/Jobs 8265,
client 10001, and the object-manager/worker ports Ray picks at random) is open only to members of
the same group (a self-reference). lhorch reaches the head through SSM or SSH port forwarding to
127.0.0.1, never through an open port.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from lhorch.providers.aws.retry import error_code

RAY_PORTS = (6379, 8265, 10001)

IpLookup = Callable[[], str]


def public_ip_from_checkip() -> str:
    """Production IP lookup (AWS's own service). Tests inject a fixed value instead."""
    with urllib.request.urlopen("https://checkip.amazonaws.com", timeout=10) as resp:  # noqa: S310
        return resp.read().decode().strip()


def tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def ensure_security_group(ec2: Any, name: str, vpc_id: str, tags: dict[str, str], caller_ip: str | None) -> str:
    """Find or create the cluster's group (by name within the VPC) and make its rules exactly ours."""
    found = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]},
                                                  {"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
    if found:
        group_id = found[0]["GroupId"]
    else:
        try:
            group_id = ec2.create_security_group(
                GroupName=name, Description=f"lhorch cluster {name}", VpcId=vpc_id,
                TagSpecifications=[{"ResourceType": "security-group", "Tags": tag_list(tags)}],
            )["GroupId"]
        except ClientError as exc:
            if error_code(exc) != "InvalidGroup.Duplicate":
                raise
            return ensure_security_group(ec2, name, vpc_id, tags, caller_ip)
    wanted: list[dict[str, Any]] = [
        # All traffic from the group itself: Ray's fixed ports plus the random worker ports.
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "Ray within the cluster"}]},
    ]
    if caller_ip:
        wanted.append({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
                       "IpRanges": [{"CidrIp": f"{caller_ip}/32", "Description": "lhorch caller (SSH tunnel)"}]})
    for perm in wanted:
        try:
            ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=[perm])
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise
    return group_id


def delete_security_group(ec2: Any, group_id: str) -> bool:
    """Delete; False if it is still in use (DependencyViolation: instances not gone yet)."""
    try:
        ec2.delete_security_group(GroupId=group_id)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("InvalidGroup.NotFound", "InvalidGroupId.NotFound"):
            return True
        if code == "DependencyViolation":
            return False
        raise
    return True


def key_path(home: Path, key_name: str) -> Path:
    return home / "keys" / f"{key_name}.pem"


def ensure_key_pair(ec2: Any, key_name: str, tags: dict[str, str], home: Path) -> str:
    """Create the cluster's key pair, keeping the private key under $LHORCH_HOME/keys (0600)."""
    path = key_path(home, key_name)
    existing = ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [key_name]}])["KeyPairs"]
    if existing and path.exists():
        return existing[0]["KeyPairId"]
    if existing:  # the private half is lost (another machine, or a crash before writing it): replace
        ec2.delete_key_pair(KeyName=key_name)
    created = ec2.create_key_pair(KeyName=key_name, KeyType="ed25519",
                                  TagSpecifications=[{"ResourceType": "key-pair", "Tags": tag_list(tags)}])
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(created["KeyMaterial"])
    return created["KeyPairId"]


def delete_key_pair(ec2: Any, key_name: str, home: Path) -> None:
    try:
        ec2.delete_key_pair(KeyName=key_name)  # deleting a missing key pair succeeds
    except ClientError as exc:
        if error_code(exc) != "InvalidKeyPair.NotFound":
            raise
    key_path(home, key_name).unlink(missing_ok=True)


def node_policy(region: str, account: str, bucket: str | None, prefix: str) -> dict[str, Any]:
    """The nodes' permissions: read their own token parameters, use SSM port forwarding, and read/
    write the run's artifacts under ``<bucket>/<prefix>/`` only."""
    statements: list[dict[str, Any]] = [
        {"Sid": "RayToken", "Effect": "Allow", "Action": ["ssm:GetParameter"],
         "Resource": f"arn:aws:ssm:{region}:{account}:parameter/lhorch/*"},
        {"Sid": "SsmSessions", "Effect": "Allow",
         "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                    "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                    "ssmmessages:OpenDataChannel"], "Resource": "*"},
    ]
    if bucket:
        statements += [
            {"Sid": "Artifacts", "Effect": "Allow",
             "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
             "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
            {"Sid": "ArtifactsList", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
             "Resource": f"arn:aws:s3:::{bucket}", "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def ensure_instance_profile(iam: Any, name: str, policy: dict[str, Any], tags: dict[str, str]) -> str:
    """Create (or bring up to date) the role + instance profile ``name``; return the profile name."""
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Path="/lhorch/",
                        Description="lhorch Ray nodes", Tags=tag_list(tags))
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
    iam.put_role_policy(RoleName=name, PolicyName="lhorch-node", PolicyDocument=json.dumps(policy))
    try:
        iam.create_instance_profile(InstanceProfileName=name, Path="/lhorch/", Tags=tag_list(tags))
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
    roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    if not any(r["RoleName"] == name for r in roles):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name
