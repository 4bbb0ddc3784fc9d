"""Schedules as `lhorch schedule` manages them and the scheduler reads them: a pipeline file fired on
a cron expression in a time zone, with rules for overlapping runs and missed fires.

The rows are kept by ``lhorch.orchestrator.state.schedules``; fire times come from ``cron``. This
module adds what a schedule means: a valid expression before anything is stored, "no such schedule"
as a user error, the next fire of a paused schedule is none, and a fire's history joined with its
run, cost, metrics and model.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.errors import NotFoundError
from lhorch.orchestrator.core.status import FireStatus
from lhorch.orchestrator.scheduling.cron import fires_between, local_time, next_fires, validate_cron
from lhorch.orchestrator.state import ledger, models
from lhorch.orchestrator.state import schedules as rows
from lhorch.orchestrator.state.schedules import ScheduleRecord as Schedule
from lhorch.orchestrator.state.schedules import schedule_runs
from lhorch.orchestrator.state.store import Store, parse_iso

__all__ = ["Schedule", "fires_between", "get_schedule", "history", "last_outcome", "list_schedules", "local",
           "next_fire", "next_fires", "remove_schedule", "run_metrics", "schedule_runs", "set_paused",
           "upsert_schedule"]


def next_fire(s: Schedule, now: datetime) -> datetime | None:
    """When ``s`` fires next after ``now`` (or after its last fire, if that is later); None when paused."""
    if s.paused:
        return None
    return next_fires(s.cron, s.timezone, max(now, s.last_fire_at or now), 1)[0]


def local(s: Schedule, instant: datetime) -> datetime:
    """``instant`` on the schedule's own wall clock."""
    return local_time(instant, s.timezone)


def upsert_schedule(store: Store, name: str, pipeline_file: Path, cron: str, tz: str, overlap: str,
                    catchup: str, now: datetime) -> Schedule:
    """Add a schedule, or update one of the same name (keeping its pause state and last fire)."""
    validate_cron(cron, tz)
    rows.upsert(store, name, pipeline_file, cron, tz, overlap, catchup, now)
    return get_schedule(store, name)


def get_schedule(store: Store, name: str) -> Schedule:
    found = rows.get(store, name)
    if found is None:
        raise NotFoundError(f"no schedule named {name!r}", hint="`lhorch schedule list` shows the schedules.")
    return found


def list_schedules(store: Store) -> list[Schedule]:
    return rows.all_schedules(store)


def set_paused(store: Store, name: str, paused: bool, now: datetime) -> None:
    """Pause or resume. Resuming starts counting from now: fires missed while paused are not caught up."""
    get_schedule(store, name)
    rows.set_paused(store, name, paused, now)


def remove_schedule(store: Store, name: str) -> None:
    get_schedule(store, name)
    rows.delete(store, name)


def last_outcome(store: Store, name: str) -> tuple[sqlite3.Row | None, int]:
    """The latest finished fire and how many in a row before it (itself included) failed."""
    finished = rows.finished_schedule_runs(store, name, limit=100)
    not_failures = FireStatus.finished_ok() | {FireStatus.MISSED}
    failures = 0
    for row in finished:
        if row["status"] in not_failures:
            break
        failures += 1
    return (finished[0] if finished else None), failures


def run_metrics(store: Store, run_id: str) -> dict[str, Any] | None:
    """The latest readable ``metrics`` output of a run."""
    for art in reversed(store.artifacts(run_id)):
        if art["name"] != "metrics":
            continue
        path = Path(art["path"])
        path = path / "metrics.json" if path.is_dir() else path
        try:
            return json.loads(path.read_text())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            continue
    return None


def history(store: Store, name: str, limit: int = 50) -> list[dict[str, Any]]:
    """One entry per fire: status, run, duration, cost, metrics and what happened to its model."""
    out: list[dict[str, Any]] = []
    for sr in schedule_runs(store, name, limit):
        entry: dict[str, Any] = {"fire_at": sr["fire_at"], "status": sr["status"], "detail": sr["detail"],
                                 "run_id": sr["run_id"], "run_status": None, "duration_s": None,
                                 "cost_usd": None, "metrics": None, "model_version": None}
        run = store.get_run(sr["run_id"], prefix=False) if sr["run_id"] else None
        if run is not None:
            entry["run_status"] = run["status"]
            start, end = parse_iso(run["started_at"] or run["created_at"]), parse_iso(run["finished_at"])
            if start and end:
                entry["duration_s"] = round((end - start).total_seconds(), 3)
            entry["cost_usd"] = round(ledger.run_total(store, run["id"]), 4)
            entry["metrics"] = run_metrics(store, run["id"])
            model = models.of_run(store, run["id"])
            if model is not None:
                entry["model_version"] = model.version
                entry["model_status"] = str(model.status)
        else:
            start, end = parse_iso(sr["started_at"]), parse_iso(sr["finished_at"])
            if start and end:
                entry["duration_s"] = round((end - start).total_seconds(), 3)
        out.append(entry)
    return out
