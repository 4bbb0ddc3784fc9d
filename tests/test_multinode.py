"""Stages that span several nodes (issue 14), everything that can be shown on one laptop: the pipeline
file's `resources.nodes` and its validation, what the runner asks a provider for, planning N nodes,
the environment a multi-node `run:` stage gets, and jobs.finetune's data parallelism on Ray Train with
two CPU workers (gloo) matching one worker. Two real nodes are the cloud box's business
(tests/test_cloudbox.py)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from lhorch.jobs import finetune, preprocess, pretrain
from lhorch.jobs.context import StageContext
from lhorch.jobs.data import load_dataset
from lhorch.jobs.device import stage_resources
from lhorch.jobs.models import load_model
from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import SpecError
from lhorch.orchestrator.core.nodes import cluster_startup_seconds, data_parallel_speedup, learnt_efficiency
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.execution.cluster_pool import ClusterPool
from lhorch.orchestrator.execution.launch import StageLauncher
from lhorch.orchestrator.execution.progress import QuietReporter
from lhorch.orchestrator.execution.stage_wrapper import head_address
from lhorch.orchestrator.pipeline.loader import parse_pipeline
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.orchestrator.state.store import Store

PROFILES = Path(__file__).parent / "fixtures" / "profiles"


def pipeline_text(stage: str, cloud: str = "{provider: aws, region: us-east-1}") -> str:
    return f"name: wide\ncloud: {cloud}\nstages:\n" + textwrap.indent(textwrap.dedent(stage), "  ")


# --- the pipeline file ---------------------------------------------------------------------------------------
def test_nodes_default_to_one_and_the_rest_is_per_node():
    p = parse_pipeline(pipeline_text("""\
        train:
          uses: jobs.finetune
          with: {num_workers: 4}
          resources: {nodes: 2, cpus: 4, gpus: 0}
        one:
          run: echo hi
    """))
    assert p.stages["train"].resources.nodes == 2 and p.stages["one"].resources.nodes == 1


@pytest.mark.parametrize("stage, cloud, field, words", [
    ("t:\n  run: echo\n  resources: {nodes: 5}\n", "{provider: aws, region: us-east-1, max_instances: 4}",
     "stages.t.resources.nodes", "more than cloud.max_instances (4)"),
    ("t:\n  run: echo\n  resources: {nodes: 2}\n  placement: local\n", "{provider: aws, region: us-east-1}",
     "stages.t.resources.nodes", "pinned to this machine"),
    ("t:\n  run: echo\n  resources: {nodes: 2}\n", "{provider: none}",
     "stages.t.resources.nodes", "no cloud is configured"),
    ("t:\n  uses: jobs.finetune\n  with: {num_workers: 3}\n  resources: {nodes: 2, cpus: 4}\n",
     "{provider: aws, region: us-east-1}", "stages.t.with.num_workers", "do not split evenly over 2 nodes"),
    ("t:\n  uses: jobs.finetune\n  resources: {nodes: 2}\n",
     "{provider: aws, region: us-east-1}", "stages.t.with.num_workers", "a node would have none"),
    ("t:\n  uses: jobs.finetune\n  with: {num_workers: 8}\n  resources: {nodes: 2, cpus: 2}\n",
     "{provider: aws, region: us-east-1}", "stages.t.with.num_workers", "4 workers per node need a CPU each"),
    ("t:\n  uses: jobs.evaluate\n  resources: {nodes: 2}\n",
     "{provider: aws, region: us-east-1}", "stages.t.resources.nodes", "runs in one process on one node"),
    ("t:\n  run: echo\n  resources: {nodes: 0}\n", "{provider: aws, region: us-east-1}",
     "stages.t.resources.nodes", "greater than or equal to 1"),
])
def test_a_multi_node_stage_that_cannot_work_is_refused_naming_the_field(stage, cloud, field, words):
    with pytest.raises(SpecError) as info:
        parse_pipeline(pipeline_text(stage, cloud), file="wide.yaml")
    assert info.value.field == field and words in str(info.value)
    assert info.value.line is not None and info.value.exit_code == 2


def test_validate_exits_2_for_too_many_nodes(tmp_path):
    f = tmp_path / "wide.yaml"
    f.write_text(pipeline_text("t:\n  run: echo\n  resources: {nodes: 3}\n",
                               "{provider: aws, region: us-east-1, max_instances: 2}"))
    res = CliRunner().invoke(main, ["validate", str(f)])
    assert res.exit_code == 2 and "resources.nodes" in res.output and "max_instances" in res.output


def test_schema_describes_nodes():
    res = CliRunner().invoke(main, ["schema"])
    nodes = json.loads(res.output)["$defs"]["Resources"]["properties"]["nodes"]
    assert nodes["default"] == 1 and nodes["minimum"] == 1 and "per node" in nodes["description"]


# --- what the runner asks for and what a stage is told --------------------------------------------------------
def _profile() -> Profile:
    return Profile.model_validate_json((PROFILES / "cpu_4core.json").read_text())


def _offer(price: float = 0.4) -> Offer:
    return Offer(provider="aws", instance_type="c5.2xlarge", market="on-demand", vcpus=8, memory_gb=16,
                 gflops_fp32=400, price_per_hour=price, startup_seconds=120)


WIDE = """\
prep:
  run: echo prep
  resources: {cpus: 1}
  placement: local
