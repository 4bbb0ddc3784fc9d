"""The local node: an embedded Ray head on 127.0.0.1 with token authentication.

lhorch starts the head for a run and stops it afterwards. With ``keep=True`` (``lhorch run
--keep-ray``, or LHORCH_KEEP_RAY=1) the head stays up for the next run and is reused, which saves
its start-up (~5-10 s on a 2-core laptop); ``lhorch down --local`` or ``lhorch gc`` stops it.
The head runs under lhorch.providers.ray_head, which stops it when its owner process dies, so even a
``kill -9`` of lhorch leaves no Ray process behind (unless keep was asked for).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import psutil
from pydantic import SecretStr

from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import ClusterUnreachable, LhorchError
from lhorch.orchestrator.core.plan import Offer

READY_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    _reap(pid)
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap(pid: int) -> None:
    """Collect ``pid`` if it is our own exited child, so that it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def wait_ready(address: str, headers: dict[str, str], timeout: float = READY_TIMEOUT_S,
               proc: subprocess.Popen | None = None) -> None:
    """Wait until the Jobs API answers; bounded in time."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ClusterUnreachable(f"the local Ray head exited during start-up (code {proc.returncode})",
                                     hint="Run with --debug and see the Ray logs under $LHORCH_HOME/ray.")
        try:
            req = urllib.request.Request(address + "/api/jobs/", headers=headers)
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
            last = exc
        time.sleep(0.2)
    raise ClusterUnreachable(f"Ray at {address} did not become ready in {timeout:.0f} s ({last})")


class LocalProvider:
    """Provider for the local node. ``cpus``/``gpus`` default to what Ray detects."""

    name = "local"

    def __init__(self, home: Path, *, keep: bool = False, cpus: float | None = None, gpus: int | None = None):
        self.home = Path(home)
        self.keep = keep
        self.cpus = cpus
        self.gpus = gpus
        self.dir = self.home / "ray"
        # A kept head is shared by every run (head.json); a run's own head is its process's alone
        # (head-PID.json), so that two runs at once never stop each other's node (issue 17).
        self.kept_path = self.dir / "head.json"
        self.info_path = self.kept_path if keep else self.dir / f"head-{os.getpid()}.json"

    # Ray puts Unix sockets under its temp dir; their paths must stay under ~107 bytes, so the temp
    # dir is short and derived from LHORCH_HOME rather than placed inside it.
    # Ray's logs there hold what stages print and the jobs' environments, so they sit in a folder that is
    # this user's only (0700, owned by us; one of that name made by someone else first is refused, not
    # used). Ray makes its temp dir itself world-writable, hence the private parent (issue 15).
    @property
    def private_tmp(self) -> Path:
        digest = hashlib.sha1(str(self.home.resolve()).encode()).hexdigest()[:10]
        path = Path("/tmp") / f"lhorch-{os.getuid()}-{digest}"
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise LhorchError(f"{path} exists and is not this user's own directory; refusing to start Ray in it",
                              hint=f"Remove {path} (someone else may have created it on purpose).")
        if st.st_mode & 0o077:
            path.chmod(0o700)
        return path

    @property
    def temp_dir(self) -> Path:
        return self.private_tmp / "ray"

    def offers(self) -> list[Offer]:
        return []  # the planner builds the local offer from the measured Profile

    def _read_info(self) -> dict | None:
        """The head this process may use: the kept one, else its own."""
        for path in dict.fromkeys([self.kept_path, self.info_path]):
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if _alive(int(info.get("guardian_pid", 0))):
                return {**info, "path": str(path)}
        return None

    def _cluster(self, info: dict, run_id: str) -> Cluster:
        token = (self.dir / "token").read_text().strip()
        return Cluster(provider="local", name="local", run_id=run_id, address=info["address"],
                       token=SecretStr(token), remote=False,
                       launched_at=datetime.fromisoformat(info["started_at"]))

    def acquire(self, request: ClusterRequest) -> Cluster:
        info = self._read_info()
        if info is not None:
            cluster = self._cluster(info, request.run_id)
            try:
                wait_ready(cluster.address, cluster.auth_headers(), timeout=5)
                return cluster
            except ClusterUnreachable:
                self._stop(info)
        return self._start(request.run_id)

    def _start(self, run_id: str) -> Cluster:
        self.dir.mkdir(parents=True, exist_ok=True)
        token_path = self.dir / "token"
        if not token_path.exists():
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        gcs, dash = free_port(), free_port()
        args = [
            "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
        ]
        if self.cpus is not None:
            args += ["--num-cpus", str(int(self.cpus) if float(self.cpus).is_integer() else self.cpus)]
        if self.gpus is not None:
            args += ["--num-gpus", str(self.gpus)]
        # Ray replaces --node-ip-address 127.0.0.1 by the machine's network address unless it
        # believes it runs a single-machine cluster (ray/_private/services.py:get_node_ip_address);
        # this setting keeps the GCS, raylet and object manager on loopback.
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path),
                   RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        env.pop("RAY_ADDRESS", None)
        log = open(self.dir / "head.log", "ab")
        owner = 0 if self.keep else os.getpid()
        proc = subprocess.Popen(
            [sys.executable, "-m", "lhorch.providers.ray_head", "--owner-pid", str(owner), "--", *args],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        info = {"address": f"http://127.0.0.1:{dash}", "gcs_address": f"127.0.0.1:{gcs}", "guardian_pid": proc.pid,
                "started_at": datetime.now(timezone.utc).isoformat(), "keep": self.keep}
        tmp = self.info_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self.info_path)
        cluster = self._cluster(info, run_id)
        try:
            wait_ready(cluster.address, cluster.auth_headers(), proc=proc)
        except BaseException:
            self._stop(info)
            raise
        return cluster

    def release(self, cluster: Cluster | None = None, *, force: bool = False) -> None:
        """Stop the head unless it is kept; already stopped is fine."""
        info = self._read_info()
        if info is None:
            return
        if info.get("keep") and not force:
            return
        self._stop(info)

    def _stop(self, info: dict) -> None:
        pid = int(info.get("guardian_pid", 0))
        if pid and _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            # Ray's own SIGTERM shutdown takes ~10 s on a small machine; a local head holds nothing
            # worth saving, so after a short grace the group is killed.
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                _reap(pid)
                if not _group_alive(pid):
                    break
                time.sleep(0.1)
            else:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                for _ in range(50):
                    _reap(pid)
                    if not _group_alive(pid):
                        break
                    time.sleep(0.1)
        Path(info.get("path", self.info_path)).unlink(missing_ok=True)

    def clusters(self) -> list[Cluster]:
        info = self._read_info()
        return [] if info is None else [self._cluster(info, "")]

    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False) -> list[str]:
        info = self._read_info()
        if info is None or info.get("keep"):
            return []
        if not dry_run:
            self._stop(info)
        return [f"local Ray head (guardian pid {info['guardian_pid']})"]
