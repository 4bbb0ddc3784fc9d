"""What a run report shows, gathered from the store and the run's outputs as plain data.

`lhorch status`, `lhorch runs` and the HTML report all read this one view, so their numbers agree:
durations are an attempt's ``finished_at - started_at``, costs are the ledger's rows, memory peaks are
what the stage wrapper recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.status import StageStatus
from lhorch.orchestrator.state import ledger, run_views
from lhorch.orchestrator.state.store import Store, parse_iso, utcnow

# The metric a run is summed up by, in order of preference, when the pipeline names none.
HEADLINE_METRICS = ("f1_macro", "accuracy", "val_acc", "loss")
# Built-in jobs whose outputs hold a per-epoch history: (output, file in it, key of the list or "").
TRAINING_HISTORIES = {
    "jobs.pretrain": ("checkpoint", "history.json", ""),
    "jobs.finetune": ("history", "history.json", ""),
    "jobs.distill": ("report", "report.json", "history"),
    "jobs.compress": ("report", "report.json", "history"),  # its recovery training after pruning
}
_MAX_JSON_BYTES = 2_000_000  # a user's metrics file bigger than this is data, not metrics


@dataclass(frozen=True)
class AttemptView:
    number: int
    status: str
    target: str  # local | cloud | cache
    cluster: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str | None
    peak_rss_mb: float | None
    peak_gpu_mb: float | None
    log: str | None  # path relative to the run folder, when the log exists

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def place(self) -> str:
        """Where it ran, as the timeline colours it: local, cache, or the cloud cluster's name."""
        if self.target == "cloud":
            return self.cluster or "cloud"
        return self.target or "local"


@dataclass
class StageView:
    name: str
    uses: str | None
    needs: list[str]
    status: str
    attempts: list[AttemptView]
    placement: Placement | None
    estimate_usd: float = 0.0
    actual_usd: float = 0.0
    outputs: list[dict] = field(default_factory=list)
    critical: bool = False

    @property
    def last(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def seconds(self) -> float | None:
        return self.last.seconds if self.last else None

    @property
    def where(self) -> str:
        """The target and instance type the stage ran on (or was planned for)."""
        last = self.last
        if last and last.target == "cache":
            return "cache"
        p = self.placement
        target = last.target if last else (p.target if p else "")
        if p and p.instance_type != "local" and target != "local":
            return f"{target} ({p.instance_type}{', ' + p.market if p.market not in ('local', '') else ''})"
        return target or ""

    def as_json(self) -> dict[str, Any]:
        last = self.last
        return {"stage": self.name, "status": self.status, "attempt": last.number if last else 0,
                "target": last.target if last else None, "where": self.where, "cluster": last.cluster if last else None,
                "instance_type": self.placement.instance_type if self.placement else None,
                "started_at": _iso(last.started_at) if last else None,
                "finished_at": _iso(last.finished_at) if last else None,
                "seconds": self.seconds, "planned_seconds": self.placement.est_seconds if self.placement else None,
                "estimate_usd": self.estimate_usd, "actual_usd": self.actual_usd,
                "peak_rss_mb": last.peak_rss_mb if last else None, "peak_gpu_mb": last.peak_gpu_mb if last else None,
                "exit_code": last.exit_code if last else None, "error": last.error if last else None,
                "reason": self.placement.reason if self.placement else None, "critical_path": self.critical,
                "outputs": self.outputs}


@dataclass(frozen=True)
class Money:
    estimate_usd: float
    actual_usd: float
    cap_usd: float | None
    monthly_cap_usd: float | None
    month_to_date_usd: float


@dataclass(frozen=True)
class RunRow:
    """One run as `lhorch runs` and the history chart show it."""

    id: str
    pipeline: str
    status: str
    trigger: str
    created_at: str
    started_at: str | None
    finished_at: str | None
    seconds: float | None
    actual_usd: float
    estimate_usd: float
    metric: str | None
    metric_value: float | None
    stage_seconds: dict[str, float]
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "pipeline": self.pipeline, "status": self.status, "trigger": self.trigger,
                "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
                "error": self.error, "seconds": self.seconds, "cost_usd": self.actual_usd,
                "estimate_usd": self.estimate_usd, "metric": self.metric, "metric_value": self.metric_value}


