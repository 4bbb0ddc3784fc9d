"""Schedules and their fires (tables ``schedules`` and ``schedule_runs``).

A schedule row is what `lhorch schedule add` recorded; a schedule_run row is one fire of it: the
scheduler writes it when the fire is due (``running``, ``queued``, ``skipped``, ``missed``) and settles
it when the run ends. When fires happen is cron arithmetic and lives in ``lhorch.orchestrator.scheduling``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.status import FireStatus
from lhorch.orchestrator.state.store import Store, iso, parse_iso


@dataclass(frozen=True)
class ScheduleRecord:
    name: str
    pipeline_file: str
    cron: str
    timezone: str
    paused: bool
    overlap: str
    catchup: str
    last_fire_at: datetime | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ScheduleRecord:
        created = parse_iso(row["created_at"])
        assert created is not None  # NOT NULL in the schema
        return cls(row["name"], row["pipeline_file"], row["cron"], row["timezone"], bool(row["paused"]),
                   row["overlap"], row["catchup"], parse_iso(row["last_fire_at"]), created)


# --- schedules -----------------------------------------------------------------------------------
def upsert(store: Store, name: str, pipeline_file: Path, cron: str, tz: str, overlap: str, catchup: str,
           now: datetime) -> None:
    """Add a schedule, or update one of the same name (keeping its pause state and last fire)."""
    with store.tx() as c:
        c.execute(
            "INSERT INTO schedules(name, pipeline_file, cron, timezone, paused, overlap, catchup, last_fire_at,"
            " created_at) VALUES (?,?,?,?,0,?,?,?,?) ON CONFLICT(name) DO UPDATE SET"
            " pipeline_file=excluded.pipeline_file, cron=excluded.cron, timezone=excluded.timezone,"
            " overlap=excluded.overlap, catchup=excluded.catchup",
            (name, str(pipeline_file), cron, tz, overlap, catchup, iso(now), iso(now)),
        )


def get(store: Store, name: str) -> ScheduleRecord | None:
    rows = store.query("SELECT * FROM schedules WHERE name=?", (name,))
    return ScheduleRecord.from_row(rows[0]) if rows else None


def all_schedules(store: Store) -> list[ScheduleRecord]:
    return [ScheduleRecord.from_row(r) for r in store.query("SELECT * FROM schedules ORDER BY name")]


def set_paused(store: Store, name: str, paused: bool, now: datetime) -> None:
    """Pause, or resume counting fires from ``now`` (so fires missed while paused are not caught up)."""
    with store.tx() as c:
        if paused:
            c.execute("UPDATE schedules SET paused=1 WHERE name=?", (name,))
        else:
            c.execute("UPDATE schedules SET paused=0, last_fire_at=? WHERE name=?", (iso(now), name))


def delete(store: Store, name: str) -> None:
    """Remove the schedule; its fires stay as history."""
    with store.tx() as c:
        c.execute("DELETE FROM schedules WHERE name=?", (name,))


def set_last_fire(store: Store, name: str, when: datetime) -> None:
    with store.tx() as c:
        c.execute("UPDATE schedules SET last_fire_at=? WHERE name=?", (iso(when), name))


# --- fires (schedule_runs) ---------------------------------------------------------------------------
def add_schedule_run(store: Store, schedule: str, fire_at: datetime, status: FireStatus, detail: str | None,
                     now: datetime, finished: bool = False) -> int:
    """Record one fire; returns its row id."""
    with store.tx() as c:
        cur = c.execute(
            "INSERT INTO schedule_runs(schedule, fire_at, status, detail, started_at, finished_at)"
            " VALUES (?,?,?,?,?,?)",
            (schedule, iso(fire_at), status, detail, iso(now), iso(now) if finished else None),
        )
        return int(cur.lastrowid or 0)


_FIRE_COLUMNS = frozenset({"run_id", "status", "detail", "started_at", "finished_at"})


def update_schedule_run(store: Store, row_id: int, **fields: Any) -> None:
    """Set some of run_id, status, detail, started_at, finished_at (datetimes are stored as ISO text)."""
    unknown = set(fields) - _FIRE_COLUMNS
    if unknown:
        raise ValueError(f"schedule_runs has no column(s) {sorted(unknown)}")
    values = {k: (iso(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
    cols = ", ".join(f"{k}=?" for k in values)
    with store.tx() as c:
        c.execute(f"UPDATE schedule_runs SET {cols} WHERE id=?", (*values.values(), row_id))


def schedule_runs(store: Store, name: str, limit: int = 50) -> list[sqlite3.Row]:
    """The latest ``limit`` fires of a schedule, newest first."""
    return store.query("SELECT * FROM schedule_runs WHERE schedule=? ORDER BY id DESC LIMIT ?", (name, limit))


def finished_schedule_runs(store: Store, name: str, limit: int = 100) -> list[sqlite3.Row]:
    """The latest ``limit`` fires of a schedule that are over (neither running nor queued), newest first."""
    active = sorted(FireStatus.active())
    return store.query(f"SELECT * FROM schedule_runs WHERE schedule=? AND status NOT IN ({_marks(active)})"
                       " ORDER BY id DESC LIMIT ?", (name, *active, limit))


def active_schedule_runs(store: Store, name: str | None = None) -> list[sqlite3.Row]:
    """Fires whose run is going or waiting (of one schedule, or of all), oldest first."""
    active = sorted(FireStatus.active())
    sql = f"SELECT * FROM schedule_runs WHERE status IN ({_marks(active)})"
    args: list[str] = [*active]
    if name is not None:
        sql += " AND schedule=?"
        args.append(name)
    return store.query(sql + " ORDER BY id", tuple(args))


def _marks(values: list[FireStatus]) -> str:
    return ",".join("?" * len(values))
