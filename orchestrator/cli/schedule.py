"""`lhorch schedule add | list | pause | resume | remove | next | history` (and `install | uninstall`,
from ``schedule_service``): manage the schedules that `lhorch scheduler` fires."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from lhorch.orchestrator.cli.schedule_service import install_cmd, uninstall_cmd
from lhorch.orchestrator.core.clock import SystemClock
from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.core.status import FireStatus
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.scheduling import schedules as sch
from lhorch.orchestrator.state import schedules as fires
from lhorch.orchestrator.state.store import Store, parse_iso


def _store() -> Store:
    return Store()


def _local(s: sch.Schedule, when: datetime | None) -> str | None:
    return sch.local(s, when).isoformat() if when else None


@click.group()
def schedule() -> None:
    """Run pipelines on a cron schedule (`lhorch scheduler` fires them)."""


@schedule.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cron", help="Cron expression (overrides the file's schedule.cron); 6 fields = seconds first.")
@click.option("--timezone", "tz", help="IANA time zone (overrides schedule.timezone).")
@click.option("--name", help="Schedule name (default: the pipeline's name).")
def add_cmd(file: Path, cron: str | None, tz: str | None, name: str | None) -> None:
    """Schedule the pipeline in FILE (adding it again updates it)."""
    pipeline = load_pipeline(file)
    spec = pipeline.schedule
    cron = cron or (spec.cron if spec else None)
    if not cron:
        raise UsageError(f"{file} has no `schedule:` and no --cron was given",
                         hint='Add `schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}` to the file '
                              'or pass --cron.')
    tz = tz or (spec.timezone if spec else "UTC")
    store = _store()
    now = SystemClock().now()
    row = sch.upsert_schedule(store, name or pipeline.name, file.resolve(), cron, tz,
                              spec.overlap if spec else "skip", spec.catchup if spec else "once", now)
    click.echo(f"schedule {row.name}: {row.cron} ({row.timezone}), next run {_local(row, sch.next_fire(row, now))}")
    click.echo("hint: `lhorch scheduler` must be running to fire it; "
               "`lhorch schedule install` starts it with your session.")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Schedules with their last outcome and next fire time."""
    store = _store()
    now = SystemClock().now()
    items = []
    for s in sch.list_schedules(store):
        last, failures = sch.last_outcome(store, s.name)
        running = any(r["status"] == FireStatus.RUNNING for r in fires.active_schedule_runs(store, s.name))
        items.append({
            "name": s.name, "pipeline_file": s.pipeline_file, "cron": s.cron, "timezone": s.timezone,
            "paused": s.paused, "overlap": s.overlap, "catchup": s.catchup,
            "last_fire_at": _local(s, s.last_fire_at), "next_fire_at": _local(s, sch.next_fire(s, now)),
            "running": running, "last_status": last["status"] if last else None,
            "last_run_id": last["run_id"] if last else None, "last_detail": last["detail"] if last else None,
            "consecutive_failures": failures,
        })
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no schedules; add one with `lhorch schedule add FILE`")
        return
    click.echo(f"{'NAME':<20} {'CRON':<16} {'TIMEZONE':<16} {'STATE':<8} {'LAST':<14} {'NEXT':<26}")
    for it in items:
        state = "paused" if it["paused"] else ("running" if it["running"] else "active")
        last = it["last_status"] or "-"
        colour = "red" if it["consecutive_failures"] else None
        if it["consecutive_failures"] > 1:
            last += f" x{it['consecutive_failures']}"
        click.echo(f"{it['name']:<20} {it['cron']:<16} {it['timezone']:<16} {state:<8} "
                   + click.style(f"{last:<14}", fg=colour) + f" {it['next_fire_at'] or '-':<26}")
        if it["consecutive_failures"] and it["last_detail"]:
            click.secho(f"    {it['last_detail']}", fg="red")


@schedule.command("pause")
@click.argument("name")
def pause_cmd(name: str) -> None:
    """Stop firing NAME until resumed."""
    sch.set_paused(_store(), name, True, SystemClock().now())
    click.echo(f"schedule {name} paused")


@schedule.command("resume")
@click.argument("name")
def resume_cmd(name: str) -> None:
    """Fire NAME again; fires missed while paused are not caught up."""
    store = _store()
    sch.set_paused(store, name, False, SystemClock().now())
    s = sch.get_schedule(store, name)
    click.echo(f"schedule {name} resumed, next run {_local(s, sch.next_fire(s, SystemClock().now()))}")


@schedule.command("remove")
@click.argument("name")
def remove_cmd(name: str) -> None:
    """Delete schedule NAME (its history of runs stays)."""
    sch.remove_schedule(_store(), name)
    click.echo(f"schedule {name} removed")


@schedule.command("next")
@click.argument("name", required=False)
@click.option("-n", "count", default=5, show_default=True, type=click.IntRange(1, 1000))
def next_cmd(name: str | None, count: int) -> None:
    """The next fire times of NAME (or of every schedule), in the schedule's time zone."""
    store = _store()
    rows = [sch.get_schedule(store, name)] if name else sch.list_schedules(store)
    now = SystemClock().now()
    for s in rows:
        click.echo(f"{s.name} ({s.cron}, {s.timezone}){' [paused]' if s.paused else ''}:")
        for t in sch.next_fires(s.cron, s.timezone, now, count):
            click.echo(f"  {sch.local(s, t).isoformat()}")


@schedule.command("history")
@click.argument("name")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def history_cmd(name: str, limit: int, as_json: bool) -> None:
    """What each fire of NAME did: status, duration, cost, metrics."""
    store = _store()
    s = sch.get_schedule(store, name)
    entries = sch.history(store, name, limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2, default=str))
        return
    if not entries:
        click.echo(f"schedule {name} has not fired yet")
        return
    fired_header = f"FIRED ({s.timezone})"
    click.echo(f"{fired_header:<27} {'STATUS':<14} {'DURATION':>9} {'COST':>8} {'F1':>7} RUN / DETAIL")
    not_bad = FireStatus.finished_ok() | FireStatus.active()
    for e in entries:
        fired_at = parse_iso(e["fire_at"])
        fired = sch.local(s, fired_at).strftime("%Y-%m-%d %H:%M:%S %Z") if fired_at else "-"
        dur = f"{e['duration_s']:.0f}s" if e["duration_s"] is not None else "-"
        cost = f"${e['cost_usd']:.2f}" if e["cost_usd"] is not None else "-"
        f1 = e["metrics"].get("f1_macro") if e["metrics"] else None
        f1s = f"{f1:.4f}" if isinstance(f1, (int, float)) else "-"
        bad = e["status"] not in not_bad
        click.echo(f"{fired:<27} " + click.style(f"{e['status']:<14}", fg="red" if bad else None)
                   + f" {dur:>9} {cost:>8} {f1s:>7} {e['run_id'] or ''} {e['detail'] or ''}")


schedule.add_command(install_cmd)
schedule.add_command(uninstall_cmd)
