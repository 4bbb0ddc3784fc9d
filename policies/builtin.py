"""The four built-in policies. Each is an objective over the same cost model and search:

- ``local-first``: as few voluntary cloud stages as possible (cloud only for stages that do not fit
  locally or when the deadline needs it), then the balanced objective;
- ``cheapest``: least cost that meets the deadline, then least time;
- ``fastest``: least time within the budget, then least cost;
- ``balanced`` (default): least cost + value_of_time x (time + each cluster's start-up once more,
  as the risk of the least certain figure in a plan).

Every key starts with (budget excess, deadline excess): a plan over the cap or past the deadline
is only ever returned refused (``feasible=False``), with the reason in ``problems``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lhorch.orchestrator.core.durations import format_duration
from lhorch.orchestrator.core.plan import Alternative, Offer, Placement, Plan, ProblemKind
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.core.spec import Budget, Pipeline
from lhorch.policies.base import StageEstimates
from lhorch.policies.explain import alternatives, money, reason
from lhorch.policies.problem import Outcome, Problem
from lhorch.policies.search import Key, KeyFn, ScoreFn, candidate_options, optimise

# Plans of more stages than this list no alternatives per stage (each costs a few evaluations);
# `lhorch plan --explain STAGE` still lists them for the stage asked about.
MAX_STAGES_EXPLAINED = 60
ALTERNATIVES_KEPT = 8  # per placement in the Plan; --explain lists every offer

EPS_USD = 1e-9
STARTUP_RISK = 1.0  # extra weight of a cluster's start-up in the balanced objective, in start-ups
EPS_S = 1e-6


@dataclass(frozen=True)
class ObjectivePolicy:
    name: str
    objective: PolicyName
    value_of_time_usd_per_hour: float | None = None  # None: the pipeline's policy setting

    def plan(self, pipeline: Pipeline, profile: Profile, offers: list[Offer],
             estimates: StageEstimates, budget: Budget | None) -> Plan:
        pb = Problem(pipeline, offers, estimates)
        key, score = self.objective_fns(pb, budget)
        a, _ = optimise(pb, key, score, prefer_local=self.objective is PolicyName.LOCAL_FIRST)
        out = pb.evaluate(a, detail=True)
        return _build_plan(self, pb, a, out, estimates, budget)

    def value_of_time(self, pipeline: Pipeline) -> float:
        vot = self.value_of_time_usd_per_hour
        return pipeline.policy.value_of_time_usd_per_hour if vot is None else vot

    def objective_fns(self, pb: Problem, budget: Budget | None) -> tuple[KeyFn, ScoreFn]:
        """The policy's key over whole assignments and its score for one stage alone (also used
        by bench/policy.py's exhaustive optimum)."""
        cap = budget.max_usd if budget else None
        deadline = pb.pipeline.deadline
        vot_s = self.value_of_time(pb.pipeline) / 3600.0
        objective = self.objective
        local_ok = [pb.local is not None and pb.local in pb.allowed[i] for i in range(pb.n)]

        def key(out: Outcome, a: list[int]) -> Key:
            over = out.cost - cap if cap is not None else 0.0
            late = out.seconds - deadline if deadline is not None else 0.0
            head = (over if over > EPS_USD else 0.0, late if late > EPS_S else 0.0)
            if objective is PolicyName.CHEAPEST:
                return head + (round(out.cost, 9), out.seconds)
            if objective is PolicyName.FASTEST:
                return head + (round(out.seconds, 6), out.cost)
            # A start-up is the least certain figure in a plan (capacity retries, image loading, a
            # spot node lost while booting): balanced counts each cluster's start-up once more, as
            # risk, so a cluster must save more than its start-up to be chosen (issue 21).
            balanced = out.cost + vot_s * (out.seconds + STARTUP_RISK * out.startup_seconds)
            if objective is PolicyName.LOCAL_FIRST:
                voluntary = sum(1 for i in range(pb.n) if local_ok[i] and not pb.is_local[a[i]])
                return head + (voluntary, balanced)
            return head + (balanced, out.seconds)

        if objective is PolicyName.CHEAPEST:
            def score(c: float, t: float) -> float: return c + 1e-9 * t
        elif objective is PolicyName.FASTEST:
            def score(c: float, t: float) -> float: return t + 1e-9 * c
        else:
            def score(c: float, t: float) -> float: return c + vot_s * t
        return key, score


def _group_names(pb: Problem, out: Outcome) -> list[str]:
    names = []
    for k, o in enumerate(out.group_offer):
        offer = pb.offers[o]
        names.append(f"g{k + 1}-{offer.instance_type.replace('.', '-')}-{offer.market}")
    return names


