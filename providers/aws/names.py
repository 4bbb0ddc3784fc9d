"""How lhorch names and dates what it creates in AWS: one place, so acquire, teardown and gc agree."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe(text: str) -> str:
    """A name AWS accepts for groups, key pairs and parameter path parts."""
    return _UNSAFE.sub("-", text)[:100]


def iso(dt: datetime) -> str:
    """UTC, whole seconds: the form of every lhorch date tag."""
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat()


def cluster_name(run_id: str, group: str) -> str:
    """The name of the cluster, its security group and its key pair."""
    return safe(f"lhorch-{run_id}-{group}")


def node_name(cluster: str, index: int) -> str:
    """The intent row of one node (0 is the head)."""
    return f"{cluster}/node-{index}"


def token_parameter(run_id: str, group: str) -> str:
    """The SSM parameter holding the cluster's Ray token."""
    return f"/lhorch/{safe(run_id)}/{safe(group)}/ray-token"
