"""A Ray head on 127.0.0.1 that cannot outlive its owner.

Run as ``python -m lhorch.providers.ray_head --owner-pid PID --info FILE -- <ray start args>``, in a new
session. It runs ``ray start --head --block`` as its child (same process group), writes nothing
itself, and tears the whole group down when the owner process is gone (even after ``kill -9`` of
lhorch), on SIGTERM, or when Ray exits. This is what makes "no Ray process is left running after a
run" hold without relying on the owner's own clean-up.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


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
    child = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", *ray_args])
    try:
        while not stopping and child.poll() is None:
            if args.owner_pid and not _alive(args.owner_pid):
                break
            time.sleep(0.25)
    finally:
        _teardown(child)
    return 0


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
