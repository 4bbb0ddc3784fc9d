"""lhorch's own record of what it is about to create and has created in AWS: the rows of
``lhorch.orchestrator.state.cloud_resources`` whose provider is ``aws``. A row is written as ``intent``
before the API call, becomes ``created`` with the cloud's id, and ``released`` once the resource is
gone; ``lhorch gc`` and a resumed run read it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lhorch.orchestrator.state import cloud_resources, ledger
from lhorch.orchestrator.state.store import Store, utcnow
from lhorch.providers.aws.names import cluster_name

PROVIDER = "aws"


def record_intent(store: Store, run_id: str, kind: str, name: str, *, details: dict[str, Any] | None = None,
                  expires_at: datetime | None = None, price_per_hour: float = 0.0) -> None:
    """Write (or revive) the intent row, before the API call that creates the resource."""
    cloud_resources.record_intent(store, PROVIDER, run_id, kind, name, details=details, expires_at=expires_at,
                                  price_per_hour=price_per_hour)


def mark_created(store: Store, kind: str, name: str, resource_id: str, *, price_per_hour: float | None = None,
                 details: dict[str, Any] | None = None) -> None:
    cloud_resources.mark_created(store, PROVIDER, kind, name, resource_id, price_per_hour=price_per_hour,
                                 details=details)


def mark_released(store: Store, *, run_id: str, group: str | None = None, kind: str | None = None,
                  name: str | None = None, at: datetime | None = None) -> None:
    """Mark the rows released, and close the ledger rows of the instances among them at ``at`` (now):
    whoever tears a run down (the run, `lhorch down`, `lhorch gc`) also ends its billing (issue 16)."""
    ids = [r["resource_id"] for r in cloud_resources.open_rows(store, PROVIDER, run_id)
           if r["kind"] == "instance" and r["resource_id"] and (group is None or r["details"].get("group") == group)
           and (kind is None or kind == "instance") and (name is None or r["name"] == name)]
    # EC2's own termination time closed what it could (teardown); the rest ends now, or at its hard stop
    # if that came first (the node powered itself off).
    ledger.close_resources(store, ids, at or utcnow(), by_hard_stop=True)
    if kind in (None, "instance") and name is None:  # rows of a process killed before it learnt the ids
        ledger.close_unbound(store, run_id, cluster_name(run_id, group) if group else "", at or utcnow())
    cloud_resources.mark_released(store, PROVIDER, run_id=run_id, group=group, kind=kind, name=name)


def open_rows(store: Store, run_id: str | None = None) -> list[dict[str, Any]]:
    """Rows not yet released (optionally of one run), details decoded."""
    return cloud_resources.open_rows(store, PROVIDER, run_id)
