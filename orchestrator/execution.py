"""From a loaded pipeline to a finished run: pick providers, profile, plan, then run.

This is the one place that wires the layers together for `lhorch run`; each piece it calls is
usable (and tested) on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.planner import history_observations, make_plan, require_feasible
from orchestrator.profile import Profile
from orchestrator.progress import Reporter, make_reporter
from orchestrator.runner import RunOptions, RunResult, Runner
from orchestrator.spec import Pipeline, topological_order
from orchestrator.store import Store
from policies.model import Plan
from providers.base import Provider
from providers.local import LocalProvider


def local_provider(store: Store, keep_ray: bool = False) -> LocalProvider:
    cpus = os.environ.get("LHORCH_LOCAL_CPUS")
    return LocalProvider(store.home, keep=keep_ray, cpus=float(cpus) if cpus else None)


def cloud_providers(store: Store, pipeline: Pipeline) -> dict[str, Provider]:
    """The providers a pipeline's `cloud:` section asks for (none for provider: none)."""
    from providers.registry import providers_for

    return providers_for(store, pipeline.cloud, run_owner_pid=os.getpid())


def plan_run(store: Store, pipeline: Pipeline, policy: str | None = None) -> tuple[Plan, Profile]:
    from orchestrator.profiler import get_profile

    profile = get_profile(store)
    observations, output_gb = history_observations(store, pipeline, profile)
    plan = make_plan(pipeline, profile, observations=observations, policy=policy, observed_output_gb=output_gb)
    return plan, profile


def execute(store: Store, pipeline: Pipeline, file: Path, *, resume: str | None = None, fresh: bool = False,
            policy: str | None = None, keep_ray: bool = False, only_if_changed: bool = False, trigger: str = "manual",
            quiet: bool = False, reporter: Reporter | None = None) -> RunResult:
    plan, profile = plan_run(store, pipeline, policy)
    require_feasible(plan)  # refused before anything starts or is paid for
    providers: dict[str, Provider] = {"local": local_provider(store, keep_ray)}
    if any(p.target == "cloud" for p in plan.placements.values()):
        providers.update(cloud_providers(store, pipeline))
    reporter = reporter or make_reporter(topological_order(pipeline.stages), quiet=quiet)
    try:
        runner = Runner(store, pipeline, file, providers=providers, plan=plan, reporter=reporter, machine=profile.fingerprint,
                        options=RunOptions(fresh=fresh, resume=resume, trigger=trigger, only_if_changed=only_if_changed))
        return runner.run()
    finally:
        reporter.close()
