"""Glue: a pipeline, a profile and offers in, a Plan out. Offers for a pipeline's cloud settings,
the policy from the pipeline (or an override), and the typed error for a refused plan.

Pure apart from reading the bundled AWS catalogue file; the CLI gathers the profile and history.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

from lhorch.orchestrator.core.errors import BudgetError, InfeasibleError, UsageError
from lhorch.orchestrator.core.plan import Alternative, Offer, Plan
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.planning.estimator import DEFAULT_GPU_GFLOPS, Estimator, Observations, local_offer
from lhorch.orchestrator.state.history import observed
from lhorch.orchestrator.state.store import Store
from lhorch.policies import Policy, get_policy
from lhorch.policies.builtin import ObjectivePolicy
from lhorch.policies.builtin import explain_stage as builtin_explain
from lhorch.policies.problem import Problem
from lhorch.providers.aws.catalogue import catalogue_offers  # the bundled price list: no boto3
from lhorch.providers.aws.preflight import require_credentials  # imports boto3 only when called


# An existing Ray cluster (cloud.provider: ray) is already paid for and its shape is not known
# before connecting: plan it as one large node at no marginal cost that needs no start-up.
def ray_cluster_offer() -> Offer:
    return Offer(provider="ray", instance_type="ray-cluster", market="fixed", vcpus=64, memory_gb=256,
                 gpus=8, gpu_memory_gb=24, gflops_fp32=3200, gpu_gflops=DEFAULT_GPU_GFLOPS,
                 price_per_hour=0.0, startup_seconds=0.0, price_source="fixed")


def cloud_offers(pipeline: Pipeline) -> list[Offer]:
    """The cloud offers a pipeline's ``cloud`` section allows (no local node)."""
    cloud = pipeline.cloud
    if cloud.provider == "aws":
        return catalogue_offers(region=cloud.region, spot=cloud.spot, only=cloud.instance_types or None)
    if cloud.provider == "ray":
        return [ray_cluster_offer()]
    return []


def default_offers(pipeline: Pipeline, profile: Profile) -> list[Offer]:
    return [local_offer(profile, pipeline.policy.electricity_usd_per_hour), *cloud_offers(pipeline)]


def _usable(pipeline: Pipeline, offers: Iterable[Offer], profile: Profile) -> list[Offer]:
    cloud = pipeline.cloud
    kept = [o for o in offers if o.is_local or cloud.provider != "none"]
    kept = [o for o in kept if o.market != "spot" or cloud.spot]
    if cloud.instance_types:
        kept = [o for o in kept if o.is_local or o.provider != "aws" or o.instance_type in cloud.instance_types]
    if not any(o.is_local for o in kept):
        kept.insert(0, local_offer(profile, pipeline.policy.electricity_usd_per_hour))
    return kept


def make_plan(pipeline: Pipeline, profile: Profile, offers: list[Offer] | None = None,
              observations: Observations = None, policy: str | Policy | None = None,
              observed_output_gb: dict[str, float] | None = None) -> Plan:
    """Plan ``pipeline`` on ``offers`` (default: local + what ``pipeline.cloud`` allows).

    ``observations``: recorded seconds, ``{stage: {machine: [seconds, ...]}}`` or a callable
    ``stage -> {machine: [seconds]}``; machine is "local" or an instance type. ``policy``: a name
    or a Policy; default ``pipeline.policy.name``. Returns the Plan even when infeasible; see
    :func:`require_feasible`.
    """
    usable, chosen, estimator = _setup(pipeline, profile, offers, observations, policy, observed_output_gb)
    return _note_unfit_types(pipeline, chosen.plan(pipeline, profile, usable, estimator, pipeline.budget),
                             usable, estimator)


def _note_unfit_types(pipeline: Pipeline, plan: Plan, usable: list[Offer], estimator: Estimator) -> Plan:
    """Say in the plan when a stage left local only because no listed cloud type can hold it: it
    silently ran locally before (issue 17). Pinned stages are refused by the policy already."""
    cloud_offers_ = [o for o in usable if not o.is_local]
    if not pipeline.cloud.instance_types or not cloud_offers_:
        return plan
    placements = dict(plan.placements)
    for name, placement in plan.placements.items():
        stage = pipeline.stages[name]
        if placement.target != "local" or stage.placement != "auto":
            continue
        problems = [estimator.fit_problem(name, stage, o) for o in cloud_offers_]
        if all(problems):
            why = f"no type in cloud.instance_types fits ({problems[0]})"
            reason = f"{placement.reason}; {why}" if placement.reason else why
            placements[name] = placement.model_copy(update={"reason": reason})
    return plan.model_copy(update={"placements": placements})


