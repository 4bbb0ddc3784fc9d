"""Placement decisions on clear cases, through the public planner and `lhorch plan`."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lhorch.orchestrator.core.errors import BudgetError, InfeasibleError
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.pipeline.loader import parse_pipeline
from lhorch.orchestrator.planning.planner import make_plan, require_feasible
from lhorch.policies import POLICIES, Policy, get_policy
from lhorch.providers.aws.catalogue import catalogue_offers, merge_live_prices

PROFILES = Path(__file__).parent / "fixtures" / "profiles"


def profile(name: str) -> Profile:
    return Profile.model_validate_json((PROFILES / f"{name}.json").read_text())


def pipeline(text: str):
    return parse_pipeline(textwrap.dedent(text))


def test_catalogue_needs_no_credentials_and_merges_live_prices():
    offers = catalogue_offers()
    types = {o.instance_type for o in offers}
    assert {"c6i.xlarge", "g4dn.xlarge", "g5.xlarge", "p4d.24xlarge"} <= types
    assert {o.market for o in offers} == {"on-demand", "spot"}
    assert all(o.price_per_hour > 0 for o in offers)
    assert not any(o.market == "spot" for o in catalogue_offers(spot=False))
    live = merge_live_prices(offers, {("g5.xlarge", "spot"): 0.31}, source="live:test")
    g5 = next(o for o in live if o.instance_type == "g5.xlarge" and o.market == "spot")
    assert (g5.price_per_hour, g5.price_source) == (0.31, "live:test")


def test_stage_that_does_not_fit_locally_goes_to_the_cloud():
    p = pipeline("""
        name: big
        cloud: {provider: aws}
        stages:
          prep: {run: "true", hints: {minutes: 2}}
          join: {run: "true", needs: [prep], resources: {cpus: 2, memory_gb: 48}, hints: {minutes: 10}}
    """)
    plan = make_plan(p, profile("cpu_4core"))
    assert plan.feasible
    assert plan.placements["prep"].target == "local"
    join = plan.placements["join"]
    assert join.target == "cloud" and join.offer.memory_gb >= 48
    assert "48 GiB RAM" in join.reason


def test_without_cloud_everything_is_local_and_misfits_are_reported():
    p = pipeline("""
        name: nocloud
        stages:
          prep: {run: "true", hints: {minutes: 2}}
          train: {run: "true", needs: [prep], resources: {gpus: 1}}
    """)
    plan = make_plan(p, profile("cpu_4core"))
    assert all(pl.target == "local" for pl in plan.placements.values())
    assert not plan.feasible and plan.problem_kind == "fit"
    assert any("train" in msg and "GPU" in msg for msg in plan.problems)
    with pytest.raises(InfeasibleError):
        require_feasible(plan)


def test_tight_budget_chooses_spot_or_local():
    p = pipeline("""
        name: tight
        budget: {max_usd: 0.40}
        cloud: {provider: aws}
        stages:
          prep: {run: "true", hints: {minutes: 5}}
          train: {run: "true", needs: [prep], resources: {gpus: 1, memory_gb: 8}, hints: {minutes_on: {t4: 60}}}
    """)
    for policy in ("balanced", "fastest", "cheapest"):
        plan = make_plan(p, profile("cpu_4core"), policy=policy)
        assert plan.feasible and plan.est_total_cost_usd <= 0.40
        assert plan.placements["train"].market == "spot"
        assert plan.placements["prep"].market in ("spot", "local")


def test_tight_deadline_chooses_a_gpu_instance():
    text = """
        name: rush
        cloud: {provider: aws}
        policy: cheapest
        stages:
          train: {run: "true", resources: {gpus: 1, memory_gb: 8}, hints: {minutes: 60}}
    """
    mac = profile("mac_mps")
    relaxed = make_plan(pipeline(text), mac)
    assert relaxed.placements["train"].target == "local"  # cheapest: the laptop's own GPU is free
    rushed = make_plan(pipeline(textwrap.dedent(text) + "deadline: 30m\n"), mac)
    train = rushed.placements["train"]
    assert rushed.feasible and rushed.est_total_seconds <= 1800
    assert train.target == "cloud" and train.offer.gpus >= 1


def test_consecutive_cloud_stages_share_one_cluster():
    p = pipeline("""
        name: chain
        cloud: {provider: aws}
        stages:
          a: {run: "true", resources: {gpus: 1, memory_gb: 8}, hints: {minutes_on: {t4: 20}, output_gb: 2}}
          b: {run: "true", needs: [a], resources: {gpus: 1, memory_gb: 8}, hints: {minutes_on: {t4: 20}, output_gb: 2}}
          c: {run: "true", needs: [b], resources: {gpus: 1, memory_gb: 8}, hints: {minutes_on: {t4: 5}}}
    """)
    plan = make_plan(p, profile("cpu_4core"))
    groups = plan.cloud_groups()
    assert len(groups) == 1 and sorted(next(iter(groups.values()))) == ["a", "b", "c"]
    assert len({plan.placements[s].instance_type for s in "abc"}) == 1


def test_a_plan_never_exceeds_the_cap_it_is_refused_instead():
    p = pipeline("""
        name: broke
        budget: {max_usd: 0.05}
        cloud: {provider: aws}
        stages:
          train: {run: "true", resources: {gpus: 4, memory_gb: 64}, hints: {minutes_on: {t4: 600}}}
    """)
    for policy in ("local-first", "cheapest", "fastest", "balanced"):
        plan = make_plan(p, profile("cpu_4core"), policy=policy)
        assert not plan.feasible and plan.problem_kind == "budget"
        assert "cap" in plan.problems[0]
        with pytest.raises(BudgetError):
            require_feasible(plan)


def test_every_policy_name_has_an_implementation():
    assert set(POLICIES) == set(PolicyName)
    for name in PolicyName:
        policy = get_policy(name.value)
        assert isinstance(policy, Policy) and policy.name == name.value
    with pytest.raises(ValueError, match="choose one of local-first, cheapest, fastest, balanced"):
        get_policy("quickest")


def test_pinned_placements_are_honoured():
    p = pipeline("""
        name: pins
        cloud: {provider: aws}
        policy: fastest
        stages:
          here: {run: "true", placement: local, resources: {cpus: 4}, hints: {minutes: 240}}
          there: {run: "true", needs: [here], placement: cloud, hints: {minutes: 1}}
    """)
    plan = make_plan(p, profile("cpu_4core"))
    assert plan.placements["here"].target == "local"
    assert plan.placements["there"].target == "cloud"
    assert "pinned" in plan.placements["here"].reason


def test_history_beats_hints():
    p = pipeline("""
        name: hist
        stages:
          s: {run: "true", hints: {minutes: 60}}
    """)
    plan = make_plan(p, profile("cpu_4core"), observations={"s": {"local": [120.0, 100.0, 110.0]}})
    assert plan.placements["s"].est_seconds == pytest.approx(110.0)
    assert "history" in plan.placements["s"].reason


def test_planning_200_stages_is_fast():
    lines = ["name: wide", "cloud: {provider: aws}", "stages:"]
    for i in range(200):
        needs = f", needs: [s{i - 1}]" if i % 10 else ""
        res = "{gpus: 1, memory_gb: 8}" if i % 3 == 0 else "{cpus: 2}"
        lines.append(f"  s{i}: {{run: \"true\", resources: {res}, hints: {{minutes: {1 + i % 7}}}{needs}}}")
    p = parse_pipeline("\n".join(lines))
    t0 = time.perf_counter()
    plan = make_plan(p, profile("laptop_8gb_gpu"))
    assert time.perf_counter() - t0 < 3.0  # bench/policy.py times 1,000 stages
    assert len(plan.placements) == 200


# --- lhorch plan --------------------------------------------------------------------------------

def _cli():
    from lhorch.orchestrator.cli import main

    return main


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_cli_plan_json(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    # A plan that puts a stage on AWS now needs credentials and a region (issue 17); none is called.
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    path = _write(tmp_path, """
        name: cli
        cloud: {provider: aws}
        stages:
          prep: {run: "true", hints: {minutes: 2}}
          join: {run: "true", needs: [prep], resources: {memory_gb: 48}, hints: {minutes: 10}}
    """)
    result = CliRunner().invoke(_cli(), ["plan", str(path), "--json",
                                         "--profile-file", str(PROFILES / "cpu_4core.json")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["feasible"] and data["policy"] == "balanced"
    assert data["placements"]["join"]["target"] == "cloud"
    table = CliRunner().invoke(_cli(), ["plan", str(path), "--policy", "cheapest",
                                        "--profile-file", str(PROFILES / "cpu_4core.json")])
    assert table.exit_code == 0, table.output
    assert "join" in table.output and "total" in table.output


@pytest.mark.parametrize("text, code", [
    ("name: nofit\nstages:\n  t: {run: 'true', resources: {gpus: 1}}\n", 4),
    ("name: poor\nbudget: {max_usd: 0.01}\ncloud: {provider: aws}\n"
     "stages:\n  t: {run: 'true', resources: {gpus: 1}, hints: {minutes_on: {t4: 300}}}\n", 3),
])
def test_cli_plan_refusals_exit_with_documented_codes(tmp_path, monkeypatch, text, code):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    path = _write(tmp_path, text)
    result = CliRunner().invoke(_cli(), ["plan", str(path), "--profile-file", str(PROFILES / "cpu_4core.json")])
    assert result.exit_code == code, result.output
