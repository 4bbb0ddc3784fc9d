"""Why each stage is where it is: the alternatives a plan considered for a stage, and the reason line.

Both come from the numbers the plan's table shows: an alternative is the *whole plan* re-evaluated
(``Problem.evaluate``, the one cost model) with only that stage moved, so start-up, transfers,
cluster sharing, the cap and the deadline are in every comparison (issue 21: a reason once said
"as fast as any cloud option" on a row whose cloud option was 2.1x faster). The deciding factor is
the first element of the policy's key on which the alternative loses.
"""

from __future__ import annotations

from lhorch.orchestrator.core.durations import format_duration
from lhorch.orchestrator.core.plan import Alternative, Offer
from lhorch.orchestrator.core.policy_name import PolicyName
from lhorch.policies.problem import Outcome, Problem
from lhorch.policies.search import Key, KeyFn

EPS_USD = 1e-6
EPS_S = 0.5


def money(x: float) -> str:
    return f"${x:.2f}" if abs(x) >= 0.01 or x == 0 else f"${x:.4f}"


def _fine(x: float) -> str:
    """Money where two small amounts are compared: enough digits that they differ."""
    return f"${x:.2f}" if abs(x) >= 1 else f"${x:.4f}"


def where(offer: Offer) -> str:
    return "local" if offer.is_local else f"{offer.instance_type} {offer.market}"


def _delta_time(d: float) -> str:
    return f"{format_duration(abs(d))} {'later' if d > 0 else 'sooner'}"


def _delta_cost(d: float) -> str:
    return f"{_fine(abs(d))} {'more' if d > 0 else 'less'}"


def lost_because(objective: PolicyName, base: Outcome, base_key: Key, alt: Outcome, alt_key: Key,
                 vot_usd_per_hour: float) -> tuple[str, str]:
    """(factor, sentence) saying why ``alt`` lost to ``base`` under the policy's key."""
    dc, dt = alt.cost - base.cost, alt.seconds - base.seconds
    when = _delta_time(dt) if abs(dt) > EPS_S else "as fast"
    both = f"plan {when}, {_delta_cost(dc) if abs(dc) > EPS_USD else 'same cost'}"
    if alt_key[0] > base_key[0]:
        return "budget", f"over the budget cap by {money(alt_key[0])} ({both})"
    if alt_key[1] > base_key[1]:
        return "deadline", f"past the deadline by {format_duration(alt_key[1])} ({both})"
    if objective is PolicyName.LOCAL_FIRST and alt_key[2] > base_key[2]:
        return "local-first", f"a voluntary cloud stage, which local-first avoids ({both})"
    if objective is PolicyName.CHEAPEST:
        return ("cost", f"{_delta_cost(dc)} ({both})") if dc > EPS_USD else ("time", f"{both}: same cost, slower")
    if objective is PolicyName.FASTEST:
        return ("time", f"finishes {_delta_time(dt)} ({both})") if dt > EPS_S else ("cost", f"{both}: as fast, dearer")
    worth = vot_usd_per_hour / 3600.0 * dt
    if dt < -EPS_S and dc > EPS_USD:
        return "cost", (f"saves {format_duration(-dt)} but costs {_delta_cost(dc)}; the time is worth only "
                        f"{_fine(-worth)} at ${vot_usd_per_hour:g}/h")
    if dt > EPS_S and dc < -EPS_USD:
        return "time", (f"saves {_fine(-dc)} but finishes {_delta_time(dt)}, worth {_fine(worth)} "
                        f"at ${vot_usd_per_hour:g}/h")
    if dt > EPS_S:
        return "time", both
    return "cost", both


MAX_MISFITS = 3  # offers a stage does not fit, cheapest first: enough to say why bigger ones were needed