train:
  run: python train.py
  needs: [prep]
  resources: {nodes: 2, cpus: 4}
  placement: cloud
  hints: {minutes: 60}
"""


class RecordingProvider:
    """A provider that starts nothing: it keeps what it was asked for."""

    name = "aws"

    def __init__(self) -> None:
        self.requests: list[ClusterRequest] = []

    def acquire(self, request: ClusterRequest) -> Cluster:
        self.requests.append(request)
        return Cluster(provider="aws", name=request.group, run_id=request.run_id, address="http://127.0.0.1:1",
                       remote=True, instance_ids=[f"i-{k}" for k in range(request.nodes)])

    def release(self, cluster: Cluster) -> None:
        pass


def test_the_runner_asks_the_provider_for_the_stage_s_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    pipeline = parse_pipeline(pipeline_text(WIDE))
    plan = make_plan(pipeline, _profile(), offers=[_offer()])
    aws = RecordingProvider()
    store = Store()
    try:
        pool = ClusterPool(store, "r1", {"local": object(), "aws": aws}, QuietReporter())  # type: ignore[dict-item]
        pool.plan_targets(pipeline, plan, ["prep", "train"], hard_stop_at=None)
        pool.acquire(pool.target_of("train"))
    finally:
        store.close()
    (request,) = aws.requests
    assert request.nodes == 2 and request.offer.instance_type == "c5.2xlarge"
    assert pool.target_of("prep").request.nodes == 1


def test_a_multi_node_run_stage_is_told_its_nodes_and_places_its_own_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    pipeline = parse_pipeline(pipeline_text(WIDE))
    store = Store()
    try:
        launcher = StageLauncher(store, pipeline, "r1", tmp_path / "run", tmp_path)
        near = Cluster(provider="local", name="local", address="local")  # shares this disk: nothing uploaded
        env = launcher.stage_env("train", {}, tmp_path / "out", near)
        one = launcher.stage_env("prep", {}, tmp_path / "out", near)
        # Its driver reserves no CPU, so that the ranks it starts through Ray can have them all.
        assert launcher.distributed("train") and not launcher.distributed("prep")
    finally:
        store.close()
    assert env["LHORCH_NODES"] == "2" and json.loads(env["LHORCH_RESOURCES"])["nodes"] == 2
    assert one["LHORCH_NODES"] == "1"


def test_a_stage_learns_its_nodes_and_the_head_from_its_environment():
    assert stage_resources({"LHORCH_RESOURCES": json.dumps({"nodes": 3, "cpus": 4, "gpus": 1})}).nodes == 3
    assert stage_resources({"LHORCH_RESOURCES": json.dumps({"cpus": 4})}).nodes == 1
    # Ray's Jobs API gives a driver the head's GCS address; anything else names no head.
    assert head_address({"RAY_ADDRESS": "10.0.3.7:6379"}) == "10.0.3.7"
    assert head_address({"RAY_ADDRESS": "[fd00::2]:6379"}) == "fd00::2"
    assert head_address({"RAY_ADDRESS": "auto"}) is None
    assert head_address({"RAY_ADDRESS": "http://127.0.0.1:8265"}) is None
    assert head_address({}) is None


# --- planning N nodes ------------------------------------------------------------------------------------------
def test_the_node_model():
    assert data_parallel_speedup(1) == 1.0
    assert data_parallel_speedup(2) == pytest.approx(1.8)  # 0.9 per doubling
    assert data_parallel_speedup(4) == pytest.approx(4 * 0.81)
    assert data_parallel_speedup(2, efficiency=1.0) == 2.0
    assert cluster_startup_seconds(120, 1) == 120
    assert 120 < cluster_startup_seconds(120, 2) < cluster_startup_seconds(120, 8) < 2 * 120
    # Learnt from a stage seen at 100 s on one node and 60 s on two: 100 / 60 / 2 = 0.833 per doubling.
    assert learnt_efficiency({1: [100.0], 2: [60.0]}) == pytest.approx(100 / 60 / 2)
    assert learnt_efficiency({2: [60.0]}) is None


def test_plan_prices_every_node_and_shows_them(tmp_path):
    one = parse_pipeline(pipeline_text(WIDE.replace("nodes: 2", "nodes: 1")))
    two = parse_pipeline(pipeline_text(WIDE))
    p1 = make_plan(one, _profile(), offers=[_offer()], policy="fastest").placements["train"]
    p2 = make_plan(two, _profile(), offers=[_offer()], policy="fastest").placements["train"]
    assert (p1.nodes, p2.nodes) == (1, 2)
    # Data parallel: 0.9 efficiency on two nodes, so 1/1.8 of the time, each second paid twice.
    assert p2.est_seconds == pytest.approx(p1.est_seconds / 1.8, rel=1e-6)
    per_node_hour = 0.4
    run_cost = per_node_hour / 3600 * p2.est_seconds * 2
    assert p2.est_cost_usd >= run_cost * 0.999
    assert p2.est_cost_usd == pytest.approx(2 * 0.4 / 3600 * (p2.est_seconds + cluster_startup_seconds(120, 2)),
                                            rel=0.02)
    f = tmp_path / "wide.yaml"
    f.write_text(pipeline_text(WIDE))
    env = {"LHORCH_HOME": str(tmp_path / "home"), "COLUMNS": "250", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    res = CliRunner().invoke(main, ["plan", str(f), "--profile-file", str(PROFILES / "cpu_4core.json"), "--json"],
                             env=env)
    train = json.loads(res.output)["placements"]["train"]
    assert res.exit_code == 0 and train["nodes"] == 2 and train["target"] == "cloud"
    res = CliRunner().invoke(main, ["plan", str(f), "--profile-file", str(PROFILES / "cpu_4core.json")], env=env)
    assert res.exit_code == 0
    assert f"2 x {train['instance_type']}" in res.output and "each" in res.output


def test_a_policy_weighs_the_speed_up_against_the_price_of_more_nodes():
    """Under `fastest` two nodes beat one on time; under `cheapest` one node is cheaper than two at
    90 % efficiency (the same work, paid 2 / 1.8 times)."""
    stage = """\
        train:
          run: python train.py
          resources: {nodes: %d, cpus: 4}
          placement: cloud
          hints: {minutes: 120}
    """
    plans = {n: make_plan(parse_pipeline(pipeline_text(stage % n)), _profile(), offers=[_offer()], policy="cheapest")
             for n in (1, 2)}
    assert plans[2].est_total_seconds < plans[1].est_total_seconds
    assert plans[2].est_total_cost_usd > plans[1].est_total_cost_usd
    assert plans[2].est_total_cost_usd == pytest.approx(plans[1].est_total_cost_usd * 2 / 1.8, rel=0.05)


def test_history_of_multi_node_runs_refines_the_efficiency(tmp_path):
    pipeline = parse_pipeline(pipeline_text(WIDE))
    offer = _offer()
    # Seen: 3600 s on one c5.2xlarge, 2000 s on two: efficiency 3600 / 2000 / 2 = 0.9 ... and 0.75 here.
    observations = {"train": {"c5.2xlarge": [3600.0], "c5.2xlarge*2": [2400.0]}}
    plan = make_plan(pipeline, _profile(), offers=[offer], observations=observations, policy="fastest")
    assert plan.placements["train"].est_seconds == pytest.approx(2400.0)
    # Four nodes were never seen: the learnt 0.75 per doubling applies, 3600 / (4 x 0.75^2).
    wide4 = parse_pipeline(pipeline_text(WIDE.replace("nodes: 2", "nodes: 4")))
    plan4 = make_plan(wide4, _profile(), offers=[offer], observations=observations, policy="fastest")
    assert plan4.placements["train"].est_seconds == pytest.approx(3600 / (4 * 0.75 ** 2))


def test_this_machine_is_never_planned_for_several_nodes():
    stage = "train:\n  run: echo\n  resources: {nodes: 2}\n"
    plan = make_plan(parse_pipeline(pipeline_text(stage)), _profile(), offers=[_offer()], policy="local-first")
    assert plan.placements["train"].target == "cloud"


# --- jobs.finetune with two workers on this machine ------------------------------------------------------------
@pytest.fixture(scope="module")
def small_chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    ctx = StageContext(output_dir=root / "pre")
    preprocess.run({"limit": 400, "seed": 2}, ctx)
    data = root / "pre" / "dataset"
    pretrain.run({"epochs": 2}, StageContext(output_dir=root / "pt", inputs={"dataset": data}))
    return {"dataset": data, "checkpoint": root / "pt" / "checkpoint"}


@pytest.mark.slow
@pytest.mark.ray
def test_two_ray_train_workers_train_what_one_worker_trains(small_chain, tmp_path, monkeypatch):
    """Two CPU workers (gloo, DDP) at batch_size 16 each take the same optimizer steps on the same
    samples as one worker at 32: the ranks deal one seeded permutation out round-robin and DDP averages
    their gradients, so the models differ only by float rounding (sums in another order)."""
    pytest.importorskip("ray")
    n_train = len(load_dataset(small_chain["dataset"]).split("train")[1])
    assert n_train % 2 == 0  # an odd sample would be left out by the two workers
    common = {"epochs": 3, "lr": 0.003, "seed": 5, "checkpoint_every": 1000}
    monkeypatch.setenv("LHORCH_RESOURCES", json.dumps({"nodes": 1, "cpus": 1, "gpus": 0}))
    one = finetune.run({**common, "batch_size": 32, "engine": "torch"},
                       StageContext(output_dir=tmp_path / "one", inputs=small_chain))
    monkeypatch.setenv("LHORCH_RESOURCES", json.dumps({"nodes": 1, "cpus": 2, "gpus": 0}))
    two = finetune.run({**common, "batch_size": 16, "num_workers": 2},
                       StageContext(output_dir=tmp_path / "two", inputs=small_chain))
    assert two["engine"] == "ray" and two["workers"] == 2 and two["nodes"] == 1
    assert one["steps"] == two["steps"]
    run = json.loads((tmp_path / "two" / "history" / "run.json").read_text())
    assert run["world"] == 2 and sorted(w["rank"] for w in run["workers"]) == [0, 1]
    a = load_model(tmp_path / "one" / "model")[0].state_dict()
    b = load_model(tmp_path / "two" / "model")[0].state_dict()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    scale = max(float(a[k].abs().max()) for k in a)
    hist_one = json.loads((tmp_path / "one" / "history" / "history.json").read_text())
    hist_two = json.loads((tmp_path / "two" / "history" / "history.json").read_text())
    print(f"max |w1 - w2| = {diff:.2e} (largest weight {scale:.2f}); val_acc one {one['val_acc']:.4f} "
          f"two {two['val_acc']:.4f}; train_loss {hist_one[-1]['train_loss']:.6f} vs {hist_two[-1]['train_loss']:.6f}")
    # Seen: 4.5e-08 after 24 steps (float32 sums in another order); the bound leaves room for other CPUs.
    assert diff < 1e-5
    assert one["val_acc"] == two["val_acc"]
    for h1, h2 in zip(hist_one, hist_two, strict=True):  # the history is over both workers' samples
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], abs=1e-4)
        assert h1["train_acc"] == h2["train_acc"] and h1["val_loss"] == pytest.approx(h2["val_loss"], abs=1e-5)
    assert not torch.equal(a["head.weight"], torch.zeros_like(a["head.weight"]))
