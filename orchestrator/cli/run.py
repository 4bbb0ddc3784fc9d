"""`lhorch run`: run a pipeline here or in the cloud, resuming where an earlier run stopped."""

from __future__ import annotations

import json
import logging
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import click

from lhorch.orchestrator.cli.output import console, emit_json
from lhorch.orchestrator.core import interrupts
from lhorch.orchestrator.core.errors import EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_STAGE_FAILED, NotFoundError
from lhorch.orchestrator.core.interrupts import RunInterrupted
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.orchestrator.core.status import RunStatus
from lhorch.orchestrator.execution.pipeline_run import execute
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.report.background import DRAWING_NOTE, draw_in_background
from lhorch.orchestrator.report.build import write_report
from lhorch.orchestrator.state.store import Store

_log = logging.getLogger(__name__)
_STATUS_COLOUR = {RunStatus.SUCCEEDED: "green", RunStatus.SKIPPED: "cyan"}


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--resume", "resume", metavar="RUN_ID", help="Resume this run: finished stages are kept.")
@click.option("--fresh", is_flag=True,
              help="Start a new run even if the last one did not finish, and reuse no stage from the cache.")
@click.option("--new", "new", is_flag=True,
              help="Start a new run even if the last one did not finish; unchanged stages still come from the cache.")
@click.option("--no-cache", "no_cache", multiple=True, metavar="STAGE",
              help="Run this stage even if the cache has it (its dependants too, if its outputs change); repeatable.")
@click.option("--policy", type=click.Choice([p.value for p in PolicyName]), help="Override the file's policy.")
@click.option("--keep-ray", is_flag=True, envvar="LHORCH_KEEP_RAY",
              help="Keep the local Ray node (if a stage needs one) up for the next run, until it has been idle "
                   "for 10 minutes (saves its start-up); `lhorch down --local` stops it.")
@click.option("--only-if-changed", is_flag=True,
              help="Record a skipped run when every stage would be reused from the cache (nothing changed).")
@click.option("--trigger", default="manual", hidden=True, help="What started the run (the scheduler sets it).")
@click.option("--quiet", "-q", is_flag=True, help="No progress or logs; only the summary.")
@click.option("--verbose", "-v", is_flag=True, help="Show Ray's own log lines too (they are always in the log files).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON line at the end.")
def run(file: Path | None, resume: str | None, fresh: bool, new: bool, no_cache: tuple[str, ...], policy: str | None,
        keep_ray: bool, only_if_changed: bool, trigger: str, quiet: bool, verbose: bool, as_json: bool) -> None:
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

    # SIGTERM is handled like Ctrl-C: stop the stages, release every cluster, keep what finished; once
    # stopping, further interrupts wait for the teardown to end (core/interrupts.py).
    interrupts.install()
    try:
        with _cloud_errors(pipeline.cloud.provider):
            result = execute(store, pipeline, file, resume=resume, fresh=fresh, policy=policy, keep_ray=keep_ray,
                             only_if_changed=only_if_changed, trigger=trigger, quiet=quiet or as_json,
                             no_cache=no_cache, new=new, verbose=verbose)
    except KeyboardInterrupt as exc:
        click.secho(_interrupted_message(exc), fg="yellow", err=True)
        sys.exit(EXIT_INTERRUPTED)
    report = _write_report(store, result.run_id)  # before the summary, so that --json carries its path too
    if as_json:
        emit_json({"run_id": result.run_id, "status": result.status, "stages": result.stages,
                   "run_dir": str(result.run_dir), "resumed": result.resumed, "message": result.message,
                   "report": str(report) if report else None})
    else:
        _print_summary(store, result.run_id)
        if report:
            console().print(f"Report: {report}")
    if report:
        _draw_later(store, result.run_id)
    if result.status == RunStatus.BUDGET_EXCEEDED:
        sys.exit(EXIT_BUDGET)
    if not result.ok:
        sys.exit(EXIT_STAGE_FAILED)


def _cloud_errors(provider: str) -> AbstractContextManager[None]:
    """A safety net at the CLI for AWS errors raised outside the provider's own boundary (artifact
    transfers while staging): one line, a hint and exit 5, never a traceback (issue 17)."""
    if provider != "aws":
        return nullcontext()
    # Deferred: botocore costs ~0.5 s to import, and only a pipeline on AWS needs it.
    from lhorch.providers.aws.context import aws_errors

    return aws_errors()


def _interrupted_message(exc: KeyboardInterrupt) -> str:
    """Say what was stopped and released, and only that."""
    if not isinstance(exc, RunInterrupted):
        return "Interrupted before the run started."
    done = []
    if exc.stopped:
        done.append("stopped " + ", ".join(exc.stopped))
    if exc.released:
        done.append("released " + ", ".join(exc.released))
    return (f"Interrupted: {'; '.join(done) or 'no stage was running and no cluster was up'}. "
            f"`lhorch run --resume {exc.run_id}` continues where it stopped.")


def _write_report(store: Store, run_id: str) -> Path | None:
    """The run's HTML report, without its figures yet (tens of milliseconds; `_draw_later` draws them). A
    report that cannot be written never fails the run: the problem is logged and one warning line printed."""
    try:
        return write_report(store, run_id, draw=False, note=DRAWING_NOTE)
    except Exception as exc:  # noqa: BLE001 - the run's outcome stands whatever the report runs into
        _log.warning("could not write the report of %s", run_id, exc_info=True)
        click.echo(f"warning: could not write the report: {exc} (`lhorch report {run_id}` retries)", err=True)
        return None


def _draw_later(store: Store, run_id: str) -> None:
    """The report's figures, drawn by a detached process once the summary is out (matplotlib: ~1-2 s
    that the user no longer waits for, issue 18; report/background.py). It replaces the page when done."""
    try:
        draw_in_background(store, run_id)
    except OSError as exc:  # the page is there; only its figures are missing
        _log.warning("could not start drawing the report of %s", run_id, exc_info=True)
        click.echo(f"warning: could not draw the report's figures: {exc} (`lhorch report {run_id}` draws them)",
                   err=True)


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
