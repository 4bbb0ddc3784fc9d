"""Time from `lhorch run` to the first cloud stage running, on the cloud box, and a stage's
overhead on a box node against the same stage local.

    sudo python bench/cloud.py [--runs 1]

Starts the box (tests/cloudbox: moto as EC2/S3/SSM/IAM, every instance a namespace of this host
booting lhorch's real user data; needs root), runs a one-stage pipeline placed on the cloud with
the real CLI (`lhorch run`, connector direct), and splits the time to its stage's first line:

    launch     `lhorch run` started → the instance exists (planning, bucket, token, security group,
               node role, lhorch's wheel built and uploaded, RunInstances)
    boot       instance exists → its user data starts (the box starts it at once; see below)
    installed  → lhorch's wheel fetched and checked, venv made, pinned packages installed
    Ray up     → Ray token fetched, Ray's head started (bootstrap reports `ready`)
    submitted  → lhorch saw the head answer and the stage's first line ran on the node

Then the same stage placed local, and each stage's own duration as `lhorch status` records it (its
overhead: inputs up and outputs down through S3, job submission, the node's runtime environment).
SkyPilot's published cluster-up for a CPU cluster on AWS is printed beside it as the reference
for a real account. The box does not measure: EC2's scheduling and the VM's boot (firmware,
kernel, cloud-init: typically 20-40 s), `dnf install python3.x` on a bare Amazon Linux image, pip
downloading packages the image lacks (the box's image has this host's torch and Ray: on AWS a
plain AL2023 image downloads them, ~1-3 min for torch CPU, more for CUDA), the SSM port forward
(the box reaches the head directly), and the latency of real AWS APIs. Figures are noisy on a
loaded machine; run it a few times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]  # bench/profile.py shadows `profile`
sys.path.insert(0, str(_HERE.parent / "tests"))  # the box is test infrastructure

SKYPILOT_AWS_CPU_UP_S = 73.0  # SkyPilot's published cluster-up on AWS, CPU cluster: 1 min 13 s
LHORCH = [str(Path(sys.executable).with_name("lhorch"))]

PIPELINE = """\
name: bench-cloud-{placement}
cloud: {{provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge], connector: direct}}
stages:
  make:
    placement: local
    run: head -c 5000000 /dev/urandom > $LHORCH_OUTPUT_DIR/data
    outputs: [data]
  work:
    needs: [make]
    placement: {placement}
    run: |
      echo "first-line $(date +%s.%N)"
      sha256sum $LHORCH_INPUT_DATA > $LHORCH_OUTPUT_DIR/sum
    outputs: [sum]
"""


def run_once(box, tmp: Path, placement: str) -> dict[str, float]:
    folder = tmp / f"{placement}-{time.monotonic_ns()}"
    folder.mkdir()
    path = folder / "pipeline.yaml"
    path.write_text(PIPELINE.format(placement=placement))
    home = folder / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(box.laptop_env(), LHORCH_HOME=str(home), RAY_DISABLE_USAGE_STATS="1")
    known = set(box.nodes)
    t0 = time.time()
    done = subprocess.run([*LHORCH, "run", str(path), "--json"], env=env, capture_output=True, text=True, timeout=600)
    total = time.time() - t0
    if done.returncode != 0:
        raise SystemExit(f"lhorch run failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
    status = json.loads(subprocess.run([*LHORCH, "status", run_id, "--json"], env=env, capture_output=True,
                                       text=True, timeout=60).stdout)
    work = next(s for s in status["stages"] if s["stage"] == "work")
    log = subprocess.run([*LHORCH, "logs", run_id, "work"], env=env, capture_output=True, text=True).stdout
    first = float(next(line.split("first-line ")[1].split()[0] for line in log.splitlines() if "first-line " in line))
    out = {"total": total, "stage": float(work.get("seconds") or 0.0), "first_line": first - t0}
    new = [n for iid, n in box.nodes.items() if iid not in known]
    if placement == "cloud":
        (node,) = new
        steps = node.boot_steps()
        out.update(launch=node.started - t0, boot=steps["started"] - node.started,
                   installed=steps["installed"] - steps["started"], ray_up=steps["ready"] - steps["installed"],
                   submitted=first - steps["ready"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    from cloudbox import Box
    from cloudbox.fixtures import unavailable

    why = unavailable()
    if why:
        raise SystemExit(f"cannot run the box here: {why}")
    results: dict[str, list[dict[str, float]]] = {"cloud": [], "local": []}
    with Box() as box, tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.runs):
            for placement in ("local", "cloud"):
                results[placement].append(run_once(box, Path(tmp), placement))

    def mean(placement: str, key: str) -> float:
        return statistics.mean(r[key] for r in results[placement])

    print(f"cloud box, {args.runs} run(s) each, means (noisy on a loaded machine)")
    print(textwrap.dedent(f"""\
        `lhorch run` → first cloud stage running: {mean('cloud', 'first_line'):6.1f} s
          launch     {mean('cloud', 'launch'):6.1f} s   (start, plan, bucket, token, group, role, wheel, RunInstances)
          boot       {mean('cloud', 'boot'):6.1f} s   (box: instance seen → user data starts; EC2: VM boot, 20-40 s)
          installed  {mean('cloud', 'installed'):6.1f} s   (wheel fetched + checked, venv, pinned packages)
          Ray up     {mean('cloud', 'ray_up'):6.1f} s   (token from SSM, `ray start --head`)
          submitted  {mean('cloud', 'submitted'):6.1f} s   (head seen answering, job submitted, stage's first line)
        reference: SkyPilot's published AWS CPU cluster-up {SKYPILOT_AWS_CPU_UP_S:.0f} s (1 min 13 s); box/reference = \
{mean('cloud', 'first_line') / SKYPILOT_AWS_CPU_UP_S:.2f}
        stage `work` (5 MB in, hash out) as recorded: cloud {mean('cloud', 'stage'):.1f} s, local \
{mean('local', 'stage'):.1f} s → overhead on a box node {mean('cloud', 'stage') - mean('local', 'stage'):+.1f} s
        whole `lhorch run`: cloud {mean('cloud', 'total'):.1f} s (teardown included), \
local {mean('local', 'total'):.1f} s
        not measured by the box: EC2 scheduling and VM boot, dnf's Python on a bare image, pip downloads of
        packages the image lacks (torch), the SSM port forward, real AWS API latency."""))


if __name__ == "__main__":
    main()
