"""What a schedule is: its fire times (cron in a time zone, DST included) and its rows in the store.

Fire times are computed in the schedule's own wall-clock time and then mapped to instants:

- a wall time that does not exist (spring forward: 02:30 in Europe/Berlin on the last Sunday of
  March) fires once, at the instant the clocks jump (03:00 local), like Vixie cron;
- a wall time that happens twice (fall back: 02:30 on the last Sunday of October) fires once, at its
  first occurrence, unless the hour field is a wildcard (``*/15 * * * *``): such interval-like
  schedules fire in both occurrences of the repeated hour.

Six fields mean seconds first (``*/5 * * * * *``: every 5 s), as in Quartz and Spring; five fields
are classic cron. Every instant leaving this module is timezone-aware UTC.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

from croniter import croniter

from lhorch.orchestrator.core.errors import NotFoundError, UsageError
from lhorch.orchestrator.state.store import Store, iso, parse_iso

UTC = timezone.utc
FINISHED_OK = {"succeeded", "promoted", "not_promoted", "skipped"}
ACTIVE = {"running", "queued"}


# --- cron math ---------------------------------------------------------------------------------
def _fields(cron: str) -> list[str]:
    return cron.split()


def validate_cron(cron: str, tz: str = "UTC") -> None:
    fields = _fields(cron)
    if len(fields) not in (5, 6):
        raise UsageError(f"{cron!r} is not a cron expression",
                         hint='Use 5 fields (minute hour day month weekday, e.g. "0 2 * * *") or 6 with seconds first ("*/5 * * * * *").')
    try:
        ZoneInfo(tz)
    except Exception:
        raise UsageError(f"unknown time zone {tz!r}", hint="Use an IANA name such as Europe/Berlin or UTC.") from None
    if not croniter.is_valid(cron, second_at_beginning=len(fields) == 6):
        raise UsageError(f"{cron!r} is not a valid cron expression",
                         hint='Fields: minute hour day-of-month month day-of-week, e.g. "30 2 * * *".')
    try:
        next_fires(cron, tz, datetime(2024, 1, 1, tzinfo=UTC), 1)
    except Exception:
        raise UsageError(f"{cron!r} never fires", hint="Check day and month: e.g. 30 February does not exist.") from None


def _local_naive(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _instants_of_wall(wall: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants at which the local wall time ``wall`` occurs (0, 1 or 2 of them)."""
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    if _local_naive(first.astimezone(UTC), tz) != wall:
        # Does not exist (spring forward): fire at the jump, the first instant whose wall time is later.
        lo = int(second.astimezone(UTC).timestamp())
        hi = int(first.astimezone(UTC).timestamp())
        while lo < hi:
            mid = (lo + hi) // 2
            if _local_naive(datetime.fromtimestamp(mid, UTC), tz) >= wall:
                hi = mid
            else:
                lo = mid + 1
        return [datetime.fromtimestamp(lo, UTC)]
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    if a == b or not both_folds:
        return [a]
    return sorted({a, b})


def iter_fires(cron: str, tz_name: str, after: datetime, max_steps: int = 100_000) -> Iterator[datetime]:
    """Fire instants strictly after ``after``, in order (UTC)."""
    tz = ZoneInfo(tz_name)
    fields = _fields(cron)
    seconds_first = len(fields) == 6
    both_folds = fields[2 if seconds_first else 1].startswith("*")
    # Start a few wall hours early so an occurrence in a repeated hour is not missed.
    start_wall = _local_naive(after, tz) - timedelta(hours=3)
    it = croniter(cron, start_wall, second_at_beginning=seconds_first)
    heap: list[datetime] = []
    last: datetime | None = None
    for _ in range(max_steps):
        wall = it.get_next(datetime)
        instants = _instants_of_wall(wall, tz, both_folds)
        earliest = instants[0]
        while heap and heap[0] < earliest:
            t = heapq.heappop(heap)
            if t > after and t != last:
                last = t
                yield t
        for t in instants:
            heapq.heappush(heap, t)
    raise RuntimeError(f"cron {cron!r}: no further fire time within {max_steps} steps")


def next_fires(cron: str, tz: str, after: datetime, n: int = 5) -> list[datetime]:
    out: list[datetime] = []
    for t in iter_fires(cron, tz, after):
        out.append(t)
        if len(out) >= n:
            break
    return out


def fires_between(cron: str, tz: str, after: datetime, until: datetime, limit: int = 10_000) -> list[datetime]:
    """Fire instants in (after, until]; RuntimeError when there are more than ``limit``."""
    out: list[datetime] = []
    for t in iter_fires(cron, tz, after, max_steps=limit + 10):
        if t > until:
            break
        out.append(t)
    return out


# --- rows --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduleRow:
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
    def from_row(cls, row: sqlite3.Row) -> "ScheduleRow":
        return cls(row["name"], row["pipeline_file"], row["cron"], row["timezone"], bool(row["paused"]),
                   row["overlap"], row["catchup"], parse_iso(row["last_fire_at"]), parse_iso(row["created_at"]))

    def next_fire(self, now: datetime) -> datetime | None:
        if self.paused:
            return None
        return next_fires(self.cron, self.timezone, max(now, self.last_fire_at or now), 1)[0]

    def local(self, instant: datetime) -> datetime:
        return instant.astimezone(ZoneInfo(self.timezone))


