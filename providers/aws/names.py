"""How lhorch names and dates what it creates in AWS: one place, so acquire, teardown and gc agree."""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone

TAG_RUN = "lhorch:run-id"
TAG_GROUP = "lhorch:group"
TAG_OWNER = "lhorch:owner"
TAG_EXPIRES = "lhorch:expires-at"
TAG_HEARTBEAT = "lhorch:heartbeat"
TAG_HOST = "lhorch:host"
TAG_ROLE = "lhorch:role"
TAG_NODE = "lhorch:node"
TAG_PRICE = "lhorch:price-per-hour"
TAG_MARKET = "lhorch:market"
# This installation of lhorch (its random id under $LHORCH_HOME): `gc` and `down` touch only their own.
TAG_INSTALL = "lhorch:install"

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


def cluster_path(run_id: str, group: str) -> str:
    """Everything of one cluster in SSM lives under this path; the cluster's node role may read it."""
    return f"/lhorch/{safe(run_id)}/{safe(group)}"


def token_parameter(run_id: str, group: str) -> str:
    """The SSM parameter holding the cluster's Ray token."""
    return f"{cluster_path(run_id, group)}/ray-token"


def node_role_name(run_id: str, group: str) -> str:
    """The cluster's node role and instance profile (IAM names: at most 64 characters)."""
    return "lhorch-node-" + hashlib.sha256(f"{run_id}\0{group}".encode()).hexdigest()[:16]
