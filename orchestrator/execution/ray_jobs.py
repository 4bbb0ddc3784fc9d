"""One Ray Jobs client for every cluster, local or remote: submit, follow logs, stop.

A lost connection is retried with exponential backoff (bounded); when the cluster stays unreachable
the caller gets ClusterUnreachable, which fails the stage with a clear message and leaves the run
resumable. The token travels only in the Authorization header and never in a message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import requests

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.orchestrator.core.status import JobStatus

T = TypeVar("T")


@dataclass(frozen=True)
class JobState:
    status: JobStatus
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.status.terminal


class RayJobs:
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

    def submit(self, *, submission_id: str, entrypoint: str, env: dict[str, str], cpus: float, gpus: float,
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
