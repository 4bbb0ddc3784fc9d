"""lhorch's own record of what it is about to create and has created in a cloud (table
``cloud_resources``). A row is written as ``intent`` before the API call, becomes ``created`` with
the cloud's id, and ``released`` once the resource is gone; ``lhorch gc`` and a resumed run read it.
Rows are keyed by (provider, kind, name): ``name`` is lhorch's own name, also the client token.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from lhorch.orchestrator.core.status import ResourceState
from lhorch.orchestrator.state.store import Store, iso, utcnow


def record_intent(store: Store, provider: str, run_id: str, kind: str, name: str, *,
                  details: dict[str, Any] | None = None, expires_at: datetime | None = None,
                  price_per_hour: float = 0.0) -> None:
    """Write (or revive) the intent row. A row left 'released' by an earlier attempt goes back to
    'intent', since we are about to create the resource again."""
    with store.tx() as c:
        c.execute(
            "INSERT INTO cloud_resources(run_id, provider, kind, name, state, details_json, price_per_hour,"
            " created_at, expires_at) VALUES (?,?,?,?,?,?,?,?,?)"
            " ON CONFLICT(provider, kind, name) DO UPDATE SET"
            "   state=CASE WHEN state=? THEN ? ELSE state END,"
            "   released_at=NULL, details_json=COALESCE(excluded.details_json, details_json),"
            "   expires_at=COALESCE(excluded.expires_at, expires_at)",
            (run_id, provider, kind, name, ResourceState.INTENT, json.dumps(details) if details else None,
             price_per_hour, iso(utcnow()), iso(expires_at), ResourceState.RELEASED, ResourceState.INTENT),
        )


def mark_created(store: Store, provider: str, kind: str, name: str, resource_id: str, *,
                 price_per_hour: float | None = None, details: dict[str, Any] | None = None) -> None:
    sets = ["state=?", "resource_id=?"]
    args: list[Any] = [ResourceState.CREATED, resource_id]
    if price_per_hour is not None:
        sets.append("price_per_hour=?")
        args.append(price_per_hour)
    if details is not None:
        sets.append("details_json=?")
        args.append(json.dumps(details))
    with store.tx() as c:
        c.execute(f"UPDATE cloud_resources SET {', '.join(sets)} WHERE provider=? AND kind=? AND name=?",
                  (*args, provider, kind, name))


def mark_released(store: Store, provider: str, *, run_id: str, group: str | None = None, kind: str | None = None,
                  name: str | None = None) -> None:
    """Mark the run's rows released: all of them, or those of one cluster ``group``, ``kind`` or ``name``."""
    sql = "UPDATE cloud_resources SET state=?, released_at=? WHERE provider=? AND run_id=? AND state!=?"
    args: list[Any] = [ResourceState.RELEASED, iso(utcnow()), provider, run_id, ResourceState.RELEASED]
    if group is not None:
        sql += " AND json_extract(details_json, '$.group')=?"
        args.append(group)
    if kind is not None:
        sql += " AND kind=?"
        args.append(kind)
    if name is not None:
        sql += " AND name=?"
        args.append(name)
    with store.tx() as c:
        c.execute(sql, args)


def open_rows(store: Store, provider: str, run_id: str | None = None) -> list[dict[str, Any]]:
    """Rows not yet released (optionally of one run), oldest first, with ``details`` decoded."""
    sql = "SELECT * FROM cloud_resources WHERE provider=? AND state!=?"
    args: list[Any] = [provider, ResourceState.RELEASED]
    if run_id is not None:
        sql += " AND run_id=?"
        args.append(run_id)
    out = []
    for row in store.query(sql + " ORDER BY id", tuple(args)):
        item = dict(row)
        item["details"] = json.loads(row["details_json"]) if row["details_json"] else {}
        out.append(item)
    return out
