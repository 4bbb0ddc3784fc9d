"""`lhorch schedule install | uninstall`: start the scheduler with the user's session, as a systemd user
unit, a launchd agent or an @reboot crontab line. ``service_plan`` says what would be written and run
(pure, so it is testable); ``_apply`` does it."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import click

from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.state.store import lhorch_home

_F = TypeVar("_F", bound=Callable[..., None])

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
    if exe:
        return [exe, "scheduler"]
    return [sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "scheduler"]


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
                '<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" '
                '"http://www.apple.com/DTDs/PropertyList-1.0.dtd">\n'
                '<plist version="1.0">\n<dict>\n'
                f"  <key>Label</key><string>{LAUNCHD_LABEL}</string>\n"
                f"  <key>ProgramArguments</key>\n  <array>\n{args}  </array>\n"
                f"  <key>EnvironmentVariables</key>\n  <dict>\n{envs}  </dict>\n"
                "  <key>RunAtLoad</key><true/>\n  <key>KeepAlive</key><true/>\n"
                f"  <key>StandardOutPath</key><string>{log}</string>\n"
                f"  <key>StandardErrorPath</key><string>{log}</string>\n"
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
        failed = f" (exit {done.returncode}: {done.stderr.strip()})" if done.returncode else ""
        click.echo(f"ran: {shlex.join(cmd)}{failed}")
    if not install:
        for path in plan.files:
            if path.exists():
                path.unlink()
                click.echo(f"removed {path}")


def _service_options(f: _F) -> _F:
    f = click.option("--system", type=click.Choice(["auto", "systemd", "launchd", "cron"]), default="auto",
                     show_default=True)(f)
    f = click.option("--dry-run", is_flag=True, help="Print what would be written and run; change nothing.")(f)
    f = click.option("--no-activate", is_flag=True,
                     help="Write or remove the files but do not run systemctl/launchctl/crontab.")(f)
    return f


@click.command("install")
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


@click.command("uninstall")
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