def require_cloud_access(pipeline: Pipeline, plan: Plan) -> None:
    """CloudError (exit 5, with a hint) when ``plan`` places a stage on AWS and there are no AWS
    credentials or no region: found before anything starts, not as a traceback mid-run (issue 17)."""
    if pipeline.cloud.provider == "aws" and any(p.target == "cloud" for p in plan.placements.values()):
        require_credentials(pipeline.cloud.region, pipeline.cloud.profile)


def _setup(pipeline: Pipeline, profile: Profile, offers: list[Offer] | None, observations: Observations,
           policy: str | Policy | None, observed_output_gb: dict[str, float] | None
           ) -> tuple[list[Offer], Policy, Estimator]:
    usable = _usable(pipeline, default_offers(pipeline, profile) if offers is None else offers, profile)
    chosen = get_policy(policy or pipeline.policy.name) if policy is None or isinstance(policy, str) else policy
    return usable, chosen, Estimator(profile, usable, observations, observed_output_gb or {})


def explain_stage(pipeline: Pipeline, profile: Profile, plan: Plan, stage: str, offers: list[Offer] | None = None,
                  observations: Observations = None, policy: str | Policy | None = None,
                  observed_output_gb: dict[str, float] | None = None) -> list[tuple[Alternative, str]]:
    """Every offer ``stage`` could have used under ``plan`` (made by :func:`make_plan` with the same
    arguments), best first, each as (Alternative, deciding factor): the whole plan re-priced with only
    that stage moved, and why it lost. The offers it does not fit come last."""
    if stage not in pipeline.stages:
        raise UsageError(f"no stage {stage!r} in pipeline {pipeline.name!r}",
                         hint=f"choose one of: {', '.join(pipeline.stages)}")
    usable, chosen, estimator = _setup(pipeline, profile, offers, observations, policy, observed_output_gb)
    if not isinstance(chosen, ObjectivePolicy):
        raise UsageError(f"policy {chosen.name!r} cannot explain its choices", hint="use a built-in policy")
    pb = Problem(pipeline, usable, estimator)
    index = {o.key: k for k, o in enumerate(usable)}
    a = []
    for name in pb.names:
        offer = plan.placements[name].offer
        a.append(index.get(offer.key, 0) if offer is not None else 0)
    return builtin_explain(chosen, pb, a, pb.index[stage], pipeline.budget, every_offer=True)


def require_feasible(plan: Plan) -> Plan:
    """The plan, or the typed error that refuses it (BudgetError: exit 3, InfeasibleError: exit 4)."""
    if plan.feasible:
        return plan
    message = "; ".join(plan.problems) or "no feasible plan"
    if plan.problem_kind == "budget":
        raise BudgetError(message, hint="Raise budget.max_usd, allow spot (cloud.spot: true), or pin stages to local.")
    if plan.problem_kind == "deadline":
        raise InfeasibleError(message, hint="Relax `deadline`, raise budget.max_usd, or allow more instance types.")
    raise InfeasibleError(message, hint="Lower the stage's `resources`, or configure a cloud "
                                        "(cloud.provider: aws) with a type that fits.")


def history_observations(store: Store, pipeline: Pipeline,
                         profile: Profile) -> tuple[dict[str, dict[str, list[float]]], dict[str, float]]:
    """Recorded seconds per stage and machine ("local" for this machine), and median output sizes."""
    seconds: dict[str, dict[str, list[float]]] = {}
    output_gb: dict[str, float] = {}
    for name in pipeline.stages:
        rows = observed(store, pipeline.name, name)
        by_machine: dict[str, list[float]] = {}
        for row in rows:
            machine = "local" if row.machine in (profile.fingerprint, "local") else row.machine
            by_machine.setdefault(machine, []).append(row.wall_seconds)
        if by_machine:
            seconds[name] = by_machine
        sizes = [r.output_bytes for r in rows if r.output_bytes is not None]
        if sizes:
            output_gb[name] = statistics.median(sizes) / 1e9
    return seconds, output_gb
