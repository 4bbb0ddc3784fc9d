"""Orchestration overhead: trivial stages through `lhorch run` against the same commands run directly.

    python bench/overhead.py [--stages 6]

Prints, for a chain of 1 and of N trivial stages: wall seconds through lhorch (cold: no Ray node
yet; warm: a node kept by --keep-ray), the same commands run directly, and from the two chain
lengths the fixed overhead and the overhead per stage. The profile is measured once beforehand
and cached, as it is after a user's first run, so it is not counted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMAND = "echo step"


def pipeline(n: int) -> str:
    lines = [f"name: overhead-{n}", "stages:"]
    for i in range(n):
        lines += [f"  s{i}:", f"    run: {COMMAND} {i}", "    resources: {cpus: 1}"]
        if i:
            lines.append(f"    needs: [s{i - 1}]")
    return "\n".join(lines) + "\n"


def lhorch(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", *args], env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def direct(n: int) -> float:
    started = time.perf_counter()
    for i in range(n):
        subprocess.run(["bash", "-c", f"{COMMAND} {i}"], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stages", type=int, default=6)
    args = parser.parse_args()
    n = args.stages
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, LHORCH_HOME=str(tmp / "home"))
        files = {}
        for k in (1, n):
            files[k] = tmp / f"p{k}.yaml"
            files[k].write_text(pipeline(k))
        lhorch(["profile"], env)  # measured once and cached, as after a user's first run

        results: dict[tuple[str, int], float] = {}
        for k in (1, n):
            results[("cold", k)] = lhorch(["run", str(files[k]), "--fresh", "-q"], env)
        lhorch(["run", str(files[1]), "--fresh", "-q", "--keep-ray"], env)  # start the kept node
        for k in (1, n):
            results[("warm", k)] = lhorch(["run", str(files[k]), "--fresh", "-q", "--keep-ray"], env)
        _stop_kept(env)
        base = {k: direct(k) for k in (1, n)}

    print(f"{'':>22} {'1 stage':>10} {f'{n} stages':>10}")
    print(f"{'direct (bash)':>22} {base[1]:>9.2f}s {base[n]:>9.2f}s")
    for mode in ("cold", "warm"):
        one, many = results[(mode, 1)], results[(mode, n)]
        print(f"{'lhorch ' + mode:>22} {one:>9.2f}s {many:>9.2f}s   ratio {many / base[n]:.0f}x")
    print()
    for mode in ("cold", "warm"):
        one, many = results[(mode, 1)] - base[1], results[(mode, n)] - base[n]
        per_stage = (many - one) / (n - 1)
        fixed = one - per_stage
        print(f"{mode}: fixed overhead {fixed:.2f} s, per stage {per_stage:.2f} s "
              f"(targets: fixed < 3 s, per stage < 1 s)")


def _stop_kept(env: dict[str, str]) -> None:
    from lhorch.providers.local import LocalProvider

    LocalProvider(Path(env["LHORCH_HOME"]), keep=True).release(force=True)


if __name__ == "__main__":
    main()
