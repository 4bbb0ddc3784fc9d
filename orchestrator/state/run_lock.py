"""Which runs are live: the one rule, by lock, not by the status column (issue 17).

The process that runs a run holds an exclusive ``fcntl.flock`` on ``$LHORCH_HOME/locks/RUN_ID.lock``
for as long as it runs it; the kernel drops the lock when that process ends, however it ends (``kill
-9`` included). So a run is live exactly when its lock is held, and a run whose status still says
``running`` but whose lock is free was left by a process that is gone: it is ``interrupted``.

Runs recorded by another host (a shared ``LHORCH_HOME``) cannot be checked from here and count as
live; their clusters still expire on their own.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from lhorch.orchestrator.core.status import RunStatus, StageStatus
from lhorch.orchestrator.state.store import Store, private_dir

GONE_REASON = "its lhorch process ended"


def _lock_path(home: Path, run_id: str) -> Path:
    return private_dir(home / "locks") / f"{run_id}.lock"


class RunLock:
    """The lock of one run, held by this process until ``release`` (or until the process ends)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @classmethod
    def take(cls, home: Path, run_id: str) -> RunLock | None:
        """The run's lock, or None when another process holds it (the run is live there)."""
        path = _lock_path(home, run_id)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def is_live(store: Store, run_id: str) -> bool:
    """True while some process holds the run's lock (this one included)."""
    path = store.home / "locks" / f"{run_id}.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def live_runs(store: Store) -> set[str]:
    """Runs that may still be using their clusters: running here with their lock held, or another host's."""
    here = os.uname().nodename
    return {row["id"] for row in store.runs_in(RunStatus.unfinished())
            if row["host"] != here or is_live(store, row["id"])}


def gone_runs(store: Store) -> list[str]:
    """Runs of this host whose status says running but whose process is gone (lock free)."""
    here = os.uname().nodename
    return [row["id"] for row in store.runs_in(RunStatus.unfinished())
            if row["host"] == here and not is_live(store, row["id"])]


def mark_gone_interrupted(store: Store) -> list[str]:
    """Record every gone run as interrupted (its running attempts stopped); return their ids.
    Their open ledger rows are the ledger's to close (issue 16), from the run's status."""
    gone = gone_runs(store)
    for run_id in gone:
        store.mark_running_attempts(run_id, StageStatus.STOPPED, GONE_REASON)
        store.update_run(run_id, status=RunStatus.INTERRUPTED, error=GONE_REASON)
        store.event(run_id, "run", "run interrupted", reason=GONE_REASON)
    return gone
