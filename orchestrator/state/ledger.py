"""The money ledger: one row per cost item (an instance's seconds, a stage's estimate, a transfer).

Actual spend is every row whose kind is not ``estimate``; estimates are kept beside it so `lhorch cost`
can show estimate vs actual. ``usd`` is always ``unit_price × quantity``, computed here and nowhere
else, so the totals are sums of rows a user can read back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.state.store import Store, utcnow

ESTIMATE = "estimate"
TRANSFER_OUT = "transfer-out"  # data brought back out of the cloud (its own kind: the budget sets it aside)
RUN_LEVEL = "(run)"  # per_stage key for items not tied to one stage (a cluster shared by a group)


def _at(when: datetime) -> str:
    if when.tzinfo is None:
        raise ValueError("ledger times must be timezone-aware")
    # One fixed format so that string order in SQLite is time order (month_to_date relies on it).
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class StageCost:
    stage: str
    estimate_usd: float
    actual_usd: float


def record(store: Store, run_id: str, pipeline: str, stage: str | None, kind: str, item: str,
           unit_price: float, quantity: float, unit: str, source: str, at: datetime) -> float:
    """Add one cost item; returns its usd (= unit_price × quantity)."""
    if unit_price < 0 or quantity < 0:
        raise ValueError(f"negative cost item: {unit_price} × {quantity} {unit}")
    usd = unit_price * quantity
    with store.tx() as c:
        c.execute(
            "INSERT INTO ledger(run_id, stage, pipeline, kind, item, unit_price, quantity, unit, usd, source, at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, stage, pipeline, kind, item, unit_price, quantity, unit, usd, source, _at(at)),
        )
    return usd


@dataclass(frozen=True)
class CostItem:
    """A metered item a provider counted (requests, bytes), priced by it: one ledger row each."""

    kind: str
    item: str
    unit_price: float
    quantity: float
    unit: str
    source: str


def record_items(store: Store, run_id: str, stage: str | None, items: list[CostItem], at: datetime | None = None
                 ) -> float:
    """Record counted items (nothing for a zero quantity) under the run's pipeline; returns their usd."""
    got = store.query("SELECT pipeline FROM runs WHERE id=?", (run_id,))
    pipeline = str(got[0]["pipeline"]) if got else (pipeline_of(store, run_id) or "")
    return sum(record(store, run_id, pipeline, stage, i.kind, i.item, i.unit_price, i.quantity, i.unit, i.source,
                      at or utcnow()) for i in items if i.quantity > 0)


def record_estimate(store: Store, run_id: str, pipeline: str, plan: Plan, at: datetime | None = None) -> float:
    """One ``estimate`` row per stage of the plan; replaces earlier estimates of the run (a resume
    re-plans). Returns the estimated total."""
    stamp = _at(at or utcnow())
    rows = []
    for name, p in plan.placements.items():
        source = p.offer.price_source if p.offer else f"plan:{plan.policy}"
        rows.append((run_id, name, pipeline, ESTIMATE, f"{p.provider}:{p.instance_type}:{p.market}",
                     p.est_cost_usd, 1.0, "stage", p.est_cost_usd, source, stamp))
    with store.tx() as c:
        c.execute("DELETE FROM ledger WHERE run_id=? AND kind=?", (run_id, ESTIMATE))
        c.executemany(
            "INSERT INTO ledger(run_id, stage, pipeline, kind, item, unit_price, quantity, unit, usd, source, at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
    return sum(r[8] for r in rows)


def rows(store: Store, run_id: str, *, actual_only: bool = False) -> list[dict]:
    sql = "SELECT * FROM ledger WHERE run_id=?" + (" AND kind != ?" if actual_only else "") + " ORDER BY id"
    args: tuple = (run_id, ESTIMATE) if actual_only else (run_id,)
    return [dict(r) for r in store.query(sql, args)]


def has_run(store: Store, run_id: str) -> bool:
    """Whether the ledger has any item of ``run_id`` (a run whose row is gone may still have costs)."""
    return bool(store.query("SELECT 1 FROM ledger WHERE run_id=? LIMIT 1", (run_id,)))


def pipeline_of(store: Store, run_id: str) -> str | None:
    """The pipeline the ledger files ``run_id``'s costs under."""
    rows = store.query("SELECT pipeline FROM ledger WHERE run_id=? LIMIT 1", (run_id,))
    return str(rows[0]["pipeline"]) if rows else None


def run_total(store: Store, run_id: str) -> float:
    """Actual spend of a run (estimates excluded)."""
    row = store.query("SELECT COALESCE(SUM(usd), 0) FROM ledger WHERE run_id=? AND kind != ?", (run_id, ESTIMATE))
    return float(row[0][0])


def run_estimate(store: Store, run_id: str) -> float:
    row = store.query("SELECT COALESCE(SUM(usd), 0) FROM ledger WHERE run_id=? AND kind = ?", (run_id, ESTIMATE))
    return float(row[0][0])


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """[first instant of now's calendar month, first instant of the next), in UTC."""
    now = now.astimezone(timezone.utc)
    start = datetime(now.year, now.month, 1, tzinfo=timezone.utc)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=timezone.utc)
    return start, end


