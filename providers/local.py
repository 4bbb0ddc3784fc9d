"""The local node: this machine, with a Ray head on 127.0.0.1 only for the stages that need one.

A plain local stage runs as a process of lhorch's (local_dispatch.py): no Ray is started for it, so a
run of plain stages costs no Ray start-up at all. A stage that attaches to Ray itself (a distributed
fine-tune) gets an embedded Ray head with token authentication, started once per run, in the
background as soon as the run knows such a stage will come, and without the dashboard, which only the
Jobs API needs (``start_head(jobs_api=True)`` serves a stand-in remote cluster in tests and benches).

lhorch stops its head when the run ends. With ``keep=True`` (``lhorch run --keep-ray``, or
LHORCH_KEEP_RAY=1) the head stays up for the next run, until it has been idle (no run of lhorch's
using it) for ``LHORCH_RAY_IDLE_SECONDS`` (600 s by default); ``lhorch down --local`` or ``lhorch gc``
stops it at once. The head runs under lhorch.providers.ray_head, which stops it when its owner
process dies, so even a ``kill -9`` of lhorch leaves no Ray process behind (unless keep was asked for).
docs/local.md has the figures behind these choices.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import psutil
from pydantic import SecretStr

from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import ClusterUnreachable, LhorchError
from lhorch.orchestrator.core.plan import Offer
from lhorch.providers.local_dispatch import Capacity, LocalDispatcher

READY_TIMEOUT_S = 90.0
# How long a kept head waits for its next run before it stops itself.
IDLE_ENV = "LHORCH_RAY_IDLE_SECONDS"
IDLE_S = 600.0
# The local cluster's address: its stages never go through an HTTP API.
LOCAL_ADDRESS = "local://this-machine"


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


def _detect_gpus() -> int:
    """NVIDIA GPUs on this machine, as Ray would count them (0 without a driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip()])
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU ")) if out.returncode == 0 else 0


