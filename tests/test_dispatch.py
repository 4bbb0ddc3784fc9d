"""The local node's dispatcher (issue 18): stages as plain processes with admission, stop and logs like
Ray's, Ray only for the stages that attach to it, and Ray's own lines kept off the terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from processes import kill, marked, start_run, wait_gone, wait_started

from lhorch.orchestrator.core.status import JobStatus
from lhorch.orchestrator.execution.logs import shown
from lhorch.providers.dispatch import StageJob
from lhorch.providers.local import LocalProvider
from lhorch.providers.local_dispatch import Capacity, LocalDispatcher


def _job(tmp_path: Path, name: str, script: str, **kw) -> StageJob:
    return StageJob(submission_id=name, entrypoint=["bash", "-c", script], env={}, log_path=tmp_path / f"{name}.log",
                    **kw)


def _wait_end(d: LocalDispatcher, job_id: str, seconds: float = 20) -> JobStatus:
    deadline = time.monotonic() + seconds
    while not (state := d.state(job_id)).terminal and time.monotonic() < deadline:
        time.sleep(0.05)
    return state.status


def _spans(tmp_path: Path, *names: str) -> list[list[float]]:
    return [[float(x) for x in (tmp_path / f"{n}.t").read_text().split()] for n in names]


STAMP = "date +%s.%N > {t}; sleep 1; date +%s.%N >> {t}"


def test_stages_wait_for_cpus_and_memory_and_share_what_fits(tmp_path):
    d = LocalDispatcher(Capacity(cpus=2, memory_gb=4))
    jobs = [_job(tmp_path, "a", STAMP.format(t=tmp_path / "a.t"), cpus=1, memory_gb=1),
            _job(tmp_path, "b", STAMP.format(t=tmp_path / "b.t"), cpus=1, memory_gb=1),
            _job(tmp_path, "c", STAMP.format(t=tmp_path / "c.t"), cpus=1, memory_gb=3)]
    for job in jobs:
        d.submit(job)
    assert d.state("c").status is JobStatus.PENDING  # a and b hold both CPUs
    assert [_wait_end(d, j.submission_id) for j in jobs] == [JobStatus.SUCCEEDED] * 3
    (a0, a1), (b0, b1), (c0, c1) = _spans(tmp_path, "a", "b", "c")
    assert min(a1, b1) - max(a0, b0) > 0.5  # a and b ran together
    assert c0 >= min(a1, b1)  # c started only when a CPU was free again ...
    d2 = LocalDispatcher(Capacity(cpus=4, memory_gb=4))
    for name, mem in (("m1", 3), ("m2", 3)):
        d2.submit(_job(tmp_path, name, STAMP.format(t=tmp_path / f"{name}.t"), cpus=1, memory_gb=mem))
    assert _wait_end(d2, "m1") is JobStatus.SUCCEEDED and _wait_end(d2, "m2") is JobStatus.SUCCEEDED
    (m0, m1), (n0, n1) = _spans(tmp_path, "m1", "m2")
    assert min(m1, n1) <= max(m0, n0)  # ... and two 3 GiB stages never shared 4 GiB


def test_a_stage_larger_than_the_node_runs_alone_rather_than_never(tmp_path):
    d = LocalDispatcher(Capacity(cpus=1, gpus=0, memory_gb=1))
    d.submit(_job(tmp_path, "big", "echo ran", cpus=8, gpus=2, memory_gb=64))
    assert _wait_end(d, "big") is JobStatus.SUCCEEDED


def test_gpus_are_handed_out_by_index(tmp_path):
    d = LocalDispatcher(Capacity(cpus=4, gpus=2))
    for name, gpus in (("one", 1), ("two", 1), ("none", 0)):
        d.submit(_job(tmp_path, name, 'echo "gpus=[$CUDA_VISIBLE_DEVICES]"; sleep 0.5', cpus=1, gpus=gpus))
    for name in ("one", "two", "none"):
        assert _wait_end(d, name) is JobStatus.SUCCEEDED
    seen = {n: (tmp_path / f"{n}.log").read_text().strip() for n in ("one", "two", "none")}
    assert sorted([seen["one"], seen["two"]]) == ["gpus=[0]", "gpus=[1]"]
    assert seen["none"] == "gpus=[]"


def test_stop_ends_the_whole_group_and_the_attempt_is_stopped(tmp_path):
    ended = threading.Event()
    d = LocalDispatcher(Capacity(cpus=2), on_change=ended.set, grace=2)
    pid_file = tmp_path / "child.pid"
    d.submit(_job(tmp_path, "s", f"sleep 300 & echo $! > {pid_file}; wait"))
    d.submit(_job(tmp_path, "queued", "echo never", cpus=2))
    deadline = time.monotonic() + 10
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    d.stop("queued")
    assert d.state("queued").status is JobStatus.STOPPED
    d.stop("s")
    assert _wait_end(d, "s") is JobStatus.STOPPED
    assert ended.is_set()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists(), "the stage's background child outlived the stop"
    assert not (tmp_path / "queued.log").exists()


def test_a_failed_stage_says_its_exit_code_and_logs_come_in_whole_lines(tmp_path):
    d = LocalDispatcher(Capacity(cpus=1))
    d.submit(_job(tmp_path, "f", "echo one; printf 'two'; sleep 1; echo ' more'; exit 3"))
    time.sleep(0.5)
    first, offset = d.read_log("f", 0)
    assert first == "one\n"  # the unfinished line waits
    assert _wait_end(d, "f") is JobStatus.FAILED
    assert "exit code 3" in d.state("f").message
    rest, _ = d.read_log("f", offset)
    assert rest == "two more\n"


def test_a_stage_that_needs_ray_gets_its_address_and_a_head_that_fails_fails_it(tmp_path):
    d = LocalDispatcher(Capacity(cpus=1), ray_env=lambda: {"RAY_ADDRESS": "127.0.0.1:1"})
    d.submit(_job(tmp_path, "r", "echo $RAY_ADDRESS", needs_ray=True))
    d.submit(_job(tmp_path, "plain", "echo ${RAY_ADDRESS:-none}"))
    assert _wait_end(d, "r") is JobStatus.SUCCEEDED and _wait_end(d, "plain") is JobStatus.SUCCEEDED
    assert (tmp_path / "r.log").read_text() == "127.0.0.1:1\n"
    assert (tmp_path / "plain.log").read_text() == "none\n"

    def broken() -> dict[str, str]:
        raise RuntimeError("no head")

    d = LocalDispatcher(Capacity(cpus=1), ray_env=broken)
    d.submit(_job(tmp_path, "r2", "echo hi", needs_ray=True))
    assert _wait_end(d, "r2") is JobStatus.FAILED
    assert "no head" in d.state("r2").message


def test_rays_own_lines_stay_off_the_terminal():
    ray_lines = [
        "2026-11-24 05:18:09,475\tINFO worker.py:1691 -- Using address 127.0.0.1:37755 set in RAY_ADDRESS",
        "[2026-11-24 05:18:09,475 W 123 456] core_worker.cc:123: something internal",
        "(TrainController pid=4242) Attempting to start training worker group of size 1",
        "(TrainController pid=4242) {'epoch': 3, 'loss': 0.5, 'val_accuracy': 0.9}",
        "(RayTrainWorker pid=77, ip=127.0.0.1) 2026-11-24 05:18:09,475\tINFO config.py:1 -- Setting up",
        "Running entrypoint for job lhorch-x-s-1: python -m lhorch.orchestrator.execution.stage_wrapper",
        "\x1b[36m(PlacementGroupCleaner pid=12831)\x1b[0m Failed to query Ray Train Controller actor state.",
        "\x1b[36m(RayTrainWorker pid=12873)\x1b[0m Reporting training result 1: TrainingReport(checkpoint=None)",
    ]
    assert [shown(line) for line in ray_lines] == [None] * len(ray_lines)
    assert shown("(RayTrainWorker pid=77, ip=127.0.0.1) epoch 3/15 val_accuracy 0.91") == \
        "epoch 3/15 val_accuracy 0.91"
    assert shown("epoch 3/15 loss 0.52") == "epoch 3/15 loss 0.52"
    assert shown("[lhorch] stage finished with exit code 0 in 1.0 s") is not None


def _ray_up(home: Path) -> bool:
    return any(_alive(json.loads(p.read_text())["guardian_pid"]) for p in (home / "ray").glob("head*.json"))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.ray
@pytest.mark.slow
def test_a_kept_head_serves_a_ray_driver_and_stops_itself_when_idle(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_RAY_IDLE_SECONDS", "3")
    home = tmp_path / "home"
    provider = LocalProvider(home, keep=True, cpus=1)
    try:
        provider.warm_up()
        env = provider.ray_env()
        out = subprocess.run([sys.executable, "-c", "import ray; ray.init(); print(int(ray.cluster_resources()['CPU']))"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "1"
        provider.release()  # kept: still up for the next run ...
        assert _ray_up(home)
        deadline = time.monotonic() + 30  # ... until nobody has used it for its idle window
        while _ray_up(home) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _ray_up(home)
    finally:
        provider.release(force=True)


class _Capture:
    def __init__(self):
        self.lines: list[str] = []

    def stage(self, stage: str, status: str, detail: str = "") -> None: ...
    def log(self, stage: str, line: str) -> None:
        self.lines.append(line)

    def info(self, message: str) -> None: ...
    def close(self) -> None: ...


RAY_LINE = "2026-11-24 05:18:09,475\tINFO worker.py:1691 -- Connecting to existing Ray cluster"


@pytest.mark.ray
@pytest.mark.parametrize("verbose", [False, True])
def test_plain_stages_start_no_ray_and_rays_lines_go_to_the_log_only(store, write_pipeline, ray_node, verbose):
    from lhorch.orchestrator.execution.runner import Runner, RunOptions
    from lhorch.orchestrator.pipeline.loader import load_pipeline

    path = write_pipeline(f"""\
        name: plain
        stages:
          a:
            run: printf '%s\\n' 'own line' '{RAY_LINE}'
        """)
    reporter = _Capture()
    result = Runner(store, load_pipeline(path), path, providers={"local": ray_node}, reporter=reporter,
                    options=RunOptions(verbose=verbose)).run()
    assert result.status == "succeeded"
    assert not list((ray_node.home / "ray").glob("head*.json")), "a run of plain stages started Ray"
    log = (result.run_dir / "stages" / "a" / "attempt-1.log").read_text()
    assert "own line" in log and RAY_LINE in log
    assert "own line" in reporter.lines
    assert (RAY_LINE in reporter.lines) is verbose


@pytest.mark.ray
@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_a_local_stage_and_its_group(write_pipeline, home, tmp_path, presses):
    import signal

    from lhorch.orchestrator.state.store import Store

    script = tmp_path / f"forever{presses}.py"
    # The second press must come while lhorch is still stopping: this stage ignores SIGTERM, so it takes
    # the dispatcher's SIGKILL after the grace period to end.
    script.write_text("import pathlib, signal, sys, time\n"
                      + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if presses == 2 else "")
                      + "pathlib.Path(sys.argv[1]).write_text('up')\ntime.sleep(120)\n")
    started = tmp_path / "started"
    path = write_pipeline(f"""\
        name: interrupted
        stages:
          train:
            run: python {script} {started} | cat
        """)
    env = dict(os.environ, LHORCH_HOME=str(home), LHORCH_LOCAL_CPUS="1")
    proc = start_run(path, env)
    try:
        wait_started(proc, started, 60)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.2)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert "stopped train" in out
        if presses == 2:
            assert "the interrupt waits until that is done" in out
        assert wait_gone(str(script), 10) == []  # the stage (and the `cat` of its pipe) went with the run
        store = Store(home)
        run = store.list_runs()[0]
        assert run["status"] == "interrupted"
        assert [a["status"] for a in store.attempts(run["id"], "train")] == ["stopped"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill(marked(str(script)))


class _Counting:
    """The local provider, with its dispatcher's state calls counted."""

    name = "local"

    def __init__(self, inner: LocalProvider):
        self.inner, self.calls = inner, 0

    def __getattr__(self, attr):
        return getattr(self.inner, attr)

    def dispatcher(self, cluster, on_change):
        inner, outer = self.inner.dispatcher(cluster, on_change), self

        class Proxy:
            writes_log, notifies = inner.writes_log, inner.notifies

            def __getattr__(self, attr):
                return getattr(inner, attr)

            def state(self, job_id):
                outer.calls += 1
                return inner.state(job_id)

        return Proxy()


