"""CPU-seconds of a process tree while it runs, split into lhorch's, Ray's and the stages' own.

A thread samples the tree under a pid (and every process in the sessions of Ray heads it starts,
which leave the tree) every ``interval`` seconds and keeps each process's latest user+system time
(its own, not its children's). What a process spends after its last sample is missed: at most one
interval of each, so short-lived processes are under-counted by a little.
- lhorch: the `lhorch` process, its fork server and the stage wrappers (lhorch's own code around each
  stage; a forked wrapper bears the fork server's command line), and the report's writer, which
  `lhorch run` leaves drawing when it exits (``follow`` waits for it and counts it);
- ray: the Ray head's guardian, `ray start`, the GCS, raylet, dashboard and Ray's workers;
- stages: what the wrappers run (the jobs themselves), and a direct run's processes.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

WRAPPER = "lhorch.orchestrator.execution.stage_wrapper"
REPORT_WRITER = "lhorch.orchestrator.report.background"
LHORCH_MARKS = (WRAPPER, "lhorch.providers.forkserver", REPORT_WRITER)
RAY_MARKS = ("raylet", "gcs_server", "ray.scripts.scripts", "lhorch.providers.ray_head", "ray::", "dashboard",
             "default_worker.py", "runtime_env", "log_monitor", "monitor.py", "ray/_private")


class CpuSampler:
    def __init__(self, pid: int, interval: float = 0.2, *, direct: bool = False):
        self.pid, self.interval = pid, interval
        self.direct = direct  # a stage run directly: all of it is the stage's
        self.seen: dict[tuple[int, float], tuple[str, float]] = {}  # (pid, create time) → (kind, cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def follow(self, *marks: str, timeout: float = 120.0) -> tuple[float, float]:
        """After the tree has ended: wait for the processes it left running whose command line holds every
        one of ``marks`` (the report's writer), counting their CPU as lhorch's; returns the seconds waited
        and their CPU-seconds."""
        started, followed = time.monotonic(), set()
        while time.monotonic() - started < timeout:
            left = []
            for proc in psutil.process_iter():
                try:
                    cmd = " ".join(proc.cmdline())
                    if all(mark in cmd for mark in marks) and proc.status() != psutil.STATUS_ZOMBIE:
                        times = proc.cpu_times()
                        key = (proc.pid, proc.create_time())
                        self.seen[key] = ("lhorch", times.user + times.system)
                        followed.add(key)
                        left.append(proc)
                except psutil.Error:
                    continue
            if not left:
                break
            time.sleep(self.interval / 4)
        return time.monotonic() - started, sum(self.seen[k][1] for k in followed)

    def totals(self) -> dict[str, float]:
        out = {"lhorch": 0.0, "ray": 0.0, "stages": 0.0}
        for kind, cpu in self.seen.values():
            out[kind] += cpu
        return out

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def _sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
            root_cmd = " ".join(root.cmdline())
        except psutil.Error:
            return
        kinds = {}
        for proc in procs:
            try:
                kinds[proc] = "stages" if self.direct else self._kind(proc, root, root_cmd)
            except psutil.Error:
                continue
        sessions = {self._sid(p) for p, kind in kinds.items() if kind == "ray"} - {None}
        if sessions:  # Ray's processes run in the head's own session, outside lhorch's tree
            for proc in psutil.process_iter():
                if proc not in kinds and self._sid(proc) in sessions:
                    kinds[proc] = "ray"
        for proc, kind in kinds.items():
            try:
                times = proc.cpu_times()
                self.seen[(proc.pid, proc.create_time())] = (kind, times.user + times.system)
            except psutil.Error:
                continue

    @staticmethod
    def _sid(proc: psutil.Process) -> int | None:
        try:
            return os.getsid(proc.pid)
        except OSError:
            return None

    @staticmethod
    def _kind(proc: psutil.Process, root: psutil.Process, root_cmd: str) -> str:
        cmd = " ".join(proc.cmdline())
        if any(mark in cmd for mark in RAY_MARKS):
            return "ray"
        if proc.pid == root.pid or any(mark in cmd for mark in LHORCH_MARKS):
            return "lhorch" if "lhorch" in root_cmd else "stages"
        return "stages"
