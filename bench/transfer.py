"""Artifact staging throughput: S3ArtifactStore.put_dir versus plain boto3 upload_file, both
against moto's server on 127.0.0.1 (so this measures lhorch's client-side overhead — hashing,
HEAD for skip-if-same, part scheduling — not the network). Run by hand:

    python bench/transfer.py [--mb 200] [--files 4]

Target: ratio (lhorch / boto3) ≥ 0.9.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# The repository root, so that `bench._moto` (the benches' shared moto start-up) imports; lhorch itself is installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from bench._moto import start_moto

    server = start_moto()
    import boto3

    from lhorch.providers.aws.s3 import S3ArtifactStore, ensure_bucket

    client = boto3.Session(region_name="us-east-1").client("s3")
    ensure_bucket(client, "lhorch-bench", "us-east-1", prefix="bench")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)
        size = args.mb * 1024 * 1024 // args.files
        for i in range(args.files):
            (src / f"shard-{i}.bin").write_bytes(os.urandom(size))
        total_mb = size * args.files / 1e6

        best = {"boto3": float("inf"), "lhorch": float("inf")}
        for r in range(args.repeat):
            t = time.perf_counter()
            for f in sorted(src.iterdir()):
                client.upload_file(str(f), "lhorch-bench", f"plain/{r}/{f.name}")
            best["boto3"] = min(best["boto3"], time.perf_counter() - t)

            store = S3ArtifactStore("lhorch-bench", f"bench/runs/{r}", client)
            t = time.perf_counter()
            store.put_dir(src, "out")
            best["lhorch"] = min(best["lhorch"], time.perf_counter() - t)

        t = time.perf_counter()
        skipped = S3ArtifactStore("lhorch-bench", "bench/runs/0", client).put_dir(src, "out")
        skip_s = time.perf_counter() - t
    server.stop()
    rate = {k: total_mb / v for k, v in best.items()}
    print(f"{total_mb:.0f} MB in {args.files} files, best of {args.repeat}, moto server on 127.0.0.1")
    print(f"  boto3 upload_file (baseline) : {rate['boto3']:7.1f} MB/s  ({best['boto3']:.2f} s)")
    print(f"  S3ArtifactStore.put_dir      : {rate['lhorch']:7.1f} MB/s  ({best['lhorch']:.2f} s)")
    print(f"  ratio lhorch / boto3         : {rate['lhorch'] / rate['boto3']:.2f}  (target >= 0.9)")
    print(f"  put_dir again, same content  : {skip_s:.2f} s "
          f"({sum(t.skipped for t in skipped)} of {len(skipped)} skipped)")


if __name__ == "__main__":
    main()
