"""Does the budget watchdog keep runs under their cap, and how much of the cap does it leave unused?

    python bench/budget.py [--runs 500] [--seed 8]

Random runs (seeded) on a FakeClock: 1-4 sequential cloud stages of 1-4 nodes at $0.10-$12/h per
node, 1 min to 4 h of work plus a start-up, caps of $2-$50, checks every 10/30/60 s (a little early,
never late), spot stages interrupted at random (the stage restarts on a fresh cluster, twice at
most), teardowns usually within their allowance but 15 % of them slow (1-3×), and 5 % of runs whose
laptop disappears mid-run (no more checks, no teardown). Each run is driven through CostMeter and
Watchdog exactly as the runner is meant to: ``can_start`` before a launch, ``hard_stop_now`` as the
instances' own shutdown time, ``should_stop`` at every check.

Prints, for the watchdog and for the baseline a naive loop would give (stop once spend >= cap, no
look-ahead, no launch check, no hard stop): runs over the cap (target 0), the worst overspend, and
the mean fraction of the cap left unused when a run is stopped for its budget.
Then the same runs through the paths where money leaked before issue 16 (``simulate_leaky``): boot
time billed before the head answers, on-demand fallbacks at their own price, kill -9 and a resume
after `lhorch gc`, two clusters at once, EBS and public IPv4 per node, data transfer out. "before" is
lhorch's meter as it was (from the head's answer, at the planned price, instances only, a fresh cap
per resume, hard stops per cluster); "now" as it is. Over cap and overspend count what AWS bills.
Run by hand, not in CI.
"""

from __future__ import annotations

import argparse
import random
import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lhorch.orchestrator.budget.caps import CostMeter, Watchdog
from lhorch.orchestrator.core.clock import FakeClock

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
INF = datetime.max.replace(tzinfo=timezone.utc)
IDLE_SHUTDOWN_S = 600.0  # a cluster nobody tears down stops itself after 10 idle minutes


@dataclass
class Stage:
    nodes: int
    price: float  # per node-hour
    work_s: float
    startup_s: float
    interrupt_rate_h: float  # 0 for on-demand


@dataclass
class Scenario:
    cap: float
    interval_s: float
    teardown_s: float  # the allowance the watchdog is told
    stages: list[Stage]
    laptop_gone_after_s: float | None
    seed: int


@dataclass
class Outcome:
    spent: float
    cap: float
    how: str  # done | stopped (at a check) | refused (next launch) | hard_stop | laptop_gone | failed


def scenario(rng: random.Random) -> Scenario:
    stages = [Stage(nodes=rng.randint(1, 4), price=rng.uniform(0.1, 12.0), work_s=rng.uniform(60, 4 * 3600),
                    startup_s=rng.uniform(30, 180),
                    interrupt_rate_h=rng.uniform(0.05, 0.5) if rng.random() < 0.5 else 0.0)
              for _ in range(rng.randint(1, 4))]
    return Scenario(cap=rng.uniform(2, 50), interval_s=rng.choice([10.0, 30.0, 60.0]),
                    teardown_s=rng.uniform(20, 120), stages=stages,
                    laptop_gone_after_s=rng.uniform(0, 6 * 3600) if rng.random() < 0.05 else None,
                    seed=rng.randrange(2**32))


def simulate(sc: Scenario, guarded: bool) -> Outcome:
    """One run. ``guarded``: the Watchdog as designed; otherwise the naive baseline."""
    rng = random.Random(sc.seed)  # same interruptions and teardowns for both variants
    clock = FakeClock(T0)
    meter = CostMeter()
    dog = Watchdog(meter, sc.cap, sc.interval_s, sc.teardown_s, clock)
    gone = INF if sc.laptop_gone_after_s is None else T0 + timedelta(seconds=sc.laptop_gone_after_s)

    def teardown() -> float:
        slow = rng.random() < 0.15
        return sc.teardown_s * (rng.uniform(1.0, 3.0) if slow else rng.uniform(0.2, 1.0))

    def end(items: list[str], at: datetime) -> None:
        clock.set(max(clock.now(), at))
        for item in items:
            meter.stopped(item, at)

    def result(how: str) -> Outcome:
        return Outcome(meter.spent(clock.now()), sc.cap, how)

    for s_no, st in enumerate(sc.stages):
        tries = 0
        while True:
            now = clock.now()
            if now >= gone:
                return result("laptop_gone")
            if guarded and not dog.can_start(st.price * st.nodes):
                return result("refused")
            if not guarded and meter.spent(now) >= sc.cap:
                return result("refused")
            items = [f"s{s_no}-t{tries}-n{n}" for n in range(st.nodes)]
            for item in items:
                meter.started(item, st.price, now)
            expires = dog.hard_stop_now(now) if guarded else None
            # Billing ends then: the instance's own shutdown takes at most the teardown allowance.
            hard = INF if expires is None else expires + timedelta(seconds=rng.uniform(0, sc.teardown_s))
            finish = now + timedelta(seconds=st.startup_s + st.work_s)
            interrupt = (now + timedelta(seconds=rng.expovariate(st.interrupt_rate_h / 3600))
                         if st.interrupt_rate_h else INF)
            next_check = now + timedelta(seconds=sc.interval_s * rng.uniform(0.9, 1.0))
            while True:
                check = next_check if next_check < gone else INF
                first = min(hard, interrupt, finish, check)
                if first == hard:
                    end(items, hard)
                    return result("hard_stop")
                if first == interrupt:
                    end(items, interrupt)
                    tries += 1
                    break
                if first == finish:
                    if finish >= gone:  # nobody tears it down: idle shutdown or the hard stop
                        end(items, min(hard, interrupt, finish + timedelta(seconds=IDLE_SHUTDOWN_S)))
                        return result("laptop_gone")
                    end(items, min(hard, interrupt, finish + timedelta(seconds=teardown())))
                    break
                clock.set(check)
                stop = dog.should_stop() if guarded else meter.spent(check) >= sc.cap
                if stop:
                    end(items, min(hard, interrupt, check + timedelta(seconds=teardown())))
                    return result("stopped")
                next_check = check + timedelta(seconds=sc.interval_s * rng.uniform(0.9, 1.0))
            if first == finish:
                break
            if tries > 2:
                return result("failed")
    return result("done")



