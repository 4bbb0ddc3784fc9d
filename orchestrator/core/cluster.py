"""What a provider is asked for and what it hands back: a Ray cluster, local or remote."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from lhorch.orchestrator.core.plan import Offer


class ClusterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    group: str = Field(..., description="Stages sharing one cluster; the cluster's name within the run.")
    offer: Offer = Field(..., description="Instance type and market of every node.")
    nodes: int = Field(1, ge=1, description="Head plus workers.")
    owner: str = ""
    expires_at: datetime | None = Field(None, description="Hard stop: the nodes terminate themselves then.")
    idle_minutes: float = 10.0
    spend_limit_usd: float | None = Field(
        None, description="Budget: the most the cluster may bill from its launch to its hard stop, so the launch "
                          "path can set the hard stop from the price of the candidate it actually launches.")
    min_run_seconds: float = Field(
        0.0, description="Start-up plus the shortest useful work of its stages: a launch whose hard stop would "
                         "come sooner is refused before it is paid for.")


class Cluster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str
    name: str
    run_id: str = ""
    address: str = Field(..., description="Ray Jobs (dashboard) HTTP address, e.g. http://127.0.0.1:8265.")
    token: SecretStr | None = Field(None, description="Ray auth token; SecretStr so it never prints.")
    remote: bool = Field(
        False, description="True when the cluster does not share the local disk: artifacts go through S3.",
    )
    instance_ids: list[str] = Field(default_factory=list)
    price_per_hour: float = 0.0
    launched_at: datetime | None = None
    expires_at: datetime | None = None
    group: str = Field("", description="The cluster's name within its run: stages placed together share it.")
    region: str | None = None
    head_id: str | None = Field(None, description="The head node's instance id, for providers that have one.")
    instance_types: list[str] = Field(default_factory=list)
    market: str = Field("", description="spot | on-demand | fixed; empty for the local node.")
    owner: str = Field("", description="Who started it (cloud identity), for shared accounts.")
    host: str = Field("", description="The machine whose lhorch started it.")
    python: str | None = Field(
        None, description="The interpreter stages run with on a remote cluster's nodes, by absolute path "
                          "(None: `python` on the node's PATH).")
    artifacts_uri: str | None = Field(
        None, description="Where a remote cluster's stages read inputs and write outputs, e.g. s3://bucket/prefix.")

    def auth_headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        return {"Authorization": "Bearer " + self.token.get_secret_value()}
