"""Start-up cost of the commands that run nothing: `lhorch validate`, `schema`, `runs`, `plan` (cached
profile), each against `python -c pass` and against Python importing pydantic, yaml and click alone (the
floor any lhorch command pays), in one invocation.

    python bench/cli.py [--repeat 9]

Prints, per command, the best and median wall time over the repeats and the best CPU time (user +
system, less disturbed by other processes on a busy machine than wall time), and the best wall time over
the `python -c pass` baseline and over the floor (Python, click, yaml and one pydantic model).
Targets (issue 18, quiet machine): validate <= 0.15 s, plan <= 0.3 s.
The commands run against a fresh LHORCH_HOME whose profile is measured once beforehand, untimed.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "pipeline.yaml"
TARGETS = {"validate": 0.15, "plan": 0.30}
# The floor: Python, click, yaml and pydantic with one model built and used (pydantic loads its schema
# machinery lazily, on the first model).
FLOOR = ("import yaml, click; from pydantic import BaseModel, Field\n"
         "class M(BaseModel):\n    x: int = Field(0, ge=0)\nM(x=1)")


def lhorch_command() -> list[str]:
    # The console script installed beside this interpreter: what a user's `lhorch` runs, without a
    # version manager's shim (pyenv's adds ~0.25 s of shell before Python starts).
    script = Path(sys.executable).parent / "lhorch"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from lhorch.orchestrator.cli import main; sys.exit(main(obj={}))"]


def measure(cmd: list[str], env: dict[str, str], repeat: int) -> tuple[float, float, float]:
    """(best wall, median wall, best CPU) seconds over ``repeat`` runs; a failing command stops the bench."""
    walls, cpus = [], []
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # finer than os.times()' 10 ms ticks
        start = time.perf_counter()
        out = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        if out.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip()}")
    return min(walls), statistics.median(walls), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    lhorch = lhorch_command()
    with tempfile.TemporaryDirectory(prefix="lhorch-bench-cli-") as home:
        env = {**os.environ, "LHORCH_HOME": home}
        env.pop("LHORCH_PROFILE", None)
        # The profile is measured on first use and cached; a user's later `lhorch plan` reads the cache.
        subprocess.run([*lhorch, "profile"], env=env, stdout=subprocess.DEVNULL, check=True, timeout=300)
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("python: pydantic, yaml, click", [sys.executable, "-c", FLOOR]),
            ("lhorch --version", [*lhorch, "--version"]),
            ("validate", [*lhorch, "validate", str(EXAMPLE)]),
            ("schema", [*lhorch, "schema"]),
            ("runs", [*lhorch, "runs"]),
            ("plan", [*lhorch, "plan", str(EXAMPLE)]),
        ]
        results = {name: measure(cmd, env, args.repeat) for name, cmd in cases}
    base, floor = results["python -c pass"][0], results["python: pydantic, yaml, click"][0]
    load = os.getloadavg()[0]
    print(f"{args.repeat} runs each; load average {load:.2f} on {os.cpu_count()} CPUs "
          f"({'busy: wall times are inflated' if load > 0.5 else 'quiet'})")
    print(f"{'command':32}{'best wall s':>12}{'median s':>10}{'best CPU s':>12}{'over python s':>15}"
          f"{'over floor s':>14}{'target s':>10}")
    for name, (best, median, cpu) in results.items():
        target = TARGETS.get(name)
        print(f"{name:32}{best:>12.3f}{median:>10.3f}{cpu:>12.3f}{best - base:>15.3f}{best - floor:>14.3f}"
              f"{(f'{target:.2f}' if target else '-'):>10}")


if __name__ == "__main__":
    main()
