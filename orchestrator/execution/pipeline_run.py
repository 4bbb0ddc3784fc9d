"""From a loaded pipeline to a finished run: pick providers, profile, plan, then run.

This is the one place that wires the layers together for `lhorch run`; each piece it calls is
usable (and tested) on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from lhorch.orchestrator.budget.caps import check_plan, monthly_allows_cloud
from lhorch.orchestrator.budget.guard import BudgetGuard, month_spent
from lhorch.orchestrator.core.clock import SystemClock
from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.execution.progress import Reporter, make_reporter
from lhorch.orchestrator.execution.runner import Runner, RunOptions, RunResult
from lhorch.orchestrator.machine.profiler import get_profile
from lhorch.orchestrator.planning.estimator import local_offer
from lhorch.orchestrator.planning.planner import (
    history_observations,
    make_plan,
    require_cloud_access,
    require_feasible,
)
from lhorch.orchestrator.state.store import Store
from lhorch.providers.base import Provider
from lhorch.providers.factory import providers_for
from lhorch.providers.local import LocalProvider


def local_provider(store: Store, keep_ray: bool = False) -> LocalProvider:
    cpus = os.environ.get("LHORCH_LOCAL_CPUS")
    return LocalProvider(store.home, keep=keep_ray, cpus=float(cpus) if cpus else None)


def cloud_providers(store: Store, pipeline: Pipeline) -> dict[str, Provider]:
    """The providers a pipeline's `cloud:` section asks for (none for provider: none)."""
    return providers_for(store, pipeline.cloud)


def plan_run(store: Store, pipeline: Pipeline, policy: str | None = None, *,
             allow_cloud: bool = True) -> tuple[Plan, Profile]:
    # No 0.1 s CPU sample: a plan never reads the profile's "load now" percentage (as `lhorch plan`).
    profile = get_profile(store, cpu_interval=0.0)
    observations, output_gb = history_observations(store, pipeline, profile)
    offers = None if allow_cloud else [local_offer(profile, pipeline.policy.electricity_usd_per_hour)]
    plan = make_plan(pipeline, profile, offers=offers, observations=observations, policy=policy,
                     observed_output_gb=output_gb)
    return plan, profile


def check_budget(pipeline: Pipeline, plan: Plan, spent: float) -> None:
    """Refuse, before anything starts, a plan whose estimate is over a cap (exit 3)."""
    check_plan(plan, pipeline.budget, spent, {n: s.budget_usd for n, s in pipeline.stages.items() if s.budget_usd})


def execute(store: Store, pipeline: Pipeline, file: Path, *, resume: str | None = None, fresh: bool = False,
            policy: str | None = None, keep_ray: bool = False, only_if_changed: bool = False, trigger: str = "manual",
            quiet: bool = False, reporter: Reporter | None = None, no_cache: tuple[str, ...] = (),
            new: bool = False, verbose: bool = False) -> RunResult:
    unknown = sorted(set(no_cache) - set(pipeline.stages))
    if unknown:
        raise UsageError(f"--no-cache {', '.join(unknown)}: no such stage in {pipeline.name}",
                         hint=f"Its stages: {', '.join(pipeline.stages)}.")
    clock = SystemClock()
    spent = month_spent(store, pipeline, clock)
    # A pipeline whose month is spent runs what it can locally and launches no cloud work.
    allow_cloud = monthly_allows_cloud(store, pipeline.name, pipeline.budget, clock.now())
    plan, profile = plan_run(store, pipeline, policy, allow_cloud=allow_cloud)
    require_feasible(plan)  # refused before anything starts or is paid for
    require_cloud_access(pipeline, plan)  # no AWS credentials or region: exit 5 now, not a traceback later
    check_budget(pipeline, plan, spent)
    providers: dict[str, Provider] = {"local": local_provider(store, keep_ray)}
    if any(p.target == "cloud" for p in plan.placements.values()):
        providers.update(cloud_providers(store, pipeline))
    reporter = reporter or make_reporter(topological_order(pipeline.stages), quiet=quiet)
    guard = BudgetGuard(store, pipeline, month_spent=spent, clock=clock,
                        on_alert=lambda used, cap: reporter.info(f"[yellow]budget: ${used:.2f} of ${cap:.2f} spent[/]"))
    try:
        options = RunOptions(fresh=fresh, resume=resume, trigger=trigger, only_if_changed=only_if_changed,
                             no_cache=tuple(no_cache), new=new, verbose=verbose)
        # Check in well within the nodes' idle time (their dead-man switch): a quarter of it, at most a minute.
        runner = Runner(store, pipeline, file, providers=providers, plan=plan, reporter=reporter,
                        machine=profile.fingerprint, guard=guard, options=options,
                        heartbeat_seconds=min(60.0, pipeline.cloud.idle_minutes * 60 / 4))
        return runner.run()
    finally:
        reporter.close()
