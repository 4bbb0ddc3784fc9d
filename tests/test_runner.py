"""The runner on a real local Ray node: DAGs, artifacts, parallelism, retries, timeouts, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.state.store import Store

pytestmark = pytest.mark.ray


def run_pipeline(store, path, ray_node, **options):
    pipeline = load_pipeline(path)
    runner = Runner(store, pipeline, path, providers={"local": ray_node}, options=RunOptions(**options))
    return runner.run()


def test_diamond_passes_artifacts_along(store, write_pipeline, ray_node):
    path = write_pipeline("""\
        name: diamond
        stages:
          a:
            run: echo data-a > $LHORCH_OUTPUT_DIR/data
            outputs: [data]
          b:
            needs: [a]
            run: (cat $LHORCH_INPUT_DATA; echo b) > $LHORCH_OUTPUT_DIR/part
            outputs: [part]
          c:
            needs: [a]
            run: (cat $LHORCH_INPUT_DATA; echo c) > $LHORCH_OUTPUT_DIR/part
            outputs: [part]
          d:
            needs: [b, c]
            run: cat $LHORCH_INPUT_B_PART $LHORCH_INPUT_C_PART > $LHORCH_OUTPUT_DIR/joined; echo "plain=$(cat $LHORCH_INPUT_PART)"
            outputs: [joined]
        """)
    result = run_pipeline(store, path, ray_node)
    assert result.status == "succeeded", result.message
    assert result.stages == {"a": "succeeded", "b": "succeeded", "c": "succeeded", "d": "succeeded"}
    joined = result.run_dir / "stages" / "d" / "outputs" / "joined"
    assert joined.read_text() == "data-a\nb\ndata-a\nc\n"
    # The nearest need listed first wins a plain name: d's `part` is b's.
    log = (result.run_dir / "stages" / "d" / "attempt-1.log").read_text()
    assert "plain=data-a\nb" in log
    names = {(r["stage"], r["name"]) for r in store.artifacts(result.run_id)}
    assert names == {("a", "data"), ("b", "part"), ("c", "part"), ("d", "joined")}
    assert store.get_run(result.run_id)["status"] == "succeeded"


def test_independent_stages_run_in_parallel(store, write_pipeline, ray_node):
    path = write_pipeline("""\
        name: parallel
        stages:
          left:
            run: date +%s.%N > $LHORCH_OUTPUT_DIR/t; sleep 3; date +%s.%N >> $LHORCH_OUTPUT_DIR/t
            outputs: [t]
            resources: {cpus: 1}
          right:
            run: date +%s.%N > $LHORCH_OUTPUT_DIR/t; sleep 3; date +%s.%N >> $LHORCH_OUTPUT_DIR/t
            outputs: [t]
            resources: {cpus: 1}
        """)
    result = run_pipeline(store, path, ray_node)
    assert result.status == "succeeded"
    spans = [[float(x) for x in (result.run_dir / "stages" / s / "outputs" / "t").read_text().split()]
             for s in ("left", "right")]
    (l0, l1), (r0, r1) = spans
    overlap = min(l1, r1) - max(l0, r0)
    assert overlap > 2.0, f"stages did not overlap: {spans}"


def test_stages_beyond_the_cpus_wait_their_turn(store, write_pipeline, ray_node):
    # The session node has 2 CPUs: two 2-CPU stages cannot overlap.
    path = write_pipeline("""\
        name: queue
        stages:
          one:
            run: date +%s.%N > $LHORCH_OUTPUT_DIR/t; sleep 1.5; date +%s.%N >> $LHORCH_OUTPUT_DIR/t
            outputs: [t]
            resources: {cpus: 2}
          two:
            run: date +%s.%N > $LHORCH_OUTPUT_DIR/t; sleep 1.5; date +%s.%N >> $LHORCH_OUTPUT_DIR/t
            outputs: [t]
            resources: {cpus: 2}
        """)
    result = run_pipeline(store, path, ray_node)
    assert result.status == "succeeded"
    (a0, a1), (b0, b1) = [[float(x) for x in (result.run_dir / "stages" / s / "outputs" / "t").read_text().split()]
                          for s in ("one", "two")]
    assert min(a1, b1) <= max(a0, b0), "two 2-CPU stages overlapped on a 2-CPU node"


def test_retry_then_failure_stops_dependents_and_lets_other_branches_finish(store, write_pipeline, ray_node, tmp_path):
    counter = tmp_path / "count"
    path = write_pipeline(f"""\
        name: flaky
        stages:
          bad:
            run: echo try >> {counter}; echo boom >&2; exit 3
            retries: 2
          after_bad:
            needs: [bad]
            run: echo never
          good:
            run: echo fine > $LHORCH_OUTPUT_DIR/ok
            outputs: [ok]
          after_good:
            needs: [good]
            run: cat $LHORCH_INPUT_OK
        """)
    result = run_pipeline(store, path, ray_node)
    assert result.status == "failed"
    assert result.stages == {"bad": "failed", "after_bad": "skipped", "good": "succeeded", "after_good": "succeeded"}
    assert counter.read_text().count("try") == 3
    attempts = store.attempts(result.run_id, "bad")
    assert [a["status"] for a in attempts] == ["failed", "failed", "failed"]
    assert attempts[-1]["exit_code"] == 3
    assert "boom" in (result.run_dir / "stages" / "bad" / "attempt-3.log").read_text()


def test_retry_then_success(store, write_pipeline, ray_node, tmp_path):
    marker = tmp_path / "marker"
    path = write_pipeline(f"""\
        name: second-time
        stages:
          s:
            run: if [ -f {marker} ]; then echo ok; else touch {marker}; exit 1; fi
            retries: 1
        """)
    result = run_pipeline(store, path, ray_node)
    assert result.status == "succeeded"
    assert [a["status"] for a in store.attempts(result.run_id, "s")] == ["failed", "succeeded"]


def test_timeout_stops_the_stage(store, write_pipeline, ray_node):
    path = write_pipeline("""\
        name: slow
        stages:
          s:
            run: sleep 60
            timeout: 2s
        """)
    started = time.monotonic()
    result = run_pipeline(store, path, ray_node)
    assert result.status == "failed"
    assert time.monotonic() - started < 40
    assert store.attempts(result.run_id, "s")[-1]["error"] == "timed out"


def test_missing_declared_output_fails_the_stage(store, write_pipeline, ray_node):
    path = write_pipeline("""\
        name: forgetful
        stages:
          s:
            run: echo no file written
            outputs: [model]
        """)
    result = run_pipeline(store, path, ray_node)
    assert result.status == "failed"
    assert "model" in store.attempts(result.run_id, "s")[-1]["error"]


def test_resume_reuses_finished_stages_and_reruns_changed_ones(store, write_pipeline, ray_node, tmp_path_factory):
    count = tmp_path_factory.mktemp("side") / "count"  # outside the pipeline's folder: not the stages' code
    text = f"""\
        name: resumable
        stages:
          first:
            run: echo run >> {count}; echo v1 > $LHORCH_OUTPUT_DIR/x
            outputs: [x]
          second:
            needs: [first]
            run: exit {{code}}
        """
    path = write_pipeline(text.format(code=1))
    first = run_pipeline(store, path, ray_node)
    assert first.status == "failed"
    path = write_pipeline(text.format(code=0))
    second = run_pipeline(store, path, ray_node)
    assert second.run_id == first.run_id and second.resumed
    assert second.status == "succeeded"
    assert second.stages["first"] == "cached"
    assert count.read_text().count("run") == 1
    # A finished run is not resumed: the next `run` is a new run, which reuses `first` from the cache.
    third = run_pipeline(store, path, ray_node)
    assert third.run_id != first.run_id and third.stages["first"] == "cached"
    assert count.read_text().count("run") == 1


def test_only_if_changed_skips_an_unchanged_run(store, write_pipeline, ray_node, tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("1,2\n")
    path = write_pipeline("""\
        name: nightly
        stages:
          s:
            run: cat $LHORCH_INPUT_DATA
            inputs: {data: data.csv}
        """)
    assert run_pipeline(store, path, ray_node, only_if_changed=True).status == "succeeded"
    assert run_pipeline(store, path, ray_node, only_if_changed=True).status == "skipped"
    data.write_text("1,2\n3,4\n")
    assert run_pipeline(store, path, ray_node, only_if_changed=True).status == "succeeded"


def _lhorch(*args, env, **kw):
    return subprocess.Popen([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _ray_heads(home: Path) -> bool:
    # head.json for a kept head, head-PID.json for a run's own
    return any(_head_alive(info) for info in (home / "ray").glob("head*.json"))


def _head_alive(info: Path) -> bool:
    pid = json.loads(info.read_text())["guardian_pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(out) and not out.startswith("Z")


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_only_unfinished_stages(write_pipeline, home, tmp_path_factory):
    count = tmp_path_factory.mktemp("side") / "count"  # outside the pipeline's folder: not the stages' code
    path = write_pipeline(f"""\
        name: crashy
        stages:
          quick:
            run: echo run >> {count}; echo done > $LHORCH_OUTPUT_DIR/x
            outputs: [x]
          slow:
            needs: [quick]
            run: sleep ${{SLOW_SECONDS:-0}}; cat $LHORCH_INPUT_X > $LHORCH_OUTPUT_DIR/y
            outputs: [y]
        """)
    env = dict(os.environ, LHORCH_HOME=str(home), SLOW_SECONDS="120", LHORCH_LOCAL_CPUS="2")
    proc = _lhorch("run", str(path), env=env)
    store = Store(home)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        runs = store.list_runs()
        if runs and store.stage_states(runs[0]["id"]).get("slow") is not None:
            break
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the slow stage never started")
    run_id = store.list_runs()[0]["id"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    # The Ray node does not outlive lhorch, even after kill -9.
    deadline = time.monotonic() + 30
    while _ray_heads(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_heads(home)

    env["SLOW_SECONDS"] = "0"
    again = _lhorch("run", str(path), "--json", env=env)
    output, _ = again.communicate(timeout=180)
    assert again.returncode == 0, output
    result = json.loads(output.strip().splitlines()[-1])
    assert result["run_id"] == run_id and result["resumed"]
    assert result["stages"] == {"quick": "cached", "slow": "succeeded"}
    assert count.read_text().count("run") == 1
    statuses = [a["status"] for a in store.attempts(run_id, "slow")]
    assert statuses == ["stopped", "succeeded"]
    assert (home / "runs" / run_id / "stages" / "slow" / "outputs" / "y").read_text() == "done\n"
