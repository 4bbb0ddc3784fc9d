"""The state store: one SQLite database (WAL) under $LHORCH_HOME.

Several lhorch processes may use it at once (a run, `lhorch status`, the scheduler): WAL lets readers
run beside one writer, ``busy_timeout`` makes writers wait for each other instead of failing, and
every write is one short transaction. The schema is versioned; ``MIGRATIONS`` only ever grows.

This module owns the connection, the schema and the run/attempt/event/artifact records. Feature
modules (profiler cache, history, ledger, scheduler, model registry, cloud resources) keep their own
queries beside their logic and use ``Store.tx()``.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

MIGRATIONS: list[str] = [
    # 1: runs and what happens in them
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        pipeline_file TEXT,
        spec_json TEXT NOT NULL,
        plan_json TEXT,
        status TEXT NOT NULL,          -- pending | running | succeeded | failed | interrupted | budget_exceeded | refused | skipped
        pid INTEGER,
        host TEXT,
        trigger TEXT NOT NULL DEFAULT 'manual',   -- manual | schedule:<name> | resume
        fingerprint TEXT,              -- hash of the spec and every external input's content
        created_at TEXT NOT NULL,
        started_at TEXT,
        finished_at TEXT,
        error TEXT
    );
    CREATE INDEX runs_pipeline ON runs(pipeline, created_at);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL REFERENCES runs(id),
        stage TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,          -- pending | running | succeeded | failed | cached | skipped | stopped
        cache_key TEXT,
        target TEXT,
        cluster TEXT,
        job_id TEXT,
        started_at TEXT,
        finished_at TEXT,
        exit_code INTEGER,
        error TEXT,
        peak_rss_mb REAL,
        peak_gpu_mb REAL,
        UNIQUE(run_id, stage, attempt)
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        stage TEXT,
        at TEXT NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data_json TEXT
    );
    CREATE INDEX events_run ON events(run_id, id);
    CREATE TABLE artifacts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        uri TEXT,
        created_at TEXT NOT NULL,
        UNIQUE(run_id, stage, name)
    );
    """,
    # 2: what the profiler measured, and what stages were observed to need
    """
    CREATE TABLE profile_cache (
        fingerprint TEXT PRIMARY KEY,
        measured_at TEXT NOT NULL,
        profile_json TEXT NOT NULL
    );
    CREATE TABLE stage_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline TEXT NOT NULL,
        stage TEXT NOT NULL,
        spec_hash TEXT NOT NULL,
        machine TEXT NOT NULL,        -- profile fingerprint or cloud instance type
        target TEXT NOT NULL,
        wall_seconds REAL NOT NULL,
        peak_rss_mb REAL,
        peak_gpu_mb REAL,
        input_bytes INTEGER,
        output_bytes INTEGER,
        finished_at TEXT NOT NULL
    );
    CREATE INDEX stage_history_key ON stage_history(pipeline, stage, machine);
    """,
    # 3: money
    """
    CREATE TABLE ledger (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        stage TEXT,
        pipeline TEXT NOT NULL,
        kind TEXT NOT NULL,            -- estimate | instance | volume | transfer | s3 | ...
        item TEXT NOT NULL,            -- e.g. instance id or resource
        unit_price REAL NOT NULL,
        quantity REAL NOT NULL,
        unit TEXT NOT NULL,            -- hour | second | GB | request
        usd REAL NOT NULL,
        source TEXT NOT NULL,          -- where the price came from
        at TEXT NOT NULL
    );
    CREATE INDEX ledger_run ON ledger(run_id);
    CREATE INDEX ledger_pipeline ON ledger(pipeline, at);
    """,
    # 4: cloud resources, recorded before they are created (intent) and after they are gone
    """
    CREATE TABLE cloud_resources (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        provider TEXT NOT NULL,
        kind TEXT NOT NULL,            -- cluster | instance | security_group | key_pair | bucket
        name TEXT NOT NULL,            -- lhorch's own name / client token
        resource_id TEXT,              -- the cloud's id once known
        state TEXT NOT NULL,           -- intent | created | released
        details_json TEXT,
        price_per_hour REAL NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL,
        released_at TEXT,
        expires_at TEXT,
        UNIQUE(provider, kind, name)
    );
    """,
    # 5: schedules and the model registry
    """
    CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        pipeline_file TEXT NOT NULL,
        cron TEXT NOT NULL,
        timezone TEXT NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        overlap TEXT NOT NULL DEFAULT 'skip',
        catchup TEXT NOT NULL DEFAULT 'once',
        last_fire_at TEXT,
        created_at TEXT NOT NULL
    );
    CREATE TABLE schedule_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        schedule TEXT NOT NULL,
        fire_at TEXT NOT NULL,
        run_id TEXT,
        status TEXT NOT NULL,
        detail TEXT,
        started_at TEXT,
        finished_at TEXT
    );
    CREATE TABLE models (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        pipeline TEXT NOT NULL,
        version INTEGER NOT NULL,
        run_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT,
        metrics_json TEXT NOT NULL,
        status TEXT NOT NULL,          -- candidate | current | rejected | retired
        reason TEXT,
        created_at TEXT NOT NULL,
        UNIQUE(pipeline, version)
    );
    """,
]

