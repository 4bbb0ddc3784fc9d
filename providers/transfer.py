"""Moving artifacts between the laptop and a remote cluster, by URI.

The runner (on the laptop) and lhorch.orchestrator.execution.stage_wrapper (on the cluster's node) both go through
``store_for_uri``; only the scheme decides which SDK is imported, so the core never imports boto3.
A URI ending in "/" is a folder, any other a single file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ArtifactTransfer(Protocol):
    def put(self, local: Path, uri: str) -> None: ...
    def get(self, uri: str, local: Path) -> None: ...


def s3_client():
    """An S3 client from boto3's standard settings (AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL)."""
    import boto3  # deferred: heavy, and only S3 transfers need it

    return boto3.client("s3")


class S3Transfer:
    def __init__(self, bucket: str, client=None):
        # Deferred: it imports botocore (a few hundred ms), which only S3 transfers need.
        from lhorch.providers.aws.s3 import S3ArtifactStore

        self.bucket = bucket
        self.store = S3ArtifactStore(bucket, "", client or s3_client())

    def _key(self, uri: str) -> str:
        prefix = f"s3://{self.bucket}/"
        if not uri.startswith(prefix):
            raise ValueError(f"{uri} is not in bucket {self.bucket}")
        return uri[len(prefix):]

    def put(self, local: Path, uri: str) -> None:
        local = Path(local)
        if local.is_dir():
            self.store.put_dir(local, self._key(uri).rstrip("/"))
        else:
            self.store.put_file(local, self._key(uri))

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
