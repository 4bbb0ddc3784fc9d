"""How a stage attempt reaches a cluster: the dispatch seam between the runner and a cluster.

A cluster decides how its stages are dispatched; the runner drives every cluster the same way:
``submit`` an attempt, ask its ``state``, ``read_log`` what it printed, ``stop`` it. Remote clusters
take stages through Ray's Jobs API (lhorch.orchestrator.execution.ray_jobs); the local node runs
them as plain processes with its own admission of CPUs, GPUs and memory (local_dispatch.py), which
costs milliseconds where a Ray Jobs submission costs a JobSupervisor actor (~1.5-1.9 s a stage).

Contract for every implementation:
- ``submit`` returns at once; the attempt is PENDING until the cluster has room for it, then RUNNING,
  then SUCCEEDED, FAILED or STOPPED. Submitting the same id twice keeps the first.
- ``stop`` is safe on an attempt that has ended or was never known; the attempt ends STOPPED.
- ``read_log(job_id, offset)`` returns what the attempt printed from ``offset`` on and the offset to
  ask from next time; with ``writes_log`` the dispatch writes the attempt's log file itself.
- ``poll_interval(age)``: how long the runner may wait before asking an attempt of this age again;
  a dispatcher that ``notifies`` calls the ``on_change`` it was given when an attempt ends, so its
  attempts' ends are seen at once however long the runner waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.status import JobStatus


@dataclass(frozen=True)
class JobState:
    status: JobStatus
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.status.terminal


@dataclass(frozen=True)
class StageJob:
    """One attempt to dispatch: the wrapper's command line and environment, and what it needs."""

    submission_id: str
    entrypoint: list[str]
    env: dict[str, str]
    log_path: Path  # the attempt's log file on this machine
    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 0.0
    # Ray Train workers take the stage's CPUs and GPUs on a Ray cluster: its driver there reserves none.
    distributed: bool = False
    # The stage attaches to a Ray cluster itself (ray.init()): the cluster must give it one.
    needs_ray: bool = False
    working_dir: str | None = None  # shipped to a remote cluster with the job
    excludes: tuple[str, ...] = ()


class Dispatcher(Protocol):
    writes_log: bool
    notifies: bool

    def submit(self, job: StageJob) -> str: ...

    def state(self, job_id: str) -> JobState: ...

    def read_log(self, job_id: str, offset: int) -> tuple[str, int]: ...

    def stop(self, job_id: str) -> None: ...

    def poll_interval(self, age: float) -> float: ...

    def warm_up(self) -> None:
        """A stage that needs Ray will come: get it ready in the background (a no-op where it is)."""
        ...


@runtime_checkable
class DispatchingProvider(Protocol):
    """A provider whose clusters run stages their own way rather than through Ray's Jobs API.

    Contract: ``dispatcher`` returns the one dispatcher for ``cluster``; ``on_change`` is called
    (from any thread) when one of its attempts ends. ``release`` of the cluster ends whatever its
    dispatcher still runs.
    """

    def dispatcher(self, cluster: Cluster, on_change: Callable[[], None]) -> Dispatcher:
        """How stages reach ``cluster``."""
        ...
