"""`lhorch run` as a user starts it, and the processes a test's stages left: shared by the tests that
interrupt or kill a run (test_run_lifecycle, test_dispatch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

LHORCH = [sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()"]


def start_run(path: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([*LHORCH, "run", str(path), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_started(proc: subprocess.Popen, started: Path, seconds: float) -> None:
    """Until the stage wrote ``started``; fails with the run's output if it ended first."""
    deadline = time.monotonic() + seconds
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert started.exists(), proc.stdout.read() if proc.poll() is not None else "the stage did not start"


def marked(marker: str) -> list[int]:
    """Live processes whose command line names ``marker`` (only this test's stages do)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmd and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def wait_gone(marker: str, seconds: float) -> list[int]:
    """Those still alive after up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill(pids: list[int]) -> None:
    for pid in pids:  # only processes this test's own stages started
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
