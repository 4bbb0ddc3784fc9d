"""The model registry's rows (table ``models``): one numbered version per registered model.

Exactly one version of a pipeline is ``current`` at a time, or none; every change of the current one
happens in one transaction here. Whether a model may become current is decided by the registry
(``lhorch.orchestrator.scheduling.model_registry``), which passes its gate in.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lhorch.orchestrator.core.status import ModelStatus
from lhorch.orchestrator.state.store import Store, iso, parse_iso


@dataclass(frozen=True)
class ModelVersion:
    pipeline: str
    version: int
    run_id: str
    stage: str
    path: str
    sha256: str | None
    metrics: dict[str, Any]
    status: ModelStatus
    reason: str | None
    created_at: datetime

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> ModelVersion:
        created = parse_iso(row["created_at"])
        assert created is not None  # NOT NULL in the schema
        return cls(row["pipeline"], row["version"], row["run_id"], row["stage"], row["path"], row["sha256"],
                   json.loads(row["metrics_json"] or "{}"), ModelStatus(row["status"]), row["reason"], created)

    def to_json(self) -> dict[str, Any]:
        return {"pipeline": self.pipeline, "version": self.version, "run_id": self.run_id, "stage": self.stage,
                "path": self.path, "sha256": self.sha256, "metrics": self.metrics, "status": str(self.status),
                "reason": self.reason, "created_at": iso(self.created_at)}


Gate = Callable[[ModelVersion | None], tuple[bool, str]]


# --- reading -------------------------------------------------------------------------------------------
def current(store: Store, pipeline: str) -> ModelVersion | None:
    rows = store.query("SELECT * FROM models WHERE pipeline=? AND status=?", (pipeline, ModelStatus.CURRENT))
    return ModelVersion.from_row(rows[0]) if rows else None


def versions(store: Store, pipeline: str | None = None) -> list[ModelVersion]:
    """Every version of ``pipeline`` (or of every pipeline), oldest first."""
    if pipeline:
        rows = store.query("SELECT * FROM models WHERE pipeline=? ORDER BY version", (pipeline,))
    else:
        rows = store.query("SELECT * FROM models ORDER BY pipeline, version")
    return [ModelVersion.from_row(r) for r in rows]


def get(store: Store, pipeline: str, version: int) -> ModelVersion | None:
    rows = store.query("SELECT * FROM models WHERE pipeline=? AND version=?", (pipeline, version))
    return ModelVersion.from_row(rows[0]) if rows else None


def of_run(store: Store, run_id: str) -> ModelVersion | None:
    """The (latest) version registered from ``run_id``."""
    rows = store.query("SELECT * FROM models WHERE run_id=? ORDER BY version DESC LIMIT 1", (run_id,))
    return ModelVersion.from_row(rows[0]) if rows else None


def latest_with_status(store: Store, pipeline: str, status: ModelStatus) -> ModelVersion | None:
    rows = store.query("SELECT * FROM models WHERE pipeline=? AND status=? ORDER BY version DESC LIMIT 1",
                       (pipeline, status))
    return ModelVersion.from_row(rows[0]) if rows else None


# --- writing -------------------------------------------------------------------------------------------
def add_version(store: Store, *, pipeline: str, run_id: str, stage: str, sha256: str | None,
                metrics: dict[str, Any], path_of: Callable[[int], str], gate: Gate, now: datetime
                ) -> tuple[int, bool, str]:
    """Register the next version of ``pipeline`` in one transaction: ``gate(current)`` decides whether
    it becomes current (the old current is then retired) or is rejected. Returns (version, promoted,
    reason)."""
    with store.tx() as c:
        version = int(c.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM models WHERE pipeline=?",
                                (pipeline,)).fetchone()[0])
        row = c.execute("SELECT * FROM models WHERE pipeline=? AND status=?",
                        (pipeline, ModelStatus.CURRENT)).fetchone()
        ok, reason = gate(ModelVersion.from_row(row) if row else None)
        if ok:
            c.execute("UPDATE models SET status=? WHERE pipeline=? AND status=?",
                      (ModelStatus.RETIRED, pipeline, ModelStatus.CURRENT))
        c.execute(
            "INSERT INTO models(pipeline, version, run_id, stage, path, sha256, metrics_json, status, reason,"
            " created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (pipeline, version, run_id, stage, path_of(version), sha256, json.dumps(metrics),
             ModelStatus.CURRENT if ok else ModelStatus.REJECTED, reason, iso(now)),
        )
    return version, ok, reason


def make_current(store: Store, pipeline: str, version: int, reason: str, *,
                 old_status: ModelStatus = ModelStatus.RETIRED, old_reason: str | None = None) -> None:
    """In one transaction: the current version (if any) becomes ``old_status`` (its reason replaced by
    ``old_reason`` when given), and ``version`` becomes current with ``reason``."""
    with store.tx() as c:
        c.execute("UPDATE models SET status=?, reason=COALESCE(?, reason) WHERE pipeline=? AND status=?",
                  (old_status, old_reason, pipeline, ModelStatus.CURRENT))
        c.execute("UPDATE models SET status=?, reason=? WHERE pipeline=? AND version=?",
                  (ModelStatus.CURRENT, reason, pipeline, version))
