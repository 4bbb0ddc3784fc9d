"""Walk a pipeline's DAG and run every stage where the plan placed it, through Ray's Jobs API.

One loop, one thread: ready stages are submitted (Ray queues them within each cluster's resources,
so independent stages run in parallel as far as CPUs allow), running ones are polled for state and
logs, finished ones record their artifacts. Clusters are acquired lazily — a run whose stages are
all cached starts nothing — and released in ``finally``, whatever ended the run.

Everything is recorded in the store before it is acted on, so a crash leaves a run that the next
``lhorch run`` (or ``--resume RUN_ID``) picks up: finished stages whose cache key still matches are
kept, the rest run again.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.execution import staging
from lhorch.orchestrator.execution.heartbeat import Heartbeats
from lhorch.orchestrator.core.errors import ClusterUnreachable, LhorchError
from lhorch.orchestrator.execution.progress import QuietReporter, Reporter
from lhorch.orchestrator.execution.ray_jobs import RayJobs
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.execution.stage_wrapper import EXIT_TIMEOUT, USAGE_FILE
from lhorch.orchestrator.state.store import Store, new_run_id, utcnow
from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.providers.base import Provider

if TYPE_CHECKING:
    from lhorch.orchestrator.budget.guard import BudgetGuard

POLL_S = 0.1
LOG_POLL_S = 0.5
DONE = {"succeeded", "cached"}
# Lines Ray's job manager adds to every job's log: kept in the log file, not shown live.
_RAY_NOISE = re.compile(r"job_manager\.py:\d+ -- Runtime env is setting up|^Running entrypoint for job |^\[lhorch\] stage \S+ starting on ")
TERMINAL = DONE | {"failed", "skipped", "stopped"}


@dataclass
class RunOptions:
    fresh: bool = False
    resume: str | None = None
    trigger: str = "manual"
    only_if_changed: bool = False
    run_id: str | None = None


@dataclass
class RunResult:
    run_id: str
    status: str
    stages: dict[str, str]
    run_dir: Path
    resumed: bool = False
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("succeeded", "skipped")


@dataclass
class _Running:
    stage: str
    attempt_id: int
    attempt: int
    job_id: str
    jobs: RayJobs
    started: float
    log_path: Path
    log_offset: int = 0
    last_log_poll: float = 0.0


@dataclass
class _Target:
    """A cluster (once acquired) and what runs on it."""

    key: str
    provider: Provider
    request: ClusterRequest
    stages: list[str]
    cluster: Cluster | None = None
    jobs: RayJobs | None = None
    released: bool = False
    unfinished: set[str] = field(default_factory=set)
    lost: str | None = None  # why the cluster is gone (spot interruption, terminated), set by the heartbeat


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
                 guard: "BudgetGuard | None" = None):
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
        self.state: dict[str, str] = {s: "waiting" for s in self.order}
        self.attempt_no: dict[str, int] = {s: 0 for s in self.order}
        self.running: dict[str, _Running] = {}
        self.targets: dict[str, _Target] = {}
        self.run_id = ""
        self.run_dir = Path()
        self.stop_requested = False
        self._previous: dict[str, dict] = {}
        self.hard_stop_at = hard_stop_at
        self.guard = guard
        self.heartbeat_seconds = heartbeat_seconds
        self._heartbeats: Heartbeats | None = None

    # --- entry --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        resumed = self._open_run()
        fingerprint = art.pipeline_fingerprint(self.pipeline, self.base_dir)
        if self.options.only_if_changed and not resumed and self._unchanged(fingerprint):
            self.store.update_run(self.run_id, status="skipped", fingerprint=fingerprint, started_at=utcnow(),
                                  finished_at=utcnow(), error="inputs unchanged since the last successful run")
            self.reporter.info("Nothing changed since the last successful run: skipped.")
            return RunResult(self.run_id, "skipped", {}, self.run_dir, message="inputs unchanged")
        self.store.update_run(self.run_id, status="running", pid=os.getpid(), started_at=utcnow(),
                              fingerprint=fingerprint, plan_json=self.plan.model_dump_json())
        self._build_targets()
        if self.guard is not None:
            self.guard.open(self.run_id, self.plan)
        status, message = "failed", ""
        try:
            self._loop()
            failed = [s for s, st in self.state.items() if st not in DONE]
            status = "succeeded" if not failed else "failed"
            if failed:
                message = "stage(s) did not finish: " + ", ".join(f"{s} ({self.state[s]})" for s in failed)
        except _BudgetStop as stop:
            status, message = "budget_exceeded", str(stop)
            self.reporter.info(f"[red]{message}[/]")
            self._stop_all("stopped at the budget cap")
        except KeyboardInterrupt:
            status, message = "interrupted", "interrupted; resume with `lhorch run --resume " + self.run_id + "`"
            self._stop_all("interrupted by the user")
            raise
        except BaseException as exc:
            status, message = ("interrupted" if isinstance(exc, ClusterUnreachable) else "failed"), str(exc)
            self._stop_all(str(exc))
            raise
        finally:
            try:
                self._release_all()
            finally:
                if self.guard is not None:
                    self.guard.close()
            self.store.update_run(self.run_id, status=status, finished_at=utcnow(), error=message or None)
            self.store.event(self.run_id, "run", f"run {status}", reason=message)
        return RunResult(self.run_id, status, dict(self.state), self.run_dir, resumed, message)

    def _open_run(self) -> bool:
        """Create the run, or reopen the one being resumed. True when resuming."""
        row = None
        if self.options.resume:
            row = self.store.get_run(self.options.resume)
            if row is None:
                from lhorch.orchestrator.core.errors import NotFoundError

                raise NotFoundError(f"no run {self.options.resume!r}", hint="`lhorch runs` lists the runs.")
        elif not self.options.fresh and self.file is not None:
            row = self.store.latest_unfinished_run(self.pipeline.name, str(self.file))
        if row is not None:
            self.run_id = row["id"]
            self.run_dir = self.store.runs_dir(self.run_id)
            self.store.mark_running_attempts(self.run_id, "stopped", "the lhorch process running it ended")
            for name, att in self.store.stage_states(self.run_id).items():
                self._previous[name] = dict(att)
            self.store.event(self.run_id, "run", "resumed", pid=os.getpid())
            done = [n for n, a in self._previous.items() if a["status"] in DONE]
            self.reporter.info(f"Resuming run {self.run_id}: {len(done)} of {len(self.order)} stage(s) finished before.")
            return True
        self.run_id = self.options.run_id or new_run_id(self.pipeline.name)
        self.run_dir = self.store.runs_dir(self.run_id)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store.create_run(self.run_id, self.pipeline.name, self.pipeline, str(self.file) if self.file else None,
                              trigger=self.options.trigger, plan=self.plan)
        self.reporter.info(f"Run {self.run_id}")
        return False

    def _unchanged(self, fingerprint: str) -> bool:
        return self.store.last_succeeded_fingerprint(self.pipeline.name, other_than=self.run_id) == fingerprint

    # --- clusters -----------------------------------------------------------------------------
    def _build_targets(self) -> None:
        for name in self.order:
            placement = self.plan.placements[name]
            if placement.target == "local":
                key, provider_name = "local", "local"
            else:
                provider_name = placement.provider
                key = f"{provider_name}:{placement.group or name}"
            if key not in self.targets:
                provider = self.providers.get(provider_name)
                if provider is None:
                    raise LhorchError(f"stage {name} is placed on {provider_name!r}, which is not configured",
                                      hint="Set `cloud:` in the pipeline file, or pin the stage with `placement: local`.")
                from lhorch.orchestrator.core.plan import Offer

                offer = placement.offer or Offer(provider=provider_name, vcpus=1, memory_gb=1)
                cloud = self.pipeline.cloud
                self.targets[key] = _Target(key, provider, ClusterRequest(
                    run_id=self.run_id, group=placement.group or name if key != "local" else "local", offer=offer,
                    expires_at=self.hard_stop_at or (utcnow() + timedelta(hours=cloud.max_hours)),
                    idle_minutes=cloud.idle_minutes), stages=[])
            self.targets[key].stages.append(name)
            self.targets[key].unfinished.add(name)

    def _target_of(self, stage: str) -> _Target:
        for target in self.targets.values():
            if stage in target.stages:
                return target
        raise KeyError(stage)

    def _acquire(self, target: _Target) -> _Target:
        if target.cluster is None:
            self.reporter.info(f"Starting {target.key} …" if target.key != "local" else "Starting the local Ray node …")
            self.store.event(self.run_id, "cluster", f"acquire {target.key}")
            if self.guard is not None and target.key != "local":
                self.guard.before_acquire(target.request, target.stages)
            target.cluster = target.provider.acquire(target.request)
            if self.guard is not None and target.key != "local":
                self.guard.acquired(target.cluster, target.stages)
            target.jobs = RayJobs(target.cluster)
            target.lost = None
            if hasattr(target.provider, "heartbeat") and self._heartbeats is None:
                self._heartbeats = Heartbeats(lambda: list(self.targets.values()), self.heartbeat_seconds,
                                              on_error=lambda exc: self.store.event(self.run_id, "cluster",
                                                                                    f"heartbeat failed: {exc}"))
            self.store.event(self.run_id, "cluster", f"acquired {target.key}", address=target.cluster.address)
            if self.on_cluster_acquired:
                self.on_cluster_acquired(target.cluster)
        return target

    def _release(self, target: _Target) -> None:
        if target.cluster is not None and not target.released:
            target.provider.release(target.cluster)
            target.released = True
            if self.guard is not None:
                self.guard.released(target.cluster)
            self.store.event(self.run_id, "cluster", f"released {target.key}")

    def _release_all(self) -> None:
        if self._heartbeats is not None:
            self._heartbeats.stop()
        errors = []
        for target in self.targets.values():
            try:
                self._release(target)
            except Exception as exc:  # keep releasing the others; report every failure
                errors.append(f"{target.key}: {exc}")
        if errors:
            self.store.event(self.run_id, "cluster", "release failed", errors=errors)
            raise LhorchError("could not release: " + "; ".join(errors), hint="Run `lhorch gc` to clean up.")

    # --- the loop -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            if self.guard is not None:
                reason = self.guard.check()
                if reason:
                    raise _BudgetStop(reason)
            self._poll_running()
            progressed = self._schedule_ready()
            if all(self.state[s] in TERMINAL for s in self.order):
                return
            if not self.running and not progressed:
                return  # nothing runs and nothing can start: the rest is blocked
            time.sleep(POLL_S)

    def _ready(self, stage: str) -> bool:
        return self.state[stage] == "waiting" and all(self.state[n] in DONE for n in self.pipeline.stages[stage].needs)

    def _schedule_ready(self) -> bool:
        progressed = False
        for name in self.order:
            if self.state[name] == "waiting" and any(
                    self.state[n] in ("failed", "skipped", "stopped") for n in self.pipeline.stages[name].needs):
                self._set(name, "skipped", "an upstream stage did not finish")
                self._finish_target_stage(name)
                progressed = True
            elif self._ready(name) and not self.stop_requested:
                self._start(name)
                progressed = True
        return progressed

    def _set(self, stage: str, status: str, detail: str = "") -> None:
        self.state[stage] = status
        self.reporter.stage(stage, status, detail)

    def _inputs(self, stage: str) -> tuple[dict[str, Path], dict[str, str]]:
        refs = art.stage_inputs(self.pipeline, stage, self.run_dir, self.base_dir)
        paths: dict[str, Path] = {}
        hashes: dict[str, str] = {}
        recorded = {(a["stage"], a["name"]): a["sha256"] for a in self.store.artifacts(self.run_id)}
        for ref in refs:
            if ref.producer is not None:
                digest = recorded.get((ref.producer, ref.output))
                if digest is None:  # the producer did not write this optional output
                    continue
                hashes[ref.name] = digest
            elif ref.path.exists():
                hashes[ref.name] = art.sha256_path(ref.path)[0]
            else:
                raise LhorchError(f"stage {stage}: input {ref.name} not found at {ref.path}")
            paths[ref.name] = ref.path
        return paths, hashes

    def _start(self, stage: str) -> None:
        spec = self.pipeline.stages[stage]
        inputs, hashes = self._inputs(stage)
        key = art.cache_key(self.pipeline, stage, hashes)
        if self._reusable(stage, key):
            self.store.record_cached(self.run_id, stage, key, "finished in an earlier attempt of this run")
            self._set(stage, "cached", "kept from before")
            self._finish_target_stage(stage)
            return
        target = self._acquire(self._target_of(stage))
        self.attempt_no[stage] += 1
        out_dir = art.output_dir(self.run_dir, stage)
        _clear_partial_outputs(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        attempt_id = self.store.start_attempt(self.run_id, stage, key, target.key, target.cluster.name)
        attempt = self.store.attempt_number(attempt_id)
        env = self._stage_env(stage, inputs, out_dir, target.cluster)
        env["LHORCH_ATTEMPT"] = str(attempt)
        job_id = f"lhorch-{self.run_id}-{stage}-{attempt}"
        from lhorch.jobs.index import find_job

        job = find_job(spec.uses) if spec.uses else None
        cpus = 0.0 if job is not None and job.distributed else spec.resources.cpus
        gpus = 0.0 if job is not None and job.distributed else float(spec.resources.gpus)
        self.store.event(self.run_id, "stage", f"submit attempt {attempt}", stage=stage, job_id=job_id)
        remote = target.cluster.remote
        target.jobs.submit(submission_id=job_id, entrypoint=("python" if remote else sys.executable) + " -m lhorch.orchestrator.execution.stage_wrapper",
                           env=env, cpus=cpus, gpus=gpus, working_dir=str(self.base_dir) if remote else None,
                           excludes=self._working_dir_excludes(stage) if remote else None)
        self.store.finish_attempt(attempt_id, "running", job_id=job_id, finished_at=None)
        log_path = art.stage_dir(self.run_dir, stage) / f"attempt-{attempt}.log"
        self.running[stage] = _Running(stage, attempt_id, attempt, job_id, target.jobs, time.monotonic(), log_path)
        self._set(stage, "running", target.key if target.key != "local" else "")

    def _working_dir_excludes(self, stage: str) -> list[str]:
        """What not to ship with the pipeline's folder to a remote cluster: data the stages read
        (it goes through the artifact store) and what is never code."""
        excludes = [".git", "__pycache__", ".venv", "*.egg-info"]
        for name in self.pipeline.stages:
            for path in art.external_paths(self.pipeline, name, self.base_dir):
                try:
                    excludes.append("/" + str(path.relative_to(self.base_dir)))
                except ValueError:
                    continue  # outside the folder: not shipped anyway
        return excludes

    def _reusable(self, stage: str, key: str) -> bool:
        prev = self._previous.get(stage)
        if not prev or prev["status"] not in DONE or prev["cache_key"] != key:
            return False
        out = art.output_dir(self.run_dir, stage)
        for row in self.store.artifacts(self.run_id, stage):
            path = Path(row["path"])
            if not path.exists() or art.sha256_path(path)[0] != row["sha256"]:
                return False
        return out.exists()

    def _stage_env(self, stage: str, inputs: dict[str, Path], out_dir: Path, cluster: Cluster) -> dict[str, str]:
        spec = self.pipeline.stages[stage]
        env = {**self.pipeline.env, **spec.env}
        from lhorch.jobs.context import StageContext, to_env
        from lhorch.jobs.index import find_job

        ctx = StageContext(output_dir=out_dir, inputs=inputs, params=spec.with_, stage=stage, run_id=self.run_id)
        env.update(to_env(ctx))
        env["LHORCH_RESOURCES"] = spec.resources.model_dump_json()
        env["LHORCH_EXEC"] = json.dumps({
            "kind": "uses" if spec.uses else "run",
            "module": find_job(spec.uses).module if spec.uses else None,
            "command": spec.run,
            "cwd": str(self.base_dir),
            "timeout": spec.timeout,
            "remote": staging.send_inputs(self.store, self.pipeline, self.run_id, self.run_dir, self.base_dir, stage,
                                          inputs, cluster) if cluster.remote else None,
        })
        return env

    def _poll_running(self) -> None:
        now = time.monotonic()
        for stage, run in list(self.running.items()):
            spec = self.pipeline.stages[stage]
            target = self._target_of(stage)
            if target.lost:
                self._cluster_lost(target)
                continue
            state = run.jobs.state(run.job_id)
            if now - run.last_log_poll >= LOG_POLL_S or state.terminal:
                self._pump_logs(run)
            if not state.terminal:
                # The node enforces the timeout itself; this is the backstop if it cannot.
                if spec.timeout is not None and now - run.started > spec.timeout + 30:
                    run.jobs.stop(run.job_id)
                continue
            del self.running[stage]
            self._finished(run, state.status, state.message)

    def _cluster_lost(self, target: _Target) -> None:
        """The cluster went away under running stages (e.g. a spot interruption): their attempts
        fail, the cluster's remains are torn down, and retries run on a fresh one."""
        why = f"cluster lost: {target.lost}"
        self.store.event(self.run_id, "cluster", why)
        self.reporter.info(f"[red]{target.key}: {why}[/]")
        lost_runs = [r for s, r in self.running.items() if s in target.stages]
        for run in lost_runs:
            del self.running[run.stage]
        try:
            target.provider.release(target.cluster)
        except Exception as exc:  # the sweep (`lhorch gc`) finds what this could not delete
            self.store.event(self.run_id, "cluster", f"release after loss failed: {exc}")
        if self.guard is not None:
            self.guard.released(target.cluster)
        target.cluster, target.jobs, target.lost = None, None, None
        for run in lost_runs:
            self._finished(run, "FAILED", why)

    def _pump_logs(self, run: _Running) -> None:
        run.last_log_poll = time.monotonic()
        text = run.jobs.logs(run.job_id)
        new = text[run.log_offset:]
        if not new:
            return
        run.log_offset = len(text)
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path, "a") as f:
            f.write(new)
        for line in new.splitlines():
            if not _RAY_NOISE.search(line):
                self.reporter.log(run.stage, line)

    def _finished(self, run: _Running, status: str, message: str) -> None:
        stage = run.stage
        spec = self.pipeline.stages[stage]
        out_dir = art.output_dir(self.run_dir, stage)
        cluster = self._target_of(stage).cluster
        if cluster is not None and cluster.remote and status in ("SUCCEEDED", "FAILED"):
            try:
                staging.fetch_outputs(self.store, self.run_id, stage, cluster, out_dir)
            except Exception:
                if status == "SUCCEEDED":
                    raise  # a failed attempt may have had nothing to send back
        usage = _read_usage(out_dir)
        exit_code = usage.get("exit_code")
        error = None
        if status == "SUCCEEDED":
            missing = [o for o in art.declared_outputs(spec) if not (out_dir / o).exists()]
            if missing:
                status, error = "FAILED", f"finished without writing declared output(s): {', '.join(missing)}"
        else:
            error = "timed out" if exit_code == EXIT_TIMEOUT else (f"exit code {exit_code}" if exit_code is not None else message)
        fields = dict(exit_code=exit_code, peak_rss_mb=usage.get("peak_rss_mb"), error=error)
        if status == "SUCCEEDED":
            self._record_outputs(stage, out_dir)
            self.store.finish_attempt(run.attempt_id, "succeeded", **fields)
            self._record_history(stage, usage, time.monotonic() - run.started)
            self._set(stage, "succeeded")
            self._finish_target_stage(stage)
            return
        if self.stop_requested or status == "STOPPED":
            self.store.finish_attempt(run.attempt_id, "stopped", **fields)
            self._set(stage, "stopped", error or "")
            self._finish_target_stage(stage)
            return
        self.store.finish_attempt(run.attempt_id, "failed", **fields)
        if self.attempt_no[stage] <= spec.retries:
            self.store.event(self.run_id, "stage", f"attempt {run.attempt} failed ({error}); retrying", stage=stage)
            self._set(stage, "waiting", f"attempt {run.attempt} failed ({error}); retrying")
            self.reporter.stage(stage, "retrying", f"attempt {run.attempt} failed: {error}")
            return
        self._set(stage, "failed", f"{error}; log: {run.log_path}")
        self._finish_target_stage(stage)

    def _finish_target_stage(self, stage: str) -> None:
        target = self._target_of(stage)
        target.unfinished.discard(stage)
        # A cloud cluster goes as soon as its last stage is done: idle cloud time is the user's money.
        if not target.unfinished and target.key != "local":
            self._release(target)

    def _record_outputs(self, stage: str, out_dir: Path) -> None:
        for name in art.declared_outputs(self.pipeline.stages[stage]):
            path = out_dir / name
            if path.exists():
                digest, size = art.sha256_path(path)
                self.store.record_artifact(self.run_id, stage, name, path, digest, size)

    def _record_history(self, stage: str, usage: dict, wall: float) -> None:
        try:
            from lhorch.orchestrator.state import history
        except ImportError:
            return
        size_in = sum(r["size_bytes"] for r in self.store.artifacts(self.run_id)
                      if r["stage"] in self.pipeline.stages[stage].needs)
        size_out = sum(r["size_bytes"] for r in self.store.artifacts(self.run_id, stage))
        target = self._target_of(stage)
        placement = self.plan.placements[stage]
        history.record_stage(
            self.store, pipeline=self.pipeline.name, stage=stage, spec_hash=art.spec_hash(self.pipeline.stages[stage]),
            machine=self.machine if target.key == "local" else placement.instance_type,
            target=placement.target, wall_seconds=usage.get("wall_seconds", wall),
            peak_rss_mb=usage.get("peak_rss_mb"), peak_gpu_mb=usage.get("peak_gpu_mb"),
            input_bytes=size_in, output_bytes=size_out, finished_at=utcnow())

    def _stop_all(self, why: str) -> None:
        self.stop_requested = True
        for stage, run in list(self.running.items()):
            try:
                run.jobs.stop(run.job_id)
            except Exception as exc:  # the cluster may be gone; the attempt is marked stopped either way
                self.store.event(self.run_id, "stage", f"could not stop job: {exc}", stage=stage)
            self.store.finish_attempt(run.attempt_id, "stopped", error=why)
            self._set(stage, "stopped", why)
        self.running.clear()


def _read_usage(out_dir: Path) -> dict:
    try:
        return json.loads((out_dir / USAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}


# A retried or resumed attempt continues from the step checkpoints its predecessor left here.
KEEP_ACROSS_ATTEMPTS = {"checkpoints"}


def _clear_partial_outputs(out_dir: Path) -> None:
    """Remove what a failed or interrupted attempt left, except its checkpoints."""
    import shutil

    if not out_dir.exists():
        return
    for entry in out_dir.iterdir():
        if entry.name in KEEP_ACROSS_ATTEMPTS:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
