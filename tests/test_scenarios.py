"""The planner agrees with an experienced engineer on every row of docs/policies.md "How lhorch decides".

The cases live in the docs, not here: this module parses the machines table and the scenarios table
and plans each row with the bundled catalogue, so the documented table and the planner cannot drift.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.profile import GpuInfo, Measurement, Profile
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.pipeline.loader import parse_pipeline
from lhorch.orchestrator.planning.planner import make_plan

DOC = Path(__file__).resolve().parents[1] / "docs" / "policies.md"


def _table(text: str, first_header: str) -> list[list[str]]:
    """Rows of the markdown table whose first header cell is ``first_header``."""
    lines = text.splitlines()
    start = next(k for k, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def machine_profiles(text: str) -> dict[str, Profile]:
    profiles = {}
    for name, cores, ram, gpu, cpu_gflops, gpu_gflops in _table(text, "machine"):
        physical, logical = (int(x) for x in cores.split("/"))
        total, free = (float(x) for x in ram.split("/"))
        measured = {"matmul_cpu_fp32": Measurement(value=_number(cpu_gflops), unit="GFLOP/s", method="docs table")}
        gpus: list[GpuInfo] = []
        mps = "MPS" in gpu
        if mps:
            gpus = [GpuInfo(name=gpu.split(" (")[0], backend="mps", memory_total_gb=total)]
            measured["matmul_mps_fp16"] = Measurement(value=_number(gpu_gflops), unit="GFLOP/s", method="docs table")
        elif gpu != "none":
            model, mem = gpu.rsplit(",", 1)
            size = float(mem.split()[0])
            gpus = [GpuInfo(name=model.strip(), memory_total_gb=size, memory_free_gb=size)]
            measured["matmul_cuda0_bf16"] = Measurement(value=_number(gpu_gflops), unit="GFLOP/s",
                                                        method="docs table")
        profiles[name] = Profile(hostname=name, physical_cores=physical, logical_cores=logical, ram_total_gb=total,
                                 ram_available_gb=free, disk_free_gb=200.0, gpus=gpus, mps=mps, measured=measured,
                                 fingerprint=name)
    return profiles


_STAGE = re.compile(r"(\w+)\(([^)]*)\)")
_KEYS = {"cpu": ("resources", "cpus"), "mem": ("resources", "memory_gb"), "gpu": ("resources", "gpus"),
         "vram": ("resources", "gpu_memory_gb"), "in": ("hints", "input_gb"), "out": ("hints", "output_gb")}


def _minutes(text: str) -> float:
    text = text.strip()
    if text.endswith("h"):
        return float(text[:-1]) * 60
    return float(text.rstrip("m"))


def scenario_pipeline(number: str, stages: str, cap: str, deadline: str, policy: str) -> Pipeline:
    names: list[str] = []
    lines = []
    for name, attrs in _STAGE.findall(stages):
        resources: dict[str, str] = {}
        hints: dict[str, str] = {}
        minutes_on: dict[str, float] = {}
        for attr in (a.strip() for a in attrs.split(",") if a.strip()):
            if "=" not in attr:
                hints["minutes"] = str(_minutes(attr))
                continue
            key, value = attr.split("=")
            if key in _KEYS:
                section, field = _KEYS[key]
                (resources if section == "resources" else hints)[field] = value
            else:
                minutes_on[key] = _minutes(value)
        spec = ['run: "true"']
        if names:
            spec.append(f"needs: [{names[-1]}]")
        if resources:
            spec.append("resources: {" + ", ".join(f"{k}: {v}" for k, v in resources.items()) + "}")
        if minutes_on:
            hints["minutes_on"] = "{" + ", ".join(f"{k}: {v}" for k, v in minutes_on.items()) + "}"
        if hints:
            spec.append("hints: {" + ", ".join(f"{k}: {v}" for k, v in hints.items()) + "}")
        lines.append(f"  {name}: {{{', '.join(spec)}}}")
        names.append(name)
    head = [f"name: scenario-{number}", "cloud: {provider: aws}"]
    if cap:
        head.append(f"budget: {{max_usd: {cap}}}")
    if deadline:
        head.append(f"deadline: {deadline}")
    if policy:
        head.append(f"policy: {{name: {policy}}}")
    return parse_pipeline("\n".join([*head, "stages:", *lines]) + "\n")


def check(plan: Plan, expected: str) -> list[str]:
    """What in ``plan`` disagrees with the expected column (empty: it agrees)."""
    if expected.startswith("refused:"):
        kind = expected.split(":", 1)[1]
        return [] if not plan.feasible and plan.problem_kind == kind else [
            f"expected refused ({kind}), got feasible={plan.feasible} kind={plan.problem_kind}"]
    wrong = [] if plan.feasible else [f"refused: {plan.problems}"]
    for item in expected.split(","):
        stage, want = (x.strip() for x in item.split("="))
        p = plan.placements[stage]
        gpus = p.offer.gpus if p.offer else 0
        got = "local" if p.target == "local" else f"cloud {p.instance_type} {p.market} ({gpus} GPU)"
        if want == "local":
            ok = p.target == "local"
        elif want == "cloud-cpu":
            ok = p.target == "cloud" and gpus == 0
        elif want.startswith("cloud-") and want.endswith("gpu"):
            ok = p.target == "cloud" and gpus == int(want[len("cloud-"):-len("gpu")])
        elif want.startswith("shared:"):
            other = plan.placements[want.split(":", 1)[1]]
            ok = p.target == "cloud" and p.group is not None and p.group == other.group
        else:
            raise ValueError(f"unknown expectation {want!r}")
        if not ok:
            wrong.append(f"{stage}: expected {want}, got {got} ({p.reason})")
    return wrong


TEXT = DOC.read_text(encoding="utf-8")
MACHINES = machine_profiles(TEXT)
SCENARIOS = _table(TEXT, "#")


def test_the_table_covers_what_the_issue_asks_for():
    assert len(SCENARIOS) >= 20
    machines = {row[1] for row in SCENARIOS}
    assert {"laptop-8", "laptop-16", "laptop-32-4070", "mac-32"} <= machines  # with and without a GPU
    caps = sorted(float(row[3]) for row in SCENARIOS if row[3])
    assert caps[0] <= 1 and caps[-1] >= 100
    assert any(row[4] for row in SCENARIOS)  # deadlines


@pytest.mark.parametrize("row", SCENARIOS, ids=[f"{r[0]}-{r[1]}" for r in SCENARIOS])
def test_the_planner_agrees_with_the_table(row):
    number, machine, stages, cap, deadline, policy, expected, _why = row
    plan = make_plan(scenario_pipeline(number, stages, cap, deadline, policy), MACHINES[machine])
    assert check(plan, expected) == []
