"""The model registry: every registered model is a numbered version of its pipeline (table `models`),
copied under $LHORCH_HOME/models/<pipeline>/v<N>; the promoted one is reachable at the stable path
$LHORCH_HOME/models/<pipeline>/current (a symlink to its version folder, a copy where symlinks fail).

The promotion gate is `decide()`, a pure function: a new model becomes current only when its metric
is at least as good as the current model's by the pipeline's rule (mode max/min, min_delta).
Otherwise it is kept as `rejected` with the reason, so a silent regression never becomes current.

Statuses: current (exactly one per pipeline, or none), retired (was current once), rejected (failed
the gate), rolled_back (was current, replaced by `rollback`), candidate (registered, gate not run).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.errors import LhorchError, NotFoundError
from lhorch.orchestrator.core.spec import Promotion
from lhorch.orchestrator.core.status import ModelStatus, RunStatus
from lhorch.orchestrator.state import models
from lhorch.orchestrator.state.models import ModelVersion
from lhorch.orchestrator.state.store import Store, utcnow

__all__ = ["Decision", "ModelVersion", "Registry", "RegistryError", "decide"]


class RegistryError(LhorchError):
    """A run cannot be registered (it failed, or wrote no model or metrics)."""


@dataclass(frozen=True)
class Decision:
    model: ModelVersion
    promoted: bool
    reason: str


def decide(rule: Promotion, new: dict[str, Any], current: ModelVersion | None) -> tuple[bool, str]:
    """Whether a model with metrics ``new`` may replace ``current`` under ``rule``, and why."""
    value = new.get(rule.metric)
    if not isinstance(value, (int, float)):
        return False, f"metrics have no numeric {rule.metric!r} (found: {', '.join(sorted(new)) or 'none'})"
    if current is None:
        return True, f"first model: {rule.metric}={value:.4g}"
    old = current.metrics.get(rule.metric)
    if not isinstance(old, (int, float)):
        return False, (f"current v{current.version} has no {rule.metric!r} to compare with; "
                       f"promote by hand with `lhorch models promote {current.pipeline} VERSION`")
    better = value >= old + rule.min_delta if rule.mode == "max" else value <= old - rule.min_delta
    sign = ">=" if rule.mode == "max" else "<="
    need = old + rule.min_delta if rule.mode == "max" else old - rule.min_delta
    verdict = "ok" if better else "regression"
    return better, (f"{rule.metric}={value:.4g} vs current v{current.version} {old:.4g} "
                    f"(needs {sign} {need:.4g}): {verdict}")


def _nearest_model_stage(stages: dict[str, list[str]], models: set[str], metrics_stage: str | None) -> str | None:
    """The stage whose `model` output is registered when the rule names none: the metrics stage
    itself if it writes one, else the nearest stage it needs (breadth-first)."""
    if metrics_stage is None:
        return None
    frontier, seen = [metrics_stage], set()
    while frontier:
        nxt: list[str] = []
        for s in frontier:
            if s in seen:
                continue
            seen.add(s)
            if s in models:
                return s
            nxt.extend(stages.get(s, []))
        frontier = nxt
    return None


class Registry:
    def __init__(self, store: Store, root: Path | None = None):
        self.store = store
        self.root = Path(root) if root is not None else store.home / "models"

    # --- reading ----------------------------------------------------------------------------------
    def current_path(self, pipeline: str) -> Path:
        """The stable path of the promoted model (exists only when one is promoted)."""
        return self.root / pipeline / "current"

    def current(self, pipeline: str) -> ModelVersion | None:
        return models.current(self.store, pipeline)

    def versions(self, pipeline: str | None = None) -> list[ModelVersion]:
        return models.versions(self.store, pipeline)

    def get(self, pipeline: str, version: int) -> ModelVersion:
        found = models.get(self.store, pipeline, version)
        if found is None:
            raise NotFoundError(f"{pipeline} has no model version {version}",
                                hint=f"`lhorch models list {pipeline}` shows its versions.")
        return found

    # --- registering ------------------------------------------------------------------------------
    def register_run(self, run_id: str, rule: Promotion | None = None, now: datetime | None = None) -> Decision:
        """Register the model of a succeeded run as a new version and run the promotion gate.
        Registering the same run again returns the first decision."""
        gate_rule = rule or Promotion()
        run = self.store.get_run(run_id, prefix=False)
        if run is None:
            raise NotFoundError(f"no run {run_id!r}", hint="`lhorch runs` lists the runs.")
        existing = models.of_run(self.store, run_id)
        if existing is not None:
            return Decision(existing, existing.status == ModelStatus.CURRENT, existing.reason or "")
        if run["status"] != RunStatus.SUCCEEDED:
            raise RegistryError(f"run {run_id} {run['status']}; only a succeeded run's model can be registered")
        pipeline = run["pipeline"]
        arts = self.store.artifacts(run_id)
        metrics_art = next((a for a in arts if a["name"] == "metrics"), None)
        model_arts = {a["stage"]: a for a in arts if a["name"] == "model"}
        if gate_rule.stage:
            stage = gate_rule.stage
            if stage not in model_arts:
                raise RegistryError(f"stage {stage!r} of run {run_id} wrote no `model` output",
                                    hint="promote.stage names the stage whose `model` output is registered.")
        else:
            spec = json.loads(run["spec_json"] or "{}")
            needs = {name: list(s.get("needs", [])) for name, s in (spec.get("stages") or {}).items()}
            found = _nearest_model_stage(needs, set(model_arts), metrics_art["stage"] if metrics_art else None)
            if found is None and len(model_arts) == 1:
                found = next(iter(model_arts))
            if found is None:
                raise RegistryError(f"run {run_id} wrote no `model` output that its metrics describe",
                                    hint="Set schedule.promote.stage to the stage that writes the model.")
            stage = found
        metrics = _read_metrics(Path(metrics_art["path"])) if metrics_art else {}
        source = Path(model_arts[stage]["path"])
        if not source.exists():
            raise RegistryError(f"the model of run {run_id} ({source}) no longer exists")
        version, ok, reason = models.add_version(
            self.store, pipeline=pipeline, run_id=run_id, stage=stage, sha256=model_arts[stage]["sha256"],
            metrics=metrics, path_of=lambda v: str(self._folder(pipeline, v)),
            gate=lambda current: decide(gate_rule, metrics, current), now=now or utcnow())
        _copy(source, self._folder(pipeline, version))
        self.sync_current_link(pipeline)
        return Decision(self.get(pipeline, version), ok, reason)

    def _folder(self, pipeline: str, version: int) -> Path:
        return self.root / pipeline / f"v{version}"

    def promote(self, pipeline: str, version: int, reason: str = "promoted by hand") -> ModelVersion:
        """Make a version current regardless of the gate (a person decided)."""
        target = self.get(pipeline, version)
        if target.status != ModelStatus.CURRENT:
            models.make_current(self.store, pipeline, version, reason)
        self.sync_current_link(pipeline)
        return self.get(pipeline, version)

    def rollback(self, pipeline: str) -> ModelVersion:
        """The current version becomes rolled_back; the latest retired one (the previous current)
        becomes current again."""
        current = self.current(pipeline)
        if current is None:
            raise NotFoundError(f"{pipeline} has no current model to roll back")
        previous = models.latest_with_status(self.store, pipeline, ModelStatus.RETIRED)
        if previous is None:
            raise NotFoundError(f"{pipeline} has no earlier promoted model to go back to",
                                hint=f"`lhorch models promote {pipeline} VERSION` promotes any version by hand.")
        models.make_current(self.store, pipeline, previous.version,
                            f"restored by rollback from v{current.version}",
                            old_status=ModelStatus.ROLLED_BACK, old_reason=f"rolled back to v{previous.version}")
        self.sync_current_link(pipeline)
        return self.get(pipeline, previous.version)

    def sync_current_link(self, pipeline: str) -> None:
        """Point `current` at the current version's folder (or remove it when there is none)."""
        link = self.current_path(pipeline)
        current = self.current(pipeline)
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".current.{os.getpid()}")
        _remove(tmp)
        if current is None:
            _remove(link)
            return
        target = Path(current.path)
        try:
            os.symlink(target.name, tmp, target_is_directory=target.is_dir())
            os.replace(tmp, link)  # atomic: readers see the old or the new model, never none
        except OSError:
            _remove(tmp)
            _remove(link)
            _copy(target, link)


def _read_metrics(path: Path) -> dict[str, Any]:
    path = path / "metrics.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read metrics from {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _copy(source: Path, dest: Path) -> None:
    if dest.exists():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".partial")
    _remove(tmp)
    if source.is_dir():
        shutil.copytree(source, tmp, symlinks=True)
    else:
        tmp.mkdir()
        shutil.copy2(source, tmp / source.name)
    os.replace(tmp, dest)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
