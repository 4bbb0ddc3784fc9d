"""Issue 21: the catalogue buys the right machine, start-up is in every comparison, and reasons come
from the numbers of the table (`lhorch plan --explain STAGE`)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from click.testing import CliRunner

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.pipeline.loader import parse_pipeline
from lhorch.orchestrator.planning.planner import explain_stage, make_plan
from lhorch.providers.aws.catalogue import catalogue_date, catalogue_offers

PROFILES = Path(__file__).parent / "fixtures" / "profiles"
LAPTOP = PROFILES / "laptop_8gb_gpu.json"


def laptop() -> Profile:
    return Profile.model_validate_json(LAPTOP.read_text())


ONE_GPU_24 = """
name: ft
cloud: {provider: aws}
stages:
  ft: {run: "true", resources: {gpus: 1, gpu_memory_gb: 24, memory_gb: 32}, hints: {minutes_on: {a10g: 90}}}
"""

# A long cloud stage (24 GiB GPU) between short CPU stages.
AROUND = """
name: around
cloud: {provider: aws}
stages:
  prep: {run: "true", hints: {minutes: 3}}
  train: {run: "true", needs: [prep], resources: {gpus: 1, gpu_memory_gb: 24, memory_gb: 32},
          hints: {minutes_on: {a10g: 120}}}
  export: {run: "true", needs: [train], resources: {memory_gb: MEM}, hints: {minutes: 2}}
"""


def test_catalogue_has_current_families_in_the_sizes_users_pick():
    offers = catalogue_offers(spot=False)
    types = {o.instance_type for o in offers}
    for family in ("g4dn", "g5", "g6", "g6e", "c6i", "c7i", "m6i", "m7i", "r6i", "r7i", "c7a", "m7g", "r7g"):
        assert {f"{family}.xlarge", f"{family}.2xlarge", f"{family}.4xlarge"} <= types, family
    assert {"p4d.24xlarge", "p5.48xlarge", "g5.12xlarge"} <= types
    assert {o.arch for o in offers if o.instance_type.startswith("c7g")} == {"arm64"}
    assert all(o.arch == "x86_64" for o in offers if o.gpus)  # GPU stages never land on arm64
    assert catalogue_date() and all(o.price_source == f"catalogue:{catalogue_date()}" for o in offers)


def test_the_one_gpu_24_gib_stage_gets_a_one_gpu_type():
    for policy in ("balanced", "cheapest", "local-first"):
        plan = make_plan(parse_pipeline(ONE_GPU_24), laptop(), policy=policy)
        ft = plan.placements["ft"]
        assert ft.offer.gpus == 1 and ft.offer.gpu_memory_gb >= 24 and ft.offer.memory_gb * 0.9 >= 32, policy
    # `fastest` with no cap may buy a p5 for its H100, a faster GPU sold only in eights; under a cap
    # it takes the fastest one-GPU type.
    capped = parse_pipeline(ONE_GPU_24.replace("cloud:", "budget: {max_usd: 5}\ncloud:"))
    assert make_plan(capped, laptop(), policy="fastest").placements["ft"].offer.gpus == 1


def test_more_gpus_than_asked_never_count_as_speed():
    plan = make_plan(parse_pipeline(ONE_GPU_24), laptop(), policy="cheapest")
    alts = explain_stage(parse_pipeline(ONE_GPU_24), laptop(), plan, "ft", policy="cheapest")
    times = {a.target: a.est_seconds for a, _ in alts if a.est_seconds}
    assert times["g5.12xlarge on-demand"] == times["g5.4xlarge on-demand"]  # four A10Gs, one used
    assert times["g6e.48xlarge on-demand"] == times["g6e.4xlarge on-demand"]


def test_short_stages_around_a_long_cloud_stage_stay_local_or_share_its_cluster_and_say_which():
    # export fits at home: it stays local, and the reason names the shared cluster it turned down.
    plan = make_plan(parse_pipeline(AROUND.replace("MEM", "4")), laptop())
    assert plan.placements["train"].target == "cloud" and len(plan.cloud_groups()) == 1
    for name in ("prep", "export"):
        p = plan.placements[name]
        assert p.target == "local"
        assert "sharing the cluster of train" in p.reason and p.deciding_factor in ("cost", "time")
    # export needs more RAM than is free at home: it rides train's cluster rather than start its own.
    plan = make_plan(parse_pipeline(AROUND.replace("MEM", "28")), laptop())
    train, export = plan.placements["train"], plan.placements["export"]
    assert export.target == "cloud" and export.group == train.group and len(plan.cloud_groups()) == 1
    assert "shares its cluster with 1 other stage" in export.reason
    assert export.deciding_factor == "fit"


def test_a_reason_never_contradicts_the_table():
    # The contradiction: "as fast as any cloud option" beside a faster cloud option.
    plan = make_plan(parse_pipeline(AROUND.replace("MEM", "4")), laptop(), policy="local-first")
    for p in plan.placements.values():
        assert "as fast as any cloud option" not in p.reason
        for alt in p.alternatives:
            if alt.plan_seconds is not None and alt.plan_seconds < plan.est_total_seconds - 1:
                assert "sooner" in alt.lost_because or "saves" in alt.lost_because


def test_plan_explain_lists_every_alternative_and_why_it_lost(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(AROUND.replace("MEM", "4")))
    args = ["plan", str(path), "--profile-file", str(LAPTOP), "--explain", "train"]
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["placement"]["deciding_factor"] == "fit"
    alts = data["alternatives"]
    assert alts[0]["target"] == "local" or alts[-1]["factor"] == "fit"
    assert any(a["target"] == "local" and "does not fit" in a["lost_because"] for a in alts)
    fitting = [a for a in alts if a["factor"] != "fit"]
    assert len(fitting) > 20 and all(a["plan_cost_usd"] is not None and a["lost_because"] for a in fitting)
    costs = [a["plan_cost_usd"] + 2.0 / 3600 * a["plan_seconds"] for a in fitting]
    assert costs[0] <= costs[-1]  # best first

    table = CliRunner().invoke(main, args, env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "alternatives for train" in table.output and "why it lost" in table.output
    bad = CliRunner().invoke(main, ["plan", str(path), "--profile-file", str(LAPTOP), "--explain", "nope"])
    assert bad.exit_code != 0 and "no stage 'nope'" in bad.output
