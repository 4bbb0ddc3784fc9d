"""The built-in ML jobs, run as a user would: their `run()` on small slices of digits, the command
line, resume after an interruption, and parameter errors reported against the pipeline file."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lhorch.jobs import compress, distill, evaluate, finetune, preprocess, pretrain, progress
from lhorch.jobs.cli import command
from lhorch.jobs.context import StageContext, from_env, to_env
from lhorch.jobs.data import load_dataset
from lhorch.jobs.index import JOBS
from lhorch.jobs.models import load_model
from lhorch.jobs.params import FinetuneParams
from lhorch.orchestrator.core.errors import SpecError
from lhorch.orchestrator.pipeline.loader import parse_pipeline


@pytest.fixture(autouse=True)
def one_cpu(monkeypatch):
    # What the runner sets for a stage; one thread keeps these tiny models fast on a shared machine.
    monkeypatch.setenv("LHORCH_RESOURCES", json.dumps({"cpus": 1, "gpus": 0, "memory_gb": 1}))


def ctx(out: Path, **inputs: Path) -> StageContext:
    return StageContext(output_dir=out, inputs=dict(inputs))


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """preprocess -> pretrain -> finetune (default engine: in-process) on 500 digits, shared by the tests below."""
    root = tmp_path_factory.mktemp("chain")
    pre = preprocess.run({"limit": 500, "augment": True, "seed": 1}, ctx(root / "pre"))
    data = root / "pre" / "dataset"
    pt = pretrain.run({"epochs": 4}, ctx(root / "pt", dataset=data))
    ft = finetune.run({"epochs": 4, "lr": 0.003, "freeze_backbone": True, "freeze_epochs": 1},
                      ctx(root / "ft", dataset=data, checkpoint=root / "pt" / "checkpoint"))
    return {"root": root, "data": data, "pre": pre, "pt": pt, "ft": ft}


def test_preprocess_writes_a_stratified_normalised_split(chain):
    ds = load_dataset(chain["data"])
    sizes = ds.meta["sizes"]
    # 500 samples: 20% test, 20% val, the rest train, doubled by one augmented copy.
    assert sizes["test"] == 100 and sizes["val"] == 100 and sizes["train"] == 600
    assert ds.meta["n_classes"] == 10 and ds.meta["image_shape"] == [8, 8]
    Xtr, ytr = ds.split("train")
    Xte, yte = ds.split("test")
    assert Xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert set(np.unique(yte)) == set(range(10))  # stratified: every class in test
    assert abs(float(Xtr[: len(Xtr) // 2].mean())) < 0.05  # normalised on the original training half
    assert len(ds.meta["sha256"]) == 64 and chain["pre"]["sha256"] == ds.meta["sha256"]


def test_preprocess_reads_csv_and_npz_and_cleans(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = np.repeat(["cat", "dog", "eel"], 20)
    lines = ["a,b,c,label"] + [f"{a},{b},{c},{lab}" for (a, b, c), lab in zip(X, y, strict=True)]
    lines += [lines[1], "1.0,,2.0,cat"]  # a duplicate and a row with a missing value
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    s = preprocess.run({"dataset": str(tmp_path / "d.csv")}, ctx(tmp_path / "csv"))
    assert s["cleaning"] == {"dropped_missing": 1, "dropped_duplicates": 1}
    assert s["n_classes"] == 3 and sum(s["sizes"].values()) == 60
    assert load_dataset(tmp_path / "csv" / "dataset").meta["class_names"] == ["cat", "dog", "eel"]

    np.savez(tmp_path / "d.npz", X=X.reshape(60, 3, 1), y=np.repeat([0, 1, 2], 20))
    s = preprocess.run({"dataset": str(tmp_path / "d.npz"), "seed": 3}, ctx(tmp_path / "npz"))
    assert s["n_features"] == 3 and s["n_classes"] == 3


def test_pretrain_and_finetune_outputs(chain):
    root = chain["root"]
    assert chain["pt"]["classes"] == [0, 1, 2, 3, 4]
    model, payload = load_model(root / "ft" / "model")
    assert payload["config"]["n_classes"] == 10 and payload["config"]["hidden"] == [128, 64]
    history = json.loads((root / "ft" / "history" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[0]["frozen"] and not history[1]["frozen"]
    assert chain["ft"]["val_acc"] > 0.6 and not chain["ft"]["stopped_early"]
    assert chain["ft"]["engine"] == "torch" and chain["ft"]["device"] == "cpu"  # auto, one worker, no GPU reserved
    assert list((root / "ft" / "checkpoints").glob("step-*.pt"))


def test_distill_compress_evaluate(chain, tmp_path):
    root, data = chain["root"], chain["data"]
    d = distill.run({"epochs": 8, "lr": 0.003}, ctx(tmp_path / "di", dataset=data, model=root / "ft" / "model"))
    assert d["student"]["parameters"] < d["teacher"]["parameters"] / 4
    assert d["student"]["bytes"] < d["teacher"]["bytes"]
    assert (tmp_path / "di" / "report" / "report.json").exists()

    c = compress.run({"sparsity": 0.5, "recover_epochs": 1, "latency_repeats": 3},
                     ctx(tmp_path / "co", dataset=data, model=tmp_path / "di" / "model"))
    assert c["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert c["after"]["bytes"] < c["before"]["bytes"] and c["after"]["latency_ms"] > 0
    assert c["accuracy_drop"] < 0.1
    # The recovery training's epochs, for `lhorch report`'s curves.
    assert len(json.loads((tmp_path / "co" / "report" / "report.json").read_text())["history"]) == 1

    for name, model in [("float", root / "ft" / "model"), ("int8", tmp_path / "co" / "model")]:
        out = tmp_path / f"ev-{name}"
        e = evaluate.run({}, ctx(out, dataset=data, model=model, history=root / "ft" / "history"))
        metrics = json.loads((out / "metrics" / "metrics.json").read_text())
        for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "confusion_matrix", "n_test"):
            assert key in metrics
        assert metrics["n_test"] == 100 and np.asarray(metrics["confusion_matrix"]).sum() == 100
        assert e["accuracy"] == metrics["accuracy"] > 0.5
        assert (out / "metrics" / "report.png").stat().st_size > 1000
    assert e["quantized"] == "dynamic_int8"


def test_interrupted_finetune_resumes_to_the_same_weights(chain, tmp_path):
    common = {"epochs": 3, "engine": "torch", "accumulate_steps": 2, "checkpoint_every": 4, "seed": 7,
              "freeze_backbone": True, "freeze_epochs": 1}
    inputs = {"dataset": chain["data"], "checkpoint": chain["root"] / "pt" / "checkpoint"}
    whole = finetune.run(common, ctx(tmp_path / "whole", **inputs))

    # Stop in the middle of epoch 2 (5 optimizer steps per epoch here), as an interruption would,
    # then run again in the same folder without the limit.
    first = finetune.run({**common, "max_steps": 7}, ctx(tmp_path / "cut", **inputs))
    assert first["stopped_early"] and first["steps"] == 7
    resumed = finetune.run(common, ctx(tmp_path / "cut", **inputs))
    assert resumed["steps"] == whole["steps"] and not resumed["stopped_early"]

    a = load_model(tmp_path / "whole" / "model")[0].state_dict()
    b = load_model(tmp_path / "cut" / "model")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    hist = [json.loads((tmp_path / d / "history" / "history.json").read_text()) for d in ("whole", "cut")]
    drop = {"seconds", "samples_per_s"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in hist[0]] == \
           [{k: v for k, v in h.items() if k not in drop} for h in hist[1]]

    # Different training parameters must not resume from these checkpoints.
    other = finetune.run({**common, "lr": 0.01}, ctx(tmp_path / "cut", **inputs))
    assert other["steps"] == whole["steps"]
    c = load_model(tmp_path / "cut" / "model")[0].state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


PIPELINE = """\
name: digits
stages:
  preprocess:
    uses: jobs.preprocess
  finetune:
    uses: jobs.finetune
    needs: [preprocess]
    with: {WITH}