def upsert_schedule(store: Store, name: str, pipeline_file: Path, cron: str, tz: str, overlap: str,
                    catchup: str, now: datetime) -> ScheduleRow:
    """Add a schedule, or update one of the same name (keeping its pause state and last fire)."""
    validate_cron(cron, tz)
    with store.tx() as c:
        c.execute(
            "INSERT INTO schedules(name, pipeline_file, cron, timezone, paused, overlap, catchup, last_fire_at, created_at)"
            " VALUES (?,?,?,?,0,?,?,?,?) ON CONFLICT(name) DO UPDATE SET pipeline_file=excluded.pipeline_file,"
            " cron=excluded.cron, timezone=excluded.timezone, overlap=excluded.overlap, catchup=excluded.catchup",
            (name, str(pipeline_file), cron, tz, overlap, catchup, iso(now), iso(now)),
        )
    return get_schedule(store, name)


def get_schedule(store: Store, name: str) -> ScheduleRow:
    rows = store.query("SELECT * FROM schedules WHERE name=?", (name,))
    if not rows:
        raise NotFoundError(f"no schedule named {name!r}", hint="`lhorch schedule list` shows the schedules.")
    return ScheduleRow.from_row(rows[0])


def list_schedules(store: Store) -> list[ScheduleRow]:
    return [ScheduleRow.from_row(r) for r in store.query("SELECT * FROM schedules ORDER BY name")]


def set_paused(store: Store, name: str, paused: bool, now: datetime) -> None:
    """Pause or resume. Resuming starts counting from now: fires missed while paused are not caught up."""
    get_schedule(store, name)
    with store.tx() as c:
        if paused:
            c.execute("UPDATE schedules SET paused=1 WHERE name=?", (name,))
        else:
            c.execute("UPDATE schedules SET paused=0, last_fire_at=? WHERE name=?", (iso(now), name))


def remove_schedule(store: Store, name: str) -> None:
    get_schedule(store, name)
    with store.tx() as c:
        c.execute("DELETE FROM schedules WHERE name=?", (name,))


def set_last_fire(store: Store, name: str, when: datetime) -> None:
    with store.tx() as c:
        c.execute("UPDATE schedules SET last_fire_at=? WHERE name=?", (iso(when), name))


def add_schedule_run(store: Store, schedule: str, fire_at: datetime, status: str, detail: str | None,
                     now: datetime, finished: bool = False) -> int:
    with store.tx() as c:
        cur = c.execute(
            "INSERT INTO schedule_runs(schedule, fire_at, status, detail, started_at, finished_at) VALUES (?,?,?,?,?,?)",
            (schedule, iso(fire_at), status, detail, iso(now), iso(now) if finished else None),
        )
        return int(cur.lastrowid)


def update_schedule_run(store: Store, row_id: int, **fields: Any) -> None:
    fields = {k: (iso(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
    cols = ", ".join(f"{k}=?" for k in fields)
    with store.tx() as c:
        c.execute(f"UPDATE schedule_runs SET {cols} WHERE id=?", (*fields.values(), row_id))


def schedule_runs(store: Store, name: str, limit: int = 50) -> list[sqlite3.Row]:
    return store.query("SELECT * FROM schedule_runs WHERE schedule=? ORDER BY id DESC LIMIT ?", (name, limit))


def last_outcome(store: Store, name: str) -> tuple[sqlite3.Row | None, int]:
    """The latest finished schedule_run and how many in a row before it (itself included) failed."""
    rows = store.query("SELECT * FROM schedule_runs WHERE schedule=? AND status NOT IN ('running','queued')"
                       " ORDER BY id DESC LIMIT 100", (name,))
    failures = 0
    for row in rows:
        if row["status"] in FINISHED_OK or row["status"] == "missed":
            break
        failures += 1
    return (rows[0] if rows else None), failures


def run_cost(store: Store, run_id: str) -> float:
    """Money spent by a run (estimates are not spend)."""
    rows = store.query("SELECT COALESCE(SUM(usd), 0) FROM ledger WHERE run_id=? AND kind != 'estimate'", (run_id,))
    return float(rows[0][0] or 0.0)


def run_metrics(store: Store, run_id: str) -> dict[str, Any] | None:
    for art in store.query("SELECT * FROM artifacts WHERE run_id=? AND name='metrics' ORDER BY id DESC", (run_id,)):
        path = Path(art["path"])
        path = path / "metrics.json" if path.is_dir() else path
        try:
            return json.loads(path.read_text())
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
        run = store.query("SELECT * FROM runs WHERE id=?", (sr["run_id"],)) if sr["run_id"] else []
        if run:
            r = run[0]
            entry["run_status"] = r["status"]
            start, end = parse_iso(r["started_at"] or r["created_at"]), parse_iso(r["finished_at"])
            if start and end:
                entry["duration_s"] = round((end - start).total_seconds(), 3)
            entry["cost_usd"] = round(run_cost(store, r["id"]), 4)
            entry["metrics"] = run_metrics(store, r["id"])
            model = store.query("SELECT version, status FROM models WHERE run_id=? ORDER BY version DESC LIMIT 1", (r["id"],))
            if model:
                entry["model_version"] = model[0]["version"]
                entry["model_status"] = model[0]["status"]
        elif sr["started_at"] and sr["finished_at"]:
            entry["duration_s"] = round((parse_iso(sr["finished_at"]) - parse_iso(sr["started_at"])).total_seconds(), 3)
        out.append(entry)
    return out
