"""The scheduler: one long-running process that starts due pipeline runs as `lhorch run` subprocesses.

Each tick it (1) collects runs that finished — registering and gating their model, notifying on
failure — (2) starts a queued run whose predecessor is done, and (3) for every active schedule works
out which fire times passed since its last fire:

- one fire, observed within ``misfire_grace`` of its time: run it;
- older fires (the laptop slept or was off): ``catchup: once`` runs one run for all of them,
  ``catchup: skip`` records them as `missed` and runs nothing (an on-time fire still runs);
- a run of the schedule still going: ``overlap: skip`` records the fire as `skipped`;
  ``overlap: queue`` keeps it (at most one) and starts it when the current run ends.

A run gets ``--trigger schedule:<name> --json`` (and ``--only-if-changed`` when the schedule says so)
and the environment variable LHORCH_PROMOTED_MODEL, the folder of the pipeline's current model, so a
fine-tune can start from yesterday's promoted model.

Stopping (SIGTERM/SIGINT → ``request_stop``): no new runs start; running children get ``stop_grace``
seconds to finish, then SIGTERM (the runner records them `interrupted`, resumable), then SIGKILL after
``kill_grace`` more. A second stop request skips the wait. Every wait is bounded.

Time comes from an injected Clock and processes from an injected Launcher, so tests drive a month of
schedule in milliseconds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Protocol

import psutil

from lhorch.orchestrator.core.clock import Clock, SystemClock
from lhorch.orchestrator.core.errors import EXIT_INVALID, LhorchError
from lhorch.orchestrator.core.spec import Notify, Pipeline, Promotion
from lhorch.orchestrator.core.status import FireStatus, RunStatus
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.scheduling import schedules as sch
from lhorch.orchestrator.scheduling.cron import fires_between
from lhorch.orchestrator.scheduling.model_registry import Registry, RegistryError
from lhorch.orchestrator.scheduling.notify import Notice, send, should_notify
from lhorch.orchestrator.state import schedules as fires
from lhorch.orchestrator.state.store import Store, iso, parse_iso

log = logging.getLogger("lhorch.scheduler")

# What the exit code of `lhorch run` means when it printed no `--json` line (docs/cli exit codes).
EXIT_STATUS = {0: FireStatus.SUCCEEDED, 1: FireStatus.FAILED, 2: FireStatus.INVALID, 3: FireStatus.BUDGET_EXCEEDED,
               4: FireStatus.INFEASIBLE, 5: FireStatus.CLOUD_ERROR, 130: FireStatus.INTERRUPTED}
DEFAULT_RUN_CMD = [sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "run"]



class SchedulerLocked(LhorchError):
    exit_code = EXIT_INVALID


# --- launching runs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LaunchRequest:
    schedule: str
    pipeline_file: Path
    fire_at: datetime
    args: list[str]
    env: dict[str, str]
    log_dir: Path


@dataclass(frozen=True)
class RunResult:
    exit_code: int
    status: FireStatus  # the runner's status (succeeded, failed, skipped, ...) or one derived from the exit code
    run_id: str | None = None
    error: str | None = None


class RunHandle(Protocol):
    pid: int | None

    def poll(self) -> RunResult | None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


Launcher = Callable[[LaunchRequest], RunHandle]


class SubprocessHandle:
    def __init__(self, proc: subprocess.Popen, out: Path, err: Path):
        self.proc, self.out, self.err = proc, out, err
        self.pid = proc.pid

    def poll(self) -> RunResult | None:
        code = self.proc.poll()
        if code is None:
            return None
        return parse_result(code, _read(self.out), _read(self.err))

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            try:  # the child leads its own process group: stage processes get the signal too
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:  # already gone: not an error
                pass


class SubprocessLauncher:
    """Starts `lhorch run FILE ARGS` (or ``run_cmd``) with stdout/stderr in the schedule's log folder."""

    def __init__(self, run_cmd: list[str] | None = None):
        self.run_cmd = list(run_cmd or DEFAULT_RUN_CMD)

    def __call__(self, req: LaunchRequest) -> SubprocessHandle:
        req.log_dir.mkdir(parents=True, exist_ok=True)
        stem = req.fire_at.strftime("%Y%m%dT%H%M%SZ")
        out, err = req.log_dir / f"{stem}.out", req.log_dir / f"{stem}.err"
        with open(out, "wb") as fo, open(err, "wb") as fe:
            proc = subprocess.Popen([*self.run_cmd, str(req.pipeline_file), *req.args], stdin=subprocess.DEVNULL,
                                    stdout=fo, stderr=fe, cwd=req.pipeline_file.parent,
                                    env={**os.environ, **req.env}, start_new_session=True)
        return SubprocessHandle(proc, out, err)