"""


@pytest.mark.parametrize("with_, field, words", [
    ("{epochs: 0}", "stages.finetune.with.epochs", "greater than or equal to 1"),
    ("{epochz: 3}", "stages.finetune.with.epochz", "unknown field"),
    ("{precision: fp8}", "stages.finetune.with.precision", "'auto'"),
    ("{engine: torch, num_workers: 2}", "stages.finetune.with", "num_workers"),
])
def test_bad_parameters_are_named(with_, field, words):
    with pytest.raises(SpecError) as err:
        parse_pipeline(PIPELINE.replace("{WITH}", with_), file="p.yaml")
    assert err.value.field == field and words in str(err.value)
    assert err.value.line == 8


def test_every_job_is_registered_and_defaults_validate():
    assert set(JOBS) == {f"jobs.{n}" for n in ("preprocess", "pretrain", "finetune", "distill", "compress", "evaluate")}
    for job in JOBS.values():
        job.params.model_validate({})  # `uses: jobs.X` with no `with:` is valid
    assert JOBS["jobs.finetune"].distributed and not JOBS["jobs.distill"].distributed
    example = Path(__file__).parents[1] / "examples" / "digits" / "pipeline.yaml"
    assert list(parse_pipeline(example.read_text(), file=str(example)).stages)[-1] == "evaluate"


@pytest.mark.parametrize("with_, engine", [
    ({}, "torch"),  # the default, `auto`: one worker trains in the stage's own process
    ({"engine": "auto", "num_workers": 2}, "ray"),
    ({"engine": "ray"}, "ray"),  # asked for explicitly: Ray Train even for one worker
    ({"engine": "torch"}, "torch"),
])
def test_engine_auto_uses_ray_train_only_for_several_workers(with_, engine):
    assert FinetuneParams.model_validate(with_).resolved_engine == engine
    # The runner reserves the stage's CPUs for the job's own process unless Ray Train workers take them.
    assert JOBS["jobs.finetune"].runs_distributed(with_) == (engine == "ray")
    assert not JOBS["jobs.distill"].runs_distributed({})
    # A pipeline file may say so (the loader checks `with:` against the same model).
    text = PIPELINE.replace("{WITH}", json.dumps(with_))
    assert parse_pipeline(text, file="p.yaml").stages["finetune"].with_ == with_


def test_command_line_from_params(chain, tmp_path):
    cli = command(FinetuneParams, finetune.run, "jobs.finetune", "Fine-tune.")
    runner = CliRunner()
    help_text = runner.invoke(cli, ["--help"]).output
    for flag in ("--freeze-backbone / --no-freeze-backbone", "--accumulate-steps", "--input", "--output-dir"):
        assert flag in help_text
    bad = runner.invoke(cli, ["--epochs", "-1"])
    assert bad.exit_code == 2 and "epochs" in bad.output

    # Parameters and inputs from the environment, as the runner passes them; flags override.
    env = to_env(StageContext(output_dir=tmp_path / "env", params={"epochs": 5, "engine": "torch"},
                              inputs={"dataset": chain["data"], "checkpoint": chain["root"] / "pt" / "checkpoint"}))
    assert from_env(env).params["epochs"] == 5
    res = runner.invoke(cli, ["--epochs", "1"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs_done"] == 1  # stdout: the summary alone
    # stderr: one progress line per epoch, which lhorch shows as the stage's status (jobs/progress.py).
    lines = [progress.parse(line) for line in res.stderr.splitlines()]
    assert [(p.epoch, p.epochs, sorted(p.metrics)) for p in lines if p] == [(1, 1, ["train_loss", "val_acc"])]


def test_module_help_runs_without_torch_errors():
    out = subprocess.run(["python", "-m", "jobs.distill", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--temperature" in out.stdout


@pytest.mark.slow
@pytest.mark.ray
def test_finetune_on_ray_train(chain, tmp_path):
    ray = pytest.importorskip("ray")
    before = _raylets()
    inputs = {"dataset": chain["data"], "checkpoint": chain["root"] / "pt" / "checkpoint"}
    s = finetune.run({"epochs": 2, "engine": "ray"}, ctx(tmp_path / "ray", **inputs))
    assert not ray.is_initialized()  # the job started its own local Ray and stopped it
    assert s["epochs_done"] == 2 and s["train_samples_per_s"] > 0
    assert (tmp_path / "ray" / "model" / "model.pt").exists()
    assert (tmp_path / "ray" / "ray_train" / "finetune").is_dir()
    # One worker under Ray Train trains exactly what the in-process loop trains.
    local = finetune.run({"epochs": 2, "engine": "torch"}, ctx(tmp_path / "local", **inputs))
    a = load_model(tmp_path / "ray" / "model")[0].state_dict()
    b = load_model(tmp_path / "local" / "model")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and local["steps"] == s["steps"]
    # Only the raylet this job started must be gone; other tests' Ray nodes may be up.
    left = _raylets() - before
    for _ in range(50):  # raylet exits a moment after ray.shutdown() returns
        if not left:
            break
        time.sleep(0.2)
        left = _raylets() - before
    assert not left


def _raylets() -> set[str]:
    return set(subprocess.run(["pgrep", "-f", "raylet"], capture_output=True, text=True).stdout.split())
