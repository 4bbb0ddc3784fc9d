"""The four built-in policies. Each is an objective over the same cost model and search:

- ``local-first``: as few voluntary cloud stages as possible (cloud only for stages that do not fit
  locally or when the deadline needs it), then the balanced objective;
- ``cheapest``: least cost that meets the deadline, then least time;
- ``fastest``: least time within the budget, then least cost;
- ``balanced`` (default): least cost + value_of_time x time.

Every key starts with (budget excess, deadline excess): a plan over the cap or past the deadline
is only ever returned refused (``feasible=False``), with the reason in ``problems``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lhorch.orchestrator.core.durations import format_duration
from lhorch.orchestrator.core.plan import Offer, Placement, Plan, ProblemKind
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.core.spec import Budget, Pipeline
from lhorch.policies.base import StageEstimates
from lhorch.policies.problem import Outcome, Problem
from lhorch.policies.search import Key, KeyFn, ScoreFn, optimise

EPS_USD = 1e-9
EPS_S = 1e-6


@dataclass(frozen=True)
class ObjectivePolicy:
    name: str
    objective: PolicyName
    value_of_time_usd_per_hour: float | None = None  # None: the pipeline's policy setting

    def plan(self, pipeline: Pipeline, profile: Profile, offers: list[Offer],
             estimates: StageEstimates, budget: Budget | None) -> Plan:
        pb = Problem(pipeline, offers, estimates)
        cap = budget.max_usd if budget else None
        key, score = self.objective_fns(pb, budget)
        a, _ = optimise(pb, key, score, prefer_local=self.objective is PolicyName.LOCAL_FIRST)
        out = pb.evaluate(a, detail=True)
        return _build_plan(self, pb, a, out, estimates, cap, pb.pipeline.deadline, self.value_of_time(pipeline))

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
            balanced = out.cost + vot_s * out.seconds
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


def _money(x: float) -> str:
    return f"${x:.2f}" if x >= 0.01 or x == 0 else f"${x:.4f}"


def _reason(policy: ObjectivePolicy, pb: Problem, i: int, a: list[int], out: Outcome,
            group_size: dict[int, int], vot: float, basis: str) -> str:
    o = a[i]
    offer = pb.offers[o]
    stage = pb.stages[i]
    t = pb.run[i][o]
    local = pb.local
    local_ok = local is not None and local in pb.allowed[i]
    parts: list[str] = []
    if offer.is_local:
        if stage.placement == "local":
            parts.append("pinned by placement: local")
        cloud = [c for c in pb.allowed[i] if not pb.is_local[c]]
        if cloud:
            fast = min(cloud, key=lambda c: pb.standalone(i, c)[1])
            ct, ft = pb.standalone(i, fast)
            if ft < t:
                parts.append(f"local takes {format_duration(t)} at no cloud cost; {pb.offers[fast].instance_type} "
                             f"{pb.offers[fast].market} would take {format_duration(ft)} (start-up included) "
                             f"for ~{_money(ct)}")
            else:
                parts.append(f"local takes {format_duration(t)}, as fast as any cloud option and free")
        elif stage.placement != "local":
            any_cloud = not all(pb.is_local)
            parts.append(f"local takes {format_duration(t)}; no cloud offer " + ("fits" if any_cloud else "configured"))
    else:
        if stage.placement == "cloud":
            parts.append("pinned by placement: cloud")
        elif local is None or not local_ok:
            why = pb.why_not[i].get(local, "cannot run locally") if local is not None else "no local node"
            parts.append(f"{why}")
        else:
            lt = pb.run[i][local]
            if t > 0 and lt > t:
                parts.append(f"{lt / t:.1f}x faster than local ({format_duration(lt)} -> {format_duration(t)})")
            else:
                parts.append(f"local would take {format_duration(lt)}")
        parts.append(f"{offer.instance_type} {offer.market} at {_money(offer.price_per_hour)}/h")
        if offer.market == "spot" and offer.interruption_rate_per_hour:
            parts.append(f"interruptions priced in (~{offer.interruption_rate_per_hour * 100:.1f}%/h, "
                         f"checkpoint every {stage.hints.checkpoint_minutes:g} min)")
        size = group_size.get(out.group[i], 1)
        if size > 1:
            parts.append(f"shares one cluster with {size - 1} other stage(s), one start-up")
        if local_ok and stage.placement != "cloud":
            parts.append({
                PolicyName.BALANCED: f"worth it with time valued at ${vot:g}/h",
                PolicyName.CHEAPEST: "cheapest way to meet the deadline",
                PolicyName.FASTEST: "fastest within the budget",
                PolicyName.LOCAL_FIRST: "needed to meet the deadline",
            }[policy.objective])
    parts.append(f"estimate from {basis}")
    return "; ".join(parts)


def _build_plan(policy: ObjectivePolicy, pb: Problem, a: list[int], out: Outcome, est: StageEstimates,
                cap: float | None, deadline: float | None, vot: float) -> Plan:
    groups = _group_names(pb, out)
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
        reason = (problems[pb.unplaceable.index(i)] if unplaceable
                  else _reason(policy, pb, i, a, out, group_size, vot, est.basis(name, pb.stages[i])))
        placements[name] = Placement(
            stage=name,
            target="local" if offer.is_local else "cloud",
            provider=offer.provider,
            instance_type=offer.instance_type,
            market=offer.market,
            group=groups[out.group[i]] if out.group[i] >= 0 else None,
            est_seconds=pb.run[i][o],
            est_cost_usd=round(out.stage_cost[i], 6),
            reason=reason,
            offer=offer,
        )
    if kind is None and cap is not None and out.cost > cap + EPS_USD:
        kind = "budget"
        problems.append(f"the cheapest plan found costs {_money(out.cost)}, over the budget cap {_money(cap)}")
    if kind is None and deadline is not None and out.seconds > deadline + EPS_S:
        kind = "deadline"
        within = f" within the {_money(cap)} cap" if cap is not None else ""
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
