"""What stages were observed to need, so estimates learn from real runs.

The runner calls ``record_stage`` after every finished stage, with the profile fingerprint (or the
cloud instance type) as ``machine``. The estimator reads ``observed`` / ``summarize``: a stage run
before on the same machine with the same spec is best predicted by its own history.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

from lhorch.orchestrator.state.store import Store, iso, parse_iso

_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Observation:
    pipeline: str
    stage: str
    spec_hash: str
    machine: str
    target: str
    wall_seconds: float
    peak_rss_mb: float | None
    peak_gpu_mb: float | None
    input_bytes: int | None
    output_bytes: int | None
    finished_at: datetime


@dataclass(frozen=True)
class HistorySummary:
    """Figures an estimator can use directly. Medians for time (one slow run on a busy machine should
    not move the estimate much); maxima for memory (a stage that once needed 12 GB will again)."""

    count: int
    median_wall_seconds: float
    min_wall_seconds: float
    max_wall_seconds: float
    max_peak_rss_mb: float | None
    max_peak_gpu_mb: float | None
    median_input_bytes: float | None
    median_output_bytes: float | None
    last_finished_at: datetime

    @property
    def seconds_per_input_gb(self) -> float | None:
        """Median wall time per GB of input, for scaling to a different input size."""
        if not self.median_input_bytes:
            return None
        return self.median_wall_seconds / (self.median_input_bytes / 1e9)


def record_stage(store: Store, *, pipeline: str, stage: str, spec_hash: str, machine: str, target: str,
                 wall_seconds: float, peak_rss_mb: float | None = None, peak_gpu_mb: float | None = None,
                 input_bytes: int | None = None, output_bytes: int | None = None,
                 finished_at: datetime) -> None:
    if wall_seconds < 0:
        raise ValueError(f"wall_seconds must be >= 0, got {wall_seconds}")
    with store.tx() as c:
        c.execute(
            "INSERT INTO stage_history(pipeline, stage, spec_hash, machine, target, wall_seconds, peak_rss_mb,"
            " peak_gpu_mb, input_bytes, output_bytes, finished_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (pipeline, stage, spec_hash, machine, target, float(wall_seconds), peak_rss_mb, peak_gpu_mb,
             input_bytes, output_bytes, iso(finished_at)),
        )


def runs_on(store: Store, machine: str) -> int:
    """How many stage runs were recorded on ``machine`` (a profile fingerprint or an instance type)."""
    rows = store.query("SELECT COUNT(*) AS n FROM stage_history WHERE machine=?", (machine,))
    return int(rows[0]["n"]) if rows else 0


def observed(store: Store, pipeline: str, stage: str, machine: str | None = None,
             spec_hash: str | None = None, *, limit: int = 50) -> list[Observation]:
    """The ``limit`` most recent observations of a stage, newest first, optionally only those on
    ``machine`` and/or with ``spec_hash``."""
    sql = "SELECT * FROM stage_history WHERE pipeline=? AND stage=?"
    args: list[object] = [pipeline, stage]
    if machine is not None:
        sql += " AND machine=?"
        args.append(machine)
    if spec_hash is not None:
        sql += " AND spec_hash=?"
        args.append(spec_hash)
    sql += " ORDER BY finished_at DESC, id DESC LIMIT ?"
    args.append(limit)
    return [
        Observation(
            pipeline=r["pipeline"], stage=r["stage"], spec_hash=r["spec_hash"], machine=r["machine"],
            target=r["target"], wall_seconds=r["wall_seconds"], peak_rss_mb=r["peak_rss_mb"],
            peak_gpu_mb=r["peak_gpu_mb"], input_bytes=r["input_bytes"], output_bytes=r["output_bytes"],
            finished_at=parse_iso(r["finished_at"]) or datetime.min.replace(tzinfo=timezone.utc),
        )
        for r in store.query(sql, tuple(args))
    ]


def summary(observations: list[Observation]) -> HistorySummary | None:
    """Summary of some observations (None when there are none)."""
    if not observations:
        return None
    walls = [o.wall_seconds for o in observations]

    def _max(values: Iterable[_N | None]) -> _N | None:
        present = [v for v in values if v is not None]
        return max(present) if present else None

    def _median(values: Iterable[int | None]) -> float | None:
        present = [v for v in values if v is not None]
        return statistics.median(present) if present else None

    return HistorySummary(
        count=len(observations),
        median_wall_seconds=statistics.median(walls),
        min_wall_seconds=min(walls),
        max_wall_seconds=max(walls),
        max_peak_rss_mb=_max(o.peak_rss_mb for o in observations),
        max_peak_gpu_mb=_max(o.peak_gpu_mb for o in observations),
        median_input_bytes=_median(o.input_bytes for o in observations),
        median_output_bytes=_median(o.output_bytes for o in observations),
        last_finished_at=max(o.finished_at for o in observations),
    )


def summarize(store: Store, pipeline: str, stage: str, machine: str | None = None,
              spec_hash: str | None = None, *, limit: int = 20) -> HistorySummary | None:
    """``summary(observed(...))`` over the ``limit`` most recent runs."""
    return summary(observed(store, pipeline, stage, machine, spec_hash, limit=limit))
