"""The schema of the state store, as an append-only list of migrations.

Migration *n* (1-based) brings a database from ``PRAGMA user_version`` n-1 to n. Never edit or reorder
one that has shipped: a change is a new entry at the end (``ALTER TABLE`` ..., a new table), so that
every database, however old, reaches the current schema by the same steps.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

MIGRATIONS: list[str] = [
    # 1: runs and what happens in them
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        pipeline TEXT NOT NULL,
        pipeline_file TEXT,
        spec_json TEXT NOT NULL,
        plan_json TEXT,
        status TEXT NOT NULL,          -- RunStatus: pending | running | succeeded | failed | interrupted | ...
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
    # the stage cache (issue 20): one entry per cache key, its outputs' files in the object store
    """
    CREATE TABLE cache_entries (
        key TEXT PRIMARY KEY,          -- the stage's cache key (pipeline/artifacts.py cache_key)
        pipeline TEXT NOT NULL,
        stage TEXT NOT NULL,
        run_id TEXT NOT NULL,          -- the run whose attempt produced it
        outputs_json TEXT NOT NULL,    -- each output: name, sha256, size, and its files' digests
        size_bytes INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        last_used_at TEXT NOT NULL,
        uses INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX cache_entries_used ON cache_entries(last_used_at);
    """,
    # open ledger rows (issue 16): a billable resource is in the ledger before its create call
    # returns, at its worst case (to its hard stop) until the run, down or gc closes it
    """
    ALTER TABLE ledger ADD COLUMN state TEXT NOT NULL DEFAULT 'closed';
    ALTER TABLE ledger ADD COLUMN resource_id TEXT;
    ALTER TABLE ledger ADD COLUMN started_at TEXT;
    ALTER TABLE ledger ADD COLUMN ends_by TEXT;
    ALTER TABLE ledger ADD COLUMN minimum_s REAL NOT NULL DEFAULT 0;
    CREATE INDEX ledger_open ON ledger(state, run_id);
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Apply the migrations the database at ``path`` lacks, in one transaction; refuse a database
    written by a newer lhorch (its schema is unknown to this one)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{path} has schema version {version}, newer than this lhorch ({SCHEMA_VERSION})")
        for number in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
