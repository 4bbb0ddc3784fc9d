"""Per-stage overhead of running a stage on a remote Ray cluster versus on the local node.

    python bench/remote.py [--runs 5] [--mb 20]

Starts moto's S3 server and two Ray nodes on 127.0.0.1 (one standing in for the cloud cluster),
then runs the same one-stage pipeline, with an input of --mb MB, placed locally and placed on the
"remote" cluster (inputs up through S3, outputs back). Prints the mean wall time of each and the
difference: what placing a stage remotely costs beyond its own run time, start-up excluded.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The repository root, so that `bench._moto` (the benches' shared moto start-up) imports; lhorch itself is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--mb", type=int, default=20)
    args = parser.parse_args()

    from bench._moto import start_moto

    server = start_moto()
    import boto3

    from lhorch.providers.local import LocalProvider

    boto3.client("s3").create_bucket(Bucket="bench")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "data.bin").write_bytes(os.urandom(args.mb * 1024 * 1024))
        local = LocalProvider(tmp / "local", keep=True, cpus=2)
        remote_node = LocalProvider(tmp / "remote", keep=True, cpus=2)
        try:
            run_bench(args, tmp, local, remote_node, times := {"local": [], "remote": []})
        finally:
            local.release(force=True)
            remote_node.release(force=True)
            server.stop()
    loc, rem = statistics.mean(times["local"]), statistics.mean(times["remote"])
    print(f"one stage with a {args.mb} MB input, mean of {args.runs} runs (Ray nodes already up):")
    print(f"  local node     {loc:6.2f} s")
    print(f"  remote cluster {rem:6.2f} s   (inputs up through S3, outputs back)")
    print(f"  remote overhead per stage: {rem - loc:+.2f} s  (ratio {rem / loc:.2f}x)")


def run_bench(args, tmp: Path, local, remote_node, times: dict[str, list[float]]) -> None:
    from lhorch.orchestrator.core.cluster import ClusterRequest
    from lhorch.orchestrator.core.plan import Offer, Placement
    from lhorch.orchestrator.execution.runner import Runner, RunOptions, all_local_plan
    from lhorch.orchestrator.pipeline.loader import load_pipeline
    from lhorch.orchestrator.state.store import Store
    from lhorch.providers.ray_cluster import RayClusterProvider

    request = ClusterRequest(run_id="bench", group="g", offer=Offer(provider="ray", vcpus=2, memory_gb=4))
    remote = remote_node.start_head(request.run_id, jobs_api=True)  # a stand-in cloud cluster: Ray's Jobs API
    local.acquire(request)
    path = tmp / "p.yaml"
    path.write_text(f"""\
name: remote-bench
cloud: {{provider: ray, address: "{remote.address}", bucket: bench}}
stages:
  s:
    run: wc -c < $LHORCH_INPUT_DATA > $LHORCH_OUTPUT_DIR/n
    inputs: {{data: data.bin}}
    outputs: [n]
""")
    os.environ["LHORCH_RAY_TOKEN"] = remote.token.get_secret_value()
    pipeline = load_pipeline(path)
    ray_provider = RayClusterProvider.from_config(pipeline.cloud)
    for i in range(args.runs):
        for where in ("local", "remote"):
            plan = all_local_plan(pipeline)
            if where == "remote":
                plan.placements["s"] = Placement(stage="s", target="cloud", provider="ray", group="g")
            store = Store(tmp / f"home-{where}-{i}")
            started = time.perf_counter()
            result = Runner(store, pipeline, path, providers={"local": local, "ray": ray_provider}, plan=plan,
                            options=RunOptions(fresh=True)).run()
            times[where].append(time.perf_counter() - started)
            assert result.status == "succeeded", result.message


if __name__ == "__main__":
    main()
