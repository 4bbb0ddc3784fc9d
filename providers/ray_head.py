"""A Ray head on 127.0.0.1 that cannot outlive its owner.

Run as ``python -m lhorch.providers.ray_head --owner-pid PID [--ready-file F] [--idle-seconds S --leases DIR]
-- <ray start args>``, in a new session. It runs ``ray start --head --block`` as its child (same process
group), creates the ready file once Ray says the node is up, and tears the whole group down when the
owner process is gone (even after ``kill -9`` of lhorch), on SIGTERM, or when Ray exits. A kept head
(owner 0) stops itself once no run has held a lease on it (a file named by the run's pid in the
leases folder, whose process lives) for its idle window. This is what makes "no Ray process is left
running after a run" (or after a kept head's idle window) hold without relying on the owner's clean-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

READY_LINE = b"Ray runtime started"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lhorch.providers.ray_head")
    parser.add_argument("--owner-pid", type=int, required=True, help="Stop Ray when this process is gone (0: never).")
    parser.add_argument("--ready-file", type=Path, help="Created once the node is up.")
    parser.add_argument("--idle-seconds", type=float, default=0.0, help="Idle window (0: never).")
    parser.add_argument("--leases", type=Path, help="Lease files, named by pid.")
    parser.add_argument("ray_args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    ray_args = [a for a in args.ray_args if a != "--"]

    stopping = False

    def _stop(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Through this interpreter, not `ray` from PATH: lhorch may run from a venv that is not on PATH
    # (pipx, an absolute path to venv/bin/lhorch), and PATH's `ray` may belong to another Python (issue 17).
    child = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", *ray_args],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    threading.Thread(target=_copy, args=(child.stdout, args.ready_file), daemon=True).start()
    last_used = time.monotonic()
    try:
        while not stopping and child.poll() is None:
            if args.owner_pid and not _alive(args.owner_pid):
                break
            if args.idle_seconds and args.leases is not None:
                if _leased(args.leases):
                    last_used = time.monotonic()
                elif time.monotonic() - last_used > args.idle_seconds:
                    break
            time.sleep(0.25)
    finally:
        _teardown(child)
    return 0


def _copy(stream, ready: Path | None) -> None:
    """Ray's output into our own (the head's log), and the ready file once Ray says the node is up."""
    for line in iter(stream.readline, b""):
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if ready is not None and READY_LINE in line:
            ready.touch()


def _leased(folder: Path) -> bool:
    """Whether a live process holds a lease on the head; leases of processes gone are removed."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    held = False
    for entry in entries:
        if entry.name.isdigit() and _alive(int(entry.name)):
            held = True
        else:
            entry.unlink(missing_ok=True)
    return held


def _teardown(child: subprocess.Popen) -> None:
    if child.poll() is None:
        # `ray start --block` stops its processes on SIGTERM; give it a moment, then kill the group.
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=3)  # a local head holds nothing worth a longer wait; stages die with it
        except subprocess.TimeoutExpired:
            pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