def alternatives(pb: Problem, a: list[int], i: int, key: KeyFn, objective: PolicyName,
                 vot_usd_per_hour: float, candidates: list[int] | None = None) -> list[tuple[Alternative, str]]:
    """Other offers stage ``i`` could use (``candidates``, default every allowed one), best first,
    each with (Alternative, factor): the whole plan with only stage ``i`` moved there, and what
    decided against it. The cheapest offers it does not fit come last, with the fit problem."""
    base = pb.evaluate(a)
    base_key = key(base, a)
    seen: set[str] = set()
    scored: list[tuple[Key, Alternative, str]] = []
    allowed = set(pb.allowed[i])
    for o in (pb.allowed[i] if candidates is None else [c for c in candidates if c in allowed]):
        offer = pb.offers[o]
        label = where(offer)
        if o == a[i] or label in seen:
            continue
        seen.add(label)
        trial = list(a)
        trial[i] = o
        out = pb.evaluate(trial, detail=True)
        k = key(out, trial)
        factor, why = lost_because(objective, base, base_key, out, k, vot_usd_per_hour)
        if k <= base_key:  # the search's answer is a local optimum: say so rather than invent a loss
            what = "as good" if k == base_key else "better"
            factor, why = "tie", f"{what} by this policy's measure; the search kept the first it found ({why})"
        mates = [pb.names[j] for j in range(pb.n) if j != i and out.group[i] >= 0 and out.group[j] == out.group[i]]
        if mates:
            why = f"sharing the cluster of {', '.join(mates)}: {why}"
        scored.append((k, Alternative(target=label, est_seconds=round(pb.run[i][o], 3),
                                      plan_cost_usd=round(out.cost, 6), plan_seconds=round(out.seconds, 3),
                                      lost_because=why), factor))
    scored.sort(key=lambda x: x[0])
    result = [(alt, factor) for _, alt, factor in scored]
    misfits = 0
    # Local first, then the cheapest offers with the right kind of device: the near misses.
    wants_gpu = pb.gpus[i] > 0
    misses = sorted(pb.why_not[i].items(), key=lambda x: (not pb.is_local[x[0]],
                                                          wants_gpu and not pb.offers[x[0]].gpus, pb.price_s[x[0]]))
    for o, problem in misses:
        label = where(pb.offers[o])
        if label not in seen and misfits < MAX_MISFITS:
            seen.add(label)
            misfits += 1
            result.append((Alternative(target=label, lost_because=f"does not fit: {problem}"), "fit"))
    return result


def reason(pb: Problem, a: list[int], i: int, out: Outcome, alts: list[tuple[Alternative, str]],
           group_size: int, basis: str, objective: PolicyName) -> tuple[str, str]:
    """(reason line, deciding factor) for stage ``i``: where it runs, how long, and why not the
    runner-up, in the same numbers as the table and ``--explain``."""
    o = a[i]
    offer = pb.offers[o]
    stage = pb.stages[i]
    t = pb.run[i][o]
    parts: list[str] = []
    factor = ""
    local_ok = pb.local is not None and pb.local in pb.allowed[i]
    if stage.placement != "auto":
        parts.append(f"pinned by placement: {stage.placement}")
        factor = "pinned"
    elif not offer.is_local and not local_ok:
        parts.append(pb.why_not[i].get(pb.local, "cannot run locally") if pb.local is not None else "no local node")
        factor = "fit"
    if offer.is_local:
        parts.append(f"local takes {format_duration(t)}")
    else:
        n = pb.nodes[i]
        nodes = f"{n} x " if n > 1 else ""
        each = " each" if n > 1 else ""
        parts.append(f"{nodes}{offer.instance_type} {offer.market} at {money(offer.price_per_hour)}/h{each} takes "
                     f"{format_duration(t)}")
        if group_size > 1:
            parts.append(f"shares its cluster with {group_size - 1} other stage(s): one start-up")
        else:
            parts.append(f"own cluster, {format_duration(pb.startup_of(i, o))} start-up")
        if offer.market == "spot" and offer.interruption_rate_per_hour:
            parts.append(f"interruptions priced in (~{offer.interruption_rate_per_hour * 100:.1f}%/h, "
                         f"checkpoint every {stage.hints.checkpoint_minutes:g} min)")
    fitting = [(alt, f) for alt, f in alts if f != "fit"]
    if fitting:
        # The runner-up; and, when it is not the other side (local vs cloud), that one too.
        shown = [fitting[0]]
        other = next((x for x in fitting if (x[0].target == "local") != offer.is_local), None)
        if other is not None and other[0] is not fitting[0][0]:
            shown.append(other)
        for alt, _ in shown:
            parts.append(f"{alt.target} ({format_duration(alt.est_seconds or 0)}): {alt.lost_because}")
        factor = factor or shown[0][1]
    elif offer.is_local and stage.placement == "auto":
        any_cloud = any(not x for x in pb.is_local)
        parts.append("no cloud offer fits" if any_cloud else "no cloud configured")
        factor = factor or ("fit" if any_cloud else "no-cloud")
    parts.append(f"estimate from {basis}")
    if factor:
        parts.insert(0, f"deciding factor: {factor}")
    return "; ".join(parts), factor
