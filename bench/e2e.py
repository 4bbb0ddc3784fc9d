"""The example pipeline end to end: through `lhorch run` against its jobs run directly.

    python bench/e2e.py [--file examples/digits/pipeline.yaml] [--repeats 1]

Direct: the same built-in jobs, one after another, as plain processes (`python -m lhorch.jobs.X`) with
the same parameters and the same stage environment (LHORCH_* variables, the pipeline's and the
stage's env), a single-worker fine-tune as an in-process loop (engine torch): the physical limit for
running the stages in sequence. lhorch: `lhorch run FILE --fresh` in a fresh LHORCH_HOME whose
machine profile is already measured (as after a user's first run); cold is its first run there (no
Ray node up; a direct run first warms the disk cache for both sides), repeated the next. A run's wall
time is until `lhorch run` returns; its report's figures are drawn after that by a process it leaves
(report/background.py), which the bench waits for before going on. Each run's CPU-seconds are split
into lhorch's own (the CLI, its fork server, the stage wrappers and the report's writer, also shown
on its own), Ray's, and the stages' (bench/_cpu.py samples them; see there for the error).

Targets (issue 18): lhorch / direct <= 1.25 cold and <= 1.10 repeated; lhorch's and Ray's CPU <= 5%
of the run's wall time. Timings are noisy on a busy machine: compare figures from one invocation.
"""

from __future__ import annotations

import argparse
import json
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

EXAMPLE = _HERE.parent / "examples" / "digits" / "pipeline.yaml"
CLI = [sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()"]


def lhorch_run(file: Path, env: dict[str, str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen([*CLI, "run", str(file), "--fresh", "--json"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    with CpuSampler(proc.pid) as cpu:
        out, _ = proc.communicate()
        wall = time.perf_counter() - started
        _, report_cpu = cpu.follow(REPORT_WRITER, env["LHORCH_HOME"])  # its figures, drawn after it returned
    if proc.returncode != 0:
        raise SystemExit(f"lhorch run failed ({proc.returncode}): {out[-2000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {"wall": wall, "cpu": {**cpu.totals(), "report": report_cpu}, "metrics": _metrics(Path(result["run_dir"]))}


def direct_run(file: Path, root: Path) -> dict:
    from lhorch.jobs.context import StageContext, to_env
    from lhorch.jobs.index import find_job
    from lhorch.orchestrator.core.graph import topological_order
    from lhorch.orchestrator.pipeline import artifacts as art
    from lhorch.orchestrator.pipeline.loader import load_pipeline

    pipeline = load_pipeline(file)
    base = file.resolve().parent
    run_dir = root / f"direct-{time.monotonic_ns()}"
    totals = {"lhorch": 0.0, "ray": 0.0, "stages": 0.0, "report": 0.0}
    started = time.perf_counter()
    for stage in topological_order(pipeline.stages):
        spec = pipeline.stages[stage]
        job = find_job(spec.uses or "")
        if job is None:
            raise SystemExit(f"stage {stage} is not a built-in job; this bench runs the example's jobs")
        params = dict(spec.with_)
        if job.distributed and int(params.get("num_workers", 1)) == 1:
            params["engine"] = "torch"  # one worker: the in-process loop
        out_dir = art.output_dir(run_dir, stage)
        out_dir.mkdir(parents=True, exist_ok=True)
        inputs = {r.name: r.path for r in art.stage_inputs(pipeline, stage, run_dir, base) if r.path.exists()}
        ctx = StageContext(output_dir=out_dir, inputs=inputs, params=params, stage=stage, run_id="direct")
        env = {**os.environ, **pipeline.env, **spec.env, **to_env(ctx),
               "LHORCH_RESOURCES": spec.resources.model_dump_json()}
        proc = subprocess.Popen([sys.executable, "-m", job.module], env=env, cwd=base,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with CpuSampler(proc.pid, direct=True) as cpu:
            code = proc.wait()
        if code != 0:
            raise SystemExit(f"direct: {stage} failed ({code})")
        totals["stages"] += cpu.totals()["stages"]
    return {"wall": time.perf_counter() - started, "cpu": totals, "metrics": _metrics(run_dir)}


def _metrics(run_dir: Path) -> dict:
    found = list(run_dir.glob("stages/*/outputs/metrics/metrics.json"))
    return json.loads(found[0].read_text()) if found else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=EXAMPLE)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lhorch-e2e-") as tmp:
        root = Path(tmp)
        env = dict(os.environ, LHORCH_HOME=str(root / "home"))
        env.pop("LHORCH_KEEP_RAY", None)
        subprocess.run([*CLI, "profile"], env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        direct_run(args.file, root)  # not counted: warms the disk cache (torch, the data) for both sides alike
        runs = {"lhorch cold": lhorch_run(args.file, env), "direct": direct_run(args.file, root)}
        runs["lhorch repeated"] = lhorch_run(args.file, env)
        runs["direct repeated"] = direct_run(args.file, root)

    print(f"{args.file.name}: wall seconds and CPU-seconds (lhorch's own, of which its report's writer; Ray's; "
          f"the stages'); load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'':>16} {'wall':>7} {'lhorch cpu':>11} {'report cpu':>11} {'ray cpu':>8} {'stage cpu':>10}  metrics")
    for name, r in runs.items():
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items() if isinstance(v, float))
        print(f"{name:>16} {r['wall']:>6.1f}s {r['cpu']['lhorch']:>10.1f}s {r['cpu']['report']:>10.1f}s "
              f"{r['cpu']['ray']:>7.1f}s {r['cpu']['stages']:>9.1f}s  {shown}")
    print()
    for mode, base, target in (("cold", "direct", 1.25), ("repeated", "direct repeated", 1.10)):
        r = runs[f"lhorch {mode}"]
        own = r["cpu"]["lhorch"] + r["cpu"]["ray"]
        during = own - r["cpu"]["report"]
        print(f"{mode:>8}: lhorch / direct {r['wall'] / runs[base]['wall']:.2f} (target <= {target:.2f}; "
              f"issue 18 before: 3.9); lhorch+Ray CPU {own:.1f} s = {100 * own / r['wall']:.1f}% of the wall "
              f"time (target <= 5%), {during:.1f} s = {100 * during / r['wall']:.1f}% without the report's "
              f"writer (after the run)")


if __name__ == "__main__":
    main()
