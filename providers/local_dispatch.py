"""Stages on this machine as plain processes: the local node's dispatcher (no Ray on the way).

Each attempt is the stage wrapper started as a child of lhorch in a session (process group) of its
own, its output written straight into the attempt's log file by the kernel. What Ray's Jobs API
gave a local stage, this keeps, for a few milliseconds rather than a JobSupervisor actor a stage:
- admission: an attempt starts only when the node has its CPUs, GPUs and memory free (first fit, in
  submission order; a request larger than the whole node is cut to the node, so it runs alone rather
  than never); until then it is PENDING, as a Ray job waits for its resources. GPUs are handed out by
  index in ``CUDA_VISIBLE_DEVICES``;
- stop: SIGTERM to the attempt's whole group, SIGKILL to what is left after a grace period; the
  attempt ends STOPPED. The wrapper ends the rest of its group on a timeout and when lhorch is gone
  (stage_wrapper.py), so a ``kill -9`` of lhorch still takes the stage with it;
- a stage that attaches to Ray itself (a distributed fine-tune) gets the address of the local Ray
  head in its environment, the head started (once, in the background) only for such a stage.
A wrapper that is a Python module of this interpreter (as lhorch's is) is forked from a warm server
(forkserver.py) rather than started afresh, which saves it an interpreter and its imports; anything
else is started as a process. Either way the attempt's end is seen at once (a waiter thread, or the
server's reply) and ``on_change`` wakes the runner.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lhorch.orchestrator.core.status import JobStatus
from lhorch.providers import forkserver
from lhorch.providers.dispatch import JobState, StageJob

GRACE_S = 5.0  # from SIGTERM to SIGKILL when an attempt is stopped
LOG_POLL_S = 0.5  # how often the runner shows a running attempt's new lines (its end wakes it at once)
_EPS = 1e-9


@dataclass(frozen=True)
class Capacity:
    cpus: float
    gpus: int = 0
    memory_gb: float = 0.0  # 0: not accounted


@dataclass
class _Attempt:
    job: StageJob
    need: tuple[float, int, float]
    status: JobStatus = JobStatus.PENDING
    message: str = ""
    proc: subprocess.Popen | None = None  # started as a process of lhorch's
    pid: int | None = None  # its group's leader, however it was started
    gpu_ids: list[int] = field(default_factory=list)
    held: bool = False
    stopping: bool = False


class LocalDispatcher:
    writes_log = True
    notifies = True

    def __init__(self, capacity: Capacity, on_change: Callable[[], None] = lambda: None, *,
                 ray_env: Callable[[], dict[str, str]] | None = None, warm: Callable[[], None] | None = None,
                 grace: float = GRACE_S):
        self.capacity = capacity
        self.on_change = on_change
        self._ray_env = ray_env
        self._warm = warm
        self.grace = grace
        self._lock = threading.RLock()
        self._attempts: dict[str, _Attempt] = {}
        self._queue: list[str] = []
        self._used = [0.0, 0, 0.0]
        self._free_gpus = list(range(capacity.gpus))
        self._threads: list[threading.Thread] = []
        self._server: _ForkServer | None = None
        self._forking: dict[str, tuple[_Attempt, dict[str, str]]] = {}  # asked of the server, not yet forked
        self._server_broken = False  # it ended unasked: start the rest as processes
        self._closing = False
        self._by_pid: dict[int, _Attempt] = {}  # forked by the server, not yet reaped

    # --- the seam -------------------------------------------------------------------------------
    def submit(self, job: StageJob) -> str:
        with self._lock:
            if job.submission_id in self._attempts:
                return job.submission_id
            cap = self.capacity
            need = (min(job.cpus, cap.cpus), min(int(job.gpus), cap.gpus),
                    min(job.memory_gb, cap.memory_gb) if cap.memory_gb else 0.0)
            self._attempts[job.submission_id] = _Attempt(job, need)
            self._queue.append(job.submission_id)
            self._admit()
        return job.submission_id

    def state(self, job_id: str) -> JobState:
        with self._lock:
            att = self._attempts.get(job_id)
            if att is None:
                return JobState(JobStatus.FAILED, f"no attempt {job_id} on this machine")
            return JobState(att.status, att.message)

    def read_log(self, job_id: str, offset: int) -> tuple[str, int]:
        """Whole lines written since ``offset`` (all of it once the attempt has ended)."""
        att = self._attempts.get(job_id)
        if att is None:
            return "", offset
        try:
            with open(att.job.log_path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except OSError:
            return "", offset
        if not att.status.terminal:
            data = data[:data.rfind(b"\n") + 1]  # never half a line (or half a character)
        return data.decode(errors="replace"), offset + len(data)

    def stop(self, job_id: str) -> None:
        with self._lock:
            att = self._attempts.get(job_id)
            if att is None or att.status.terminal:
                return
            att.stopping = True
            if att.pid is None:
                if job_id in self._queue:  # not started yet: it never will
                    self._queue.remove(job_id)
                    self._end(att, JobStatus.STOPPED, "stopped before it started")
                return  # (being started: stopped as soon as the server says it has)
            pgid = att.pid
        self._terminate(pgid)

    def _terminate(self, pgid: int) -> None:
        _signal_group(pgid, signal.SIGTERM)
        # The group, not only its leader, and whatever became of it: a stage's children may outlive the wrapper.
        timer = threading.Timer(self.grace, _signal_group, args=(pgid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def poll_interval(self, age: float) -> float:  # noqa: ARG002 - ends wake the runner; this paces the log
        return LOG_POLL_S

    def warm_up(self) -> None:
        if self._warm is not None:
            self._warm()

    # --- teardown -------------------------------------------------------------------------------
    def stop_all(self) -> list[str]:
        """Stop every attempt still here (without waiting); returns their ids."""
        with self._lock:
            live = [a.job.submission_id for a in self._attempts.values() if not a.status.terminal]
        for job_id in live:
            self.stop(job_id)
        return live

    def close(self) -> None:
        """Stop every attempt still here and wait for their groups to end (SIGKILL after the grace)."""
        self.stop_all()
        deadline = time.monotonic() + self.grace + 2
        while time.monotonic() < deadline and any(not a.status.terminal for a in list(self._attempts.values())):
            time.sleep(0.05)
        for att in list(self._attempts.values()):
            if att.pid is not None:
                _signal_group(att.pid, signal.SIGKILL)  # what the wrapper left, if it could not end it
        if self._server is not None:
            self._closing = True
            self._server.close()

    # --- inside ---------------------------------------------------------------------------------
    def _fits(self, need: tuple[float, int, float]) -> bool:
        cap, used = self.capacity, self._used
        return (used[0] + need[0] <= cap.cpus + _EPS and used[1] + need[1] <= cap.gpus
                and (not cap.memory_gb or used[2] + need[2] <= cap.memory_gb + _EPS))

    def _admit(self) -> None:
        """Start, in submission order, every queued attempt that fits (called with the lock held)."""
        for job_id in list(self._queue):
            att = self._attempts[job_id]
            if not self._fits(att.need):
                continue
            self._queue.remove(job_id)
            self._used = [self._used[0] + att.need[0], self._used[1] + att.need[1], self._used[2] + att.need[2]]
            att.gpu_ids, self._free_gpus = self._free_gpus[:att.need[1]], self._free_gpus[att.need[1]:]
            att.held = True
            if att.job.needs_ray and self._ray_env is not None:
                # Waiting for the Ray head must not hold up the runner: the attempt stays PENDING till then.
                self._spawn(self._start_with_ray, att)
            else:
                self._start(att, {})

    def _start_with_ray(self, att: _Attempt) -> None:
        try:
            extra = self._ray_env() if self._ray_env is not None else {}
        except Exception as exc:  # the head did not come up: the attempt fails, saying why
            with self._lock:
                self._end(att, JobStatus.FAILED, f"the local Ray node did not start: {exc}")
            return
        with self._lock:
            if not att.stopping:
                self._start(att, extra)

    def _start(self, att: _Attempt, extra: dict[str, str]) -> None:
        job = att.job
        env = {**os.environ, **job.env, **extra}
        if att.gpu_ids or self.capacity.gpus:
            # Only the GPUs handed to this attempt (none for a stage that asked for none).
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in att.gpu_ids)
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        module = _python_module(job.entrypoint)
        if module is not None and not self._server_broken:
            if self._server is None:
                self._server = _ForkServer(module, self._forked, self._server_gone)
            self._forking[job.submission_id] = (att, env)
            if self._server.request(job.submission_id, module, env, job.log_path, job.working_dir):
                return  # RUNNING once the server says it has forked
            del self._forking[job.submission_id]
        self._popen(att, env)

    def _popen(self, att: _Attempt, env: dict[str, str]) -> None:
        job = att.job
        fd = os.open(job.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            att.proc = subprocess.Popen(job.entrypoint, env=env, stdout=fd, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=job.working_dir)
        except OSError as exc:
            self._end(att, JobStatus.FAILED, f"could not start the stage: {exc}")
            return
        finally:
            os.close(fd)
        att.pid, att.status = att.proc.pid, JobStatus.RUNNING
        self._spawn(self._reap, att)

    def _reap(self, att: _Attempt) -> None:
        assert att.proc is not None
        code = att.proc.wait()
        with self._lock:
            self._ended(att, code)

    def _ended(self, att: _Attempt, code: int) -> None:
        if att.stopping:
            self._end(att, JobStatus.STOPPED, "stopped")
        elif code == 0:
            self._end(att, JobStatus.SUCCEEDED)
        else:
            why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            self._end(att, JobStatus.FAILED, f"the stage wrapper ended: {why}")

    # --- replies of the fork server (from its reader thread) ------------------------------------
    def _forked(self, reply: dict) -> None:
        with self._lock:
            if "started" in reply or "failed" in reply:
                entry = self._forking.pop(reply.get("started") or reply.get("failed"), None)
                if entry is None:
                    return
                att = entry[0]
                if "failed" in reply:
                    self._end(att, JobStatus.FAILED, f"could not start the stage: {reply['error']}")
                    return
                att.pid, att.status = int(reply["pid"]), JobStatus.RUNNING
                self._by_pid[att.pid] = att
                if att.stopping:
                    self._terminate(att.pid)
            elif "ended" in reply:
                att = self._by_pid.pop(int(reply["ended"]), None)
                if att is not None:
                    self._ended(att, int(reply["code"]))

    def _server_gone(self) -> None:
        """The fork server ended (lhorch closing it, or a crash): what it ran cannot be followed."""
        with self._lock:
            self._server, self._server_broken = None, not self._closing
            forking, forked = list(self._forking.values()), list(self._by_pid.values())
            self._forking.clear()
            self._by_pid.clear()
            for att, env in forking:  # never forked: started as processes of lhorch's instead
                if att.stopping:
                    self._end(att, JobStatus.STOPPED, "stopped before it started")
                else:
                    self._popen(att, env)
            for att in forked:  # forked, and no longer followed: their wrappers end them (parent gone)
                if not att.status.terminal:
                    self._end(att, JobStatus.STOPPED if att.stopping else JobStatus.FAILED,
                              "the local stage launcher ended")

    def _end(self, att: _Attempt, status: JobStatus, message: str = "") -> None:
        """Record the end, give its resources back and start what now fits (lock held)."""
        att.status, att.message = status, message
        if att.held:
            att.held = False
            self._used = [self._used[0] - att.need[0], self._used[1] - att.need[1], self._used[2] - att.need[2]]
            self._free_gpus = sorted(self._free_gpus + att.gpu_ids)
            self._admit()
        self.on_change()

    def _spawn(self, target: Callable[[_Attempt], None], att: _Attempt) -> None:
        thread = threading.Thread(target=target, args=(att,), daemon=True,
                                  name=f"lhorch-{target.__name__.strip('_')}-{att.job.submission_id}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _python_module(entrypoint: list[str]) -> str | None:
    """``MODULE`` when the entrypoint is ``<this interpreter> -m MODULE``: the fork server can run it."""
    if len(entrypoint) == 3 and entrypoint[1] == "-m" and os.path.realpath(entrypoint[0]) == \
            os.path.realpath(sys.executable):
        return entrypoint[2]
    return None


class _ForkServer:
    """lhorch's end of forkserver.py: requests go to its stdin, a thread reads its replies."""

    def __init__(self, preload: str, on_reply: Callable[[dict], None], on_gone: Callable[[], None]):
        self._on_reply, self._on_gone = on_reply, on_gone
        self._proc = forkserver.take(preload)  # `lhorch run` starts one while it loads (cli/__init__.py)
        self._write = threading.Lock()
        threading.Thread(target=self._read, daemon=True, name="lhorch-forkserver").start()

    def request(self, job_id: str, module: str, env: dict[str, str], log: object, cwd: str | None) -> bool:
        """Ask for a fork; False when the server is gone (the caller starts the process itself)."""
        line = json.dumps({"id": job_id, "module": module, "env": env, "log": str(log), "cwd": cwd})
        try:
            with self._write:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line + "\n")
                self._proc.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                continue
            self._on_reply(reply)
        self._proc.wait()
        self._on_gone()

    def close(self) -> None:
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()  # the server exits at the end of its input
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
