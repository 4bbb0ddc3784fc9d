"""The money ledger: one row per cost item (an instance's seconds, a stage's estimate, a transfer).

Actual spend is every row whose kind is not ``estimate``; estimates are kept beside it so `lhorch cost`
can show estimate vs actual. ``usd`` is always ``unit_price × quantity``, computed here and nowhere
else, so the totals are sums of rows a user can read back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.state.store import Store, utcnow

ESTIMATE = "estimate"
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
