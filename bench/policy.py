"""How close the policies come to the true optimum, and how fast planning is.

    python bench/policy.py [--scenarios 200] [--seed 7]

Random scenarios (seeded): random DAGs of 2-12 stages, profiles from a thin laptop to a GPU
workstation, a few catalogue offers with jittered prices, random budgets and deadlines. For each,
the exact optimum of every policy's objective is found by exhaustive search over assignments (each
stage: local + the scenario's 2-4 cloud offers, fewer for long pipelines so it stays tractable),
evaluated with the same cost model and grouping the planner uses (lhorch.policies.problem). Prints per
policy: objective ratio to the optimum (mean, worst), deadline misses the optimum avoids, budget
violations (must be 0), refusals where a feasible plan exists, and cost/time against all-local and
all-cloud; then the time to plan a 1,000-stage pipeline on the full catalogue (target < 1 s).
Run by hand, not in CI.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time

from lhorch.orchestrator.core.profile import GpuInfo, Measurement, Profile
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.planning.estimator import Estimator, local_offer
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.policies.builtin import POLICIES, STARTUP_RISK
from lhorch.policies.problem import Problem
from lhorch.providers.aws.catalogue import catalogue_offers

ENUMERATION_LIMIT = 6000  # assignments per scenario for the exhaustive optimum
EPS_USD = 0.01  # ratio of costs that may be 0: (x + 1 cent) / (opt + 1 cent)


def _m(value: float, unit: str = "GFLOP/s") -> Measurement:
    return Measurement(value=value, unit=unit, method="bench")


def make_profile(rng: random.Random) -> Profile:
    kind = rng.choice(["thin", "laptop", "gpu-laptop", "workstation"])
    up = rng.choice([2.0, 5.0, 12.0, 40.0])
    if kind == "thin":
        cores, ram, cpu, gpus = 4, rng.uniform(4, 8), 90.0, []
    elif kind == "laptop":
        cores, ram, cpu, gpus = 8, rng.uniform(10, 20), 300.0, []
    elif kind == "gpu-laptop":
        cores, ram, cpu, gpus = 16, rng.uniform(16, 28), 400.0, [("RTX 4070 Laptop", 8.0, 43000.0)]
    else:
        cores, ram, cpu, gpus = 32, rng.uniform(48, 120), 1500.0, [("RTX 4090", 24.0, 150000.0)]
    measured = {"matmul_cpu_fp32": _m(cpu), "upload": _m(up, "MB/s")}
    info = []
    for k, (name, mem, fl) in enumerate(gpus):
        info.append(GpuInfo(index=k, name=name, memory_total_gb=mem))
        measured[f"matmul_cuda{k}_bf16"] = _m(fl)
    return Profile(hostname=kind, physical_cores=cores // 2, logical_cores=cores, ram_total_gb=ram * 1.3,
                   ram_available_gb=ram, disk_free_gb=500, gpus=info, measured=measured)


def make_pipeline(rng: random.Random, n: int) -> dict:
    stages = {}
    for i in range(n):
        gpu = rng.random() < 0.35
        s: dict = {"run": "true"}
        if gpu:
            s["resources"] = {"gpus": 1, "memory_gb": rng.choice([4, 8, 16])}
            s["hints"] = {"minutes_on": {"t4": rng.choice([5, 15, 30, 60, 120, 240])}}
        else:
            s["resources"] = {"cpus": rng.choice([1, 2, 4, 8]), "memory_gb": rng.choice([1, 2, 4, 8, 12, 24, 48])}
            s["hints"] = {"minutes": rng.choice([1, 3, 10, 30, 60, 120])}
        s["hints"]["output_gb"] = rng.choice([0.0, 0.05, 0.5, 2.0, 8.0])
        if i == 0:
            s["hints"]["input_gb"] = rng.choice([0.0, 0.5, 5.0])
        if i:
            k = rng.choice([1, 1, 1, 2])
            s["needs"] = sorted({f"s{j}" for j in rng.sample(range(i), min(k, i))})
        r = rng.random()
        if r < 0.05:
            s["placement"] = "local"
        elif r < 0.08:
            s["placement"] = "cloud"
        stages[f"s{i}"] = s
    return stages


def scenario(rng: random.Random, catalogue: list) -> tuple[Pipeline, Profile, list]:
    n = rng.randint(2, 12)
    prof = make_profile(rng)
    stages = make_pipeline(rng, n)
    cpu = [o for o in catalogue if not o.gpus]
    gpu = [o for o in catalogue if o.gpus]
    m = 4 if n <= 5 else 3 if n <= 7 else 2
    while True:
        picks = rng.sample(cpu, rng.randint(1, max(1, m - 1)))
        picks += rng.sample(gpu, max(1, m - len(picks)))
        offers = [local_offer(prof)] + [
            o.model_copy(update={"price_per_hour": round(o.price_per_hour * rng.uniform(0.7, 1.3), 4)}) for o in picks]
        data = {"name": "bench", "cloud": {"provider": "aws"}, "stages": stages,
                "policy": {"name": "balanced", "value_of_time_usd_per_hour": rng.choice([0.5, 2.0, 10.0])}}
        pipe = Pipeline.model_validate(data)
        pb = Problem(pipe, offers, Estimator(prof, offers))
        size = 1
        for i in range(pb.n):
            size *= max(1, len(pb.allowed[i]))
        if size <= ENUMERATION_LIMIT or m == 1:
            break
        m -= 1
    # budget and deadline relative to the all-local / cheapest plans, so they bind sometimes
    base = [next((o for o in pb.allowed[i] if pb.is_local[o]), None)
            or (min(pb.allowed[i], key=lambda o: pb.standalone(i, o)[0]) if pb.allowed[i] else 0)
            for i in range(pb.n)]
    ref = pb.evaluate(base)
    if rng.random() < 0.5:
        data["deadline"] = max(60.0, ref.seconds * rng.uniform(0.3, 1.2))
    if rng.random() < 0.5:
        data["budget"] = {"max_usd": max(0.01, round(ref.cost * rng.uniform(0.5, 3.0) + rng.uniform(0, 1.0), 2))}
    return Pipeline.model_validate(data), prof, offers


def objective_value(policy: str, cost: float, seconds: float, vot: float, startup: float = 0.0) -> float:
    if policy == "cheapest":
        return cost + EPS_USD
    if policy == "fastest":
        return seconds
    # balanced (and local-first's tie-break) weigh each cluster's start-up once more, as risk
    return cost + vot / 3600.0 * (seconds + STARTUP_RISK * startup) + EPS_USD


def plan_startup(plan) -> float:
    """The start-ups of a plan's clusters, summed (one per group)."""
    groups = {}
    for pl in plan.placements.values():
        if pl.target == "cloud" and pl.offer is not None:
            groups.setdefault(pl.group or pl.stage, pl.offer.startup_seconds)
    return sum(groups.values())


