"""The state store: one SQLite database (WAL) under $LHORCH_HOME.

Several lhorch processes may use it at once (a run, `lhorch status`, the scheduler): WAL lets readers
run beside one writer, ``busy_timeout`` makes writers wait for each other instead of failing, and
every write is one short transaction. The schema is versioned (``migrations``: append-only,
``PRAGMA user_version``).

This module owns the connection and the run/attempt/event/artifact records; the schema is in
``migrations``. Every other table has its own module beside this one (``ledger``, ``history``,
``profiles``, ``schedules``, ``models``, ``cloud_resources``): ``state/`` is the only place with SQL.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from lhorch.orchestrator.core.status import RunStatus, StageStatus
from lhorch.orchestrator.state.migrations import migrate


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat()


def parse_iso(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def lhorch_home() -> Path:
    return Path(os.environ.get("LHORCH_HOME") or Path.home() / ".lhorch").expanduser()


def new_run_id(pipeline: str, now: datetime | None = None) -> str:
    now = now or utcnow()
    return f"{pipeline[:24]}-{now.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if missing and make it 0700: what lhorch keeps holds stage
    environments, logs and outputs, none of which other users of the machine should read."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` if missing, readable by its owner only; tighten it if it exists."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return path


def install_id(home: Path) -> str:
    """This installation's random id (``$LHORCH_HOME/install-id``), tagged on everything lhorch creates
    in the cloud, so `gc` and `down` touch only what this installation made (issue 15)."""
    path = home / "install-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_hex(8)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: theirs wins
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


class Store:
    def __init__(self, home: Path | None = None):
        self.home = private_dir(Path(home) if home is not None else lhorch_home())
        self.path = self.home / "state.db"
        # SQLite gives the WAL and SHM files the database file's mode, so 0600 here covers all three.
        private_file(self.path)
        for sidecar in (self.home / "state.db-wal", self.home / "state.db-shm"):
            if sidecar.exists() and sidecar.stat().st_mode & 0o077:
                sidecar.chmod(0o600)
        self._local = threading.local()
        self._migrate()

    # --- connection ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
        return conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the write lock up front so two processes
        never interleave a read-modify-write."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, args).fetchall()

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _migrate(self) -> None:
        migrate(self._conn(), self.path)

    @property
    def schema_version(self) -> int:
        return int(self._conn().execute("PRAGMA user_version").fetchone()[0])

    # --- runs ---------------------------------------------------------------------------------
    def runs_dir(self, run_id: str) -> Path:
        """The run's folder, created private (0700) if missing."""
        return private_dir(private_dir(self.home / "runs") / run_id)

    @functools.cached_property
    def install_id(self) -> str:
        """Written once per LHORCH_HOME and never changed: read once per Store (gc asks per resource)."""
        return install_id(self.home)

    def create_run(self, run_id: str, pipeline: str, spec: BaseModel, pipeline_file: str | None,
                   trigger: str = "manual", plan: BaseModel | None = None) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO runs(id, pipeline, pipeline_file, spec_json, plan_json, status, pid, host, trigger,"
                " created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, pipeline, pipeline_file, spec.model_dump_json(by_alias=True),
                 plan.model_dump_json() if plan else None, RunStatus.PENDING, os.getpid(), os.uname().nodename,
                 trigger, iso(utcnow())),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        fields = {k: (iso(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE runs SET {cols} WHERE id=?", (*fields.values(), run_id))

    def get_run(self, run_id: str, *, prefix: bool = True) -> sqlite3.Row | None:
        """The run with this id, or (``prefix``) the one run whose id starts with it."""
        rows = self.query("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows and prefix:
            # Accept a unique prefix, as git does for commits.
            rows = self.query("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at DESC", (run_id + "%",))
            if len(rows) != 1:
                return None
        return rows[0]

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[sqlite3.Row]:
        if pipeline:
            return self.query("SELECT * FROM runs WHERE pipeline=? ORDER BY created_at DESC LIMIT ?",
                              (pipeline, limit))
        return self.query("SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))

    def runs_in(self, statuses: frozenset[RunStatus] | set[RunStatus], *, trigger: str | None = None
                ) -> list[sqlite3.Row]:
        """Runs whose status is one of ``statuses`` (and, given one, started by ``trigger``), oldest first."""
        marks = ",".join("?" * len(statuses))
        sql, args = f"SELECT * FROM runs WHERE status IN ({marks})", [str(s) for s in sorted(statuses)]
        if trigger is not None:
            sql += " AND trigger=?"
            args.append(trigger)
        return self.query(sql + " ORDER BY created_at", tuple(args))

    def first_run_since(self, trigger: str, since: str) -> sqlite3.Row | None:
        """The first run started by ``trigger`` created at or after ``since`` (an ISO time)."""
        rows = self.query("SELECT * FROM runs WHERE trigger=? AND created_at >= ? ORDER BY created_at LIMIT 1",
                          (trigger, since))
        return rows[0] if rows else None

    def latest_unfinished_run(self, pipeline: str, pipeline_file: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT * FROM runs WHERE pipeline=? AND pipeline_file=? ORDER BY created_at DESC LIMIT 1",
            (pipeline, pipeline_file),
        )
        if rows and rows[0]["status"] in RunStatus.resumable():
            return rows[0]
        return None

    # --- attempts -----------------------------------------------------------------------------
    def attempt_number(self, attempt_id: int) -> int:
        """Which attempt of its stage this is (1 for the first)."""
        return int(self.query("SELECT attempt FROM attempts WHERE id=?", (attempt_id,))[0]["attempt"])

    def start_attempt(self, run_id: str, stage: str, cache_key: str, target: str, cluster: str | None) -> int:
        with self.tx() as c:
            row = c.execute("SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE run_id=? AND stage=?",
                            (run_id, stage)).fetchone()
            cur = c.execute(
                "INSERT INTO attempts(run_id, stage, attempt, status, cache_key, target, cluster, started_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, stage, row[0] + 1, StageStatus.RUNNING, cache_key, target, cluster, iso(utcnow())),
            )
            return int(cur.lastrowid or 0)

    def finish_attempt(self, attempt_id: int, status: str, **fields: Any) -> None:
        fields = {"status": status, "finished_at": iso(utcnow()), **fields}
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE attempts SET {cols} WHERE id=?", (*fields.values(), attempt_id))

    def record_cached(self, run_id: str, stage: str, cache_key: str, note: str) -> None:
        with self.tx() as c:
            row = c.execute("SELECT COALESCE(MAX(attempt), 0) FROM attempts WHERE run_id=? AND stage=?",
                            (run_id, stage)).fetchone()
            now = iso(utcnow())
            c.execute(
                "INSERT INTO attempts(run_id, stage, attempt, status, cache_key, target, started_at, finished_at,"
                " error) VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, stage, row[0] + 1, StageStatus.CACHED, cache_key, "cache", now, now, note),
            )

    def attempts(self, run_id: str, stage: str | None = None) -> list[sqlite3.Row]:
        if stage:
            return self.query("SELECT * FROM attempts WHERE run_id=? AND stage=? ORDER BY id", (run_id, stage))
        return self.query("SELECT * FROM attempts WHERE run_id=? ORDER BY id", (run_id,))

    def stage_states(self, run_id: str) -> dict[str, sqlite3.Row]:
        """The latest attempt of each stage of a run."""
        return {row["stage"]: row for row in self.attempts(run_id)}

    def mark_running_attempts(self, run_id: str, status: str, error: str) -> None:
        with self.tx() as c:
            c.execute("UPDATE attempts SET status=?, error=?, finished_at=? WHERE run_id=? AND status=?",
                      (status, error, iso(utcnow()), run_id, StageStatus.RUNNING))

    # --- events -------------------------------------------------------------------------------
    def event(self, run_id: str, kind: str, message: str, stage: str | None = None, **data: Any) -> None:
        with self.tx() as c:
            c.execute("INSERT INTO events(run_id, stage, at, kind, message, data_json) VALUES (?,?,?,?,?,?)",
                      (run_id, stage, iso(utcnow()), kind, message, json.dumps(data, default=str) if data else None))

    def events(self, run_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM events WHERE run_id=? ORDER BY id", (run_id,))

    # --- artifacts ----------------------------------------------------------------------------
    def record_artifact(self, run_id: str, stage: str, name: str, path: Path, sha256: str, size: int,
                        uri: str | None = None) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO artifacts(run_id, stage, name, path, sha256, size_bytes, uri, created_at)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (run_id, stage, name, str(path), sha256, size, uri, iso(utcnow())),
            )

    def artifacts(self, run_id: str, stage: str | None = None) -> list[sqlite3.Row]:
        if stage:
            return self.query("SELECT * FROM artifacts WHERE run_id=? AND stage=? ORDER BY id", (run_id, stage))
        return self.query("SELECT * FROM artifacts WHERE run_id=? ORDER BY id", (run_id,))
