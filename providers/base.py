"""The provider seam: few verbs, with the contract in the docstrings.

Contract for every implementation:
- ``acquire`` is idempotent: asking twice for the same (run_id, group) returns the same cluster,
  never a second one; it records its intent in the store before making any external call.
- ``release`` tears down everything ``acquire`` started; releasing something already gone is not
  an error, so it is safe to call twice and from signal handlers and ``lhorch gc``.
- ``sweep`` finds and deletes what outlived its run (expired, or no live run) and returns what it
  deleted; with ``dry_run`` it only returns what it would delete.
- Providers raise (orchestrator.errors.CloudError and subclasses); they never print.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from policies.model import Offer


class ClusterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    group: str = Field(..., description="Stages sharing one cluster; the cluster's name within the run.")
    offer: Offer = Field(..., description="Instance type and market of every node.")
    nodes: int = Field(1, ge=1, description="Head plus workers.")
    owner: str = ""
    expires_at: datetime | None = Field(None, description="Hard stop: the nodes terminate themselves then.")
    idle_minutes: float = 10.0


class Cluster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    name: str
    run_id: str = ""
    address: str = Field(..., description="Ray Jobs (dashboard) HTTP address, e.g. http://127.0.0.1:8265.")
    token: SecretStr | None = Field(None, description="Ray auth token; SecretStr so it never prints.")
    remote: bool = Field(False, description="True when the cluster does not share the local disk: artifacts go through S3.")
    instance_ids: list[str] = Field(default_factory=list)
    price_per_hour: float = 0.0
    launched_at: datetime | None = None
    expires_at: datetime | None = None
    details: dict[str, str] = Field(default_factory=dict)

    def auth_headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        return {"Authorization": "Bearer " + self.token.get_secret_value()}


@runtime_checkable
class Provider(Protocol):
    name: str

    def offers(self) -> list[Offer]:
        """What this provider can run on, with prices (may be cached)."""
        ...

    def acquire(self, request: ClusterRequest) -> Cluster:
        """Start or reuse the cluster for (run_id, group); idempotent."""
        ...

    def release(self, cluster: Cluster) -> None:
        """Tear the cluster down; safe to call twice."""
        ...

    def clusters(self) -> list[Cluster]:
        """What this provider has running now."""
        ...

    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False) -> list[str]:
        """Delete what outlived its run; return descriptions of what was (or would be) deleted."""
        ...
