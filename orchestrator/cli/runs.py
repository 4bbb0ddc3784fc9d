"""`lhorch validate | run | runs | status | logs | schema`."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click
from rich.table import Table

from lhorch.orchestrator.cli.output import console
from lhorch.orchestrator.core.errors import EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_STAGE_FAILED, NotFoundError
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.state.store import Store

out = console()


def _emit_json(data: object) -> None:
    click.echo(json.dumps(data, indent=None, default=str))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the parsed pipeline as JSON.")
def validate(file: Path, as_json: bool) -> None:
    """Check a pipeline file; exit 2 with the line and field of the first problem."""
    pipeline = load_pipeline(file)
    if as_json:
        _emit_json({"valid": True, "pipeline": pipeline.model_dump(mode="json", by_alias=True)})
        return
    order = topological_order(pipeline.stages)
    out.print(f"[green]✓[/] {file}: pipeline [bold]{pipeline.name}[/], {len(order)} stage(s): {' → '.join(order)}")


@click.command()
def schema() -> None:
    """Print the pipeline file's JSON Schema (for editors' completion)."""
    data = Pipeline.model_json_schema(by_alias=True)
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "lhorch pipeline"
    click.echo(json.dumps(data, indent=2))


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--resume", "resume", metavar="RUN_ID", help="Resume this run: finished stages are kept.")
@click.option("--fresh", is_flag=True, help="Start a new run even if the last one did not finish.")
@click.option("--policy", type=click.Choice(["local-first", "cheapest", "fastest", "balanced"]), help="Override the file's policy.")
@click.option("--keep-ray", is_flag=True, envvar="LHORCH_KEEP_RAY", help="Keep the local Ray node up for the next run (saves its start-up).")
@click.option("--only-if-changed", is_flag=True, help="Record a skipped run when nothing changed since the last successful one.")
@click.option("--trigger", default="manual", hidden=True, help="What started the run (the scheduler sets it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress or logs; only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line at the end.")
def run(file: Path | None, resume: str | None, fresh: bool, policy: str | None, keep_ray: bool, only_if_changed: bool,
        trigger: str, quiet: bool, as_json: bool) -> None:
    """Run a pipeline. Re-running after a crash resumes where it stopped."""
    from lhorch.orchestrator.execution.pipeline_run import execute

    store = Store()
    if file is None:
        if not resume:
            raise click.UsageError("give a pipeline FILE, or --resume RUN_ID")
        row = store.get_run(resume)
        if row is None:
            raise NotFoundError(f"no run {resume!r}", hint="`lhorch runs` lists the runs.")
        if not row["pipeline_file"]:
            raise NotFoundError(f"run {resume!r} has no pipeline file recorded")
        file = Path(row["pipeline_file"])
    pipeline = load_pipeline(file)

    # SIGTERM is handled like Ctrl-C: stop the stages, release every cluster, keep what finished.
    def _term(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    try:
        result = execute(store, pipeline, file, resume=resume, fresh=fresh, policy=policy, keep_ray=keep_ray,
                         only_if_changed=only_if_changed, trigger=trigger, quiet=quiet or as_json)
    except KeyboardInterrupt:
        click.secho("Interrupted: running stages were stopped and clusters released. "
                    "`lhorch run` again (or --resume) continues where it stopped.", fg="yellow", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if as_json:
        _emit_json({"run_id": result.run_id, "status": result.status, "stages": result.stages,
                    "run_dir": str(result.run_dir), "resumed": result.resumed, "message": result.message})
    else:
        _print_summary(store, result.run_id)
    if result.status == "budget_exceeded":
        sys.exit(EXIT_BUDGET)
    if not result.ok:
        sys.exit(EXIT_STAGE_FAILED)


def _print_summary(store: Store, run_id: str) -> None:
    row = store.get_run(run_id)
    colour = {"succeeded": "green", "skipped": "cyan"}.get(row["status"], "red")
    out.print(f"Run [bold]{run_id}[/]: [{colour}]{row['status']}[/]" + (f" — {row['error']}" if row["error"] else ""))
    for artifact in store.artifacts(run_id):
        if artifact["name"] != "metrics":
            continue
        try:
            metrics = json.loads((Path(artifact["path"]) / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        out.print(f"Metrics ({artifact['stage']}): {shown}")
    out.print(f"Outputs: {store.runs_dir(run_id)}")


@click.command()
@click.option("--pipeline", help="Only runs of this pipeline.")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def runs(pipeline: str | None, limit: int, as_json: bool) -> None:
    """List recent runs."""
    rows = Store().list_runs(pipeline, limit)
    if as_json:
        _emit_json([{k: r[k] for k in ("id", "pipeline", "status", "trigger", "created_at", "started_at", "finished_at", "error")}
                    for r in rows])
        return
    table = Table(box=None, header_style="bold")
    for col in ("run", "pipeline", "status", "trigger", "started", "finished"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["id"], r["pipeline"], r["status"], r["trigger"], (r["started_at"] or "")[:19], (r["finished_at"] or "")[:19])
    out.print(table if rows else "No runs yet.")


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
        stages.append({"stage": name, "status": a["status"] if a else "waiting", "attempt": a["attempt"] if a else 0,
                       "target": a["target"] if a else None, "started_at": a["started_at"] if a else None,
                       "finished_at": a["finished_at"] if a else None, "error": a["error"] if a else None,
                       "outputs": [dict(name=x["name"], path=x["path"], size_bytes=x["size_bytes"], sha256=x["sha256"])
                                   for x in store.artifacts(row["id"], name)]})
    if as_json:
        _emit_json({"run_id": row["id"], "pipeline": row["pipeline"], "status": row["status"], "error": row["error"],
                    "created_at": row["created_at"], "finished_at": row["finished_at"], "stages": stages})
        return
    out.print(f"Run [bold]{row['id']}[/] ({row['pipeline']}): {row['status']}" + (f" — {row['error']}" if row["error"] else ""))
    table = Table(box=None, header_style="bold")
    for col in ("stage", "status", "attempt", "target", "outputs", "error"):
        table.add_column(col)
    for s in stages:
        table.add_row(s["stage"], s["status"], str(s["attempt"]), s["target"] or "", ", ".join(o["name"] for o in s["outputs"]),
                      s["error"] or "")
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
    for name in ([stage] if stage else list(states)):
        number = attempt or states[name]["attempt"]
        path = store.runs_dir(row["id"]) / "stages" / name / f"attempt-{number}.log"
        if not stage:
            out.print(f"[bold]── {name} (attempt {number}) ──[/]")
        if path.exists():
            click.echo(path.read_text(), nl=False)
        elif states[name]["status"] == "cached":
            click.echo("(kept from an earlier attempt; no new log)")


COMMANDS = [validate, run, runs, status, logs, schema]
