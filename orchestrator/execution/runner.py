"""Walk a pipeline's DAG and run every stage where the plan placed it, through its cluster's dispatcher.

One loop, one thread: ready stages are submitted (each cluster queues them within its resources, so
independent stages run in parallel as far as CPUs allow), running ones are asked for state and logs,
finished ones record their artifacts. The loop sleeps until an attempt may have changed: a dispatcher
that notifies (the local node's) wakes it when an attempt ends; others are asked less often the
longer a stage runs (their ``poll_interval``). Clusters are acquired lazily — a run whose stages are
all cached starts nothing — and released in ``finally``, whatever ended the run.

Everything is recorded in the store before it is acted on, so a crash leaves a run that the next
``lhorch run`` (or ``--resume RUN_ID``) picks up: finished stages whose cache key still matches are
kept, the rest run again.

This module is the loop and its entry point; each part it drives has a module of its own:
- opening.py: create the run, or reopen the one being resumed (RunOptions);
- cluster_pool.py: the run's clusters: targets from the plan, acquire, release, loss, heartbeats;
- launch.py: one attempt of a stage: inputs, reuse within a resumed run, output folder, environment, submit
  (to the cluster's dispatcher: providers/dispatch.py; ray_jobs.py for remote clusters);
- reuse.py, stage_cache.py: cache keys and reuse across runs, through a content-addressed store;
- logs.py: follow a running attempt's log into its file and onto the terminal;
- outcome.py: what an ended attempt means (succeeded, stopped, retry, failed), as pure functions;
- recording.py: what a finished attempt leaves in the store (usage, outputs, history).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lhorch.orchestrator.budget.guard import BudgetGuard
from lhorch.orchestrator.core import interrupts
from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.core.interrupts import RunInterrupted
from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.status import JobStatus, RunStatus, StageStatus
from lhorch.orchestrator.execution import staging
from lhorch.orchestrator.execution.cluster_pool import ClusterPool, Target
from lhorch.orchestrator.execution.launch import RunningAttempt, StageLauncher
from lhorch.orchestrator.execution.logs import LOG_POLL_S
from lhorch.orchestrator.execution.opening import OpenedRun, RunOptions, open_run
from lhorch.orchestrator.execution.outcome import Decision, blocked, decide, past_backstop, ready, run_status
from lhorch.orchestrator.execution.progress import RETRYING, QuietReporter, Reporter
from lhorch.orchestrator.execution.recording import Recorder, missing_outputs, read_usage
from lhorch.orchestrator.execution.reuse import StageReuse
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.state.store import Store, utcnow
from lhorch.providers.base import Provider

__all__ = ["RunOptions", "RunResult", "Runner", "all_local_plan"]

# The longest the loop sleeps with stages running (a heartbeat's news of a lost cluster waits this long).
MAX_WAIT_S = 2.0


@dataclass
class RunResult:
    run_id: str
    status: RunStatus
    stages: dict[str, StageStatus]
    run_dir: Path
    resumed: bool = False
    message: str = ""

    @property
    def ok(self) -> bool:
        return RunStatus(self.status).ok


class _BudgetStop(Exception):
    """The budget watchdog says stop: spend by the next check would cross a cap."""


def all_local_plan(pipeline: Pipeline) -> Plan:
    return Plan(pipeline=pipeline.name, policy="local", placements={
        name: Placement(stage=name, target="local", reason="local node") for name in pipeline.stages})


class Runner:
    def __init__(self, store: Store, pipeline: Pipeline, pipeline_file: Path | None, *,
                 providers: dict[str, Provider], plan: Plan | None = None, reporter: Reporter | None = None,
                 options: RunOptions | None = None, machine: str = "local",
                 on_cluster_acquired: Callable[[Cluster], None] | None = None,
                 hard_stop_at: datetime | None = None, heartbeat_seconds: float = 60.0,
                 guard: BudgetGuard | None = None):
        self.store = store
        self.pipeline = pipeline
        self.file = Path(pipeline_file).resolve() if pipeline_file else None
        self.base_dir = self.file.parent if self.file else Path.cwd()
        self.providers = providers
        self.plan = plan or all_local_plan(pipeline)
        self.reporter = reporter or QuietReporter()
        self.options = options or RunOptions()
        self.machine = machine
        self.on_cluster_acquired = on_cluster_acquired
        self.order = topological_order(pipeline.stages)
        self.state: dict[str, StageStatus] = dict.fromkeys(self.order, StageStatus.WAITING)
        self.attempt_no: dict[str, int] = dict.fromkeys(self.order, 0)  # attempts made by this process
        self.running: dict[str, RunningAttempt] = {}
        self.run_id = ""
        self.run_dir = Path()
        self.stop_requested = False
        self._previous: dict[str, dict] = {}
        self._keys: dict[str, str] = {}  # stage → the cache key of its current attempt
        self.hard_stop_at = hard_stop_at
        self.guard = guard
        self.heartbeat_seconds = heartbeat_seconds
        self._stopped: list[str] = []  # stages this process stopped (Ctrl-C, budget, error)

    # --- entry --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        opened = open_run(self.store, self.pipeline, self.file, self.plan, self.options, self.reporter)
        try:
            return self._run(opened)
        except KeyboardInterrupt as exc:
            # Said by the CLI: what was stopped and released, and only that.
            pool = getattr(self, "pool", None)
            raise RunInterrupted(self.run_id, list(pool.released) if pool else [], self._stopped) from exc
        finally:
            interrupts.set_still_up(None)
            if opened.lock is not None:
                opened.lock.release()  # the run is no longer live: `lhorch gc` may now sweep its leftovers

    def _run(self, opened: OpenedRun) -> RunResult:
        self.run_id, self.run_dir, self._previous = opened.run_id, opened.run_dir, opened.previous
        self.pool = ClusterPool(self.store, self.run_id, self.providers, self.reporter, guard=self.guard,
                                heartbeat_seconds=self.heartbeat_seconds, on_acquired=self.on_cluster_acquired)
        interrupts.set_still_up(self.pool.still_up)
        self.launcher = StageLauncher(self.store, self.pipeline, self.run_id, self.run_dir, self.base_dir,
                                      verbose=self.options.verbose)
        # Stages that attach to Ray themselves: their cluster gets Ray ready while earlier stages run.
        self._ray_stages = {s for s in self.order if self.launcher.distributed(s)}
        self.recorder = Recorder(self.store, self.pipeline, self.plan, self.run_id, self.machine)
        self.reuse = StageReuse(self.store, self.pipeline, self.base_dir, self.file, fresh=self.options.fresh,
                                no_cache=self.options.no_cache)
        # Skipped only when every stage would be reused: the same keys as the run itself uses.
        if (self.options.only_if_changed and not opened.resumed
                and self.reuse.all_cached(self.order, self.run_dir)):
            self.store.update_run(self.run_id, status=RunStatus.SKIPPED, started_at=utcnow(),
                                  finished_at=utcnow(), error="inputs unchanged since the last successful run")
            self.reporter.info("Nothing changed since the last successful run: skipped.")
            return RunResult(self.run_id, RunStatus.SKIPPED, {}, self.run_dir, message="inputs unchanged")
        self.store.update_run(self.run_id, status=RunStatus.RUNNING, pid=os.getpid(), started_at=utcnow(),
                              plan_json=self.plan.model_dump_json())
        self.pool.plan_targets(self.pipeline, self.plan, self.order, self.hard_stop_at)
        if self.guard is not None:
            self.guard.open(self.run_id, self.plan)
            self.guard.start()  # checks from its own thread, also while an acquire or a transfer blocks
        status, message = RunStatus.FAILED, ""
        try:
            self._loop()
            status, message = run_status(self.state)
        except _BudgetStop as stop:
            status, message = RunStatus.BUDGET_EXCEEDED, str(stop)
            self.reporter.info(f"[red]{message}[/]")
            self._stop_all("stopped at the budget cap")
        except KeyboardInterrupt:
            status, message = RunStatus.INTERRUPTED, f"interrupted; resume with `lhorch run --resume {self.run_id}`"
            self._stop_all("interrupted by the user")
            raise
        except BaseException as exc:
            status = RunStatus.INTERRUPTED if isinstance(exc, ClusterUnreachable) else RunStatus.FAILED
            message = str(exc)
            self._stop_all(str(exc))
            raise
        finally:
            # Teardown is not cut short by another Ctrl-C (issue 17); one that comes is raised after it.
            with interrupts.deferred():
                try:
                    self.pool.release_all()
                finally:
                    if self.guard is not None:
                        self.guard.close()
                    self.store.update_run(self.run_id, status=status, finished_at=utcnow(), error=message or None)
                    self.store.event(self.run_id, "run", f"run {status}", reason=message)
        return RunResult(self.run_id, status, dict(self.state), self.run_dir, opened.resumed, message)

    # --- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self.pool.wake.clear()  # an attempt that ends from here on ends the next wait at once
            if self.guard is not None:
                reason = self.guard.check()
                if reason:
                    raise _BudgetStop(reason)
            self._poll_running()
            progressed = self._schedule_ready()
            if all(self.state[s] in StageStatus.terminal() for s in self.order):
                return
            if not self.running and not progressed:
                return  # nothing runs and nothing can start: the rest is blocked
            self.pool.wake.wait(self._until_next_poll())

    def _until_next_poll(self) -> float:
        """Seconds until a running attempt is due to be asked again (its state, or its log's new lines)."""
        now = time.monotonic()
        due = [run.log.last_poll + LOG_POLL_S if run.jobs.notifies else run.next_poll for run in self.running.values()]
        return max(0.0, min([now + MAX_WAIT_S, *due]) - now) if due else 0.05

    def _needs(self, stage: str) -> list[StageStatus]:
        return [self.state[n] for n in self.pipeline.stages[stage].needs]

    def _schedule_ready(self) -> bool:
        progressed = False
        for name in self.order:
            if self.state[name] == StageStatus.WAITING and blocked(self._needs(name)):
                self._set(name, StageStatus.SKIPPED, "an upstream stage did not finish")
                self.pool.stage_done(name)
                progressed = True
            elif ready(self.state[name], self._needs(name)) and not self.stop_requested:
                self._start(name)
                progressed = True
        return progressed

    def _set(self, stage: str, status: StageStatus, detail: str = "") -> None:
        self.state[stage] = status
        self.reporter.stage(stage, status, detail)

    def _start(self, stage: str) -> None:
        inputs, hashes = self.launcher.inputs(stage)
        key = self._keys[stage] = self.reuse.key(stage, hashes)
        if self.reuse.enabled(stage) and self.launcher.reusable(stage, key, self._previous.get(stage)):
            self.store.record_cached(self.run_id, stage, key, "finished in an earlier attempt of this run")
            self._set(stage, StageStatus.CACHED, "kept from before")
            self.pool.stage_done(stage)
            return
        entry = self.reuse.find(stage, key)
        # No cluster is acquired for a cached stage: a run that is all cached starts nothing.
        if entry is not None and self.reuse.restore(self.run_id, stage, entry, art.output_dir(self.run_dir, stage)):
            self._set(stage, StageStatus.CACHED, f"from run {entry.run_id}")
            self.pool.stage_done(stage)
            return
        target = self.pool.target_of(stage)
        cluster, jobs = self.pool.acquire(target)
        if self._ray_stages & target.unfinished:
            jobs.warm_up()  # started now, in the background, it is ready (or closer) when such a stage is
        self.attempt_no[stage] += 1
        self.running[stage] = self.launcher.launch(stage, key, target.key, cluster, jobs, inputs)
        self._set(stage, StageStatus.RUNNING, target.key if not target.local else "")

    def _poll_running(self) -> None:
        now = time.monotonic()
        for stage, run in list(self.running.items()):
            target = self.pool.target_of(stage)
            if target.lost:
                self._cluster_lost(target)
                continue
            if now < run.next_poll:
                continue
            try:
                state = run.jobs.state(run.job_id)
            except ClusterUnreachable as exc:
                if target.cluster is None or not target.cluster.remote:
                    raise
                # A cloud cluster that stopped answering is lost (a spot interruption often shows here
                # before the heartbeat sees it): its attempts fail and retries run on a fresh one.
                target.lost = target.lost or str(exc)
                self._cluster_lost(target)
                continue
            if (state.status is JobStatus.FAILED and target.cluster is not None and target.cluster.remote
                    and not self.pool.check_intact(target)):
                self._cluster_lost(target)  # the stage failed because a node went away: retry on a fresh cluster
                continue
            # One that notifies is asked every time round (a look at a table); others when due.
            run.next_poll = 0.0 if run.jobs.notifies else now + run.jobs.poll_interval(now - run.started)
            if state.terminal:
                run.log.pump(self.reporter, final=True)
            elif run.log.due(now):
                run.log.pump(self.reporter)
            if not state.terminal:
                # The node enforces the timeout itself; this is the backstop if it cannot.
                if past_backstop(self.pipeline.stages[stage].timeout, now - run.started):
                    run.jobs.stop(run.job_id)
                continue
            del self.running[stage]
            self._finished(run, state.status, state.message)

    def _cluster_lost(self, target: Target) -> None:
        """The cluster went away under running stages (e.g. a spot interruption): their attempts
        fail, the cluster's remains are torn down, and retries run on a fresh one."""
        lost_runs = [r for s, r in self.running.items() if s in target.stages]
        for run in lost_runs:
            del self.running[run.stage]
        why = self.pool.forget_lost(target)
        for run in lost_runs:
            self._finished(run, JobStatus.FAILED, why)

    def _finished(self, run: RunningAttempt, status: JobStatus, message: str) -> None:
        stage = run.stage
        out_dir = art.output_dir(self.run_dir, stage)
        cluster = self.pool.target_of(stage).cluster
        if cluster is not None and cluster.remote and status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            try:
                staging.fetch_outputs(self.store, self.run_id, stage, cluster, out_dir)
            except Exception:
                if status == JobStatus.SUCCEEDED:
                    raise  # a failed attempt may have had nothing to send back
        usage = read_usage(out_dir)
        exit_code = usage.get("exit_code")
        missing = missing_outputs(self.pipeline, stage, out_dir) if status == JobStatus.SUCCEEDED else []
        outcome = decide(status, exit_code=exit_code, message=message, missing_outputs=missing,
                         stop_requested=self.stop_requested, attempts_made=self.attempt_no[stage],
                         retries=self.pipeline.stages[stage].retries)
        fields = {"exit_code": exit_code, "peak_rss_mb": usage.get("peak_rss_mb"), "error": outcome.error}
        if outcome.decision is Decision.SUCCEEDED:
            self.reuse.keep(self.run_id, stage, self._keys[stage], out_dir)
        self.store.finish_attempt(run.attempt_id, outcome.attempt_status, **fields)
        if outcome.decision is Decision.SUCCEEDED:
            self.recorder.history(stage, usage, time.monotonic() - run.started,
                                  local=self.pool.target_of(stage).local)
            self._set(stage, StageStatus.SUCCEEDED)
        elif outcome.decision is Decision.STOPPED:
            self._set(stage, StageStatus.STOPPED, outcome.error or "")
        elif outcome.decision is Decision.RETRY:
            detail = f"attempt {run.attempt} failed ({outcome.error}); retrying"
            self.store.event(self.run_id, "stage", detail, stage=stage)
            self._set(stage, StageStatus.WAITING, detail)
            self.reporter.stage(stage, RETRYING, f"attempt {run.attempt} failed: {outcome.error}")
            return
        else:
            self._set(stage, StageStatus.FAILED, f"{outcome.error}; log: {run.log.path}")
        self.pool.stage_done(stage)

    def _stop_all(self, why: str) -> None:
        self.stop_requested = True
        for stage, run in list(self.running.items()):
            self._stopped.append(stage)
            try:
                run.jobs.stop(run.job_id)
            except Exception as exc:  # the cluster may be gone; the attempt is marked stopped either way
                self.store.event(self.run_id, "stage", f"could not stop job: {exc}", stage=stage)
            self.store.finish_attempt(run.attempt_id, StageStatus.STOPPED, error=why)
            self._set(stage, StageStatus.STOPPED, why)
        self.running.clear()
