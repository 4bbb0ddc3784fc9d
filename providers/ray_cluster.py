"""An existing Ray cluster, by address: a team's cluster, or (in tests) a second local one.

lhorch starts and stops nothing here; ``acquire`` checks the cluster answers and ``release`` has
nothing to tear down. The token comes from the environment variable named by ``cloud.token_env``
or from ``cloud.token_file`` — never from the pipeline file — and is held as a SecretStr.
Artifacts go through the bucket in ``cloud.bucket``, since the cluster does not share this disk.
"""

from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import ClusterUnreachable, UsageError
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.core.spec import Cloud
from lhorch.orchestrator.state.store import Store
from lhorch.providers.local import wait_ready

# The user's explicit opt-in to sending the cluster's token over plain HTTP to a non-loopback address.
PLAIN_HTTP_ENV = "LHORCH_ALLOW_PLAIN_HTTP_TOKEN"


def _safe_for_token(address: str) -> bool:
    """HTTPS, or plain HTTP to this machine (a tunnel ends there)."""
    parts = urlsplit(address)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RayClusterProvider:
    name = "ray"

    def __init__(self, address: str, token: str | None, *, bucket: str | None, prefix: str = "lhorch",
                 ready_timeout: float = 15.0, allow_plain_http: bool = False):
        self.address = address.rstrip("/")
        if not self.address.startswith(("http://", "https://")):
            self.address = "http://" + self.address
        if token and not allow_plain_http and not _safe_for_token(self.address):
            # A bearer token over plain HTTP is readable by anyone on the path (issue 15).
            raise UsageError(f"refusing to send the Ray token over plain HTTP to {self.address}",
                             hint="Use an https:// address, or reach the cluster through an SSH tunnel on "
                                  f"127.0.0.1; to send it anyway set {PLAIN_HTTP_ENV}=1.")
        self._token = SecretStr(token) if token else None
        self.bucket = bucket
        self.prefix = prefix
        self.ready_timeout = ready_timeout

    @classmethod
    def from_config(cls, cloud: Cloud, store: Store | None = None) -> RayClusterProvider:
        token = os.environ.get(cloud.token_env)
        if cloud.token_file:
            path = Path(cloud.token_file).expanduser()
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise UsageError(f"cannot read the cluster token file {path}: {exc.strerror}") from None
        return cls(cloud.address or "", token, bucket=cloud.bucket, prefix=cloud.prefix,
                   allow_plain_http=os.environ.get(PLAIN_HTTP_ENV) == "1")

    def offers(self) -> list[Offer]:
        return []  # the planner models an existing cluster as one fixed-price offer

    def artifact_base(self) -> str:
        if not self.bucket:
            raise UsageError(
                "stages on a remote Ray cluster exchange artifacts through S3, and `cloud.bucket` is not set",
                hint="Set cloud.bucket (and cloud.prefix) in the pipeline file.")
        return f"s3://{self.bucket}/{self.prefix.strip('/')}"

    def acquire(self, request: ClusterRequest) -> Cluster:
        cluster = Cluster(provider="ray", name=f"ray:{request.group}", run_id=request.run_id, address=self.address,
                          token=self._token, remote=True, launched_at=datetime.now(timezone.utc),
                          artifacts_uri=self.artifact_base())
        try:
            wait_ready(cluster.address, cluster.auth_headers(), timeout=self.ready_timeout)
        except ClusterUnreachable:
            raise ClusterUnreachable(
                f"the Ray cluster at {self.address} does not answer",
                hint="Check `cloud.address` and that the cluster is up; "
                     "the run can be resumed with `lhorch run --resume`.",
            ) from None
        return cluster

    def release(self, cluster: Cluster) -> None:
        return None  # not ours to stop

    def clusters(self) -> list[Cluster]:
        return []

    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False) -> list[str]:
        return []
