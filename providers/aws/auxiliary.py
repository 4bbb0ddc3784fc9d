"""What a cluster needs besides its nodes: the Ray token parameter, the security group, the key
pair (only for a connector that needs SSH), the node role, the artifact bucket, and the software the
nodes install (lhorch's own wheel, uploaded to the bucket, and the pins; see ``shipping``).

Each ``ensure`` is idempotent (find, else create) and the per-cluster ones write their intent row
before the AWS call and mark it created after, so a crash in between leaves a row ``gc`` follows.
The bucket is shared by every run of an account (region, bucket/prefix), outlives runs on purpose
and is never swept. The node role is per cluster, so a node can read only its own cluster's token and
secrets and write only under its own run's prefix; it is created under the permissions boundary that
`lhorch cloud setup` made once, and deleted with the cluster.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from botocore.exceptions import ClientError
from pydantic import SecretStr

from lhorch.orchestrator.core.cluster import ClusterRequest
from lhorch.orchestrator.core.errors import CloudError
from lhorch.providers.aws import records, security, shipping
from lhorch.providers.aws.bootstrap import NodeSoftware
from lhorch.providers.aws.context import AwsContext
from lhorch.providers.aws.ec2 import TAG_INSTALL
from lhorch.providers.aws.names import node_role_name, token_parameter
from lhorch.providers.aws.retry import error_code
from lhorch.providers.aws.s3 import S3ArtifactStore, default_bucket_name, ensure_bucket


class Auxiliary:
    """The auxiliary resources of the clusters of one provider. With ``ssh`` (a connector that
    needs it) a key pair is made and ``ip_lookup`` finds the caller's public IP for the SSH rule;
    without, neither happens."""

    def __init__(self, ctx: AwsContext, ip_lookup: Callable[[], str] | None, ssh: bool = False):
        self.ctx, self.ip_lookup, self.ssh = ctx, ip_lookup, ssh
        self._software: NodeSoftware | None = None
        self.bucket_name: str | None = ctx.settings.bucket
        self.instance_profile: str | None = ctx.settings.instance_profile  # the last one used
        self._bucket_ready = False

    def _intent(self, request: ClusterRequest, kind: str, name: str) -> None:
        records.record_intent(self.ctx.store, request.run_id, kind, name, details=self.ctx.row_details(request))

    def token(self, request: ClusterRequest, tags: dict[str, str]) -> SecretStr:
        """The cluster's Ray token, kept as a SecureString parameter the nodes read at boot."""
        store, ssm = self.ctx.store, self.ctx.clients.ssm
        param = token_parameter(request.run_id, request.group)
        self._intent(request, "parameter", param)
        try:
            value = ssm.get_parameter(Name=param, WithDecryption=True)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
            value = secrets.token_hex(32)
            try:
                ssm.put_parameter(Name=param, Value=value, Type="SecureString", Tags=security.tag_list(tags),
                                  Description="lhorch Ray cluster token")
            except ClientError as race:
                if error_code(race) != "ParameterAlreadyExists":
                    raise
                # Another acquire of this cluster made it between our read and write: use theirs.
                value = ssm.get_parameter(Name=param, WithDecryption=True)["Parameter"]["Value"]
        records.mark_created(store, "parameter", param, param)
        return SecretStr(value)

    def security_group(self, request: ClusterRequest, name: str, vpc: str, tags: dict[str, str]) -> str:
        self._intent(request, "security_group", name)
        caller_ip = self.ip_lookup() if self.ssh and self.ip_lookup else None
        group_id = security.ensure_security_group(self.ctx.ec2, name, vpc, tags, caller_ip)
        records.mark_created(self.ctx.store, "security_group", name, group_id)
        return group_id

    def key_pair(self, request: ClusterRequest, name: str, tags: dict[str, str]) -> str | None:
        if not self.ssh:
            return None
        self._intent(request, "key_pair", name)
        key_id = security.ensure_key_pair(self.ctx.ec2, name, tags, self.ctx.store.home)
        records.mark_created(self.ctx.store, "key_pair", name, key_id)
        return name

    def bucket(self) -> str:
        """The bucket stage artifacts go through; lhorch creates it (private, encrypted, with a
        lifecycle rule) when ``cloud.bucket`` is unset. Resolved before the node role, which is
        scoped to it. Every S3 call names this account as the bucket's expected owner."""
        if not self._bucket_ready:
            account = self.ctx.clients.identity()["account"]
            default = not self.bucket_name
            if default:
                self.bucket_name = default_bucket_name(account, self.ctx.region)
            managed = ensure_bucket(self.ctx.clients.s3, self.bucket_name, self.ctx.region,
                                    prefix=self.ctx.settings.prefix, owner=account,
                                    tags={TAG_INSTALL: self.ctx.store.install_id})
            if default and not managed:
                # Its name is predictable, so anyone may have created it first to collect our artifacts.
                raise CloudError(f"bucket {self.bucket_name} exists but lhorch did not create it: it may belong to "
                                 "another AWS account, so lhorch will not use it",
                                 hint="Set cloud.bucket in the pipeline file to a bucket of your own account.")
            self._bucket_ready = True
        return self.bucket_name

    def software(self) -> NodeSoftware:
        """lhorch's wheel of the code running here, in the bucket (uploaded once per content), and
        the interpreter and package pins the nodes install (``shipping``)."""
        if self._software is None:
            bucket = self.bucket()
            wheel = shipping.local_wheel(self.ctx.store.home)
            owner = self.ctx.clients.identity()["account"]
            store = S3ArtifactStore(bucket, self.ctx.settings.prefix, self.ctx.clients.s3, owner=owner)
            key = shipping.wheel_key(wheel)
            store.put_file(wheel.path, key, sha256=wheel.sha256)
            versions = self.ctx.settings.versions
            only = {k: v for k, v in versions.items() if k not in ("python", "lhorch")} if versions else None
            python = (versions or {}).get("python") or shipping.python_version()
            self._software = NodeSoftware(python=python, wheel_uri=store.uri(key), wheel_sha256=wheel.sha256,
                                          requirements=tuple(shipping.pins(only)))
        return self._software

    def node_role(self, request: ClusterRequest, tags: dict[str, str]) -> str | None:
        """The nodes' instance profile: the configured one, else one for this cluster alone (see the
        module docstring), else none when creating roles is off."""
        if self.ctx.settings.instance_profile or not self.ctx.settings.create_instance_profile:
            return self.ctx.settings.instance_profile
        account = self.ctx.clients.identity()["account"]
        name = node_role_name(request.run_id, request.group)
        self._intent(request, "role", name)
        policy = security.node_policy(self.ctx.region, account, self.bucket_name, self.ctx.settings.prefix,
                                      request.run_id, request.group)
        self.instance_profile = security.ensure_instance_profile(
            self.ctx.clients.iam, name, policy, {k: v for k, v in tags.items() if k != "Name"},
            boundary=security.boundary_arn(account))
        records.mark_created(self.ctx.store, "role", name, name)
        return self.instance_profile