@dataclass
class RunView:
    id: str
    pipeline: str
    status: str
    error: str | None
    trigger: str
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    run_dir: Path
    spec: Pipeline
    plan: Plan | None
    stages: list[StageView]
    money: Money
    dashboards: dict[str, str]
    metrics: dict[str, dict[str, Any]]  # stage → its metrics.json (built-in evaluate) or a user's scalar metrics

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def stage(self, name: str) -> StageView:
        return next(s for s in self.stages if s.name == name)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt else None


def _seconds(start: str | None, end: str | None) -> float | None:
    a, b = parse_iso(start), parse_iso(end)
    return (b - a).total_seconds() if a and b else None


def load_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing, too big or not JSON."""
    try:
        if not path.is_file() or path.stat().st_size > _MAX_JSON_BYTES:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def headline(metrics: dict[str, Any], preferred: str | None = None) -> tuple[str, float] | None:
    """The one number a run is summed up by: the pipeline's promotion metric, else a usual one."""
    for key in ((preferred,) if preferred else ()) + HEADLINE_METRICS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return key, float(value)
    return None


def best_headline(candidates: list[dict[str, Any]], preferred: str | None = None) -> tuple[str, float] | None:
    """The headline over several stages' metrics: the one whose metric ranks first in preference."""
    order = ((preferred,) if preferred else ()) + HEADLINE_METRICS
    found = [h for h in (headline(m, preferred) for m in candidates) if h]
    return min(found, key=lambda h: order.index(h[0])) if found else None


def _preferred_metric(spec: Pipeline) -> str | None:
    promote = spec.schedule.promote if spec.schedule else None
    return promote.metric if promote else None


