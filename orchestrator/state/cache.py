"""The stage cache's entries (table ``cache_entries``): one per cache key, naming the run whose attempt
produced it and, for each output, the digests of its files in the object store.

The files themselves are in the content-addressed object store under ``$LHORCH_HOME/cache/objects``
(lhorch.orchestrator.execution.stage_cache); this module only keeps the rows.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from lhorch.orchestrator.core.status import StageStatus
from lhorch.orchestrator.state.store import Store, iso, parse_iso, utcnow


class CachedFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str  # relative to the output ("" for an output that is one file)
    sha256: str
    size: int
    executable: bool = False


class CachedOutput(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    sha256: str  # as artifacts.sha256_path gives it, so that downstream cache keys match
    size: int
    kind: Literal["file", "dir"]
    files: list[CachedFile]
    dirs: list[str] = []  # folders of a "dir" output, empty ones included


class CacheEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    key: str
    pipeline: str
    stage: str
    run_id: str
    outputs: list[CachedOutput]
    size_bytes: int
    created_at: datetime
    last_used_at: datetime
    uses: int = 0


def _entry(row: object) -> CacheEntry:
    r = dict(row)  # type: ignore[call-overload]
    return CacheEntry(key=r["key"], pipeline=r["pipeline"], stage=r["stage"], run_id=r["run_id"],
                      outputs=[CachedOutput.model_validate(o) for o in json.loads(r["outputs_json"])],
                      size_bytes=r["size_bytes"], created_at=parse_iso(r["created_at"]) or utcnow(),
                      last_used_at=parse_iso(r["last_used_at"]) or utcnow(), uses=r["uses"])


def get(store: Store, key: str) -> CacheEntry | None:
    rows = store.query("SELECT * FROM cache_entries WHERE key=?", (key,))
    return _entry(rows[0]) if rows else None


def put(store: Store, key: str, *, pipeline: str, stage: str, run_id: str, outputs: list[CachedOutput]) -> None:
    """Keep what ``run_id``'s attempt produced under ``key``; a newer result replaces an older one."""
    now = iso(utcnow())
    with store.tx() as c:
        c.execute(
            "INSERT OR REPLACE INTO cache_entries(key, pipeline, stage, run_id, outputs_json, size_bytes, created_at,"
            " last_used_at, uses) VALUES (?,?,?,?,?,?,?,?,0)",
            (key, pipeline, stage, run_id, json.dumps([o.model_dump() for o in outputs]),
             sum(o.size for o in outputs), now, now))


def touch(store: Store, key: str) -> None:
    """Note that a run reused the entry (for `lhorch cache ls` and pruning by last use)."""
    with store.tx() as c:
        c.execute("UPDATE cache_entries SET last_used_at=?, uses=uses+1 WHERE key=?", (iso(utcnow()), key))


def delete(store: Store, key: str) -> None:
    with store.tx() as c:
        c.execute("DELETE FROM cache_entries WHERE key=?", (key,))


def entries(store: Store, pipeline: str | None = None) -> list[CacheEntry]:
    """Every entry (of one pipeline), most recently used first."""
    if pipeline:
        rows = store.query("SELECT * FROM cache_entries WHERE pipeline=? ORDER BY last_used_at DESC", (pipeline,))
    else:
        rows = store.query("SELECT * FROM cache_entries ORDER BY last_used_at DESC")
    return [_entry(r) for r in rows]


def runs_using(store: Store, key: str) -> list[str]:
    """The runs with a finished attempt under ``key``: the one that produced the entry and those that
    reused it."""
    rows = store.query("SELECT DISTINCT run_id FROM attempts WHERE cache_key=? AND status IN (?,?)",
                       (key, StageStatus.SUCCEEDED, StageStatus.CACHED))
    return [r["run_id"] for r in rows]