def run(scenarios: int, seed: int) -> None:
    rng = random.Random(seed)
    catalogue = catalogue_offers()
    names = list(POLICIES)
    stats = {p: {"ratios": [], "miss_avoidable": 0, "misses": 0, "over_cap": 0, "false_refusals": 0,
                 "cost": 0.0, "hours": 0.0, "exact": 0, "plan_s": 0.0} for p in names}
    base = {"all-local cost": 0.0, "all-local hours": 0.0, "all-local infeasible": 0,
            "all-cloud cost": 0.0, "all-cloud hours": 0.0}
    evaluated = 0
    sizes = []
    t_start = time.perf_counter()
    for _ in range(scenarios):
        pipe, prof, offers = scenario(rng, catalogue)
        est = Estimator(prof, offers)
        pb = Problem(pipe, offers, est)
        sizes.append(pb.n)
        keys = {p: POLICIES[p].objective_fns(pb, pipe.budget)[0] for p in names}
        best: dict[str, tuple] = {}
        best_out: dict[str, object] = {}
        choices = [pb.allowed[i] or list(pb.run[i]) for i in range(pb.n)]
        for a in itertools.product(*choices):
            a = list(a)
            out = pb.evaluate(a)
            evaluated += 1
            for p in names:
                k = keys[p](out, a)
                if p not in best or k < best[p]:
                    best[p], best_out[p] = k, out
        local_a = [next((o for o in ch if pb.is_local[o]), ch[0]) for ch in choices]
        lo = pb.evaluate(local_a)
        if any(not pb.is_local[o] for o in local_a) or pb.unplaceable:
            base["all-local infeasible"] += 1
        base["all-local cost"] += lo.cost
        base["all-local hours"] += lo.seconds / 3600
        cloud_a = [min((o for o in ch if not pb.is_local[o]), key=lambda o: pb.standalone(i, o)[0], default=ch[0])
                   for i, ch in enumerate(choices)]
        co = pb.evaluate(cloud_a)
        base["all-cloud cost"] += co.cost
        base["all-cloud hours"] += co.seconds / 3600
        cap = pipe.budget.max_usd if pipe.budget else None
        vot = pipe.policy.value_of_time_usd_per_hour
        for p in names:
            t0 = time.perf_counter()
            plan = make_plan(pipe, prof, offers=offers, policy=p)
            st = stats[p]
            st["plan_s"] += time.perf_counter() - t0
            opt_key, opt = best[p], best_out[p]
            opt_feasible = opt_key[0] == 0 and opt_key[1] == 0 and not pb.unplaceable
            if plan.feasible and cap is not None and plan.est_total_cost_usd > cap + 1e-6:
                st["over_cap"] += 1
            late = pipe.deadline is not None and plan.est_total_seconds > pipe.deadline + 1e-6
            st["misses"] += late
            if late and opt_feasible:
                st["miss_avoidable"] += 1
            if not plan.feasible and opt_feasible:
                st["false_refusals"] += 1
            st["cost"] += plan.est_total_cost_usd
            st["hours"] += plan.est_total_seconds / 3600
            if opt_feasible and plan.feasible:
                mine = objective_value(p, plan.est_total_cost_usd, plan.est_total_seconds, vot, plan_startup(plan))
                theirs = objective_value(p, opt.cost, opt.seconds, vot, opt.startup_seconds)
                ratio = mine / theirs if theirs > 0 else 1.0
                st["ratios"].append(ratio)
                st["exact"] += ratio <= 1.0 + 1e-6
    elapsed = time.perf_counter() - t_start
    print(f"{scenarios} scenarios (seed {seed}), {min(sizes)}-{max(sizes)} stages (mean {statistics.mean(sizes):.1f}), "
          f"{evaluated:,} assignments enumerated for the optima, {elapsed:.0f} s")
    print("objective: cheapest $+1c, fastest seconds, balanced/local-first $ + value_of_time x (hours + start-ups) "
          "(+1c); "
          "ratio = policy / exhaustive optimum, both feasible")
    print(f"{'policy':12} {'mean':>7} {'worst':>7} {'exact':>6} {'misses':>7} {'avoidable':>9} {'over cap':>8} "
          f"{'refused*':>8} {'total $':>8} {'total h':>8} {'plan ms':>8}")
    for p in names:
        st = stats[p]
        r = st["ratios"] or [float("nan")]
        print(f"{p:12} {statistics.mean(r):7.3f} {max(r):7.3f} {st['exact']:3d}/{len(st['ratios']):<3d}"
              f"{st['misses']:6d} {st['miss_avoidable']:9d} {st['over_cap']:8d} {st['false_refusals']:8d} "
              f"{st['cost']:8.2f} {st['hours']:8.1f} {1000 * st['plan_s'] / scenarios:8.1f}")
    print("(*refused although the optimum is feasible; "
          "misses = plans past the deadline, avoidable = the optimum met it)")
    print(f"baselines: all-local ${base['all-local cost']:.2f} / {base['all-local hours']:.1f} h "
          f"({base['all-local infeasible']} scenarios need the cloud for some stage); "
          f"all-cloud (cheapest offer per stage) ${base['all-cloud cost']:.2f} / {base['all-cloud hours']:.1f} h")
    bal = stats["balanced"]
    print(f"balanced vs all-cloud: saves ${base['all-cloud cost'] - bal['cost']:.2f} "
          f"({100 * (1 - bal['cost'] / base['all-cloud cost']):.0f}%) and "
          f"{base['all-cloud hours'] - bal['hours']:.1f} h; vs all-local: "
          f"{base['all-local hours'] - bal['hours']:.1f} h faster for ${bal['cost'] - base['all-local cost']:.2f} more")


def big_pipeline(n: int, seed: int) -> Pipeline:
    rng = random.Random(seed)
    stages = make_pipeline(rng, n)
    for s in stages.values():
        s.pop("placement", None)
    return Pipeline.model_validate({"name": "big", "cloud": {"provider": "aws"}, "deadline": "6h",
                                    "budget": {"max_usd": 500}, "stages": stages})


def time_big(n: int = 1000) -> None:
    pipe = big_pipeline(n, 1)
    prof = make_profile(random.Random(3))
    for p in POLICIES:
        t0 = time.perf_counter()
        plan = make_plan(pipe, prof, policy=p)
        dt = time.perf_counter() - t0
        print(f"plan {n} stages on the full catalogue ({len(catalogue_offers())} offers), {p:11}: {dt:.2f} s "
              f"({'ok' if dt < 1 else 'OVER 1 s'}); {len(plan.cloud_groups())} clusters, "
              f"${plan.est_total_cost_usd:.2f}, feasible={plan.feasible}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--scenarios", type=int, default=200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--skip-big", action="store_true")
    args = ap.parse_args()
    run(args.scenarios, args.seed)
    if not args.skip_big:
        time_big()
