"""`lhorch plan`: where each stage would run, how long it would take and what it would cost, and why.

Exit codes: 0 a feasible plan; 3 (BudgetError) no plan within budget.max_usd; 4 (InfeasibleError)
a stage fits nowhere or the deadline cannot be met. With --json the plan is printed either way.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from lhorch.orchestrator.cli.output import console
from lhorch.orchestrator.core.durations import format_duration
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.machine.profiler import get_profile
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.planning.planner import (
    explain_stage,
    history_observations,
    make_plan,
    require_cloud_access,
    require_feasible,
)
from lhorch.orchestrator.state.store import Store


def render(plan: Plan, console: Console) -> None:
    title = f"{plan.pipeline}: policy {plan.policy}" + ("" if plan.feasible else "  [red](refused)[/red]")
    table = Table(title=title, title_justify="left")
    columns: tuple[tuple[str, dict], ...] = (
        ("stage", {"style": "bold"}), ("target", {}), ("instance", {}), ("market", {}),
        ("est. time", {"justify": "right"}), ("est. cost", {"justify": "right"}), ("reason", {"overflow": "fold"}))
    for col, kw in columns:
        table.add_column(col, **kw)
    for p in plan.placements.values():
        instance = p.instance_type if p.target == "cloud" else "-"
        if p.target == "cloud" and p.nodes > 1:
            instance = f"{p.nodes} x {instance}"  # est. cost pays for every node
        if p.group and p.target == "cloud":
            instance += f" ({p.group})"
        table.add_row(p.stage, p.target, instance, p.market if p.target == "cloud" else "-",
                      format_duration(p.est_seconds), f"${p.est_cost_usd:.2f}", p.reason)
    console.print(table)
    caps = []
    if plan.budget_usd is not None:
        caps.append(f"cap ${plan.budget_usd:.2f}")
    if plan.deadline_seconds is not None:
        caps.append(f"deadline {format_duration(plan.deadline_seconds)}")
    extra = f"  ({', '.join(caps)})" if caps else ""
    console.print(f"[bold]total[/bold]: {format_duration(plan.est_total_seconds)} (critical path, start-ups and "
                  f"transfers included), ${plan.est_total_cost_usd:.2f}{extra}; "
                  f"{len(plan.cloud_groups())} cloud cluster(s)")
    for problem in plan.problems:
        console.print(f"[red]problem[/red]: {problem}")


EXPLAIN_ROWS = 15  # fitting alternatives shown in the table; --json lists every one


def render_explain(plan: Plan, stage: str, alternatives: list, console: Console) -> None:
    """The chosen placement of ``stage`` and every alternative considered, each priced as a whole
    plan with only that stage moved (start-up, transfers and cluster sharing included)."""
    p = plan.placements[stage]
    chosen = "local" if p.target == "local" else f"{p.instance_type} {p.market}"
    console.print(f"[bold]{stage}[/bold]: {chosen}, {format_duration(p.est_seconds)}; plan "
                  f"{format_duration(plan.est_total_seconds)}, ${plan.est_total_cost_usd:.4f} "
                  f"(policy {plan.policy}; {p.deciding_factor or 'no alternative'} decided)")
    console.print(f"  why: {p.reason}")
    if not alternatives:
        console.print(f"No alternative for {stage}: nothing else is offered (configure `cloud:` for cloud offers).")
        return
    table = Table(title=f"alternatives for {stage}, best first", title_justify="left")
    for col, kw in (("where", {}), ("stage time", {"justify": "right"}), ("plan time", {"justify": "right"}),
                    ("plan cost", {"justify": "right"}), ("factor", {}), ("why it lost", {"overflow": "fold"})):
        table.add_column(col, **kw)
    fitting = [(a, f) for a, f in alternatives if f != "fit"]
    misfits = [(a, f) for a, f in alternatives if f == "fit"]
    for alt, factor in [*fitting[:EXPLAIN_ROWS], *misfits]:
        table.add_row(alt.target, format_duration(alt.est_seconds) if alt.est_seconds is not None else "-",
                      format_duration(alt.plan_seconds) if alt.plan_seconds is not None else "-",
                      f"${alt.plan_cost_usd:.4f}" if alt.plan_cost_usd is not None else "-", factor, alt.lost_because)
    console.print(table)
    if len(fitting) > EXPLAIN_ROWS:
        console.print(f"{len(fitting) - EXPLAIN_ROWS} more offers fit, each worse by this policy's measure "
                      f"(--json lists them)")


@click.command("plan")
@click.argument("pipeline_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--policy", type=click.Choice([p.value for p in PolicyName]), help="Override the pipeline's policy.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--profile-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Plan for the machine described in this Profile JSON instead of this one.")
@click.option("--explain", "explain", metavar="STAGE",
              help="List every alternative considered for STAGE and why each lost.")
def plan(pipeline_file: Path, policy: str | None, as_json: bool, profile_file: Path | None,
         explain: str | None) -> None:
    """Show where each stage would run, its estimated time and cost, and why."""
    pipeline = load_pipeline(pipeline_file)
    store = Store()
    try:
        if profile_file is not None:
            profile = Profile.model_validate_json(profile_file.read_text(encoding="utf-8"))
        else:
            # The plan never reads the profile's "load now" CPU percentage: psutil's default 0.1 s sample of
            # it would be a third of this command's time (issue 18), so take the instant figure.
            profile = get_profile(store, profile_file=None, cpu_interval=0.0)
        observations, output_gb = history_observations(store, pipeline, profile)
    finally:
        store.close()
    result = make_plan(pipeline, profile, observations=observations, policy=policy, observed_output_gb=output_gb)
    if explain is not None:
        alts = explain_stage(pipeline, profile, result, explain, observations=observations, policy=policy,
                             observed_output_gb=output_gb)
        if as_json:
            click.echo(json.dumps({"stage": explain, "placement": result.placements[explain].model_dump(
                mode="json", exclude={"offer", "alternatives"}), "alternatives": [
                {**a.model_dump(mode="json"), "factor": f} for a, f in alts]}, indent=2))
        else:
            render_explain(result, explain, alts, console())
        return
    if as_json:
        click.echo(result.model_dump_json(indent=2, exclude={"placements": {"__all__": {"offer", "alternatives"}}}))
    else:
        render(result, console())
    require_feasible(result)
    require_cloud_access(pipeline, result)

