"""Orchestration overhead: trivial stages through `lhorch run` against the same commands run directly.

    python bench/overhead.py [--stages 6] [--repeat 3]

Prints, for a chain of 1 and of N trivial stages: wall seconds through lhorch until the command returns
(cold: the first run in a fresh LHORCH_HOME, no Ray node up; warm: the best of ``--repeat`` runs after
it, with --keep-ray as before), the same commands run directly, and from the two chain lengths the fixed
overhead and the overhead per stage, with lhorch's and Ray's CPU-seconds (bench/_cpu.py). The run's
report figures are drawn by a process `lhorch run` leaves behind (report/background.py): the bench
waits for it before the next run, counts its CPU in lhorch's, and shows how long after the run it
finished ("report +s"). Plain local stages start no Ray at all (issue 18), so the local Ray head's own
start-up is measured on its own, as the reference for the cold target. The profile is measured once
beforehand and cached, as it is after a user's first run, so it is not counted. Timings are noisy on a
busy machine: compare figures from one invocation.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/profile.py shadows `profile`
sys.path.insert(0, str(_HERE.parent))
from bench._cpu import REPORT_WRITER, CpuSampler  # noqa: E402

COMMAND = "echo step"


def pipeline(n: int) -> str:
    lines = [f"name: overhead-{n}", "stages:"]
    for i in range(n):
        lines += [f"  s{i}:", f"    run: {COMMAND} {i}", "    resources: {cpus: 1}"]
        if i:
            lines.append(f"    needs: [s{i - 1}]")
    return "\n".join(lines) + "\n"


def lhorch(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    """Wall seconds until `lhorch` returns, and CPU-seconds by kind, with the report's writer's (also as
    "report", and how long after the run it ended as "report_s")."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", *args],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with CpuSampler(proc.pid) as cpu:
        code = proc.wait()
        wall = time.perf_counter() - started
        report_s, report_cpu = cpu.follow(REPORT_WRITER, env["LHORCH_HOME"])
    if code != 0:
        raise SystemExit(f"lhorch {' '.join(args)} failed ({code})")
    return wall, {**cpu.totals(), "report": report_cpu, "report_s": report_s}


def best(runs: list[tuple[float, dict[str, float]]]) -> tuple[float, dict[str, float]]:
    return min(runs, key=lambda r: r[0])


def direct(n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        subprocess.run(["bash", "-c", f"{COMMAND} {i}"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def ray_head_startup(home: Path) -> float:
    """The local Ray head's start-up as lhorch starts it for a stage that needs Ray (no dashboard)."""
    from lhorch.providers.local import LocalProvider

    provider = LocalProvider(home)
    started = time.perf_counter()
    try:
        provider.warm_up()
        provider.ray_env()
        return time.perf_counter() - started
    finally:
        provider.release(force=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=3, help="Warm runs of each chain; the best counts.")
    parser.add_argument("--skip-head", action="store_true",
                        help="Do not measure the Ray head's start-up (e.g. against an older lhorch on PYTHONPATH).")
    args = parser.parse_args()
    n = args.stages
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, LHORCH_HOME=str(tmp / "home"))
        env.pop("LHORCH_KEEP_RAY", None)
        # The pipelines' folder is their `run:` stages' code (hashed into their cache keys): not the home.
        project = tmp / "project"
        project.mkdir()
        files = {}
        for k in (1, n):
            files[k] = project / f"p{k}.yaml"
            files[k].write_text(pipeline(k))
        lhorch(["profile"], env)  # measured once and cached, as after a user's first run

        results: dict[tuple[str, int], tuple[float, dict[str, float]]] = {}
        for k in (1, n):
            results[("cold", k)] = lhorch(["run", str(files[k]), "--fresh", "-q"], env)
        for k in (1, n):
            results[("warm", k)] = best([lhorch(["run", str(files[k]), "--fresh", "-q", "--keep-ray"], env)
                                         for _ in range(args.repeat)])
        _stop_kept(env)
        base = {k: direct(k) for k in (1, n)}
        head = 0.0 if args.skip_head else ray_head_startup(tmp / "head")

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; warm: best of {args.repeat}; "
          f"CPU of the {n}-stage run (lhorch's includes the report's writer)")
    print(f"{'':>22} {'1 stage':>10} {f'{n} stages':>10} {'lhorch cpu':>11} {'report cpu':>11} {'ray cpu':>8}"
          f" {'report +s':>10}")
    print(f"{'direct (bash)':>22} {base[1]:>9.2f}s {base[n]:>9.2f}s")
    for mode in ("cold", "warm"):
        (one, _), (many, cpu) = results[(mode, 1)], results[(mode, n)]
        print(f"{'lhorch ' + mode:>22} {one:>9.2f}s {many:>9.2f}s {cpu['lhorch']:>10.2f}s {cpu['report']:>10.2f}s"
              f" {cpu['ray']:>7.2f}s {cpu['report_s']:>9.2f}s   ratio {many / base[n]:.0f}x")
    print(f"\nthe local Ray head's start-up (only for stages that need Ray): {head:.2f} s")
    for mode in ("cold", "warm"):
        one, many = results[(mode, 1)][0] - base[1], results[(mode, n)][0] - base[n]
        per_stage = (many - one) / (n - 1)
        fixed = one - per_stage
        target = f"<= {head + 1:.1f} s (Ray head + 1 s)" if mode == "cold" else "<= 0.5 s"
        print(f"{mode}: fixed overhead {fixed:.2f} s (target {target}), per stage {per_stage:.2f} s (target <= 0.3 s)"
              f" [issue 18 before: cold fixed 8-14 s, warm fixed 0.4 s, per stage 1.8-1.9 s;"
              f" last session: warm fixed 3.2-3.7 s]")


def _stop_kept(env: dict[str, str]) -> None:
    from lhorch.providers.local import LocalProvider

    LocalProvider(Path(env["LHORCH_HOME"]), keep=True).release(force=True)


if __name__ == "__main__":
    main()
