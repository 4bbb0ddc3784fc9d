"""Pipeline-level search shared by the policies: candidate offers per stage, a few whole-pipeline
starting points, then local search (move one stage, or a whole connected run of stages that share a
placement, to another offer) while the policy's key improves.

The key is a tuple compared lexicographically; every policy's key starts with (budget excess,
deadline excess) so the search first gets under the cap and the deadline, then optimises.
Work is bounded by ``MAX_STAGE_EVALUATIONS`` (evaluations x stages), not by a clock, so planning
stays fast and deterministic: a 1,000-stage pipeline gets its starting points and a partial pass.
"""

from __future__ import annotations

from collections.abc import Callable

from lhorch.policies.problem import Outcome, Problem

Key = tuple
KeyFn = Callable[[Outcome, list[int]], Key]
ScoreFn = Callable[[float, float], float]  # standalone (cost, seconds) -> smaller is better

MAX_STAGE_EVALUATIONS = 30_000
CLOUD_OPTIONS_PER_STAGE = 5
POPULAR_OFFERS = 3


def candidate_options(pb: Problem, score: ScoreFn) -> list[list[int]]:
    """Per stage: local (if allowed) and up to CLOUD_OPTIONS_PER_STAGE cloud offers from the
    stage's cost/time Pareto front, plus the offers most stages like (so neighbours can share a
    cluster)."""
    options: list[list[int]] = []
    counts: dict[int, int] = {}
    for i in range(pb.n):
        local = [o for o in pb.allowed[i] if pb.is_local[o]]
        cloud = [(pb.standalone(i, o), o) for o in pb.allowed[i] if not pb.is_local[o]]
        cloud.sort(key=lambda x: (x[0][1], x[0][0]))
        front: list[tuple[tuple[float, float], int]] = []
        for ct, o in cloud:
            if not front or ct[0] < front[-1][0][0] - 1e-12:
                front.append((ct, o))
        keep: list[int] = []
        if front:
            ranked = sorted(front, key=lambda x: score(*x[0]))
            keep.append(ranked[0][1])
            cheapest = min(front, key=lambda x: x[0][0])[1]
            fastest = front[0][1]
            for o in (cheapest, fastest):
                if o not in keep:
                    keep.append(o)
            for _, o in ranked[1:]:
                if len(keep) >= CLOUD_OPTIONS_PER_STAGE:
                    break
                if o not in keep:
                    keep.append(o)
        for o in keep:
            counts[o] = counts.get(o, 0) + 1
        options.append(local + keep)
    popular = sorted(counts, key=lambda o: (-counts[o], o))[:POPULAR_OFFERS]
    for i in range(pb.n):
        allowed = pb.run[i] if pb.allowed[i] else {}
        for o in popular:
            if o in allowed and o not in options[i]:
                options[i].append(o)
    return options


def _fallback(pb: Problem, i: int) -> int:
    return next(iter(pb.run[i]))


def starting_points(pb: Problem, options: list[list[int]], score: ScoreFn,
                    prefer_local: bool) -> list[list[int]]:
    """Whole-pipeline assignments to start from: best-per-stage, all local where possible, cheapest
    and fastest per stage, and everything on one popular offer."""
    def per_stage(rank: Callable[[int, int], float]) -> list[int]:
        return [min(opts, key=lambda o: rank(i, o)) if opts else _fallback(pb, i) for i, opts in enumerate(options)]

    starts = [
        per_stage(lambda i, o: score(*pb.standalone(i, o))),
        per_stage(lambda i, o: (0 if pb.is_local[o] else 1, score(*pb.standalone(i, o)))),  # type: ignore[arg-type, return-value]
        per_stage(lambda i, o: pb.standalone(i, o)[0]),
        per_stage(lambda i, o: pb.standalone(i, o)[1]),
    ]
    counts: dict[int, int] = {}
    for opts in options:
        for o in opts:
            if not pb.is_local[o]:
                counts[o] = counts.get(o, 0) + 1
    for o in sorted(counts, key=lambda o: (-counts[o], o))[:POPULAR_OFFERS]:
        base = starts[1] if prefer_local else starts[0]
        starts.append([o if o in options[i] and not pb.is_local[base[i]] else base[i] for i in range(pb.n)])
        starts.append([o if o in options[i] else base[i] for i in range(pb.n)])
    unique: list[list[int]] = []
    for s in starts:
        if s not in unique:
            unique.append(s)
    return unique


