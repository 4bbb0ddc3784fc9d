"""`lhorch run`: run a pipeline here or in the cloud, resuming where an earlier run stopped."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click

from lhorch.orchestrator.cli.output import console, emit_json
from lhorch.orchestrator.core.errors import EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_STAGE_FAILED, NotFoundError
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.orchestrator.core.status import RunStatus
from lhorch.orchestrator.execution.pipeline_run import execute
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.state.store import Store

_STATUS_COLOUR = {RunStatus.SUCCEEDED: "green", RunStatus.SKIPPED: "cyan"}


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--resume", "resume", metavar="RUN_ID", help="Resume this run: finished stages are kept.")
@click.option("--fresh", is_flag=True, help="Start a new run even if the last one did not finish.")
@click.option("--policy", type=click.Choice([p.value for p in PolicyName]), help="Override the file's policy.")
@click.option("--keep-ray", is_flag=True, envvar="LHORCH_KEEP_RAY",
              help="Keep the local Ray node up for the next run (saves its start-up).")
@click.option("--only-if-changed", is_flag=True,
              help="Record a skipped run when nothing changed since the last successful one.")
@click.option("--trigger", default="manual", hidden=True, help="What started the run (the scheduler sets it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress or logs; only the summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line at the end.")
def run(file: Path | None, resume: str | None, fresh: bool, policy: str | None, keep_ray: bool, only_if_changed: bool,
        trigger: str, quiet: bool, as_json: bool) -> None:
    """Run a pipeline. Re-running after a crash resumes where it stopped."""
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
        emit_json({"run_id": result.run_id, "status": result.status, "stages": result.stages,
                   "run_dir": str(result.run_dir), "resumed": result.resumed, "message": result.message})
    else:
        _print_summary(store, result.run_id)
    if result.status == RunStatus.BUDGET_EXCEEDED:
        sys.exit(EXIT_BUDGET)
    if not result.ok:
        sys.exit(EXIT_STAGE_FAILED)


def _print_summary(store: Store, run_id: str) -> None:
    out = console()
    row = store.get_run(run_id)
    if row is None:
        return
    colour = _STATUS_COLOUR.get(row["status"], "red")
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
