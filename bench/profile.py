"""Is the profiler's matmul figure right, and is profiling quick?

Runs, in one process: (1) the profiler's CPU fp32 matmul measurement, (2) torch.utils.benchmark.Timer
on the same-size matmul (the baseline: torch's own timing, median of blocks), prints both GFLOP/s and
their ratio (target: within 30%), then (3) a full quick profile into a throw-away LHORCH_HOME with its
wall time (target: < 5 s, torch import excluded and shown separately).

    python bench/profile.py [--n 1024] [--thorough]

Run by hand, not by CI. On a shared machine run it twice: neighbours steal cycles from both sides.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/profile.py`, Python puts bench/ first on the path, where this file would shadow the
# standard library's `profile` (imported by cProfile, which torch._dynamo imports): keep bench/ off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=None, help="matmul size (default: the quick profile's)")
    parser.add_argument("--thorough", action="store_true", help="profile with the thorough settings")
    parser.add_argument("--rounds", type=int, default=3, help="alternating profiler/Timer rounds")
    args = parser.parse_args()

    t = time.perf_counter()
    import torch
    import torch.utils.benchmark as tb
    import_s = time.perf_counter() - t

    from lhorch.orchestrator.machine.microbench import QUICK, THOROUGH, matmul_gflops
    from lhorch.orchestrator.machine.profiler import get_profile
    from lhorch.orchestrator.state.store import Store

    settings = THOROUGH if args.thorough else QUICK
    n = args.n or settings.matmul_n_cpu
    a, b = torch.randn(n, n), torch.randn(n, n)
    timer = tb.Timer("torch.matmul(a, b)", globals={"torch": torch, "a": a, "b": b},
                     num_threads=torch.get_num_threads())
    # Alternate the two so that a neighbour's burst on a shared machine hits both sides alike.
    ours, direct = [], []
    for _ in range(args.rounds):
        ours.append(matmul_gflops("cpu", "fp32", n=n, seconds=settings.matmul_seconds,
                                  max_iters=settings.matmul_max_iters, warmup=settings.warmup))
        baseline = timer.blocked_autorange(min_run_time=settings.matmul_seconds)
        direct.append(2 * n**3 / baseline.median / 1e9)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, matmul {n}x{n} fp32 on cpu, "
          f"{args.rounds} alternating rounds, load average {load:.1f} on {os.cpu_count()} CPUs")
    for i, (m, d) in enumerate(zip(ours, direct, strict=True), 1):
        print(f"  round {i}: profiler {m.value:8.1f} GFLOP/s   torch.utils.benchmark (median) {d:8.1f} GFLOP/s"
              f"   ratio {m.value / d:.2f}")
    mine, theirs = statistics.median(m.value for m in ours), statistics.median(direct)
    ratio = mine / theirs
    print(f"  median:  profiler {mine:8.1f} GFLOP/s   torch.utils.benchmark {theirs:8.1f} GFLOP/s   "
          f"ratio {ratio:.2f} -> {'OK (within 30%)' if abs(ratio - 1) <= 0.30 else 'OFF BY MORE THAN 30%'}")
    print(f"  method: {ours[-1].method}")

    with tempfile.TemporaryDirectory() as home:
        os.environ["LHORCH_HOME"] = home
        os.environ.pop("LHORCH_PROFILE", None)
        store = Store()
        t = time.perf_counter()
        profile = get_profile(store, refresh=True, thorough=args.thorough)
        total = time.perf_counter() - t
        t = time.perf_counter()
        get_profile(store, thorough=args.thorough)
        cached = time.perf_counter() - t
        store.close()
    print(f"full {'thorough' if args.thorough else 'quick'} profile: {total:.2f}s "
          f"(target < 5 s for quick; torch import {import_s:.2f}s not included); from cache: {cached:.2f}s")
    for key, m in profile.measured.items():
        print(f"  {key:22s} {m.value:12,.1f} {m.unit:8s} {m.seconds:6.2f}s  {m.method}")
    for note in profile.notes:
        print(f"  note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
