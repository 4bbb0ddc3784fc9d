"""`lhorch schedule ...` (manage schedules, install the scheduler as a service) and `lhorch scheduler`
(the long-running process that fires them)."""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import click

from lhorch.orchestrator.scheduling import schedules as sch
from lhorch.orchestrator.core.clock import SystemClock
from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.state.store import Store, lhorch_home


def _store() -> Store:
    return Store()


def _local(s: sch.ScheduleRow, when) -> str | None:
    return s.local(when).isoformat() if when else None


@click.group()
def schedule() -> None:
    """Run pipelines on a cron schedule (`lhorch scheduler` fires them)."""


@schedule.command("add")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--cron", help='Cron expression (overrides the file\'s schedule.cron); 6 fields = seconds first.')
@click.option("--timezone", "tz", help="IANA time zone (overrides schedule.timezone).")
@click.option("--name", help="Schedule name (default: the pipeline's name).")
def add_cmd(file: Path, cron: str | None, tz: str | None, name: str | None) -> None:
    """Schedule the pipeline in FILE (adding it again updates it)."""
    from lhorch.orchestrator.pipeline.loader import load_pipeline

    pipeline = load_pipeline(file)
    spec = pipeline.schedule
    cron = cron or (spec.cron if spec else None)
    if not cron:
        raise UsageError(f"{file} has no `schedule:` and no --cron was given",
                         hint='Add `schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}` to the file or pass --cron.')
    tz = tz or (spec.timezone if spec else "UTC")
    store = _store()
    row = sch.upsert_schedule(store, name or pipeline.name, file.resolve(), cron, tz,
                              spec.overlap if spec else "skip", spec.catchup if spec else "once", SystemClock().now())
    nxt = row.next_fire(SystemClock().now())
    click.echo(f"schedule {row.name}: {row.cron} ({row.timezone}), next run {_local(row, nxt)}")
    click.echo("hint: `lhorch scheduler` must be running to fire it; `lhorch schedule install` starts it with your session.")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_cmd(as_json: bool) -> None:
    """Schedules with their last outcome and next fire time."""
    store = _store()
    now = SystemClock().now()
    items = []
    for s in sch.list_schedules(store):
        last, failures = sch.last_outcome(store, s.name)
        running = store.query("SELECT COUNT(*) FROM schedule_runs WHERE schedule=? AND status='running'", (s.name,))[0][0]
        items.append({
            "name": s.name, "pipeline_file": s.pipeline_file, "cron": s.cron, "timezone": s.timezone,
            "paused": s.paused, "overlap": s.overlap, "catchup": s.catchup,
            "last_fire_at": _local(s, s.last_fire_at), "next_fire_at": _local(s, s.next_fire(now)),
            "running": bool(running), "last_status": last["status"] if last else None,
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
    click.echo(f"schedule {name} resumed, next run {_local(s, s.next_fire(SystemClock().now()))}")


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
            click.echo(f"  {s.local(t).isoformat()}")


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
    click.echo(f"{'FIRED (' + s.timezone + ')':<27} {'STATUS':<14} {'DURATION':>9} {'COST':>8} {'F1':>7} RUN / DETAIL")
    for e in entries:
        fired = s.local(sch.parse_iso(e["fire_at"])).strftime("%Y-%m-%d %H:%M:%S %Z")
        dur = f"{e['duration_s']:.0f}s" if e["duration_s"] is not None else "-"
        cost = f"${e['cost_usd']:.2f}" if e["cost_usd"] is not None else "-"
        f1 = e["metrics"].get("f1_macro") if e["metrics"] else None
        f1s = f"{f1:.4f}" if isinstance(f1, (int, float)) else "-"
        bad = e["status"] not in sch.FINISHED_OK and e["status"] not in sch.ACTIVE
        click.echo(f"{fired:<27} " + click.style(f"{e['status']:<14}", fg="red" if bad else None)
                   + f" {dur:>9} {cost:>8} {f1s:>7} {e['run_id'] or ''} {e['detail'] or ''}")


# --- installing the scheduler as a service -------------------------------------------------------------
SERVICE = "lhorch-scheduler"
LAUNCHD_LABEL = "dev.lhorch.scheduler"
CRON_TAG = "# lhorch-scheduler"


@dataclass
class ServicePlan:
    system: str
    files: dict[Path, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)
    cron_line: str | None = None


def _scheduler_argv() -> list[str]:
    exe = shutil.which("lhorch")
    return [exe, "scheduler"] if exe else [sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "scheduler"]


def _pick_system(system: str) -> str:
    if system != "auto":
        return system
    if sys.platform == "darwin":
        return "launchd"
    if shutil.which("systemctl"):
        return "systemd"
    if shutil.which("crontab"):
        return "cron"
    raise UsageError("no service manager found (systemd, launchd or cron)",
                     hint="Start `lhorch scheduler` yourself, e.g. from your session's autostart.")


def service_plan(system: str, home: Path, lhorch_home_dir: Path, argv: list[str], install: bool) -> ServicePlan:
    """What installing (or uninstalling) the scheduler service writes and runs; pure, so it is testable."""
    env = {"LHORCH_HOME": str(lhorch_home_dir), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    plan = ServicePlan(system)
    if system == "systemd":
        unit = home / ".config/systemd/user" / f"{SERVICE}.service"
        if install:
            env_lines = "".join(f"Environment={shlex.quote(f'{k}={v}')}\n" for k, v in env.items())
            plan.files[unit] = (
                "[Unit]\nDescription=lhorch scheduler: scheduled pipeline runs\n\n"
                f"[Service]\nType=simple\nExecStart={shlex.join(argv)}\n{env_lines}"
                # Above the scheduler's own stop grace (60 s) plus its kill grace (15 s).
                "Restart=on-failure\nRestartSec=30\nKillMode=mixed\nTimeoutStopSec=120\n\n"
                "[Install]\nWantedBy=default.target\n")
            plan.commands = [["systemctl", "--user", "daemon-reload"],
                             ["systemctl", "--user", "enable", "--now", f"{SERVICE}.service"]]
        else:
            plan.files[unit] = ""
            plan.commands = [["systemctl", "--user", "disable", "--now", f"{SERVICE}.service"],
                             ["systemctl", "--user", "daemon-reload"]]
    elif system == "launchd":
        plist = home / "Library/LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        if install:
            args = "".join(f"    <string>{_xml(a)}</string>\n" for a in argv)
            envs = "".join(f"    <key>{_xml(k)}</key><string>{_xml(v)}</string>\n" for k, v in env.items())
            log = _xml(str(lhorch_home_dir / "scheduler.log"))
            plan.files[plist] = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
                '<plist version="1.0">\n<dict>\n'
                f"  <key>Label</key><string>{LAUNCHD_LABEL}</string>\n"
                f"  <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n"
                f"  <key>EnvironmentVariables</key>\n  <dict>\n{envs}  </dict>\n"
                "  <key>RunAtLoad</key><true/>\n  <key>KeepAlive</key><true/>\n"
                f"  <key>StandardOutPath</key><string>{log}</string>\n  <key>StandardErrorPath</key><string>{log}</string>\n"
                "</dict>\n</plist>\n")
            plan.commands = [["launchctl", "load", "-w", str(plist)]]
        else:
            plan.files[plist] = ""
            plan.commands = [["launchctl", "unload", "-w", str(plist)]]
    elif system == "cron":
        envs = " ".join(shlex.quote(f"{k}={v}") for k, v in env.items() if k == "LHORCH_HOME")
        log = shlex.quote(str(lhorch_home_dir / "scheduler.log"))
        plan.cron_line = f"@reboot {envs} {shlex.join(argv)} >> {log} 2>&1 {CRON_TAG}"
    else:
        raise UsageError(f"unknown service system {system!r}", hint="Use systemd, launchd, cron or auto.")
    return plan


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _apply(plan: ServicePlan, install: bool, activate: bool) -> None:
    for path, content in plan.files.items():
        if install:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            click.echo(f"wrote {path}")
    if plan.system == "cron" and activate:
        current = subprocess.run(["crontab", "-l"], capture_output=True, text=True, timeout=10).stdout
        lines = [ln for ln in current.splitlines() if CRON_TAG not in ln]
        if install:
            lines.append(plan.cron_line or "")
        subprocess.run(["crontab", "-"], input="\n".join(lines) + "\n", text=True, check=True, timeout=10)
        click.echo(("added" if install else "removed") + " the @reboot line in your crontab")
    elif plan.system == "cron":
        click.echo(f"crontab line (not applied, --no-activate): {plan.cron_line}")
    for cmd in plan.commands:
        if not activate or not shutil.which(cmd[0]):
            click.echo(f"not run{' (--no-activate)' if not activate else f' ({cmd[0]} not found)'}: {shlex.join(cmd)}")
            continue
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        click.echo(f"ran: {shlex.join(cmd)}" + (f" (exit {done.returncode}: {done.stderr.strip()})" if done.returncode else ""))
    if not install:
        for path in plan.files:
            if path.exists():
                path.unlink()
                click.echo(f"removed {path}")


def _service_options(f):
    f = click.option("--system", type=click.Choice(["auto", "systemd", "launchd", "cron"]), default="auto", show_default=True)(f)
    f = click.option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")(f)
    f = click.option("--no-activate", is_flag=True, help="Write or remove the files but do not run systemctl/launchctl/crontab.")(f)
    return f


@schedule.command("install")
@_service_options
def install_cmd(system: str, dry_run: bool, no_activate: bool) -> None:
    """Start the scheduler with your session: a systemd user unit, a launchd agent or an @reboot crontab line."""
    plan = service_plan(_pick_system(system), Path.home(), lhorch_home().resolve(), _scheduler_argv(), install=True)
    if dry_run:
        _print_plan(plan)
        return
    _apply(plan, install=True, activate=not no_activate)
    if plan.system == "cron":
        click.echo("hint: @reboot starts it at the next boot; start it now with `nohup lhorch scheduler &`.")


@schedule.command("uninstall")
@_service_options
def uninstall_cmd(system: str, dry_run: bool, no_activate: bool) -> None:
    """Remove what `lhorch schedule install` set up."""
    plan = service_plan(_pick_system(system), Path.home(), lhorch_home().resolve(), _scheduler_argv(), install=False)
    if dry_run:
        _print_plan(plan)
        return
    _apply(plan, install=False, activate=not no_activate)


def _print_plan(plan: ServicePlan) -> None:
    for path, content in plan.files.items():
        click.echo(f"would {'write' if content else 'remove'} {path}" + (f":\n{content}" if content else ""))
    if plan.cron_line:
        click.echo(f"would set the crontab line: {plan.cron_line}")
    for cmd in plan.commands:
        click.echo(f"would run: {shlex.join(cmd)}")


# --- the scheduler process -----------------------------------------------------------------------------
@click.command()
@click.option("--once", is_flag=True, help="Fire what is due now, wait for those runs, and exit (for cron or CI).")
@click.option("--poll", default=30.0, show_default=True, type=click.FloatRange(0.05), help="Seconds between checks.")
@click.option("--grace", default=60.0, show_default=True, type=click.FloatRange(0),
              help="On SIGTERM/SIGINT, seconds running runs get to finish before they are stopped.")
@click.option("--misfire-grace", default=300.0, show_default=True, type=click.FloatRange(0),
              help="A fire noticed up to this many seconds late is on time; later ones follow `catchup`.")
@click.option("--run-cmd", hidden=True, help="Command that runs a pipeline (default: this Python's `lhorch run`).")
def scheduler(once: bool, poll: float, grace: float, misfire_grace: float, run_cmd: str | None) -> None:
    """Fire scheduled pipeline runs until stopped (one scheduler per LHORCH_HOME)."""
    from lhorch.orchestrator.scheduling.daemon import Scheduler, SubprocessLauncher, acquire_lock

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    store = _store()
    lock = acquire_lock(store.home)
    clock = SystemClock()
    sched = Scheduler(store, clock=clock, launcher=SubprocessLauncher(shlex.split(run_cmd) if run_cmd else None),
                      misfire_grace=misfire_grace, stop_grace=grace)

    def _stop(signum, frame):  # noqa: ARG001
        logging.getLogger("lhorch.scheduler").info("scheduler: %s received, stopping", signal.Signals(signum).name)
        sched.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"scheduler: watching {len(sch.list_schedules(store))} schedule(s) in {store.home} (pid {os.getpid()})", err=True)
    try:
        sched.run(poll=poll, once=once)
    finally:
        lock.close()
    click.echo("scheduler: stopped", err=True)


COMMANDS = [schedule, scheduler]
