"""``AwsSettings``: everything that says *how* the AWS provider launches, as one frozen value.

What the provider *uses* (the boto3 session, the store, the clock, the head connector) is injected
separately; settings are plain data, validated once, so a test or the CLI builds them in one line.
"""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AwsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str | None = Field(None, description="AWS region; None: the session's (profile/environment).")
    bucket: str | None = Field(None, description="Artifact bucket; None: lhorch's own, one per account and region.")
    prefix: str = Field("lhorch", description="Key prefix for artifacts; the node role is scoped to it.")
    spot: bool = Field(True, description="Offer spot instances (a spot launch falls back to on-demand).")
    instance_types: list[str] | None = Field(None, description="Only offer and fall back to these types.")
    max_instances: int = Field(64, ge=1, description="Most instances one cluster may have.")
    ami: str | None = Field(None, description="Image id for every node; None: the latest Amazon Linux 2023.")
    subnet_ids: list[str] | None = Field(None, description="Subnets to launch in; None: the default VPC's.")
    security_group_ids: list[str] = Field(
        default_factory=list, description="The user's own groups, attached besides the cluster's (e.g. VPN access).")
    connector: Literal["ssm", "direct"] = Field(
        "ssm", description="How lhorch reaches the head: ssm port forward, or direct to its private address.")
    instance_profile: str | None = Field(None, description="Existing instance profile for the nodes.")
    create_instance_profile: bool = Field(True, description="Create a node role scoped to bucket/prefix.")
    host: str = Field(default_factory=socket.gethostname, description="This machine, tagged on what it starts.")
    volume_gb: int = Field(100, ge=8, description="Root volume of every node.")
    max_hours: float = Field(12.0, gt=0, description="Hard stop when a request names none.")
    launch_timeout: float = Field(600, gt=0, description="Seconds for instances to reach running.")
    ready_timeout: float = Field(900, gt=0, description="Seconds for the Ray head to answer.")
    release_timeout: float = Field(600, gt=0, description="Seconds for instances to terminate.")
    poll_interval: float = Field(5.0, gt=0, description="Seconds between polls while waiting.")
    versions: dict[str, str] | None = Field(
        None, description="Python version and package pins for the nodes ({'python': '3.11', 'ray': '2.60.0'}: "
                          "only those); None: this machine's Python and every dependency of lhorch as installed here.")

    @field_validator("prefix")
    @classmethod
    def _strip_prefix(cls, value: str) -> str:
        return value.strip("/")

    @classmethod
    def from_cloud(cls, cloud: Any, **overrides: Any) -> AwsSettings:
        """From a pipeline's ``cloud:`` section (lhorch.orchestrator.core.spec.Cloud)."""
        values: dict[str, Any] = {
            "region": cloud.region, "bucket": cloud.bucket, "prefix": cloud.prefix, "spot": cloud.spot,
            "instance_types": cloud.instance_types or None, "max_instances": cloud.max_instances,
            "max_hours": cloud.max_hours, "connector": cloud.connector, "ami": cloud.ami,
            "subnet_ids": cloud.subnet_ids or None, "security_group_ids": cloud.security_group_ids,
        }
        return cls(**{**values, **overrides})
