"""Issue 15, on this machine: what lhorch keeps is private, and a stage's secrets reach it without
being written anywhere (a real run on the local Ray node)."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import pytest

from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.execution.staging import secret_values
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.state.store import Store
from lhorch.providers.local import LocalProvider

SECRET = "s3cr3t-Value-7f1c2b9e"


def _private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def _run(store, path, ray_node):
    pipeline = load_pipeline(path)
    return Runner(store, pipeline, path, providers={"local": ray_node}, options=RunOptions()).run()


def test_store_home_and_database_are_private(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    store = Store(home)
    store.event("r", "test", "hello")
    assert _private(home) and _private(home / "state.db")
    for sidecar in ("state.db-wal", "state.db-shm"):
        if (home / sidecar).exists():
            assert _private(home / sidecar), sidecar
    assert _private(store.runs_dir("r1"))
    store.close()


def test_install_id_is_random_private_and_stable(tmp_path):
    a, b = Store(tmp_path / "a"), Store(tmp_path / "b")
    assert a.install_id == a.install_id != b.install_id
    assert len(a.install_id) == 16 and _private(tmp_path / "a" / "install-id")
    a.close()
    b.close()


def test_local_ray_temp_dir_is_private_and_not_predictable_for_others(tmp_path):
    temp = LocalProvider(tmp_path / "home").temp_dir
    # Ray makes the temp dir itself world-writable; the folder around it is this user's only.
    assert _private(temp.parent) and temp.parent.stat().st_uid == os.getuid()
    assert str(os.getuid()) in temp.parent.name


@pytest.mark.ray
def test_secret_reaches_the_stage_and_is_written_nowhere(store, home, write_pipeline, ray_node, monkeypatch):
    monkeypatch.setenv("TRACKER_TOKEN", SECRET)
    monkeypatch.setenv("REGISTRY_TOKEN", SECRET + "-registry")
    digest = hashlib.sha256(SECRET.encode()).hexdigest()  # the pipeline file must not hold the value itself
    path = write_pipeline(f"""\
        name: secretive
        secrets: [REGISTRY_TOKEN]
        stages:
          use:
            secrets: [TRACKER_TOKEN]
            run: |
              echo "token is $TRACKER_TOKEN"; echo "registry $REGISTRY_TOKEN" >&2
              test "$(printf %s "$TRACKER_TOKEN" | sha256sum | cut -d' ' -f1)" = {digest} \\
                && echo ok-value > $LHORCH_OUTPUT_DIR/seen
            outputs: [seen]
        """)
    result = _run(store, path, ray_node)
    assert result.status == "succeeded", result.message
    run_dir = result.run_dir
    assert (run_dir / "stages" / "use" / "outputs" / "seen").read_text() == "ok-value\n"
    log = (run_dir / "stages" / "use" / "attempt-1.log").read_text()
    assert "token is ***" in log and "registry ***" in log and SECRET not in log
    store.close()
    leaks = [p for p in home.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaks == []
    # Nor in Ray's own logs (its runtime-env agent logs every job's environment; since issue 18 a plain
    # local stage starts no Ray, so there may be none), nor left in a temp file.
    ray_files = [p for p in ray_node.temp_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert not [p for p in ray_files if SECRET.encode() in p.read_bytes()]
    assert not list(Path(tempfile.gettempdir()).glob("lhorch-secrets-*"))
    # After a run: the home, the database and the run folder are this user's only.
    assert _private(home) and _private(home / "state.db") and _private(run_dir)
    assert _private(home / "runs") and _private(run_dir / "stages" / "use" / "attempt-1.log")


def test_a_missing_secret_is_a_usage_error(monkeypatch):
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    pipeline = Pipeline.model_validate({"name": "p", "stages": {"a": {"run": "true", "secrets": ["NOPE_TOKEN"]}}})
    with pytest.raises(UsageError, match="NOPE_TOKEN"):
        secret_values(pipeline, "a")
