"""Read-only views across runs for `lhorch runs`, `lhorch status` and the run report.

Nothing here writes: these are the few queries that join runs, attempts, artifacts and the ledger
so that the report and the CLI do not loop over one query per run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from lhorch.orchestrator.state.ledger import ESTIMATE
from lhorch.orchestrator.state.store import Store


@dataclass(frozen=True)
class RunMoney:
    estimate_usd: float
    actual_usd: float


def money_by_run(store: Store, run_ids: list[str]) -> dict[str, RunMoney]:
    """Estimate and actual spend of each run in ``run_ids`` (runs with no ledger rows are absent)."""
    if not run_ids:
        return {}
    marks = ",".join("?" * len(run_ids))
    rows = store.query(
        f"SELECT run_id, SUM(CASE WHEN kind = ? THEN usd ELSE 0 END) AS est,"
        f" SUM(CASE WHEN kind != ? THEN usd ELSE 0 END) AS act FROM ledger WHERE run_id IN ({marks})"
        " GROUP BY run_id", (ESTIMATE, ESTIMATE, *run_ids))
    return {r["run_id"]: RunMoney(float(r["est"] or 0.0), float(r["act"] or 0.0)) for r in rows}


def artifacts_named(store: Store, run_ids: list[str], name: str) -> list[dict]:
    """Every artifact called ``name`` of the given runs, oldest first."""
    if not run_ids:
        return []
    marks = ",".join("?" * len(run_ids))
    return [dict(r) for r in store.query(
        f"SELECT * FROM artifacts WHERE name=? AND run_id IN ({marks}) ORDER BY id", (name, *run_ids))]


def cluster_addresses(store: Store, run_id: str) -> dict[str, str]:
    """Cluster key → the Ray dashboard address it had, from the run's ``acquired`` cluster events."""
    out: dict[str, str] = {}
    for r in store.query("SELECT message, data_json FROM events WHERE run_id=? AND kind='cluster'"
                         " AND message LIKE 'acquired %' ORDER BY id", (run_id,)):
        key = r["message"].removeprefix("acquired ")
        if r["data_json"]:
            out[key] = str(json.loads(r["data_json"]).get("address", ""))
    return out


def stage_wall_times(store: Store, run_ids: list[str]) -> dict[str, dict[str, float]]:
    """Run → stage → seconds of its last finished, non-cached attempt (for a pipeline's history)."""
    if not run_ids:
        return {}
    marks = ",".join("?" * len(run_ids))
    rows = store.query(
        "SELECT run_id, stage, (julianday(finished_at) - julianday(started_at)) * 86400.0 AS secs FROM attempts"
        f" WHERE run_id IN ({marks}) AND status = 'succeeded' AND finished_at IS NOT NULL ORDER BY id", tuple(run_ids))
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r["run_id"], {})[r["stage"]] = float(r["secs"] or 0.0)
    return out