# --- issue 16: the paths where money leaked -------------------------------------------------------
# Every run above, plus: billing from launch while the head boots; spot capacity missing at launch
# (on-demand at its own, higher price); a lhorch process killed (kill -9) and resumed after `lhorch gc`;
# stages run on two clusters at once; per node a 100 GB gp3 volume and a public IPv4 address; data
# transfer out when outputs come back. ``bill`` is what AWS charges; ``view`` is what lhorch's meter
# sees: as it was before issue 16 ("before") or as it is now ("now"). The stages' hinted output sizes
# are taken to be right (the guard sets their transfer aside from the hint).
EBS_IPV4_PER_NODE_H = 100 * 0.08 / 730 + 0.005
TRANSFER_USD_PER_GB = 0.09


@dataclass
class Leaks:
    fallback: list[float]  # per stage: on-demand price multiple when spot capacity is missing (1: none)
    parallel: list[bool]  # per stage: on two clusters at once
    out_gb: list[float]  # per stage: outputs brought back
    kill_after_s: float | None  # the lhorch process is killed then, and resumed after gc
    resume_delay_s: float


def leaks(sc: Scenario, rng: random.Random) -> Leaks:
    n = len(sc.stages)
    return Leaks(fallback=[rng.uniform(1.5, 3.0) if st.interrupt_rate_h and rng.random() < 0.3 else 1.0
                           for st in sc.stages],
                 parallel=[rng.random() < 0.2 for _ in range(n)], out_gb=[rng.uniform(0, 5) for _ in range(n)],
                 kill_after_s=rng.uniform(0, 4 * 3600) if rng.random() < 0.15 else None,
                 resume_delay_s=rng.uniform(60, 2 * 3600))


