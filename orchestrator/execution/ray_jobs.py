"""The Ray Jobs client: how stages reach a remote cluster (submit, follow logs, stop).

It is one Dispatcher (lhorch.providers.dispatch) among others: the local node runs its stages its own
way. While a stage runs, it is asked for its state less and less often (every 0.1 s at first, every
2 s once it has run a minute), so a long stage costs a request every few seconds, not ten a second.
A lost connection is retried with exponential backoff (bounded); when the cluster stays unreachable
the caller gets ClusterUnreachable, which fails the stage with a clear message and leaves the run
resumable. The token travels only in the Authorization header and never in a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.orchestrator.core.status import JobStatus
from lhorch.providers.dispatch import JobState, StageJob

__all__ = ["JobState", "RayJobs"]

T = TypeVar("T")
# Polling pace while a job runs: its age over this, between the bounds.
POLL_MIN_S, POLL_MAX_S, POLL_AGE_FRACTION = 0.1, 2.0, 0.03


class RayJobs:
    writes_log = False  # the runner copies what the Jobs API returns into the attempt's log file
    notifies = False

    def __init__(self, cluster: Cluster, *, retries: int = 5, backoff: float = 0.5,
                 sleep: Callable[[float], None] = time.sleep):
        self.cluster = cluster
        self.retries = retries
        self.backoff = backoff
        self._sleep = sleep
        self._client: Any = None

    def _connect(self) -> Any:
        if self._client is None:
            # Deferred: importing Ray takes seconds, and a fully cached run never connects.
            from ray.job_submission import JobSubmissionClient

            self._client = self._retry("connect", lambda: JobSubmissionClient(
                self.cluster.address, headers=self.cluster.auth_headers(), verify=True))
        return self._client

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                return call()
            except Exception as exc:  # connection errors surface as several types across Ray versions
                if not _is_connection_error(exc) or attempt == self.retries:
                    if _is_connection_error(exc):
                        where = _safe_address(self.cluster.address)
                        raise ClusterUnreachable(
                            f"cluster {self.cluster.name} ({where}) is unreachable: {what} failed "
                            f"after {self.retries + 1} tries",
                            hint="Check the cluster is up (`lhorch clusters`); "
                                 "resume with `lhorch run --resume RUN_ID`.",
                        ) from None
                    raise
                self._sleep(delay)
                delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    def poll_interval(self, age: float) -> float:
        return min(POLL_MAX_S, max(POLL_MIN_S, age * POLL_AGE_FRACTION))

    def warm_up(self) -> None:
        return None  # a cluster the Jobs API answers for is up

    def read_log(self, job_id: str, offset: int) -> tuple[str, int]:
        # The Jobs API returns the whole log each time: the part past ``offset`` is new.
        text = self.logs(job_id)
        return text[offset:], len(text)

    def submit(self, job: StageJob) -> str:
        """Submit through the Jobs API; a distributed job's driver reserves no CPU or GPU (its Ray Train
        workers take the stage's)."""
        cpus, gpus = (0.0, 0.0) if job.distributed else (job.cpus, float(job.gpus))
        return self.submit_job(submission_id=job.submission_id, entrypoint=" ".join(job.entrypoint), env=job.env,
                               cpus=cpus, gpus=gpus, working_dir=job.working_dir,
                               excludes=list(job.excludes) or None)

    def submit_job(self, *, submission_id: str, entrypoint: str, env: dict[str, str], cpus: float, gpus: float,
                   working_dir: str | None = None, excludes: list[str] | None = None,
                   py_modules: list[str] | None = None) -> str:
        client = self._connect()
        runtime_env: dict[str, Any] = {"env_vars": env}
        if working_dir:
            runtime_env["working_dir"] = working_dir
            if excludes:
                runtime_env["excludes"] = excludes
        if py_modules:
            runtime_env["py_modules"] = py_modules

        def call() -> str:
            try:
                return client.submit_job(entrypoint=entrypoint, submission_id=submission_id, runtime_env=runtime_env,
                                         entrypoint_num_cpus=cpus, entrypoint_num_gpus=gpus)
            except RuntimeError as exc:
                # A retried submit whose first try reached the cluster: the job exists, keep it.
                if "already exists" in str(exc):
                    return submission_id
                raise

        return self._retry("submit", call)

    def state(self, job_id: str) -> JobState:
        client = self._connect()
        info = self._retry("status", lambda: client.get_job_info(job_id))
        return JobState(status=JobStatus.parse(info.status), message=info.message or "")

    def logs(self, job_id: str) -> str:
        client = self._connect()
        return self._retry("logs", lambda: client.get_job_logs(job_id))

    def stop(self, job_id: str) -> None:
        client = self._connect()
        try:
            self._retry("stop", lambda: client.stop_job(job_id))
        except RuntimeError:
            pass  # already finished or unknown: nothing to stop


def _is_connection_error(exc: Exception) -> bool:
    # Deferred: ~90 ms to import, on every `lhorch run`'s start otherwise; Ray's job client has loaded it here.
    import requests

    if isinstance(exc, (ConnectionError, TimeoutError,
                        requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
        return True
    text = str(exc)
    return "Failed to connect to Ray" in text or "Connection refused" in text or "Max retries exceeded" in text


def _safe_address(address: str) -> str:
    # Addresses never carry credentials in lhorch, but a user may paste one that does.
    if "@" in address:
        scheme, _, rest = address.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return address