def month_to_date(store: Store, pipeline: str, now: datetime) -> float:
    """Actual spend of every run of ``pipeline`` in now's calendar month (UTC), up to now."""
    start, end = month_bounds(now)
    row = store.query(
        "SELECT COALESCE(SUM(usd), 0) FROM ledger WHERE pipeline=? AND kind != ? AND at >= ? AND at < ? AND at <= ?",
        (pipeline, ESTIMATE, _at(start), _at(end), _at(now)))
    return float(row[0][0])


def per_stage(store: Store, run_id: str) -> dict[str, StageCost]:
    """Estimate and actual per stage, in the order stages first appear in the ledger; items with no
    stage are under ``RUN_LEVEL``."""
    out: dict[str, list[float]] = {}
    for r in store.query("SELECT stage, kind, usd FROM ledger WHERE run_id=? ORDER BY id", (run_id,)):
        acc = out.setdefault(r["stage"] or RUN_LEVEL, [0.0, 0.0])
        acc[0 if r["kind"] == ESTIMATE else 1] += r["usd"]
    return {name: StageCost(name, est, act) for name, (est, act) in out.items()}


# --- open rows (issue 16) -------------------------------------------------------------------------
# A billable resource (an instance, its volume, its public IPv4 address) gets an ``open`` row before
# the call that creates it, priced at its worst case: billed from its start to its hard stop
# (``ends_by``), so month to date is never under-counted while nobody watches. Closing it replaces the
# worst case with the real lifetime. ``unit`` is always "second"; ``minimum_s`` is what one start
# bills at least (EC2's 60 s), 0 for the rest.
OPEN, CLOSED = "open", "closed"


def billed_seconds(seconds: float, minimum_s: float) -> float:
    """Whole seconds as AWS bills them, at least ``minimum_s``; round() first so float noise
    (59.999999999) does not add a second."""
    return max(minimum_s, float(math.ceil(round(max(0.0, seconds), 6))))


def _seconds(started: datetime, ended: datetime, minimum_s: float) -> float:
    return billed_seconds((ended - started).total_seconds(), minimum_s)


def open_item(store: Store, run_id: str, kind: str, item: str, *, usd_per_second: float, started_at: datetime,
              ends_by: datetime, source: str, minimum_s: float = 0.0, stage: str | None = None,
              pipeline: str | None = None) -> int:
    """Open a row at its worst case, before the create call. A row of the same (run, item, kind) not
    yet launched (a fallback candidate that found no capacity) is replaced. Returns the row id."""
    if usd_per_second < 0:
        raise ValueError(f"negative price for {item}: {usd_per_second}")
    quantity = _seconds(started_at, max(started_at, ends_by), minimum_s)
    with store.tx() as c:
        c.execute("DELETE FROM ledger WHERE run_id=? AND item=? AND kind=? AND state=? AND resource_id IS NULL",
                  (run_id, item, kind, OPEN))
        cur = c.execute(
            "INSERT INTO ledger(run_id, stage, pipeline, kind, item, unit_price, quantity, unit, usd, source, at,"
            " state, started_at, ends_by, minimum_s)"
            " VALUES (?,?,COALESCE(?, (SELECT pipeline FROM runs WHERE id=?), ''),?,?,?,?,?,?,?,?,?,?,?,?)",
            (run_id, stage, pipeline, run_id, kind, item, usd_per_second, quantity, "second",
             usd_per_second * quantity, source, _at(started_at), OPEN, _at(started_at), _at(ends_by), minimum_s))
        return int(cur.lastrowid or 0)


def launched(store: Store, run_id: str, item_prefix: str, resource_id: str, started_at: datetime) -> None:
    """The create call returned: bind the open rows of ``item_prefix`` to the cloud's id and start them
    at the cloud's own launch time (billing starts there, not when lhorch first hears back)."""
    for r in store.query("SELECT id, ends_by, minimum_s, unit_price FROM ledger WHERE run_id=? AND state=?"
                         " AND (item=? OR item LIKE ?)", (run_id, OPEN, item_prefix, item_prefix + ":%")):
        ends = max(datetime.fromisoformat(r["ends_by"]), started_at)
        q = _seconds(started_at, ends, r["minimum_s"])
        with store.tx() as c:
            c.execute("UPDATE ledger SET resource_id=?, started_at=?, at=?, quantity=?, usd=? WHERE id=?",
                      (resource_id, _at(started_at), _at(started_at), q, q * r["unit_price"], r["id"]))


