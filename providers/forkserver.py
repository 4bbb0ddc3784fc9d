"""A warm Python that forks stage wrappers, so that a local stage does not pay for a fresh interpreter.

Starting ``python -m lhorch.orchestrator.execution.stage_wrapper`` costs a new interpreter and its
imports (pydantic above all): 0.2-0.4 CPU-seconds a stage on a small laptop. The local dispatcher
(local_dispatch.py) starts this server once per run instead, with the wrapper's module imported
(``--preload``), and asks it for each stage; it forks, and the child runs the module as ``__main__``
in a session of its own with the stage's environment, its output into the attempt's log file.

Run as ``python -m lhorch.providers.forkserver [--preload MODULE]...``; standard library only. A module
it preloads is imported first, so it must be safe to import (its work under ``__name__ == "__main__"``),
as the stage wrapper is; should the server die, the dispatcher starts stages as processes instead.
Protocol, one JSON object a line: requests on stdin ``{"id", "module", "env", "log", "cwd"}``;
replies on stdout ``{"started": id, "pid": N}``, ``{"failed": id, "error": text}``, and
``{"ended": pid, "code": N}`` (negative: killed by that signal) once it has reaped a child.
It exits when its stdin closes (lhorch is gone); its children, who watch their parent and the lhorch
process, then end their stages themselves (stage_wrapper.py).
lhorch's side starts one with ``start``, or ahead of need with ``prestart`` and ``take``: `lhorch run`
starts it while its own modules load (cli/__init__.py), so that it is up when the first stage is.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import importlib
import io
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import traceback

_spares: dict[str, subprocess.Popen] = {}  # started ahead by `prestart`, not yet taken


def start(preload: str) -> subprocess.Popen:
    """A server preloading ``preload``, talking text lines over pipes of the caller's, in a session of its own."""
    return subprocess.Popen([sys.executable, "-m", "lhorch.providers.forkserver", "--preload", preload],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True, text=True, bufsize=1)


def prestart(preload: str) -> None:
    """Start a server now, for a later `take(preload)`: its start-up (~0.2 s: Python and pydantic) then
    overlaps what the caller does meanwhile. One never taken ends when the caller exits."""
    if preload not in _spares:
        _spares[preload] = start(preload)


def take(preload: str) -> subprocess.Popen:
    """The server `prestart(preload)` started, if it is still up; else a new one."""
    proc = _spares.pop(preload, None)
    if proc is not None and proc.poll() is None:
        return proc
    if proc is not None:
        _close_pipes(proc)
    return start(preload)


def _end_spares() -> None:
    """At the caller's exit: the servers nobody took have forked nothing, and go at once."""
    while _spares:
        proc = _spares.popitem()[1]
        proc.kill()
        proc.wait()
        _close_pipes(proc)


def _close_pipes(proc: subprocess.Popen) -> None:
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()


atexit.register(_end_spares)


def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _child(request: dict) -> None:
    """In the forked child: become the stage's wrapper; never returns."""
    code = 1
    try:
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.closerange(3, 1 << 16)  # the server's pipes are not the stage's
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True)
        os.environ.clear()
        os.environ.update(request["env"])
        if request.get("cwd"):
            os.chdir(request["cwd"])
        sys.argv = [request["module"]]
        # Run afresh as __main__ (what it imports stays loaded): the preloaded copy would make runpy warn.
        sys.modules.pop(request["module"], None)
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - whatever happens, the child must end here, saying why
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _reply({"ended": pid, "code": os.waitstatus_to_exitcode(status)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lhorch.providers.forkserver")
    parser.add_argument("--preload", action="append", default=[], help="Import this module before forking.")
    args = parser.parse_args(argv)
    gc.disable()  # the preload's objects are all kept: collecting while importing them is wasted work
    for module in args.preload:
        importlib.import_module(module)
    gc.freeze()  # and kept out of every collection from now on, here and in each forked child (fewer copied pages)
    gc.enable()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is lhorch's to handle; stdin's end is ours
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    _reply({"ready": os.getpid()})
    pending = b""
    while True:
        try:
            readable, _, _ = select.select([0, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in readable:
            os.read(wake_r, 4096)
            _reap()
        if 0 not in readable:
            continue
        data = os.read(0, 65536)
        if not data:
            return 0  # lhorch is gone
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if not line.strip():
                continue
            request = json.loads(line)
            sys.stdout.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                _reply({"failed": request["id"], "error": str(exc)})
                continue
            if pid == 0:
                _child(request)
            _reply({"started": request["id"], "pid": pid})
        _reap()


if __name__ == "__main__":
    status = main()
    sys.stdout.flush()
    # No interpreter teardown (~35 ms with pydantic loaded): lhorch waits for this exit at the end of a run.
    os._exit(status)