@pytest.mark.ray
def test_the_runner_sleeps_while_a_stage_runs(store, write_pipeline, ray_node):
    from lhorch.orchestrator.execution.runner import Runner
    from lhorch.orchestrator.pipeline.loader import load_pipeline

    path = write_pipeline("""\
        name: sleepy
        stages:
          a:
            run: sleep 3
          b:
            needs: [a]
            run: echo after
        """)
    provider = _Counting(ray_node)
    result = Runner(store, load_pipeline(path), path, providers={"local": provider}).run()
    assert result.status == "succeeded"
    # Asked twice a second at most (for its log's new lines), not in a loop: ~6 for a 3 s stage.
    assert provider.calls < 20, f"{provider.calls} state calls for a 3 s stage"


def test_python_stages_are_forked_from_a_warm_server_and_run_without_it_if_it_dies(tmp_path, monkeypatch):
    # Import-safe, as the stage wrapper is: the server imports (preloads) the first module it is asked for.
    (tmp_path / "probe_stage.py").write_text(
        "import os, sys, time\n"
        "if __name__ == '__main__':\n"
        "    parent = open(f'/proc/{os.getppid()}/cmdline').read().replace(chr(0), ' ')\n"
        "    print('value', os.environ['PROBE'], 'parent', parent)\n"
        "    time.sleep(float(os.environ.get('PROBE_SLEEP', '0')))\n"
        "    sys.exit(int(os.environ['PROBE_CODE']))\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    d = LocalDispatcher(Capacity(cpus=2))

    def probe(name: str, code: int, sleep: float = 0) -> StageJob:
        return StageJob(submission_id=name, entrypoint=[sys.executable, "-m", "probe_stage"], log_path=tmp_path / name,
                        env={"PROBE": name, "PROBE_CODE": str(code), "PROBE_SLEEP": str(sleep)})

    try:
        d.submit(probe("ok", 0))
        d.submit(probe("bad", 3))
        assert _wait_end(d, "ok") is JobStatus.SUCCEEDED
        assert _wait_end(d, "bad") is JobStatus.FAILED and "exit code 3" in d.state("bad").message
        assert "value ok parent" in (tmp_path / "ok").read_text()
        assert "lhorch.providers.forkserver" in (tmp_path / "ok").read_text()  # forked, not started afresh
        d.submit(probe("long", 0, sleep=60))
        deadline = time.monotonic() + 20
        while d.state("long").status is not JobStatus.RUNNING and time.monotonic() < deadline:
            time.sleep(0.05)
        d.stop("long")
        assert _wait_end(d, "long") is JobStatus.STOPPED
        assert d._server is not None
        d._server._proc.kill()  # the server dies: what comes next still runs, as a process of lhorch's
        deadline = time.monotonic() + 10
        while d._server is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        d.submit(probe("after", 0))
        assert _wait_end(d, "after") is JobStatus.SUCCEEDED
        assert "lhorch.providers.forkserver" not in (tmp_path / "after").read_text()
    finally:
        d.close()


def test_lhorch_run_starts_its_fork_server_ahead_and_its_stages_take_that_one():
    from lhorch.orchestrator.cli import STAGE_WRAPPER
    from lhorch.orchestrator.execution.launch import WRAPPER_MODULE
    from lhorch.providers import forkserver

    assert STAGE_WRAPPER == WRAPPER_MODULE  # what `lhorch run` starts ahead is what its stages preload
    forkserver.prestart("json")
    ahead = forkserver._spares["json"]
    assert forkserver.take("json") is ahead  # taken, not started again
    forkserver.prestart("json")
    dead = forkserver._spares["json"]
    dead.kill()
    dead.wait(timeout=10)
    fresh = forkserver.take("json")  # one that died meanwhile is not handed out
    assert fresh is not dead and fresh.poll() is None
    forkserver.prestart("json")
    unused = forkserver._spares.pop("json")
    for proc in (ahead, fresh, unused):  # one nobody took ends when its input closes, as when lhorch is killed
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    forkserver.prestart("json")
    left = forkserver._spares["json"]
    forkserver._end_spares()  # at lhorch's exit (atexit): one nobody took goes at once
    assert left.poll() is not None and forkserver._spares == {}


@pytest.mark.ray
@pytest.mark.slow
def test_lhorch_down_local_stops_a_kept_head_at_once(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("LHORCH_HOME", str(home))
    provider = LocalProvider(home, keep=True, cpus=1)
    try:
        provider.warm_up()
        provider.ray_env()
        provider.release()
        assert _ray_up(home)  # kept, for up to its idle window (10 minutes)
        out = subprocess.run([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "down",
                              "--local"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "stopped the local Ray node" in out.stdout
        assert not _ray_up(home)
    finally:
        provider.release(force=True)
