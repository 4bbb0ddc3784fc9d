"""`lhorch scheduler`: the long-running process that fires the schedules (one per LHORCH_HOME)."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys

import click

from lhorch.orchestrator.core.clock import SystemClock
from lhorch.orchestrator.scheduling.daemon import Scheduler, SubprocessLauncher, acquire_lock
from lhorch.orchestrator.scheduling.schedules import list_schedules
from lhorch.orchestrator.state.store import Store


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    store = Store()
    lock = acquire_lock(store.home)
    clock = SystemClock()
    sched = Scheduler(store, clock=clock, launcher=SubprocessLauncher(shlex.split(run_cmd) if run_cmd else None),
                      misfire_grace=misfire_grace, stop_grace=grace)

    def _stop(signum, frame):  # noqa: ARG001
        logging.getLogger("lhorch.scheduler").info("scheduler: %s received, stopping", signal.Signals(signum).name)
        sched.request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"scheduler: watching {len(list_schedules(store))} schedule(s) in {store.home} (pid {os.getpid()})",
               err=True)
    try:
        sched.run(poll=poll, once=once)
    finally:
        lock.close()
    click.echo("scheduler: stopped", err=True)
