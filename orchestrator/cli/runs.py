"""`lhorch runs | status | logs`: what ran, how each stage is doing, what it printed."""

from __future__ import annotations

import click
from rich.table import Table

from lhorch.orchestrator.cli.output import console, emit_json
from lhorch.orchestrator.core.errors import NotFoundError
from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.status import StageStatus
from lhorch.orchestrator.state.store import Store

_RUN_KEYS = ("id", "pipeline", "status", "trigger", "created_at", "started_at", "finished_at", "error")


@click.command()
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(pipeline: str | None, limit: int, as_json: bool) -> None:
    """List recent runs."""
    rows = Store().list_runs(pipeline, limit)
    if as_json:
        emit_json([{k: r[k] for k in _RUN_KEYS} for r in rows])
        return
    table = Table(box=None, header_style="bold")
    for col in ("run", "pipeline", "status", "trigger", "started", "finished"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["pipeline"], r["status"], r["trigger"], (r["started_at"] or "")[:19],
                      (r["finished_at"] or "")[:19])
    console().print(table if rows else "No runs yet.")


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
def status(run_id: str, as_json: bool) -> None:
    """Show a run and its stages."""
    store = Store()
    row = store.get_run(run_id)
    if row is None:
        raise NotFoundError(f"no run {run_id!r}", hint="`lhorch runs` lists the runs.")
    states = store.stage_states(row["id"])
    spec = Pipeline.model_validate_json(row["spec_json"])
    stages = []
    for name in topological_order(spec.stages):
        a = states.get(name)
        outputs = [{"name": x["name"], "path": x["path"], "size_bytes": x["size_bytes"], "sha256": x["sha256"]}
                   for x in store.artifacts(row["id"], name)]
        stages.append({"stage": name, "status": a["status"] if a else StageStatus.WAITING,
                       "attempt": a["attempt"] if a else 0, "target": a["target"] if a else None,
                       "started_at": a["started_at"] if a else None, "finished_at": a["finished_at"] if a else None,
                       "error": a["error"] if a else None, "outputs": outputs})
    if as_json:
        emit_json({"run_id": row["id"], "pipeline": row["pipeline"], "status": row["status"], "error": row["error"],
                   "created_at": row["created_at"], "finished_at": row["finished_at"], "stages": stages})
        return
    out = console()
    out.print(f"Run [bold]{row['id']}[/] ({row['pipeline']}): {row['status']}"
              + (f" — {row['error']}" if row["error"] else ""))
    table = Table(box=None, header_style="bold")
    for col in ("stage", "status", "attempt", "target", "outputs", "error"):
        table.add_column(col)
    for s in stages:
        table.add_row(s["stage"], str(s["status"]), str(s["attempt"]), s["target"] or "",
                      ", ".join(o["name"] for o in s["outputs"]), s["error"] or "")
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