def explain_stage(policy: ObjectivePolicy, pb: Problem, a: list[int], i: int, budget: Budget | None,
                  every_offer: bool = False, options: list[list[int]] | None = None) -> list[tuple[Alternative, str]]:
    """The alternatives for stage ``i`` of assignment ``a``: the search's candidates for it
    (``options``, computed when not given), the offers other stages use (sharing their cluster),
    local; or ``every_offer``."""
    key, score = policy.objective_fns(pb, budget)
    if every_offer:
        candidates = None
    else:
        options = options if options is not None else candidate_options(pb, score)
        candidates = [*options[i], *dict.fromkeys(a)]
        if pb.local is not None:
            candidates.insert(0, pb.local)
    return alternatives(pb, a, i, key, policy.objective, policy.value_of_time(pb.pipeline), candidates)


def _build_plan(policy: ObjectivePolicy, pb: Problem, a: list[int], out: Outcome, est: StageEstimates,
                budget: Budget | None) -> Plan:
    cap = budget.max_usd if budget else None
    deadline = pb.pipeline.deadline
    groups = _group_names(pb, out)
    options = candidate_options(pb, policy.objective_fns(pb, budget)[1]) if pb.n <= MAX_STAGES_EXPLAINED else []
    group_size: dict[int, int] = {}
    for g in out.group:
        if g >= 0:
            group_size[g] = group_size.get(g, 0) + 1
    placements: dict[str, Placement] = {}
    problems: list[str] = []
    kind: ProblemKind | None = None
    for i in pb.unplaceable:
        name, stage = pb.names[i], pb.stages[i]
        whys = sorted(set(pb.why_not[i].values()))
        pinned = f" (pinned {stage.placement})" if stage.placement != "auto" else ""
        if not pb.why_not[i]:
            whys = ["no offer of the pinned kind is configured" if stage.placement != "auto" else "no offers"]
        problems.append(f"stage {name!r} fits nowhere{pinned}: {'; '.join(whys[:3])}")
        kind = "fit"
    for i, name in enumerate(pb.names):
        o = a[i]
        offer = pb.offers[o]
        unplaceable = not pb.allowed[i]
        alts = (explain_stage(policy, pb, a, i, budget, options=options)
                if not unplaceable and pb.n <= MAX_STAGES_EXPLAINED else [])
        if unplaceable:
            why, factor = problems[pb.unplaceable.index(i)], "fit"
        else:
            why, factor = reason(pb, a, i, out, alts, group_size.get(out.group[i], 1),
                                 est.basis(name, pb.stages[i]), policy.objective)
        placements[name] = Placement(
            stage=name,
            target="local" if offer.is_local else "cloud",
            provider=offer.provider,
            instance_type=offer.instance_type,
            market=offer.market,
            group=groups[out.group[i]] if out.group[i] >= 0 else None,
            nodes=1 if offer.is_local else pb.nodes[i],
            est_seconds=pb.run[i][o],
            est_cost_usd=round(out.stage_cost[i], 6),
            reason=why,
            deciding_factor=factor,
            offer=offer,
            alternatives=[alt for alt, _ in alts[:ALTERNATIVES_KEPT]],
        )
    if kind is None and cap is not None and out.cost > cap + EPS_USD:
        kind = "budget"
        problems.append(f"the cheapest plan found costs {money(out.cost)}, over the budget cap {money(cap)}")
    if kind is None and deadline is not None and out.seconds > deadline + EPS_S:
        kind = "deadline"
        within = f" within the {money(cap)} cap" if cap is not None else ""
        problems.append(f"the fastest plan found{within} takes {format_duration(out.seconds)}, "
                        f"past the {format_duration(deadline)} deadline")
    return Plan(
        pipeline=pb.pipeline.name,
        policy=policy.name,
        placements=placements,
        est_total_seconds=out.seconds,
        est_total_cost_usd=round(out.cost, 6),
        feasible=kind is None,
        problems=problems,
        problem_kind=kind,
        budget_usd=cap,
        deadline_seconds=deadline,
    )


# The registry: one policy per name in PolicyName (tests/test_policies.py checks none is missing).
POLICIES: dict[PolicyName, ObjectivePolicy] = {name: ObjectivePolicy(name, name) for name in PolicyName}


def get_policy(name: str) -> ObjectivePolicy:
    """The built-in policy called ``name`` (a PolicyName or its value)."""
    try:
        return POLICIES[PolicyName(name)]
    except ValueError:
        raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}") from None