def parse_result(code: int, stdout: str, stderr: str = "") -> RunResult:
    """The runner's `--json` last line when there is one, else what the exit code means."""
    status = EXIT_STATUS.get(code, FireStatus.FAILED)
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    try:
        data = json.loads(lines[-1]) if lines else None
    except ValueError:
        data = None
    if isinstance(data, dict):
        reported = FireStatus.parse(data["status"]) if data.get("status") else status
        return RunResult(code, reported, data.get("run_id"), data.get("error") or data.get("message") or None)
    tail = [ln for ln in stderr.splitlines() if ln.strip()][-1:]
    return RunResult(code, status, None, tail[0][:500] if tail and code != 0 else None)


def _read(path: Path, limit: int = 200_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


# --- the scheduler -----------------------------------------------------------------------------------
@dataclass
class _Active:
    schedule: str
    row_id: int
    fire_at: datetime
    handle: RunHandle
    pipeline: Pipeline | None
    detail: str | None = None
    stopped_by_us: bool = False


@dataclass
class _Queued:
    row_id: int
    fire_at: datetime


class Scheduler:
    def __init__(self, store: Store, clock: Clock | None = None, launcher: Launcher | None = None,
                 registry: Registry | None = None, notifier: Callable[[Notice, Notify], list[str]] | None = None,
                 misfire_grace: float = 300.0, stop_grace: float = 60.0, kill_grace: float = 15.0):
        self.store = store
        self.clock = clock or SystemClock()
        self.launcher = launcher or SubprocessLauncher()
        self.registry = registry or Registry(store)
        self.notifier = notifier or (lambda notice, cfg: send(notice, cfg))
        self.misfire_grace = timedelta(seconds=misfire_grace)
        self.stop_grace, self.kill_grace = stop_grace, kill_grace
        self.active: dict[str, _Active] = {}
        self.queued: dict[str, _Queued] = {}
        self._stop_requests = 0

    # --- the loop -------------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop_requests += 1
        wake = getattr(self.clock, "wake", None)
        if wake:
            wake()

    @property
    def stopping(self) -> bool:
        return self._stop_requests > 0

    def run(self, poll: float = 30.0, once: bool = False, max_ticks: int | None = None) -> None:
        """Tick every ``poll`` seconds until stopped. ``once``: fire what is due now, wait for those
        runs (and a queued one) to finish, and return."""
        ticks = 0
        fire = True
        while not self.stopping:
            self.tick(fire=fire)
            ticks += 1
            if once:
                fire = False
                if not self.active and not self.queued:
                    break
            if max_ticks is not None and ticks >= max_ticks:
                break
            self.clock.sleep(self._sleep_for(poll))
        self.drain()

    def _sleep_for(self, poll: float) -> float:
        """Poll, but wake for the next fire time if it is sooner (never less than 50 ms)."""
        now = self.clock.now()
        wait = poll
        for s in sch.list_schedules(self.store):
            nxt = sch.next_fire(s, now)
            if nxt is not None:
                wait = min(wait, (nxt - now).total_seconds())
        return max(0.05, wait)

    def tick(self, fire: bool = True) -> None:
        self._reap()
        self._reconcile_orphans()
        self._start_queued()
        if not fire or self.stopping:
            return
        for s in sch.list_schedules(self.store):
            if not s.paused:
                try:
                    self._check(s)
                except Exception as exc:  # one broken schedule must not stop the others
                    log.exception("schedule %s: %s", s.name, exc)

    def _check(self, s: sch.Schedule) -> None:
        now = self.clock.now()
        since = s.last_fire_at or s.created_at
        try:
            due = fires_between(s.cron, s.timezone, since, now)
        except RuntimeError:  # a frequent schedule after a long sleep: look at the last hour only
            due = fires_between(s.cron, s.timezone, max(since, now - timedelta(hours=1)), now)
        if not due:
            return
        fires.set_last_fire(self.store, s.name, due[-1])
        latest = due[-1]
        on_time = now - latest <= self.misfire_grace
        missed = due[:-1] if on_time else due
        if not on_time and s.catchup == "skip":
            fires.add_schedule_run(self.store, s.name, latest, FireStatus.MISSED,
                                   f"{len(missed)} fire(s) missed while the scheduler was not running"
                                   " (catchup: skip)", now, finished=True)
            log.info("schedule %s: %d missed fire(s) skipped", s.name, len(missed))
            return
        detail = None
        if missed and not on_time:
            detail = f"catch-up: one run for {len(missed)} missed fire(s)"
        elif missed:
            detail = f"{len(missed)} earlier fire(s) missed"
        self._fire(s, latest, detail)

    def _fire(self, s: sch.Schedule, fire_at: datetime, detail: str | None) -> None:
        now = self.clock.now()
        busy = s.name in self.active or self._live_external_run(s.name)
        if not busy:
            self._launch(s, fire_at, detail, row_id=None)
            return
        if s.overlap == "queue" and s.name not in self.queued:
            row = fires.add_schedule_run(self.store, s.name, fire_at, FireStatus.QUEUED,
                                         "waiting for the previous run to finish", now)
            self.queued[s.name] = _Queued(row, fire_at)
            log.info("schedule %s: previous run still going, fire of %s queued", s.name, iso(fire_at))
            return
        why = "one run already queued" if s.overlap == "queue" else "previous run still going (overlap: skip)"
        fires.add_schedule_run(self.store, s.name, fire_at, FireStatus.SKIPPED, why, now, finished=True)
        log.info("schedule %s: fire of %s skipped: %s", s.name, iso(fire_at), why)

    def _start_queued(self) -> None:
        for name, q in list(self.queued.items()):
            if name in self.active or self._live_external_run(name) or self.stopping:
                continue
            del self.queued[name]
            try:
                s = sch.get_schedule(self.store, name)
            except LhorchError:
                fires.update_schedule_run(self.store, q.row_id, status=FireStatus.SKIPPED, detail="schedule removed",
                                          finished_at=self.clock.now())
                continue
            self._launch(s, q.fire_at, "queued behind the previous run", row_id=q.row_id)

    def _launch(self, s: sch.Schedule, fire_at: datetime, detail: str | None, row_id: int | None) -> None:
        now = self.clock.now()
        if row_id is None:
            row_id = fires.add_schedule_run(self.store, s.name, fire_at, FireStatus.RUNNING, detail, now)
        else:
            fires.update_schedule_run(self.store, row_id, status=FireStatus.RUNNING, detail=detail, started_at=now)
        pipeline: Pipeline | None = None
        try:
            pipeline = load_pipeline(Path(s.pipeline_file))
            schedule = pipeline.schedule
            # --new: each fire is a new run (without it `lhorch run` would resume a failed predecessor);
            # unlike --fresh it still reuses unchanged stages from the cache.
            args = ["--trigger", f"schedule:{s.name}", "--json", "--new"]
            if schedule is None or schedule.only_if_changed:
                args.append("--only-if-changed")
            env = {"LHORCH_HOME": str(self.store.home), "LHORCH_SCHEDULE": s.name,
                   "LHORCH_FIRE_AT": iso(fire_at) or ""}
            current = self.registry.current(pipeline.name)
            if current is not None:
                env["LHORCH_PROMOTED_MODEL"] = current.path
            handle = self.launcher(LaunchRequest(s.name, Path(s.pipeline_file), fire_at, args, env,
                                                 self.store.home / "schedules" / s.name))
        except Exception as exc:
            message = exc.message if isinstance(exc, LhorchError) else f"{type(exc).__name__}: {exc}"
            fires.update_schedule_run(self.store, row_id, status=FireStatus.FAILED,
                                      detail=f"could not start: {message}", finished_at=self.clock.now())
            log.error("schedule %s: could not start a run: %s", s.name, message)
            self._notify(s.name, pipeline, FireStatus.FAILED, f"could not start: {message}", None)
            return
        self.active[s.name] = _Active(s.name, row_id, fire_at, handle, pipeline, detail)
        log.info("schedule %s: started run for %s (pid %s)", s.name, iso(fire_at), handle.pid)

    # --- finishing ------------------------------------------------------------------------------
    def _reap(self) -> None:
        for name, act in list(self.active.items()):
            result = act.handle.poll()
            if result is not None:
                del self.active[name]
                self._finish(act, result)

    def _finish(self, act: _Active, result: RunResult) -> None:
        status, detail = result.status, result.error
        promote = act.pipeline.schedule.promote if act.pipeline and act.pipeline.schedule else None
        if result.status == FireStatus.SKIPPED:
            detail = "inputs unchanged since the last successful run"
        elif act.stopped_by_us and result.status in (FireStatus.INTERRUPTED, FireStatus.FAILED):
            status, detail = FireStatus.INTERRUPTED, "stopped by the scheduler's shutdown"
        elif result.status == FireStatus.SUCCEEDED and promote:
            status, detail = self._gate(promote, result.run_id)
        detail = detail if detail is not None else act.detail
        fires.update_schedule_run(self.store, act.row_id, status=status, run_id=result.run_id, detail=detail,
                                  finished_at=self.clock.now())
        log.info("schedule %s: run %s %s%s", act.schedule, result.run_id or "-", status,
                 f" ({detail})" if detail else "")
        if not act.stopped_by_us:
            self._notify(act.schedule, act.pipeline, status, detail, result.run_id)

    def _gate(self, rule: Promotion, run_id: str | None) -> tuple[FireStatus, str]:
        if not run_id:
            return FireStatus.NOT_PROMOTED, "the run reported no run id"
        try:
            decision = self.registry.register_run(run_id, rule, now=self.clock.now())
        except (RegistryError, LhorchError) as exc:
            return FireStatus.NOT_PROMOTED, exc.message
        verdict = FireStatus.PROMOTED if decision.promoted else FireStatus.NOT_PROMOTED
        return verdict, f"v{decision.model.version}: {decision.reason}"

    def _notify(self, schedule: str, pipeline: Pipeline | None, status: FireStatus, detail: str | None,
                run_id: str | None) -> None:
        config = pipeline.schedule.notify if pipeline and pipeline.schedule else Notify()
        event = should_notify(config, status)
        if not event:
            return
        name = pipeline.name if pipeline else schedule
        text = f"lhorch: scheduled run of {name} (schedule {schedule}) {status.replace('_', ' ')}"
        if run_id:
            text += f", run {run_id}"
        if detail:
            text += f": {detail}"
        try:
            self.notifier(Notice(f"lhorch: {name} {status.replace('_', ' ')}", text, event), config)
        except Exception as exc:  # a notice is best effort; the record in the store is what counts
            log.warning("schedule %s: notification failed: %s", schedule, type(exc).__name__)

    # --- runs this process does not track ---------------------------------------------------------
    def _live_external_run(self, schedule: str) -> bool:
        """A run of this schedule started by an earlier scheduler process that is still going."""
        rows = self.store.runs_in(RunStatus.unfinished(), trigger=f"schedule:{schedule}")
        host = os.uname().nodename
        return any(r["pid"] and r["host"] == host and psutil.pid_exists(r["pid"]) for r in rows)

    def _reconcile_orphans(self) -> None:
        """schedule_runs left `running` or `queued` by a scheduler that died: settle them from `runs`."""
        ours = {a.row_id for a in self.active.values()} | {q.row_id for q in self.queued.values()}
        for sr in fires.active_schedule_runs(self.store):
            if sr["id"] in ours:
                continue
            if sr["status"] == FireStatus.QUEUED:
                fires.update_schedule_run(self.store, sr["id"], status=FireStatus.LOST, finished_at=self.clock.now(),
                                          detail="the scheduler stopped before the queued run started")
                continue
            r = self.store.first_run_since(f"schedule:{sr['schedule']}", sr["started_at"])
            if r is None:
                fires.update_schedule_run(self.store, sr["id"], status=FireStatus.LOST, finished_at=self.clock.now(),
                                          detail="the scheduler stopped and no run was recorded")
                continue
            unfinished = r["status"] in RunStatus.unfinished()
            if unfinished and self._live_external_run(sr["schedule"]):
                continue
            status = FireStatus.LOST if unfinished else FireStatus.parse(r["status"])
            fires.update_schedule_run(self.store, sr["id"], status=status, run_id=r["id"], detail=r["error"],
                                      finished_at=parse_iso(r["finished_at"]) or self.clock.now())

    # --- stopping -------------------------------------------------------------------------------
    def drain(self) -> None:
        """Let running children finish within stop_grace, then terminate, then kill (bounded)."""
        for name, q in list(self.queued.items()):
            fires.update_schedule_run(self.store, q.row_id, status=FireStatus.SKIPPED, detail="the scheduler stopped",
                                      finished_at=self.clock.now())
            del self.queued[name]
        if not self.active:
            return
        log.info("scheduler: waiting up to %.0fs for %d run(s) to finish", self.stop_grace, len(self.active))
        self._wait(self.stop_grace, stop_early=lambda: self._stop_requests > 1)
        if self.active:
            log.info("scheduler: stopping %d run(s)", len(self.active))
            for act in self.active.values():
                act.stopped_by_us = True
                act.handle.terminate()
            self._wait(self.kill_grace)
        for act in list(self.active.values()):
            act.handle.kill()
        self._wait(5.0)
        for name, act in list(self.active.items()):  # did not die even from SIGKILL within 5 s
            del self.active[name]
            fires.update_schedule_run(self.store, act.row_id, status=FireStatus.LOST, finished_at=self.clock.now(),
                                      detail="did not stop when the scheduler shut down")

    def _wait(self, seconds: float, stop_early: Callable[[], bool] = lambda: False) -> None:
        deadline = self.clock.now() + timedelta(seconds=seconds)
        for _ in range(int(seconds / 0.1) + 2):
            self._reap()
            if not self.active or stop_early() or self.clock.now() >= deadline:
                return
            self.clock.sleep(0.1)


# --- one scheduler at a time ---------------------------------------------------------------------------
def acquire_lock(home: Path) -> IO[str]:
    """Hold $LHORCH_HOME/scheduler.lock for this process's lifetime; raise if another scheduler has it."""
    home.mkdir(parents=True, exist_ok=True)
    f = open(home / "scheduler.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise SchedulerLocked(f"another scheduler is already running (pid {holder}, lock {home / 'scheduler.lock'})",
                              hint="Only one scheduler may run per LHORCH_HOME; stop the other one first.") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