def simulate_leaky(sc: Scenario, lk: Leaks, now_model: bool) -> Outcome:
    """One run through the leaks, with lhorch's meter as it was (``now_model`` False) or is now."""
    rng = random.Random(sc.seed)
    clock = FakeClock(T0)
    bill = CostMeter()
    view = CostMeter()
    dog = Watchdog(view, sc.cap, sc.interval_s, sc.teardown_s, clock)
    kill = INF if lk.kill_after_s is None else T0 + timedelta(seconds=lk.kill_after_s)
    gone = INF if sc.laptop_gone_after_s is None else T0 + timedelta(seconds=sc.laptop_gone_after_s)

    def result(how: str) -> Outcome:
        return Outcome(bill.spent(clock.now()), sc.cap, how)

    def end(items: list[str], ends: dict[str, datetime]) -> None:
        for item in items:
            bill.stopped(item, ends[item])
            view.stopped(item, ends[item]) if now_model else view.forget(item)
        clock.set(max([clock.now(), *ends.values()]))

    for s_no, st in enumerate(sc.stages):
        tries = 0
        clusters = 2 if lk.parallel[s_no] else 1
        planned, launched = st.price, st.price * lk.fallback[s_no]
        per_node_true = launched + EBS_IPV4_PER_NODE_H
        while True:
            now = clock.now()
            if now >= gone:
                return result("laptop_gone")
            seen = per_node_true if now_model else planned
            if now_model:  # now: the outputs' transfer out is set aside before the launch (as hinted)
                view.reserve(f"out{s_no}", None, lk.out_gb[s_no] * TRANSFER_USD_PER_GB)
            if not dog.can_start(seen * st.nodes * clusters):
                return result("refused")
            hards: list[datetime | None] = []
            items: list[str] = []
            for c in range(clusters):
                mine = [f"s{s_no}-t{tries}-c{c}-n{n}" for n in range(st.nodes)]
                for item in mine:
                    bill.started(item, per_node_true, now)
                    # before: from the head's first answer, at the planned price, instances only
                    view.started(item, seen, now if now_model else now + timedelta(seconds=st.startup_s))
                items += mine
                hards.append(dog.hard_stop_now(now))  # before: as if this cluster were the last to start
            if now_model:  # one hard stop for all, lowered by the last launch; refused if it cannot work
                hard_all = dog.hard_stop_now(now)
                hards = [hard_all] * clusters
                if hard_all is not None and (hard_all - now).total_seconds() < st.startup_s + st.work_s:
                    for item in items:
                        bill.forget(item)
                        view.forget(item)
                    return result("refused")
            shutdown = {c: INF if h is None else h + timedelta(seconds=rng.uniform(0, sc.teardown_s))
                        for c, h in enumerate(hards)}
            finish = now + timedelta(seconds=st.startup_s + st.work_s)
            interrupt = (now + timedelta(seconds=rng.expovariate(st.interrupt_rate_h / 3600))
                         if st.interrupt_rate_h else INF)
            next_check = now + timedelta(seconds=sc.interval_s * rng.uniform(0.9, 1.0))

            def ends_at(when: datetime, items: list[str] = items,
                        shutdown: dict[int, datetime] = shutdown) -> dict[str, datetime]:
                """Each node bills until ``when`` or its own cluster's hard stop, whichever is first."""
                return {it: min(when, shutdown[int(it.split("-c")[1].split("-")[0])]) for it in items}

            while True:
                check = next_check if next_check < gone else INF
                first = min(min(shutdown.values()), interrupt, finish, check, kill)
                if first == kill and kill < INF:  # nobody watches until gc, then a resume
                    gc_at = kill + timedelta(seconds=lk.resume_delay_s)
                    idle = finish + timedelta(seconds=IDLE_SHUTDOWN_S)
                    end(items, ends_at(min(gc_at, interrupt, idle if finish < gc_at else INF)))
                    clock.set(max(clock.now(), gc_at))
                    kill = INF
                    if not now_model:  # before: a resume got a fresh meter and the whole cap again
                        view = CostMeter()
                        dog = Watchdog(view, sc.cap, sc.interval_s, sc.teardown_s, clock)
                    break
                if first == min(shutdown.values()):
                    end(items, ends_at(first))
                    return result("hard_stop")
                if first == interrupt:
                    end(items, ends_at(interrupt))
                    tries += 1
                    break
                if first == finish:
                    if finish >= gone:
                        end(items, ends_at(min(interrupt, finish + timedelta(seconds=IDLE_SHUTDOWN_S))))
                        return result("laptop_gone")
                    end(items, ends_at(min(interrupt, finish + timedelta(seconds=sc.teardown_s * rng.uniform(0.2, 1)))))
                    out = lk.out_gb[s_no] * TRANSFER_USD_PER_GB
                    bill.restore(None, out)
                    if now_model:
                        view.unreserve(f"out{s_no}")
                        view.restore(None, out)
                    break
                clock.set(check)
                if dog.should_stop():
                    end(items, ends_at(check + timedelta(seconds=sc.teardown_s * rng.uniform(0.2, 1))))
                    return result("stopped")
                next_check = check + timedelta(seconds=sc.interval_s * rng.uniform(0.9, 1.0))
            if first == finish:
                break
            if tries > 2:
                return result("failed")
    return result("done")


def report(name: str, outcomes: list[Outcome]) -> None:
    over = [o.spent - o.cap for o in outcomes if o.spent > o.cap + 1e-9]
    worst = max((o.spent - o.cap for o in outcomes), default=0.0)
    worst_frac = max(((o.spent - o.cap) / o.cap for o in outcomes), default=0.0)
    stopped = [o for o in outcomes if o.how == "stopped"]
    refused = [o for o in outcomes if o.how == "refused"]
    hows = {h: sum(o.how == h for o in outcomes) for h in
            ("done", "stopped", "refused", "hard_stop", "laptop_gone", "failed")}

    def unused(os_: list[Outcome]) -> str:
        return f"{statistics.mean((o.cap - o.spent) / o.cap for o in os_):6.1%}" if os_ else "   n/a"

    print(f"{name:<10} over cap {len(over):4d}/{len(outcomes)}   worst overspend ${max(0.0, worst):7.2f}"
          f" ({max(0.0, worst_frac):6.1%} of cap)   unused when stopped at a check {unused(stopped)}"
          f" (n={len(stopped)}), when the next launch was refused {unused(refused)} (n={len(refused)})")
    print(" " * 11 + "  ".join(f"{h}={n}" for h, n in hows.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=8)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    scenarios = [scenario(rng) for _ in range(args.runs)]
    print(f"{args.runs} simulated runs, seed {args.seed}")
    print("Without the leaks (the model before issue 16):")
    report("watchdog", [simulate(sc, guarded=True) for sc in scenarios])
    report("baseline", [simulate(sc, guarded=False) for sc in scenarios])
    extra = [leaks(sc, rng) for sc in scenarios]
    print("With boot time, fallback prices, kills and resumes, parallel clusters, EBS/IPv4 and transfer out:")
    report("before", [simulate_leaky(sc, lk, now_model=False) for sc, lk in zip(scenarios, extra, strict=True)])
    report("now", [simulate_leaky(sc, lk, now_model=True) for sc, lk in zip(scenarios, extra, strict=True)])


if __name__ == "__main__":
    main()
