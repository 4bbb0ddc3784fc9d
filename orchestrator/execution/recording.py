"""What a finished attempt leaves in the store: its usage and the stage's history (its outputs are
recorded, and kept in the stage cache, by reuse.py).

The usage file is written by the stage wrapper beside the outputs (wall time, peak memory, exit
code); the history row is what later estimates learn from (lhorch.orchestrator.state.history).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.nodes import machine_key
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.stage_message import USAGE_FILE
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.state import history
from lhorch.orchestrator.state.store import Store, utcnow


def read_usage(out_dir: Path) -> dict[str, Any]:
    """The wrapper's usage record; empty when the stage never got that far (or the node was lost)."""
    try:
        return json.loads((out_dir / USAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def missing_outputs(pipeline: Pipeline, stage: str, out_dir: Path) -> list[str]:
    """The declared outputs the attempt did not write."""
    return [o for o in art.declared_outputs(pipeline.stages[stage]) if not (out_dir / o).exists()]


class Recorder:
    """Records one run's finished stages."""

    def __init__(self, store: Store, pipeline: Pipeline, plan: Plan, run_id: str, machine: str):
        self.store, self.pipeline, self.plan, self.run_id, self.machine = store, pipeline, plan, run_id, machine

    def history(self, stage: str, usage: dict[str, Any], wall: float, *, local: bool) -> None:
        """One observation of the stage: on the local machine it is keyed by the machine's profile
        fingerprint, in the cloud by the instance type (``TYPE*N`` for N nodes: core/nodes.py)."""
        size_in = sum(r["size_bytes"] for r in self.store.artifacts(self.run_id)
                      if r["stage"] in self.pipeline.stages[stage].needs)
        size_out = sum(r["size_bytes"] for r in self.store.artifacts(self.run_id, stage))
        placement = self.plan.placements[stage]
        history.record_stage(
            self.store, pipeline=self.pipeline.name, stage=stage, spec_hash=art.spec_hash(self.pipeline.stages[stage]),
            machine=self.machine if local else machine_key(placement.instance_type, placement.nodes),
            target=placement.target, wall_seconds=usage.get("wall_seconds", wall),
            peak_rss_mb=usage.get("peak_rss_mb"), peak_gpu_mb=usage.get("peak_gpu_mb"),
            input_bytes=size_in, output_bytes=size_out, finished_at=utcnow())