def drop_unlaunched(store: Store, run_id: str, item_prefix: str) -> None:
    """Every candidate failed: nothing was created, so nothing is billed."""
    with store.tx() as c:
        c.execute("DELETE FROM ledger WHERE run_id=? AND state=? AND resource_id IS NULL AND (item=? OR item LIKE ?)",
                  (run_id, OPEN, item_prefix, item_prefix + ":%"))


def lower_ends_by(store: Store, resource_ids: list[str], ends_by: datetime) -> None:
    """The resources' hard stop moved earlier: their worst case shrinks with it."""
    for r in _rows_of(store, resource_ids, OPEN):
        ends = max(datetime.fromisoformat(r["started_at"]), min(ends_by, datetime.fromisoformat(r["ends_by"])))
        q = _seconds(datetime.fromisoformat(r["started_at"]), ends, r["minimum_s"])
        with store.tx() as c:
            c.execute("UPDATE ledger SET ends_by=?, quantity=?, usd=? WHERE id=?",
                      (_at(ends), q, q * r["unit_price"], r["id"]))


def _rows_of(store: Store, resource_ids: list[str], state: str | None = None) -> list[dict]:
    if not resource_ids:
        return []
    marks = ",".join("?" * len(resource_ids))
    sql = f"SELECT * FROM ledger WHERE resource_id IN ({marks})" + (" AND state=?" if state else "")
    return [dict(r) for r in store.query(sql, (*resource_ids, *([state] if state else [])))]


def close_row(store: Store, row_id: int, ended_at: datetime, *, by_hard_stop: bool = False) -> float:
    """Close one row at ``ended_at`` (its real end). Closing a closed row again only ever makes it
    longer: two observers of one termination (the run's meter, the teardown) keep the later end.
    ``by_hard_stop``: ``ended_at`` is only when lhorch noticed the end (a node that powered itself off
    is found by `lhorch gc` hours later), so an open row ends no later than its hard stop."""
    got = store.query("SELECT * FROM ledger WHERE id=?", (row_id,))
    if not got:
        return 0.0
    r = got[0]
    if by_hard_stop and r["state"] == OPEN and r["ends_by"]:
        ended_at = min(ended_at, datetime.fromisoformat(r["ends_by"]))
    started = datetime.fromisoformat(r["started_at"])
    q = _seconds(started, ended_at, r["minimum_s"])
    if r["state"] == CLOSED:
        q = max(q, r["quantity"])
    with store.tx() as c:
        c.execute("UPDATE ledger SET state=?, quantity=?, usd=?, ends_by=? WHERE id=?",
                  (CLOSED, q, q * r["unit_price"], _at(started + timedelta(seconds=q)), row_id))
    return q * float(r["unit_price"])


def close_resources(store: Store, resource_ids: list[str], ended_at: datetime, *, by_hard_stop: bool = False
                    ) -> float:
    """Close every open row of these cloud resources (terminated at ``ended_at``); returns their usd."""
    return sum(close_row(store, r["id"], ended_at, by_hard_stop=by_hard_stop)
               for r in _rows_of(store, resource_ids, OPEN))


def open_items(store: Store, run_id: str | None = None) -> list[dict]:
    """Open rows (of one run, or all), oldest first."""
    sql = "SELECT * FROM ledger WHERE state=?" + (" AND run_id=?" if run_id else "") + " ORDER BY id"
    return [dict(r) for r in store.query(sql, (OPEN, run_id) if run_id else (OPEN,))]


def closed_actual(store: Store, run_id: str) -> list[dict]:
    """The run's closed actual rows: what earlier attempts and processes of the run already spent."""
    return [dict(r) for r in store.query("SELECT * FROM ledger WHERE run_id=? AND kind != ? AND state=? ORDER BY id",
                                         (run_id, ESTIMATE, CLOSED))]


def open_for(store: Store, resource_ids: list[str]) -> list[dict]:
    """The open rows of these cloud resources (what a just-acquired cluster bills)."""
    return _rows_of(store, resource_ids, OPEN)


def assign_stage(store: Store, row_ids: list[int], stage: str | None) -> None:
    """File rows under the stage their cluster serves (None: shared by a group)."""
    if stage is None or not row_ids:
        return
    with store.tx() as c:
        c.executemany("UPDATE ledger SET stage=? WHERE id=?", [(stage, i) for i in row_ids])


def close_unbound(store: Store, run_id: str, item_prefix: str, ended_at: datetime) -> float:
    """Close the open rows of ``run_id`` under ``item_prefix`` that never learnt their cloud id (the
    process died right after the create call): from their intent time, the closest record there is."""
    got = store.query("SELECT id FROM ledger WHERE run_id=? AND state=? AND resource_id IS NULL AND item LIKE ?",
                      (run_id, OPEN, item_prefix + "%"))
    return sum(close_row(store, r["id"], ended_at, by_hard_stop=True) for r in got)
