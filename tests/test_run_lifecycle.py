"""A run's processes on this machine (issue 17): a stage's whole process tree lives and dies with its
attempt, one process per run, a killed run shows as interrupted, and lhorch runs from a venv that is
not on PATH."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from processes import LHORCH, kill, marked, start_run, wait_gone, wait_started
from test_runner import run_pipeline

from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.state.run_lock import is_live, mark_gone_interrupted
from lhorch.orchestrator.state.store import Store

pytestmark = pytest.mark.ray
def _sleeper(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A script that records its start and sleeps; its path is the marker of its processes."""
    script = tmp_path / f"{name}.py"
    script.write_text("import pathlib, sys, time\npathlib.Path(sys.argv[1]).write_text('up')\ntime.sleep(120)\n")
    return script, str(script)


def test_timed_out_pipeline_leaves_no_process_behind(store, write_pipeline, ray_node, tmp_path):
    script, marker = _sleeper(tmp_path, "slow_pipe")
    path = write_pipeline(f"""\
        name: piped
        stages:
          train:
            run: python {script} {tmp_path / 'started'} | tee {tmp_path / 'log'} {marker}.tee
            timeout: 3s
        """)
    try:
        result = run_pipeline(store, path, ray_node)
        assert result.status == "failed"
        assert wait_gone(marker, 5) == []  # neither python nor tee outlives the timed-out attempt
    finally:
        kill(marked(marker))


def test_run_commands_fail_when_a_piped_command_fails(store, write_pipeline, ray_node):
    path = write_pipeline("""\
        name: pipefail
        stages:
          a:
            run: "false | cat"
        """)
    assert run_pipeline(store, path, ray_node).status == "failed"


@pytest.mark.slow
def test_kill_9_of_lhorch_ends_the_stage_and_the_run_shows_interrupted(write_pipeline, home, tmp_path):
    script, marker = _sleeper(tmp_path, "train_forever")
    started = tmp_path / "started"
    path = write_pipeline(f"""\
        name: killed
        stages:
          train:
            run: python {script} {started} | cat
        """)
    env = dict(os.environ, LHORCH_HOME=str(home), LHORCH_LOCAL_CPUS="1")
    proc = start_run(path, env, "--quiet")
    try:
        wait_started(proc, started, 120)
        assert marked(marker)
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(marker, 10) == []  # the stage went with lhorch, within 10 s

        out = subprocess.run([*LHORCH, "runs", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert '"interrupted"' in out.stdout and '"running"' not in out.stdout, out.stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        kill(marked(marker))


def test_a_run_whose_process_is_gone_is_interrupted_and_not_live(store, write_pipeline):
    path = write_pipeline("name: gone\nstages:\n  a:\n    run: echo hi\n")
    store.create_run("gone-1", "gone", load_pipeline(path), str(path))
    store.update_run("gone-1", status="running", pid=2**22 + 1)  # a process that is not there
    assert not is_live(store, "gone-1")
    assert mark_gone_interrupted(store) == ["gone-1"]
    assert store.get_run("gone-1")["status"] == "interrupted"


@pytest.mark.slow
def test_two_runs_of_one_pipeline_at_once_get_their_own_run_ids(write_pipeline, home, tmp_path):
    gate = tmp_path / "gate"
    path = write_pipeline(f"""\
        name: twice
        stages:
          a:
            run: |
              touch {gate}.$$
              for i in $(seq 1 300); do [ -e {gate} ] && break; sleep 0.1; done
              echo done > $LHORCH_OUTPUT_DIR/out
            outputs: [out]
        """)
    env = dict(os.environ, LHORCH_HOME=str(home), LHORCH_LOCAL_CPUS="1")
    first = start_run(path, env, "--json")
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("gate.*")) and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.2)
        second = start_run(path, env, "--json")
        try:
            # The second starts its own run (it never adopts the live one); both finish once released.
            while len(list(tmp_path.glob("gate.*"))) < 2 and time.monotonic() < deadline and second.poll() is None:
                time.sleep(0.2)
            gate.touch()
            out1, _ = first.communicate(timeout=120)
            out2, _ = second.communicate(timeout=120)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    assert first.returncode == 0, out1
    assert second.returncode == 0, out2
    r1, r2 = json.loads(out1.strip().splitlines()[-1]), json.loads(out2.strip().splitlines()[-1])
    assert r1["run_id"] != r2["run_id"]
    assert r1["status"] == r2["status"] == "succeeded"
    assert not r2["resumed"]
    statuses = {r["id"]: r["status"] for r in Store(home).list_runs("twice")}
    assert statuses == {r1["run_id"]: "succeeded", r2["run_id"]: "succeeded"}


@pytest.mark.slow
def test_cli_by_absolute_path_without_its_interpreter_on_path(write_pipeline, home, tmp_path):
    script = Path(sys.executable).parent / "lhorch"
    assert script.exists(), script
    path = write_pipeline("name: nopath\nstages:\n  a:\n    run: echo hello > $LHORCH_OUTPUT_DIR/o\n    outputs: [o]\n")
    bin_dir = str(Path(sys.executable).parent)
    # The interpreter's folder (and `ray` there, or in pyenv's shims) off PATH, as with a pipx install.
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and p != bin_dir and not (Path(p) / "ray").exists()]
    env = dict(os.environ, LHORCH_HOME=str(home), LHORCH_LOCAL_CPUS="1", PATH=os.pathsep.join(keep or ["/usr/bin", "/bin"]))
    out = subprocess.run([str(script), "run", str(path), "--json"], env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "succeeded"
