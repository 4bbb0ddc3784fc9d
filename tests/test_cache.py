"""The stage cache across runs (issue 20): only what changed runs, finished runs are never modified,
and deleting an old run does not break a newer one."""

from __future__ import annotations

import hashlib
import shutil
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_remote import _pipeline as remote_pipeline
from test_remote import _runner as remote_runner
from test_remote import bucket  # noqa: F401  (fixture)

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.execution.stage_cache import StageCache
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.state import cache as db
from lhorch.providers.ray_cluster import RayClusterProvider

# prepare → train → report, each a `run:` stage; train runs the script train.sh from the folder. Each
# appends to a log outside the folder, so the test can tell what really ran. By default every file
# of the folder is every `run:` stage's code (lhorch cannot tell which a command reads); prepare
# says train.sh is not its own.
PIPELINE = """\
    name: cached
    stages:
      prepare:
        run: echo "prepare" >> {log}; cat $LHORCH_INPUT_RAW > $LHORCH_OUTPUT_DIR/data; mkdir -p $LHORCH_OUTPUT_DIR/dir/empty; echo x > $LHORCH_OUTPUT_DIR/dir/x
        inputs: {{raw: raw.csv}}
        outputs: [data, dir]
        cache: {{exclude: [train.sh]}}   # its command is inline: train.sh is not its code
      train:
        needs: [prepare]
        run: echo "train" >> {log}; sh train.sh
        env: {{LR: "{lr}"}}
        outputs: [model]
      report:
        needs: [train]
        run: echo "report" >> {log}; cat $LHORCH_INPUT_MODEL > $LHORCH_OUTPUT_DIR/summary
        outputs: [summary]
    """
SCRIPT = 'cat $LHORCH_INPUT_DATA > $LHORCH_OUTPUT_DIR/model; echo "lr=$LR v1" >> $LHORCH_OUTPUT_DIR/model\n'


@pytest.fixture
def project(tmp_path_factory, ray_node, store):
    folder = tmp_path_factory.mktemp("project")
    log = tmp_path_factory.mktemp("log") / "ran"
    (folder / "raw.csv").write_text("1,2\n")
    (folder / "train.sh").write_text(SCRIPT)

    class Project:
        path = folder / "pipeline.yaml"

        def write(self, lr: str = "0.1", text: str = PIPELINE) -> Path:
            self.path.write_text(textwrap.dedent(text).format(log=log, lr=lr))
            return self.path

        def run(self, **options):
            log.write_text("")
            runner = Runner(store, load_pipeline(self.path), self.path, providers={"local": ray_node},
                            options=RunOptions(**options))
            result = runner.run()
            assert result.ok, result.message
            return result, log.read_text().split()

    project = Project()
    project.folder = folder
    project.write()
    return project


def _tree(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and "outputs" in p.parts}


def test_nothing_changed_runs_no_stage_and_keeps_the_first_run_intact(project, store):
    first, ran = project.run()
    assert ran == ["prepare", "train", "report"]
    before = _tree(first.run_dir)
    second, ran = project.run()
    assert second.run_id != first.run_id
    assert ran == [] and set(second.stages.values()) == {"cached"}
    assert store.attempts(second.run_id, "train")[-1]["error"] == f"from run {first.run_id}"
    assert (second.run_dir / "stages" / "report" / "outputs" / "summary").read_text() == "1,2\nlr=0.1 v1\n"
    assert (second.run_dir / "stages" / "prepare" / "outputs" / "dir" / "empty").is_dir()
    assert _tree(first.run_dir) == before
    # Naming the finished run with --resume starts a new run too: a finished run is never modified.
    third, ran = project.run(resume=first.run_id)
    assert third.run_id not in (first.run_id, second.run_id) and ran == []
    assert _tree(first.run_dir) == before
    # The same digests downstream as a fresh run's: the cached outputs are recorded as the run's own.
    assert {(r["stage"], r["name"], r["sha256"]) for r in store.artifacts(second.run_id)} == \
           {(r["stage"], r["name"], r["sha256"]) for r in store.artifacts(first.run_id)}


def test_a_changed_parameter_runs_only_that_stage_and_its_dependants(project, store):
    first, _ = project.run()
    before = _tree(first.run_dir)
    project.write(lr="0.2")
    second, ran = project.run()
    assert ran == ["train", "report"]
    assert second.stages == {"prepare": "cached", "train": "succeeded", "report": "succeeded"}
    assert (second.run_dir / "stages" / "report" / "outputs" / "summary").read_text() == "1,2\nlr=0.2 v1\n"
    assert _tree(first.run_dir) == before  # a finished run is never modified by a later one
    # Back to the first value: every stage is found again.
    project.write(lr="0.1")
    assert project.run()[1] == []


def test_an_edited_script_runs_its_stage_and_dependants(project):
    project.run()
    (project.folder / "train.sh").write_text(SCRIPT.replace("v1", "v2"))
    result, ran = project.run()
    assert ran == ["train", "report"]
    assert "v2" in (result.run_dir / "stages" / "report" / "outputs" / "summary").read_text()
    # A file the stages do not read is still code by default; excluded, it changes nothing.
    (project.folder / "notes.txt").write_text("hello")
    assert project.run()[1] == ["prepare", "train", "report"]
    project.write(text=PIPELINE.replace("        outputs: [model]\n",
                                        "        outputs: [model]\n        cache: {{exclude: [notes.txt]}}\n"))
    project.run()
    (project.folder / "notes.txt").write_text("changed")
    assert project.run()[1] == ["prepare", "report"]