class LocalProvider:
    """Provider for the local node. ``cpus``/``gpus``/``memory_gb`` default to what the machine has."""

    name = "local"

    def __init__(self, home: Path, *, keep: bool = False, cpus: float | None = None, gpus: int | None = None,
                 memory_gb: float | None = None):
        self.home = Path(home)
        self.keep = keep
        self.cpus = cpus
        self.gpus = gpus
        self.memory_gb = memory_gb
        self.dir = self.home / "ray"
        # A kept head is shared by every run (head.json); a run's own head is its process's alone
        # (head-PID.json), so that two runs at once never stop each other's node (issue 17).
        self.kept_path = self.dir / "head.json"
        self.info_path = self.kept_path if keep else self.dir / f"head-{os.getpid()}.json"
        self._lock = threading.RLock()
        self._dispatchers: dict[str, LocalDispatcher] = {}
        self._head: threading.Thread | None = None
        self._head_info: dict | None = None
        self._head_error: BaseException | None = None
        self._closed = False

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

    @property
    def lease_dir(self) -> Path:
        return self.dir / "leases"

    def offers(self) -> list[Offer]:
        return []  # the planner builds the local offer from the measured Profile

    # --- the provider's verbs -------------------------------------------------------------------
    def acquire(self, request: ClusterRequest) -> Cluster:
        """This machine: nothing starts here (stages start their own processes; Ray comes on demand)."""
        with self._lock:
            self._closed = False
        return Cluster(provider="local", name="local", run_id=request.run_id, address=LOCAL_ADDRESS, remote=False,
                       launched_at=datetime.now(timezone.utc))

    def dispatcher(self, cluster: Cluster, on_change: Callable[[], None]) -> LocalDispatcher:
        with self._lock:
            if cluster.run_id not in self._dispatchers:
                self._dispatchers[cluster.run_id] = LocalDispatcher(self.capacity(), on_change, ray_env=self.ray_env,
                                                                    warm=self.warm_up)
            return self._dispatchers[cluster.run_id]

    def capacity(self) -> Capacity:
        cpus = self.cpus if self.cpus is not None else float(os.cpu_count() or 1)
        gpus = self.gpus if self.gpus is not None else _detect_gpus()
        memory = self.memory_gb if self.memory_gb is not None else psutil.virtual_memory().total / 2**30
        return Capacity(cpus=cpus, gpus=gpus, memory_gb=memory)

    def release(self, cluster: Cluster | None = None, *, force: bool = False) -> None:
        """End the stages still running here and stop the head unless it is kept; already stopped is fine."""
        with self._lock:
            self._closed = True  # a head not yet started in the background never starts
            runs = [cluster.run_id] if cluster is not None else list(self._dispatchers)
            dispatchers = [self._dispatchers.pop(r) for r in runs if r in self._dispatchers]
        for dispatcher in dispatchers:
            dispatcher.stop_all()
        with self._lock:
            (self.lease_dir / str(os.getpid())).unlink(missing_ok=True)
            info = self._read_info()
        if info is not None and (force or not info.get("keep")):
            self._stop(info)  # a head still starting too: the thread waiting for it then gives up
        for dispatcher in dispatchers:
            dispatcher.close()
        with self._lock:
            self._head, self._head_info, self._head_error = None, None, None

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

    # --- the Ray head, on demand ----------------------------------------------------------------
    def warm_up(self) -> None:
        """Start (or find) the head in the background, once, while other work goes on."""
        with self._lock:
            if self._head is None and not self._closed:
                self._head = threading.Thread(target=self._bring_up, daemon=True, name="lhorch-ray-head")
                self._head.start()

    def ray_env(self) -> dict[str, str]:
        """What a stage needs to attach to the head (``ray.init()``); waits for the head."""
        self.warm_up()
        with self._lock:
            thread = self._head
        if thread is None:
            raise ClusterUnreachable("the local node was released")
        thread.join()
        with self._lock:
            if self._head_error is not None or self._head_info is None:
                raise ClusterUnreachable(f"the local Ray head did not start ({self._head_error})")
            info = self._head_info
        # The single-machine setting, as for the head: else the driver looks for its raylet on the
        # machine's network address and waits for it forever.
        return {"RAY_ADDRESS": info["gcs_address"], "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.dir / "token"), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    def _bring_up(self) -> None:
        try:
            info = self._find_or_start(jobs_api=False)
        except BaseException as exc:  # noqa: BLE001 - handed to the stage that waits for the head
            with self._lock:
                self._head_error = exc
            return
        with self._lock:
            self._head_info = info

    def start_head(self, run_id: str = "", *, jobs_api: bool = True) -> Cluster:
        """Start (or reuse) the head now and return it as a cluster; with ``jobs_api`` its dashboard
        serves Ray's Jobs API (a stand-in for a remote cluster)."""
        with self._lock:
            self._closed = False
        return self._cluster(self._find_or_start(jobs_api=jobs_api), run_id)

    def _find_or_start(self, *, jobs_api: bool) -> dict:
        info = self._read_info()
        if info is not None and (info.get("address") or not jobs_api):
            try:
                self._check(info, timeout=5)
                self._lease(info)
                return info
            except ClusterUnreachable:
                self._stop(info)
        elif info is not None:
            self._stop(info)
        return self._start(jobs_api)

    def _lease(self, info: dict) -> None:
        """A kept head stops itself once no run has used it for its idle window: say this one does."""
        if info.get("keep"):
            self.lease_dir.mkdir(parents=True, exist_ok=True)
            (self.lease_dir / str(os.getpid())).touch()

    def _check(self, info: dict, timeout: float, proc: subprocess.Popen | None = None) -> None:
        if info.get("address"):
            cluster = self._cluster(info, "")
            wait_ready(cluster.address, cluster.auth_headers(), timeout=timeout, proc=proc)
            return
        # No Jobs API to ask: the guardian marks the head up once `ray start` has said so. A head
        # another run is still starting is waited for as long as its guardian lives.
        ready, pid = Path(info.get("ready_file", "")), int(info.get("guardian_pid", 0))
        deadline = time.monotonic() + (timeout if proc is not None else READY_TIMEOUT_S)
        while not ready.is_file():
            if (proc is not None and proc.poll() is not None) or not _alive(pid):
                raise ClusterUnreachable("the local Ray head exited during start-up",
                                         hint="See the Ray logs under $LHORCH_HOME/ray (head.log).")
            if time.monotonic() > deadline:
                raise ClusterUnreachable(f"the local Ray head did not start in {timeout:.0f} s")
            time.sleep(0.1)

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
        return Cluster(provider="local", name="local", run_id=run_id,
                       address=info.get("address") or f"ray://{info['gcs_address']}",
                       token=SecretStr(token), remote=False, launched_at=datetime.fromisoformat(info["started_at"]))

    def _start(self, jobs_api: bool) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        token_path = self.dir / "token"
        if not token_path.exists():
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        gcs, dash = free_port(), free_port()
        args = [
            "--node-ip-address", "127.0.0.1", "--port", str(gcs),
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
        ]
        # The dashboard serves only the Jobs API, which local stages do not use: without it the head
        # starts sooner and idles cheaper (docs/local.md).
        args += ["--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash)] if jobs_api else \
            ["--include-dashboard=false"]
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
        ready = self.info_path.with_suffix(".ready")
        ready.unlink(missing_ok=True)
        guardian = ["--owner-pid", str(0 if self.keep else os.getpid()), "--ready-file", str(ready)]
        if self.keep:
            guardian += ["--idle-seconds", os.environ.get(IDLE_ENV, str(IDLE_S)), "--leases", str(self.lease_dir)]
            self.lease_dir.mkdir(parents=True, exist_ok=True)
            (self.lease_dir / str(os.getpid())).touch()  # before the head: it must not find itself idle
        with self._lock:
            if self._closed:
                raise ClusterUnreachable("the local node was released before its Ray head started")
            with open(self.dir / "head.log", "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "lhorch.providers.ray_head", *guardian, "--", *args],
                    env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
            info = {"address": f"http://127.0.0.1:{dash}" if jobs_api else "", "gcs_address": f"127.0.0.1:{gcs}",
                    "guardian_pid": proc.pid, "started_at": datetime.now(timezone.utc).isoformat(), "keep": self.keep,
                    "ready_file": str(ready)}
            tmp = self.info_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info))
            tmp.replace(self.info_path)
        info["path"] = str(self.info_path)
        try:
            self._check(info, READY_TIMEOUT_S, proc=proc)
        except BaseException:
            self._stop(info)
            raise
        return info

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
        if info.get("ready_file"):
            Path(info["ready_file"]).unlink(missing_ok=True)
