"""`lhorch runs | status | logs`: what ran, how each stage is doing, what it printed."""

from __future__ import annotations

import click
from rich.table import Table

from lhorch.orchestrator.cli.output import console, emit_json
from lhorch.orchestrator.core.errors import NotFoundError
from lhorch.orchestrator.core.status import StageStatus
from lhorch.orchestrator.report.html import duration
from lhorch.orchestrator.report.view import run_rows, run_view
from lhorch.orchestrator.state.run_lock import mark_gone_interrupted
from lhorch.orchestrator.state.store import Store


@click.command()
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(pipeline: str | None, limit: int, as_json: bool) -> None:
    """List recent runs with their duration, cost and headline metric."""
    store = Store()
    mark_gone_interrupted(store)  # a run whose process is gone shows as interrupted, not running
    rows = run_rows(store, pipeline, limit)
    if as_json:
        emit_json([r.as_json() for r in rows])
        return
    table = Table(box=None, header_style="bold")
    for col in ("run", "pipeline", "status", "trigger", "started", "duration", "cost", "metric"):
        table.add_column(col, justify="right" if col in ("duration", "cost") else "left")
    for r in rows:
        metric = f"{r.metric} {r.metric_value:.4f}" if r.metric and r.metric_value is not None else ""
        table.add_row(r.id, r.pipeline, r.status, r.trigger, (r.started_at or "")[:19].replace("T", " "),
                      duration(r.seconds), f"${r.actual_usd:.4f}", metric)
    console().print(table if rows else "No runs yet.")


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def status(run_id: str, as_json: bool) -> None:
    """Show a run and its stages: where each ran, how long, what it cost, its memory peak."""
    store = Store()
    mark_gone_interrupted(store)
    view = run_view(store, run_id)
    if view is None:
        raise NotFoundError(f"no run {run_id!r}", hint="`lhorch runs` lists the runs.")
    m = view.money
    if as_json:
        emit_json({"run_id": view.id, "pipeline": view.pipeline, "status": view.status, "error": view.error,
                   "created_at": view.created_at.isoformat() if view.created_at else None,
                   "finished_at": view.finished_at.isoformat() if view.finished_at else None,
                   "seconds": view.seconds, "estimate_usd": m.estimate_usd, "actual_usd": m.actual_usd,
                   "cap_usd": m.cap_usd, "month_to_date_usd": m.month_to_date_usd,
                   "stages": [s.as_json() for s in view.stages]})
        return
    out = console()
    out.print(f"Run [bold]{view.id}[/] ({view.pipeline}): {view.status}" + (f" — {view.error}" if view.error else ""))
    out.print(f"Duration {duration(view.seconds)}; cost ${m.actual_usd:.4f} (estimated ${m.estimate_usd:.4f}"
              + (f", cap ${m.cap_usd:.2f}" if m.cap_usd is not None else "") + ")")
    table = Table(box=None, header_style="bold")
    for col in ("stage", "status", "attempt", "where", "duration", "planned", "est. $", "actual $", "peak mem",
                "outputs", "error or note"):
        table.add_column(col)
    for s in view.stages:
        last = s.last
        peak = "" if not last or last.peak_rss_mb is None else f"{last.peak_rss_mb:,.0f} MB"
        if last and last.peak_gpu_mb:
            peak += f" (GPU {last.peak_gpu_mb:,.0f} MB)"
        table.add_row(s.name, str(s.status), str(last.number if last else 0), s.where,
                      duration(s.seconds) if last else "",
                      duration(s.placement.est_seconds) if s.placement else "", f"{s.estimate_usd:.4f}",
                      f"{s.actual_usd:.4f}", peak, ", ".join(o["name"] for o in s.outputs),
                      # a cached attempt's note says which run its outputs came from
                      (last.error or "") if last else "")
    out.print(table)


@click.command()
@click.argument("run_id")
@click.argument("stage", required=False)
@click.option("--attempt", type=int, help="Which attempt (default: the latest).")
def logs(run_id: str, stage: str | None, attempt: int | None) -> None:
    """Print the logs of a run's stages (or of one stage)."""
    store = Store()
    row = store.get_run(run_id)
    if row is None:
        raise NotFoundError(f"no run {run_id!r}", hint="`lhorch runs` lists the runs.")
    states = store.stage_states(row["id"])
    if stage and stage not in states:
        raise NotFoundError(f"run {row['id']} has no stage {stage!r} that started",
                            hint=f"Stages that started: {', '.join(states) or 'none'}.")
    out = console()
    for name in ([stage] if stage else list(states)):
        number = attempt or states[name]["attempt"]
        path = store.runs_dir(row["id"]) / "stages" / name / f"attempt-{number}.log"
        if not stage:
            out.print(f"[bold]── {name} (attempt {number}) ──[/]")
        if path.exists():
            click.echo(path.read_text(), nl=False)
        elif states[name]["status"] == StageStatus.CACHED:
            click.echo("(kept from an earlier attempt; no new log)")
