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

from lhorch.orchestrator.core.errors import CloudError
from lhorch.providers.aws.names import cluster_path
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


BOUNDARY_NAME = "lhorch-node-boundary"
IAM_PATH = "/lhorch/"


def boundary_arn(account: str) -> str:
    """The permissions boundary every node role is created under (made once by `lhorch cloud setup`)."""
    return f"arn:aws:iam::{account}:policy{IAM_PATH}{BOUNDARY_NAME}"


def boundary_policy() -> dict[str, Any]:
    """The most any node role can ever be allowed, whatever inline policy it is given: lhorch's own
    parameters and buckets, and SSM sessions. With it, the right to create node roles (which lhorch's
    users have) cannot be turned into more rights than these (issue 15)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LhorchParameters", "Effect": "Allow", "Action": "ssm:GetParameter",
         "Resource": "arn:aws:ssm:*:*:parameter/lhorch/*"},
        {"Sid": "LhorchArtifacts", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": "arn:aws:s3:::lhorch-*/*"},
        {"Sid": "LhorchArtifactsList", "Effect": "Allow", "Action": ["s3:ListBucket", "s3:ListBucketMultipartUploads"],
         "Resource": "arn:aws:s3:::lhorch-*"},
        {"Sid": "SsmSessions", "Effect": "Allow",
         "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                    "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                    "ssmmessages:OpenDataChannel"], "Resource": "*"},
        {"Sid": "BootStatusTag", "Effect": "Allow", "Action": "ec2:CreateTags",
         "Resource": "arn:aws:ec2:*:*:instance/*",
         "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["lhorch:boot"]},
                       "StringLike": {"aws:ResourceTag/lhorch:run-id": "*"}}},
    ]}


def node_policy(region: str, account: str, bucket: str | None, prefix: str, run_id: str = "*",
                group: str = "*") -> dict[str, Any]:
    """One cluster's nodes: read its own token and secrets parameters (``/lhorch/<run>/<group>/``),
    use SSM port forwarding, report boot progress in the ``lhorch:boot`` tag of its own cluster's
    instances (that tag alone), read artifacts under ``<bucket>/<prefix>/`` (lhorch's wheel among
    them) and write only under its own run's ``<prefix>/runs/<run>/``."""
    params = f"arn:aws:ssm:{region}:{account}:parameter{cluster_path(run_id, group)}/*"
    statements: list[dict[str, Any]] = [
        {"Sid": "OwnClusterParameters", "Effect": "Allow", "Action": ["ssm:GetParameter"], "Resource": params},
        {"Sid": "BootStatusTag", "Effect": "Allow", "Action": ["ec2:CreateTags"],
         "Resource": f"arn:aws:ec2:{region}:{account}:instance/*",
         "Condition": {"ForAllValues:StringEquals": {"aws:TagKeys": ["lhorch:boot"]},
                       "StringEquals": {"aws:ResourceTag/lhorch:run-id": run_id,
                                        "aws:ResourceTag/lhorch:group": group}}},
        {"Sid": "SsmSessions", "Effect": "Allow",
         "Action": ["ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                    "ssmmessages:CreateDataChannel", "ssmmessages:OpenControlChannel",
                    "ssmmessages:OpenDataChannel"], "Resource": "*"},
    ]
    if bucket:
        statements += [
            {"Sid": "Artifacts", "Effect": "Allow", "Action": ["s3:GetObject"],
             "Resource": f"arn:aws:s3:::{bucket}/{prefix}/*"},
            {"Sid": "OwnRunArtifacts", "Effect": "Allow",
             "Action": ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
             "Resource": f"arn:aws:s3:::{bucket}/{prefix}/runs/{run_id}/*"},
            {"Sid": "ArtifactsList", "Effect": "Allow", "Action": ["s3:ListBucket"],
             "Resource": f"arn:aws:s3:::{bucket}", "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/*"]}}},
            # ListBucketMultipartUploads has no s3:prefix condition key: it is scoped to the bucket only.
            {"Sid": "ArtifactUploadsList", "Effect": "Allow", "Action": ["s3:ListBucketMultipartUploads"],
             "Resource": f"arn:aws:s3:::{bucket}"},
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def ensure_instance_profile(iam: Any, name: str, policy: dict[str, Any], tags: dict[str, str],
                            boundary: str | None = None) -> str:
    """Create (or bring up to date) the role + instance profile ``name`` under the permissions
    boundary; return the profile name."""
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"},
                                                     "Action": "sts:AssumeRole"}]}
    extra = {"PermissionsBoundary": boundary} if boundary else {}
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust), Path=IAM_PATH,
                        Description="lhorch Ray nodes", Tags=tag_list(tags), **extra)
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity" and boundary:
            raise CloudError(f"the permissions boundary {boundary} does not exist",
                             hint="Ask an administrator to run `lhorch cloud setup` once for this account.") from exc
        if error_code(exc) != "EntityAlreadyExists":
            raise
    iam.put_role_policy(RoleName=name, PolicyName="lhorch-node", PolicyDocument=json.dumps(policy))
    try:
        iam.create_instance_profile(InstanceProfileName=name, Path=IAM_PATH, Tags=tag_list(tags))
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
    roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    if not any(r["RoleName"] == name for r in roles):
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def delete_instance_profile(iam: Any, name: str) -> None:
    """Delete the cluster's role and instance profile; what is already gone is fine."""
    steps = [
        lambda: iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=name),
        lambda: iam.delete_instance_profile(InstanceProfileName=name),
        lambda: iam.delete_role_policy(RoleName=name, PolicyName="lhorch-node"),
        lambda: iam.delete_role(RoleName=name),
    ]
    for step in steps:
        try:
            step()
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise


def ensure_boundary(iam: Any, account: str) -> tuple[str, bool]:
    """Create the node roles' permissions boundary (an administrator's one-time step, `lhorch cloud
    setup`); return its ARN and whether it was created now. An existing one is brought up to date."""
    arn, document = boundary_arn(account), json.dumps(boundary_policy())
    try:
        iam.create_policy(PolicyName=BOUNDARY_NAME, Path=IAM_PATH, PolicyDocument=document,
                          Description="lhorch: the most any lhorch node role may do")
        return arn, True
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    for old in [v for v in versions if not v["IsDefaultVersion"]][:max(0, len(versions) - 4)]:
        iam.delete_policy_version(PolicyArn=arn, VersionId=old["VersionId"])  # at most 5 versions are kept
    iam.create_policy_version(PolicyArn=arn, PolicyDocument=document, SetAsDefault=True)
    return arn, False
