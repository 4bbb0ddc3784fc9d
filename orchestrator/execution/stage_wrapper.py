"""The entrypoint every stage runs under, on whatever cluster it was placed:
``python -m lhorch.orchestrator.execution.stage_wrapper``.

It reads what to run from ``LHORCH_EXEC`` (a StageMessage, lhorch.orchestrator.core.stage_message), and:
- on a remote cluster, fetches the inputs from the artifact store into scratch space first and sends
  the outputs back afterwards, so the job itself only ever sees local paths (jobs/context.py);
- runs the stage's command (``run:``, under bash with ``set -o pipefail``) or built-in job (``uses:``)
  in its own process group (the session its dispatcher made for the attempt: a Ray job's on a remote
  cluster, lhorch's local dispatcher's here; either kills that group when the attempt is stopped),
  and ends everything else in that group (a pipeline's every command, whatever they started) on a
  timeout, when the lhorch that launched it or its own parent is gone (lhorch or its Ray node killed),
  and when the stage ends, so nothing of an attempt outlives it (process_group.py, issue 17);
- enforces the stage's timeout on the node itself, so it holds even when lhorch is gone;
- writes ``.lhorch-usage.json`` (wall time, peak RSS) next to the outputs for the profiler's history.

It runs on bare cloud nodes too, so it imports only the light parts of lhorch: core models and the
artifact transfer.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from lhorch.orchestrator.core.stage_message import (
    ENV_VAR,
    EXIT_TIMEOUT,
    SECRET_NAMES_VAR,
    SECRETS_FILE_VAR,
    SECRETS_URI_VAR,
    USAGE_FILE,
    RemoteArtifacts,
    StageMessage,
)
from lhorch.orchestrator.execution import process_group

WATCH_S = 0.5  # how often the wrapper checks that its parent (the Ray job's supervisor) is still there


def _secrets(env: dict[str, str]) -> list[str]:
    """Bring the stage's secrets into ``env`` (from SSM on a cloud node, from a private file the runner
    wrote on this machine) and return their values, to mask."""
    uri = env.pop(SECRETS_URI_VAR, None)
    if uri:
        # deferred: SSM through boto3, on cloud nodes only; a stage on this machine starts ~0.1 s sooner without
        from lhorch.providers.transfer import read_secrets

        env.update(read_secrets(uri))
    path = env.pop(SECRETS_FILE_VAR, None)
    if path:  # on this machine: a 0600 file the runner wrote for this attempt alone
        try:
            env.update(json.loads(Path(path).read_text()))
        finally:
            Path(path).unlink(missing_ok=True)
    names = [n for n in env.pop(SECRET_NAMES_VAR, "").split(",") if n]
    return [env[n] for n in names if env.get(n)]


def _pump_masked(stream, values: list[str]) -> None:
    """Copy the child's output to ours line by line with every secret value replaced by ``***``."""
    masks = [(v.encode(), b"***") for v in sorted(values, key=len, reverse=True)]
    out = sys.stdout.buffer
    for line in iter(stream.readline, b""):
        for value, mask in masks:
            line = line.replace(value, mask)
        out.write(line)
        out.flush()


def _store(uri: str):
    # deferred: the artifact store (S3 through boto3) is for remote nodes; a local stage starts sooner without
    from lhorch.providers.transfer import store_for_uri

    return store_for_uri(uri)


def _fetch_inputs(remote: RemoteArtifacts, scratch: Path) -> dict[str, str]:
    local: dict[str, str] = {}
    for name, uri in remote.inputs.items():
        dest = scratch / "inputs" / name.replace("/", "_")
        _store(uri).get(uri, dest)
        local[name] = str(dest)
    return local


def _fetch_checkpoints(remote: RemoteArtifacts, out_dir: Path) -> None:
    """A retried remote stage continues from the step checkpoints its failed attempt sent back."""
    uri = remote.output_uri + "checkpoints/"
    try:
        _store(uri).get(uri, out_dir / "checkpoints")
    except Exception as exc:  # no earlier attempt, or nothing to resume from: start fresh
        print(f"[lhorch] no checkpoints to resume from ({type(exc).__name__})", flush=True)