def _stage_metrics(store: Store, run_id: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for art in store.artifacts(run_id):
        if art["name"] != "metrics":
            continue
        path = Path(art["path"])
        data = load_json(path / "metrics.json" if path.is_dir() else path)
        if isinstance(data, dict):
            out[art["stage"]] = data
    return out


def _attempt(row: Any, run_dir: Path) -> AttemptView:
    log = Path("stages") / row["stage"] / f"attempt-{row['attempt']}.log"
    return AttemptView(number=row["attempt"], status=row["status"], target=row["target"] or "", cluster=row["cluster"],
                       started_at=parse_iso(row["started_at"]), finished_at=parse_iso(row["finished_at"]),
                       exit_code=row["exit_code"], error=row["error"], peak_rss_mb=row["peak_rss_mb"],
                       peak_gpu_mb=row["peak_gpu_mb"], log=str(log) if (run_dir / log).exists() else None)


def critical_path(stages: list[StageView]) -> list[str]:
    """The chain that set the run's length: from the stage that finished last, back through the need
    that finished last before it (what it actually waited for), to a stage with no needs."""
    by_name = {s.name: s for s in stages}

    def end(name: str) -> datetime | None:
        last = by_name[name].last if name in by_name else None
        return last.finished_at if last else None

    ended = [s.name for s in stages if end(s.name)]
    if not ended:
        return []
    chain = [max(ended, key=lambda n: end(n))]  # type: ignore[arg-type, return-value]
    while True:
        needs = [n for n in by_name[chain[-1]].needs if end(n)]
        if not needs:
            return list(reversed(chain))
        chain.append(max(needs, key=lambda n: end(n)))  # type: ignore[arg-type, return-value]


def run_view(store: Store, run_id: str, now: datetime | None = None) -> RunView | None:
    """Everything about one run (``run_id`` may be a unique prefix), or None when there is no such run."""
    row = store.get_run(run_id)
    if row is None:
        return None
    run_id = row["id"]
    run_dir = store.runs_dir(run_id)
    spec = Pipeline.model_validate_json(row["spec_json"])
    plan = Plan.model_validate_json(row["plan_json"]) if row["plan_json"] else None
    costs = ledger.per_stage(store, run_id)
    attempts: dict[str, list[AttemptView]] = {}
    for a in store.attempts(run_id):
        attempts.setdefault(a["stage"], []).append(_attempt(a, run_dir))
    outputs: dict[str, list[dict]] = {}
    for art in store.artifacts(run_id):
        outputs.setdefault(art["stage"], []).append(
            {"name": art["name"], "path": art["path"], "size_bytes": art["size_bytes"], "sha256": art["sha256"]})
    stages = []
    for name in topological_order(spec.stages):
        st = spec.stages[name]
        tries = attempts.get(name, [])
        cost = costs.get(name)
        stages.append(StageView(
            name=name, uses=st.uses, needs=list(st.needs), status=tries[-1].status if tries else StageStatus.WAITING,
            attempts=tries, placement=plan.placements.get(name) if plan else None,
            estimate_usd=cost.estimate_usd if cost else 0.0, actual_usd=cost.actual_usd if cost else 0.0,
            outputs=outputs.get(name, [])))
    on_path = set(critical_path(stages))
    for s in stages:
        s.critical = s.name in on_path
    budget = spec.budget
    money = Money(estimate_usd=ledger.run_estimate(store, run_id), actual_usd=ledger.run_total(store, run_id),
                  cap_usd=budget.max_usd if budget else None,
                  monthly_cap_usd=budget.monthly_max_usd if budget else None,
                  month_to_date_usd=ledger.month_to_date(store, row["pipeline"], now or utcnow()))
    return RunView(id=run_id, pipeline=row["pipeline"], status=row["status"], error=row["error"],
                   trigger=row["trigger"], created_at=parse_iso(row["created_at"]),
                   started_at=parse_iso(row["started_at"]), finished_at=parse_iso(row["finished_at"]), run_dir=run_dir,
                   spec=spec, plan=plan, stages=stages, money=money,
                   dashboards=run_views.cluster_addresses(store, run_id), metrics=_stage_metrics(store, run_id))


def run_rows(store: Store, pipeline: str | None = None, limit: int = 20) -> list[RunRow]:
    """Recent runs with their duration, cost and headline metric, newest first."""
    rows = store.list_runs(pipeline, limit)
    ids = [r["id"] for r in rows]
    money = run_views.money_by_run(store, ids)
    walls = run_views.stage_wall_times(store, ids)
    metrics: dict[str, list[dict[str, Any]]] = {}
    for art in run_views.artifacts_named(store, ids, "metrics"):
        path = Path(art["path"])
        data = load_json(path / "metrics.json" if path.is_dir() else path)
        if isinstance(data, dict):
            metrics.setdefault(art["run_id"], []).append(data)
    out = []
    for r in rows:
        preferred = None
        try:
            preferred = _preferred_metric(Pipeline.model_validate_json(r["spec_json"]))
        except ValueError:
            pass  # a spec written by another lhorch version: the usual metrics still apply
        head = best_headline(metrics.get(r["id"], []), preferred)
        m = money.get(r["id"], run_views.RunMoney(0.0, 0.0))
        out.append(RunRow(id=r["id"], pipeline=r["pipeline"], status=r["status"], trigger=r["trigger"],
                          created_at=r["created_at"], started_at=r["started_at"], finished_at=r["finished_at"],
                          seconds=_seconds(r["started_at"], r["finished_at"]), actual_usd=m.actual_usd,
                          estimate_usd=m.estimate_usd, metric=head[0] if head else None,
                          metric_value=head[1] if head else None, stage_seconds=walls.get(r["id"], {}),
                          error=r["error"]))
    return out