def _component(pb: Problem, a: list[int], i: int) -> list[int]:
    """Stages connected to i through needs edges whose both ends share i's offer."""
    o = a[i]
    seen = {i}
    stack = [i]
    while stack:
        j = stack.pop()
        for k in pb.preds[j] + pb.succs[j]:
            if k not in seen and a[k] == o:
                seen.add(k)
                stack.append(k)
    return sorted(seen)


def optimise(pb: Problem, key: KeyFn, score: ScoreFn, prefer_local: bool = False) -> tuple[list[int], Outcome]:
    options = candidate_options(pb, score)
    budget = max(12, MAX_STAGE_EVALUATIONS // max(pb.n, 1))
    evals = 0

    def judge(a: list[int]) -> tuple[Key, Outcome]:
        nonlocal evals
        evals += 1
        out = pb.evaluate(a)
        return key(out, a), out

    best_a: list[int] | None = None
    best_k: Key | None = None
    best_o: Outcome | None = None
    for a in starting_points(pb, options, score, prefer_local):
        k, out = judge(a)
        if best_k is None or k < best_k:
            best_a, best_k, best_o = a, k, out
    assert best_a is not None and best_k is not None and best_o is not None
    a = list(best_a)
    improved = True
    while improved and evals < budget:
        improved = False
        for i in range(pb.n):
            if evals >= budget:
                break
            current = a[i]
            # Also the offers its neighbours use: joining their cluster (a short stage riding a long
            # one's cluster) is a move no per-stage candidate list contains on its own.
            shared = [a[j] for j in pb.preds[i] + pb.succs[i] if not pb.is_local[a[j]] and a[j] in pb.run[i]
                      and pb.allowed[i] and a[j] not in options[i]]
            moves = [*options[i], *dict.fromkeys(shared)]
            if len(moves) < 2:
                continue
            for o in moves:
                if o == current or evals >= budget:
                    continue
                a[i] = o
                k, out = judge(a)
                if k < best_k:
                    best_k, best_o, current, improved = k, out, o, True
                else:
                    a[i] = current
            comp = _component(pb, a, i)
            if len(comp) < 2:
                continue
            targets = {o for j in comp for o in options[j]} - {a[i]}
            for o in sorted(targets):
                if evals >= budget:
                    break
                trial = list(a)
                for j in comp:
                    if o in options[j]:
                        trial[j] = o
                k, out = judge(trial)
                if k < best_k:
                    a, best_k, best_o, improved = trial, k, out, True
        if not improved and pb.local is not None and evals < budget:
            # Exchange: bring one cloud stage home and send another out on the same offer. Under a
            # deadline neither single move pays (one is late, the other dearer) while both together
            # do; bench/policy.py found plans 9x the cheapest this way.
            a, best_k, best_o, improved, evals = _exchange(pb, a, best_k, best_o, judge, evals, budget)
    return a, best_o


def _exchange(pb: Problem, a: list[int], best_k: Key, best_o: Outcome, judge: Callable, evals: int,
              budget: int) -> tuple[list[int], Key, Outcome, bool, int]:
    local = pb.local
    for i in range(pb.n):
        o = a[i]
        if pb.is_local[o] or local not in pb.run[i] or not pb.allowed[i]:
            continue
        for j in range(pb.n):
            if evals >= budget:
                return a, best_k, best_o, False, evals
            if j == i or a[j] != local or o not in pb.allowed[j]:
                continue
            trial = list(a)
            trial[i], trial[j] = local, o
            k, out = judge(trial)
            evals += 1
            if k < best_k:
                return trial, k, out, True, evals
    return a, best_k, best_o, False, evals