def _send_outputs(remote: RemoteArtifacts, out_dir: Path) -> None:
    _store(remote.output_uri).put(out_dir, remote.output_uri)


class _CheckpointSync:
    """On a remote node, sends the stage's step checkpoints (``checkpoints/`` in its outputs) to the
    artifact store whenever they changed, every ``every`` seconds while the stage runs (the stage's
    ``hints.checkpoint_minutes``, as often as it says it checkpoints): a node that
    vanishes (a spot interruption) cannot send them at the end, and its retry on a fresh node resumes
    from the last ones sent (``_fetch_checkpoints``) rather than from the start."""

    def __init__(self, remote: RemoteArtifacts, out_dir: Path, every: float):
        self.uri = remote.output_uri + "checkpoints/"
        self.folder, self.every = out_dir / "checkpoints", every
        self._sent: tuple = ()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lhorch-checkpoint-sync", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=60)  # a send under way finishes; the end of the attempt sends the rest

    def _linked_copy(self) -> tuple[Path, tuple]:
        """The folder as it is now, hard-linked into a scratch folder beside the outputs, and what it
        holds (name, size, mtime): the stage deletes old checkpoints as it writes new ones, and a file
        gone half-way through a send must not spoil the send."""
        scratch = Path(tempfile.mkdtemp(prefix=".checkpoints-sending-", dir=self.folder.parent.parent))
        held = []
        for path in (self.folder.rglob("*") if self.folder.is_dir() else ()):
            rel = path.relative_to(self.folder)
            try:
                if not path.is_file():
                    continue
                (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(path, scratch / rel)
            except FileNotFoundError:
                continue  # deleted between listing and linking: it was not among the latest anyway
            stat = (scratch / rel).stat()
            held.append((str(rel), stat.st_size, stat.st_mtime_ns))
        return scratch, tuple(sorted(held))

    def _loop(self) -> None:
        while not self._done.wait(self.every):
            scratch = None
            try:
                scratch, snapshot = self._linked_copy()
                if snapshot and snapshot != self._sent:
                    _store(self.uri).put(scratch, self.uri)
                    self._sent = snapshot
                    print(f"[lhorch] checkpoints sent ({len(snapshot)} files)", flush=True)
            except Exception as exc:  # noqa: BLE001 - the next round tries again; the stage goes on
                print(f"[lhorch] could not send checkpoints ({type(exc).__name__}: {exc})", flush=True)
            finally:
                if scratch is not None:
                    shutil.rmtree(scratch, ignore_errors=True)


def _wait(child: subprocess.Popen, timeout: float | None, owner: int) -> int:
    """The stage's exit code; EXIT_TIMEOUT after ending it when it ran past ``timeout``. It is ended too
    when the lhorch process that launched it (``owner``, on this machine) or the wrapper's parent is gone."""
    parent = os.getppid()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = WATCH_S if deadline is None else min(WATCH_S, deadline - time.monotonic())
        try:
            return child.wait(timeout=max(left, 0.0))
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent or (owner and not process_group.pid_alive(owner)):
            print("[lhorch] the lhorch process running this stage is gone; stopping the stage", flush=True)
            process_group.end_others()
            return child.wait()
        if deadline is not None and time.monotonic() >= deadline:
            print(f"[lhorch] stage timed out after {timeout:.0f} s; stopping it", flush=True)
            process_group.end_others(grace=10.0)
            child.wait()
            return EXIT_TIMEOUT


def head_address(env: dict[str, str]) -> str | None:
    """The Ray head's host, for a multi-node stage's own launcher (torchrun's --master_addr, say): Ray's
    Jobs API gives a job's driver the cluster's GCS address, host:port, in RAY_ADDRESS (issue 14)."""
    address = env.get("RAY_ADDRESS", "")
    if "://" in address or ":" not in address:
        return None  # "auto", "local", a client or dashboard URL: not the head's own address
    host = address.rsplit(":", 1)[0].strip("[]")
    return host or None


def main() -> int:
    # What the stage writes (outputs, logs, checkpoints) is for this user only (issue 15).
    os.umask(0o077)
    message = StageMessage.model_validate_json(os.environ[ENV_VAR])
    env = dict(os.environ)
    secret_values = _secrets(env)
    scratch: Path | None = None
    if message.remote is not None:
        scratch = Path(tempfile.mkdtemp(prefix="lhorch-stage-"))
        inputs = _fetch_inputs(message.remote, scratch)
        out_dir = scratch / "outputs"
        env["LHORCH_INPUTS"] = json.dumps(inputs)
        for name, path in inputs.items():
            env["LHORCH_INPUT_" + name.upper().replace("-", "_").replace(".", "_")] = path
        env["LHORCH_OUTPUT_DIR"] = str(out_dir)
        _fetch_checkpoints(message.remote, out_dir)
    else:
        out_dir = Path(env["LHORCH_OUTPUT_DIR"])
    out_dir.mkdir(parents=True, exist_ok=True)
    head = head_address(env)
    if head:
        env["LHORCH_HEAD_ADDRESS"] = head

    argv: list[str] | str
    if message.kind == "uses":
        argv, shell = [sys.executable, "-m", str(message.module)], False
    else:
        # pipefail: `python train.py | tee log` fails when train.py does, not when tee succeeds.
        argv, shell = "set -o pipefail\n" + str(message.command), True
    cwd = message.cwd
    if cwd and not Path(cwd).is_dir():
        cwd = None
    started = time.monotonic()
    print(f"[lhorch] stage {env.get('LHORCH_STAGE')} starting on {os.uname().nodename}", flush=True)
    piped = subprocess.PIPE if secret_values else None
    pgid_file = env.pop(process_group.PGID_FILE_VAR, None)
    owner = int(env.pop(process_group.OWNER_PID_VAR, "0") or 0)
    if pgid_file:
        process_group.record(Path(pgid_file), os.getpgid(0))
    # In this process's group: whatever kills the Ray job's group kills the whole stage.
    child = subprocess.Popen(argv, shell=shell, env=env, cwd=cwd, executable="/bin/bash" if shell else None,
                             stdout=piped, stderr=subprocess.STDOUT if piped else None)
    pump = None
    if child.stdout is not None:
        pump = threading.Thread(target=_pump_masked, args=(child.stdout, secret_values), daemon=True)
        pump.start()

    def _forward(signum: int, frame: object) -> None:  # noqa: ARG001
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    sync = None
    if message.remote is not None:
        sync = _CheckpointSync(message.remote, out_dir, message.remote.checkpoint_seconds)
        sync.start()
    code = _wait(child, message.timeout, owner)
    if sync is not None:
        sync.stop()
    # Whatever the stage left running (a `tee`, a daemon it started) ends with the attempt.
    process_group.end_others(grace=2.0)
    if pump is not None:
        pump.join(timeout=10)
    wall = time.monotonic() - started
    # ru_maxrss is KiB on Linux, bytes on macOS.
    maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    rss_mb = maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024
    usage = {"wall_seconds": wall, "peak_rss_mb": rss_mb, "exit_code": code, "host": os.uname().nodename}
    (out_dir / USAGE_FILE).write_text(json.dumps(usage))
    if message.remote is not None:
        # Sent back after a failure too: the usage record, logs a job wrote, and its checkpoints.
        try:
            _send_outputs(message.remote, out_dir)
        except Exception:
            if code == 0:
                raise
            print("[lhorch] could not send the failed attempt's outputs back", flush=True)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"[lhorch] stage finished with exit code {code} in {wall:.1f} s", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
