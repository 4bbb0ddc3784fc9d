"""`lhorch models`: the model registry — list versions, register a run's model, promote, roll back."""

from __future__ import annotations

import json

import click

from lhorch.orchestrator.core.spec import Promotion
from lhorch.orchestrator.core.status import ModelStatus
from lhorch.orchestrator.scheduling.model_registry import Registry
from lhorch.orchestrator.state.store import Store, iso


def _fmt_metric(metrics: dict, name: str) -> str:
    value = metrics.get(name)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


@click.group()
def models() -> None:
    """Registered models per pipeline; `current` is the promoted one."""


@models.command("list")
@click.argument("pipeline", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version, as a list.")
def list_cmd(pipeline: str | None, as_json: bool) -> None:
    """Versions of PIPELINE's model (or of every pipeline), oldest first."""
    reg = Registry(Store())
    versions = reg.versions(pipeline)
    if as_json:
        out = []
        for v in versions:
            item = v.to_json()
            item["current_path"] = str(reg.current_path(v.pipeline)) if v.status == ModelStatus.CURRENT else None
            out.append(item)
        click.echo(json.dumps(out, indent=2))
        return
    if not versions:
        click.echo("no models registered" + (f" for {pipeline}" if pipeline else ""))
        return
    click.echo(f"{'PIPELINE':<20} {'VER':>4} {'STATUS':<12} {'F1':>7} {'ACC':>7} {'RUN':<32} REASON")
    for v in versions:
        click.echo(f"{v.pipeline:<20} {v.version:>4} {v.status!s:<12} {_fmt_metric(v.metrics, 'f1_macro'):>7} "
                   f"{_fmt_metric(v.metrics, 'accuracy'):>7} {v.run_id:<32} {v.reason or ''}")
    for name in sorted({v.pipeline for v in versions if v.status == ModelStatus.CURRENT}):
        click.echo(f"current {name}: {reg.current_path(name)}")


@models.command("register")
@click.argument("run_id")
@click.option("--metric",
              help="Metric that decides promotion (default: the pipeline's schedule.promote, else f1_macro).")
@click.option("--mode", type=click.Choice(["max", "min"]), help="Whether larger or smaller is better.")
@click.option("--min-delta", type=float, help="How much better than the current model a new one must be.")
@click.option("--stage", help="Stage whose `model` output is registered.")
def register_cmd(run_id: str, metric: str | None, mode: str | None, min_delta: float | None, stage: str | None) -> None:
    """Register the model of a succeeded run and promote it if it passes the gate."""
    store = Store()
    run = store.get_run(run_id)
    rule = Promotion()
    if run is not None:
        run_id = run["id"]
        spec = json.loads(run["spec_json"] or "{}")
        promote = (spec.get("schedule") or {}).get("promote")
        if promote:
            rule = Promotion.model_validate(promote)
    given = {"metric": metric, "mode": mode, "min_delta": min_delta, "stage": stage}
    overrides = {k: v for k, v in given.items() if v is not None}
    rule = rule.model_copy(update=overrides)
    decision = Registry(store).register_run(run_id, rule)
    verdict = "promoted to current" if decision.promoted else "rejected"
    click.echo(f"{decision.model.pipeline} v{decision.model.version} {verdict}: {decision.reason}")


@models.command("promote")
@click.argument("pipeline")
@click.argument("version", type=int)
def promote_cmd(pipeline: str, version: int) -> None:
    """Make VERSION current by hand, whatever the gate said."""
    reg = Registry(Store())
    mv = reg.promote(pipeline, version)
    click.echo(f"{pipeline} v{mv.version} is current: {reg.current_path(pipeline)}")


@models.command("rollback")
@click.argument("pipeline")
def rollback_cmd(pipeline: str) -> None:
    """Make the previously promoted version current again."""
    reg = Registry(Store())
    mv = reg.rollback(pipeline)
    click.echo(f"{pipeline} rolled back: v{mv.version} is current again ({iso(mv.created_at)})")