TERMINAL_RUN = {"succeeded", "failed", "interrupted", "budget_exceeded", "refused", "skipped"}


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


class Store:
    def __init__(self, home: Path | None = None):
        self.home = Path(home) if home is not None else lhorch_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "state.db"
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
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this lhorch ({len(MIGRATIONS)})")
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute(f"PRAGMA user_version={len(MIGRATIONS)}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # --- runs ---------------------------------------------------------------------------------
    def runs_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def create_run(self, run_id: str, pipeline: str, spec: BaseModel, pipeline_file: str | None,
                   trigger: str = "manual", plan: BaseModel | None = None) -> None:
        with self.tx() as c:
            c.execute(
                "INSERT INTO runs(id, pipeline, pipeline_file, spec_json, plan_json, status, pid, host, trigger, created_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?)",
                (run_id, pipeline, pipeline_file, spec.model_dump_json(by_alias=True),
                 plan.model_dump_json() if plan else None, "pending", os.getpid(), os.uname().nodename,
                 trigger, iso(utcnow())),
            )

    def update_run(self, run_id: str, **fields: Any) -> None:
        if not fields:
            return
        fields = {k: (iso(v) if isinstance(v, datetime) else v) for k, v in fields.items()}
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as c:
            c.execute(f"UPDATE runs SET {cols} WHERE id=?", (*fields.values(), run_id))

    def get_run(self, run_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM runs WHERE id=?", (run_id,))
        if not rows:
            # Accept a unique prefix, as git does for commits.
            rows = self.query("SELECT * FROM runs WHERE id LIKE ? ORDER BY created_at DESC", (run_id + "%",))
            if len(rows) != 1:
                return None
        return rows[0]

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[sqlite3.Row]:
        if pipeline:
            return self.query("SELECT * FROM runs WHERE pipeline=? ORDER BY created_at DESC LIMIT ?", (pipeline, limit))
        return self.query("SELECT * FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))

    def latest_unfinished_run(self, pipeline: str, pipeline_file: str) -> sqlite3.Row | None:
        rows = self.query(
            "SELECT * FROM runs WHERE pipeline=? AND pipeline_file=? ORDER BY created_at DESC LIMIT 1",
            (pipeline, pipeline_file),
        )
        if rows and rows[0]["status"] in ("pending", "running", "failed", "interrupted"):
            return rows[0]
        return None

    # --- attempts -----------------------------------------------------------------------------
    def last_succeeded_fingerprint(self, pipeline: str, *, other_than: str) -> str | None:
        """The fingerprint of the pipeline's latest successful run other than ``other_than``."""
        rows = self.query("SELECT fingerprint FROM runs WHERE pipeline=? AND status='succeeded' AND id<>?"
                          " ORDER BY created_at DESC LIMIT 1", (pipeline, other_than))
        return rows[0]["fingerprint"] if rows else None

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
                (run_id, stage, row[0] + 1, "running", cache_key, target, cluster, iso(utcnow())),
            )
            return int(cur.lastrowid)

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
                "INSERT INTO attempts(run_id, stage, attempt, status, cache_key, target, started_at, finished_at, error)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (run_id, stage, row[0] + 1, "cached", cache_key, "cache", now, now, note),
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
            c.execute("UPDATE attempts SET status=?, error=?, finished_at=? WHERE run_id=? AND status='running'",
                      (status, error, iso(utcnow()), run_id))

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
