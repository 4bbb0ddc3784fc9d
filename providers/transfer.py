"""Moving artifacts between the laptop and a remote cluster, by URI.

The runner (on the laptop) and lhorch.orchestrator.execution.stage_wrapper (on the cluster's node) both go through
``store_for_uri``; only the scheme decides which SDK is imported, so the core never imports boto3.
A URI ending in "/" is a folder, any other a single file.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Protocol

from lhorch.orchestrator.state.ledger import CostItem
from lhorch.providers.aws.secrets import get_secrets, put_secrets, secrets_parameter


class ArtifactTransfer(Protocol):
    def put(self, local: Path, uri: str) -> None: ...
    def get(self, uri: str, local: Path) -> None: ...
    def cost_items(self) -> list[CostItem]:
        """What its calls so far cost (requests, bytes out), for the ledger."""
        ...


def s3_client():
    """An S3 client from boto3's standard settings (AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL)."""
    import boto3  # deferred: heavy, and only S3 transfers need it

    return boto3.client("s3")


@functools.cache
def own_account() -> str:
    """This caller's account (the node's, through its role, on a cloud node): the owner every S3 call
    expects its bucket to have (ExpectedBucketOwner). GetCallerIdentity needs no permission."""
    import boto3  # deferred: heavy, and only S3 transfers need it

    return boto3.client("sts").get_caller_identity()["Account"]


class S3Transfer:
    def __init__(self, bucket: str, client=None, owner: str | None = None):
        # Deferred: it imports botocore (a few hundred ms), which only S3 transfers need.
        from lhorch.providers.aws.s3 import S3ArtifactStore

        self.bucket = bucket
        self.store = S3ArtifactStore(bucket, "", client or s3_client(), owner=owner or own_account())

    def _key(self, uri: str) -> str:
        # Deferred with S3ArtifactStore (botocore).
        from lhorch.providers.aws.s3 import safe_relative

        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri} is not in bucket {self.bucket}")
        return safe_relative(uri[len(prefix):].rstrip("/")) + ("/" if uri.endswith("/") else "")

    def put(self, local: Path, uri: str) -> None:
        local = Path(local)
        if local.is_dir():
            self.store.put_dir(local, self._key(uri).rstrip("/"))
        else:
            self.store.put_file(local, self._key(uri))

    def cost_items(self) -> list[CostItem]:
        return self.store.meter.cost_items(self.bucket)

    def get(self, uri: str, local: Path) -> None:
        if uri.endswith("/"):
            Path(local).mkdir(parents=True, exist_ok=True)
            self.store.get_dir(self._key(uri).rstrip("/"), local)
        else:
            self.store.get_file(self._key(uri), local)


def store_for_uri(uri: str) -> ArtifactTransfer:
    if uri.startswith("s3://"):
        return S3Transfer(uri[len("s3://"):].split("/", 1)[0])
    raise ValueError(f"no artifact store for {uri!r} (supported: s3://)")


def artifact_uri(base: str, *parts: str, folder: bool) -> str:
    return base.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts) + ("/" if folder else "")


# --- stage secrets on remote nodes (see lhorch.providers.aws.secrets) ------------------------------
def secrets_uri(cluster_region: str, run_id: str, group: str, stage: str) -> str:
    """Where a stage on an AWS cluster finds its secrets: ``ssm://<region>/<parameter name>``."""
    return f"ssm://{cluster_region}{secrets_parameter(run_id, group, stage)}"


def _ssm(uri: str) -> tuple[object, str]:
    import boto3  # deferred: heavy, and only secrets on cloud nodes need it

    if not uri.startswith("ssm://"):
        raise ValueError(f"no secret store for {uri!r} (supported: ssm://)")
    region, _, name = uri[len("ssm://"):].partition("/")
    return boto3.client("ssm", region_name=region), "/" + name


def write_secrets(uri: str, values: dict[str, str], tags: dict[str, str]) -> None:
    client, name = _ssm(uri)
    put_secrets(client, name, values, tags)


def read_secrets(uri: str) -> dict[str, str]:
    client, name = _ssm(uri)
    return get_secrets(client, name)