def test_an_edited_input_file_runs_its_consumer(project):
    project.run()
    (project.folder / "raw.csv").write_text("3,4\n")
    result, ran = project.run()
    assert ran == ["prepare", "train", "report"]
    assert (result.run_dir / "stages" / "report" / "outputs" / "summary").read_text().startswith("3,4")


def test_deleting_the_first_run_leaves_the_second_readable(project, store):
    first, _ = project.run()
    second, ran = project.run()
    assert ran == []
    shutil.rmtree(first.run_dir)
    summary = second.run_dir / "stages" / "report" / "outputs" / "summary"
    assert summary.read_text() == "1,2\nlr=0.1 v1\n"
    # Still reusable after the producing run is gone: the bytes live in the object store.
    third, ran = project.run()
    assert ran == [] and (third.run_dir / "stages" / "report" / "outputs" / "summary").exists()


def test_fresh_no_cache_and_cache_false(project):
    project.run()
    assert project.run(fresh=True)[1] == ["prepare", "train", "report"]
    # train runs again; report's inputs come out the same, so report is still found in the cache.
    assert project.run(no_cache=("train",))[1] == ["train"]
    project.write(text=PIPELINE.replace("        outputs: [summary]\n", "        outputs: [summary]\n        cache: false\n"))
    project.run()
    assert project.run()[1] == ["report"]


def test_only_if_changed_uses_the_cache_keys(project, store):
    assert project.run(only_if_changed=True)[1] == ["prepare", "train", "report"]
    result, ran = project.run(only_if_changed=True)
    assert result.status == "skipped" and ran == []
    (project.folder / "train.sh").write_text(SCRIPT.replace("v1", "v3"))
    result, ran = project.run(only_if_changed=True)
    assert result.status == "succeeded" and ran == ["train", "report"]


def test_cache_ls_and_prune(project, store):
    first, _ = project.run()
    cli = CliRunner()
    listed = cli.invoke(main, ["cache", "ls"], obj={})
    assert listed.exit_code == 0, listed.output
    assert "prepare" in listed.output and first.run_id in listed.output
    # Every entry is used by a kept run: nothing is pruned, however old.
    pruned = cli.invoke(main, ["cache", "prune", "--older-than", "0s"], obj={})
    assert pruned.exit_code == 0 and "Removed 0 entries" in pruned.output, pruned.output
    shutil.rmtree(first.run_dir)
    dry = cli.invoke(main, ["cache", "prune", "--max-size", "0", "--dry-run"], obj={})
    assert "Would remove 3 entries" in dry.output, dry.output
    assert len(db.entries(store)) == 3
    pruned = cli.invoke(main, ["cache", "prune", "--max-size", "0"], obj={})
    assert pruned.exit_code == 0 and "Removed 3 entries" in pruned.output, pruned.output
    assert db.entries(store) == [] and not any(StageCache(store).objects.glob("*/*"))
    assert project.run()[1] == ["prepare", "train", "report"]
    assert cli.invoke(main, ["cache", "prune"], obj={}).exit_code == 2


def test_code_files_follow_the_shipped_set_and_the_cache_globs(tmp_path):
    (tmp_path / "src").mkdir()
    for name in ("main.py", "src/model.py", "data.csv", "src/notes.md", ".git/HEAD", "__pycache__/x.pyc"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / "pipeline.yaml").write_text(textwrap.dedent("""\
        name: globs
        stages:
          a: {run: python main.py, inputs: {d: data.csv}}
          b: {run: python main.py, cache: {include: ["**/*.py"], exclude: [src]}}
          c: {uses: jobs.evaluate}
        """))
    pipeline = load_pipeline(tmp_path / "pipeline.yaml")
    skip = [tmp_path / "pipeline.yaml"]
    assert [r for r, _ in art.code_files(pipeline, "a", tmp_path, skip)] == ["main.py", "src/model.py", "src/notes.md"]
    assert [r for r, _ in art.code_files(pipeline, "b", tmp_path, skip)] == ["main.py"]
    assert art.code_digest(pipeline, "c", tmp_path).startswith("lhorch ")
    assert "/data.csv" in art.shipped_excludes(pipeline, tmp_path)


def test_a_cloud_stage_is_reused_without_its_cluster_or_s3(store, write_pipeline, ray_node, remote_cluster, bucket,
                                                            monkeypatch):
    # The remote stage's outputs come back into the run folder when it succeeds, so the cache keeps
    # them like a local stage's: a later run neither starts a cluster nor downloads from S3.
    monkeypatch.setenv("TEST_RAY_TOKEN", remote_cluster.token.get_secret_value())
    path = remote_pipeline(write_pipeline, remote_cluster.address)
    provider = RayClusterProvider.from_config(load_pipeline(path).cloud)
    first = remote_runner(store, path, ray_node, provider).run()
    assert first.status == "succeeded", first.message
    second = remote_runner(store, path, ray_node, provider).run()
    assert second.stages == {"make": "cached", "double": "cached", "report": "cached"}
    assert (second.run_dir / "stages" / "double" / "outputs" / "n2").read_text() == "42\n"
    assert not [e for e in store.events(second.run_id) if e["kind"] in ("transfer", "cluster")]
