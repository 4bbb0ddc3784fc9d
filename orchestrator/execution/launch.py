"""Launch one attempt of a stage: find its inputs, decide whether an earlier attempt can be kept,
prepare its output folder and environment, and submit it to its cluster's dispatcher (Ray's Jobs API
for a remote cluster, a process of lhorch's on this machine: providers/dispatch.py).

What the stage wrapper on the node runs is one typed message (core/stage_message.py) in
``LHORCH_EXEC``; the job's own API (inputs, outputs, parameters) is the environment jobs/context.py
reads. On a remote cluster the inputs are uploaded first (staging.py) and the pipeline's folder is
shipped as the job's working directory, without the data the stages read.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lhorch.jobs.context import StageContext, to_env
from lhorch.jobs.index import find_job
from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import LhorchError
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.stage_message import ENV_VAR, StageMessage
from lhorch.orchestrator.core.status import StageStatus
from lhorch.orchestrator.execution import process_group, staging
from lhorch.orchestrator.execution.logs import LogTail
from lhorch.orchestrator.execution.stage_cache import break_links
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.state.store import Store
from lhorch.providers.dispatch import Dispatcher, StageJob

# A retried or resumed attempt continues from the step checkpoints its predecessor left here.
KEEP_ACROSS_ATTEMPTS = {"checkpoints"}
WRAPPER_MODULE = "lhorch.orchestrator.execution.stage_wrapper"


@dataclass
class RunningAttempt:
    stage: str
    attempt_id: int
    attempt: int  # the attempt's number within the run, counting those before a resume
    job_id: str
    jobs: Dispatcher
    started: float  # time.monotonic() at submission
    log: LogTail
    next_poll: float = 0.0  # when to ask its dispatcher for its state again


class StageLauncher:
    """Launches the stages of one run."""

    def __init__(self, store: Store, pipeline: Pipeline, run_id: str, run_dir: Path, base_dir: Path, *,
                 verbose: bool = False):
        self.store, self.pipeline, self.run_id, self.run_dir, self.base_dir = store, pipeline, run_id, run_dir, base_dir
        self.verbose = verbose  # show Ray's own log lines on the terminal too

    def inputs(self, stage: str) -> tuple[dict[str, Path], dict[str, str]]:
        """The stage's inputs (name → path) and their digests, which its cache key is made of. An
        optional output its producer did not write is left out."""
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

    def reusable(self, stage: str, key: str, previous: dict[str, Any] | None) -> bool:
        """An earlier attempt of this run (before a resume) finished with the same cache key and its
        outputs are still on disk unchanged."""
        if not previous or previous["status"] not in StageStatus.done() or previous["cache_key"] != key:
            return False
        out = art.output_dir(self.run_dir, stage)
        for row in self.store.artifacts(self.run_id, stage):
            path = Path(row["path"])
            if not path.exists() or art.sha256_path(path)[0] != row["sha256"]:
                return False
        return out.exists()

    def launch(self, stage: str, key: str, target_key: str, cluster: Cluster, jobs: Dispatcher,
               inputs: dict[str, Path]) -> RunningAttempt:
        """Record the attempt, submit it, and mark it running."""
        spec = self.pipeline.stages[stage]
        secrets = staging.secret_values(self.pipeline, stage)  # a missing one fails before anything starts
        out_dir = art.output_dir(self.run_dir, stage)
        pgid_file = art.stage_dir(self.run_dir, stage) / process_group.PGID_FILE
        if not cluster.remote and process_group.end_recorded(pgid_file):
            # An earlier attempt (of a killed lhorch) still ran: never two copies writing into one folder.
            self.store.event(self.run_id, "stage", "ended the processes of an earlier attempt", stage=stage)
        clear_partial_outputs(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        attempt_id = self.store.start_attempt(self.run_id, stage, key, target_key, cluster.name)
        attempt = self.store.attempt_number(attempt_id)
        env = self.stage_env(stage, inputs, out_dir, cluster)
        env["LHORCH_ATTEMPT"] = str(attempt)
        if not cluster.remote:
            env[process_group.PGID_FILE_VAR] = str(pgid_file)
            env[process_group.OWNER_PID_VAR] = str(os.getpid())
        env.update(staging.secret_env(self.store, self.run_id, stage, cluster, secrets))
        job_id = f"lhorch-{self.run_id}-{stage}-{attempt}"
        self.store.event(self.run_id, "stage", f"submit attempt {attempt}", stage=stage, job_id=job_id)
        remote = cluster.remote
        python = (cluster.python or "python") if remote else sys.executable  # a remote node has its own interpreter
        log_path = art.stage_dir(self.run_dir, stage) / f"attempt-{attempt}.log"
        # How the attempt reaches its cluster is the cluster's business (its dispatcher): this says what it needs.
        distributed = self.distributed(stage)
        jobs.submit(StageJob(submission_id=job_id, entrypoint=[python, "-m", WRAPPER_MODULE], env=env,
                             log_path=log_path, cpus=spec.resources.cpus, gpus=float(spec.resources.gpus),
                             memory_gb=spec.resources.memory_gb, distributed=distributed, needs_ray=distributed,
                             working_dir=str(self.base_dir) if remote else None,
                             excludes=tuple(self.working_dir_excludes()) if remote else ()))
        self.store.finish_attempt(attempt_id, StageStatus.RUNNING, job_id=job_id, finished_at=None)
        now = time.monotonic()
        return RunningAttempt(stage, attempt_id, attempt, job_id, jobs, now,
                              LogTail(stage, job_id, jobs, log_path, secrets=tuple(secrets.values()),
                                      verbose=self.verbose))

    def distributed(self, stage: str) -> bool:
        """Whether the stage starts Ray Train workers, or is a `run:` command that spans several nodes
        and places its own ranks through Ray (issue 14): it then attaches to a Ray cluster itself, and
        its driver reserves nothing, so that its ranks can have the stage's CPUs and GPUs on every node."""
        spec = self.pipeline.stages[stage]
        if spec.run is not None:
            return spec.resources.nodes > 1
        job = find_job(spec.uses) if spec.uses else None
        return job is not None and job.runs_distributed(spec.with_)

    def message(self, stage: str, inputs: dict[str, Path], cluster: Cluster) -> StageMessage:
        """What the stage wrapper runs; on a remote cluster this uploads the inputs."""
        spec = self.pipeline.stages[stage]
        job = find_job(spec.uses) if spec.uses else None
        if spec.uses and job is None:
            raise LhorchError(f"stage {stage}: unknown job {spec.uses!r}")
        remote = staging.send_inputs(self.store, self.pipeline, self.run_id, self.run_dir, self.base_dir, stage,
                                     inputs, cluster) if cluster.remote else None
        return StageMessage(kind="uses" if spec.uses else "run", module=job.module if job else None,
                            command=spec.run, cwd=str(self.base_dir), timeout=spec.timeout, remote=remote)

    def stage_env(self, stage: str, inputs: dict[str, Path], out_dir: Path, cluster: Cluster) -> dict[str, str]:
        spec = self.pipeline.stages[stage]
        env = {**self.pipeline.env, **spec.env}
        ctx = StageContext(output_dir=out_dir, inputs=inputs, params=spec.with_, stage=stage, run_id=self.run_id)
        env.update(to_env(ctx))
        env["LHORCH_RESOURCES"] = spec.resources.model_dump_json()  # per node; "nodes" says how many
        env["LHORCH_NODES"] = str(spec.resources.nodes)
        env[ENV_VAR] = self.message(stage, inputs, cluster).model_dump_json()
        return env

    def working_dir_excludes(self) -> list[str]:
        """What not to ship with the pipeline's folder to a remote cluster: data the stages read
        (it goes through the artifact store) and what is never code. The same rule decides which
        files are a `run:` stage's code in its cache key."""
        return art.shipped_excludes(self.pipeline, self.base_dir)


def clear_partial_outputs(out_dir: Path) -> None:
    """Remove what a failed or interrupted attempt left, except its checkpoints."""
    if not out_dir.exists():
        return
    for entry in out_dir.iterdir():
        if entry.name in KEEP_ACROSS_ATTEMPTS:
            if entry.is_dir():
                break_links(entry)  # the attempt writes into them: never through a link to a finished run
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
