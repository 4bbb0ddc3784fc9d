"""Ray Train's cost for jobs.finetune: the same loop, data and model in-process vs under TorchTrainer.

Prints in-loop throughput (samples/s measured inside the training loop, first epoch excluded, so Ray's
startup is not in it) and end-to-end wall time (startup included) for both, and their ratio. Run by
hand: `python bench/jobs.py [--copies 30 --epochs 6 --hidden 256,128 --cpus 1]`. The target is an
in-loop ratio >= 0.9; the wall-time difference is the fixed cost of starting Ray and its workers, which
the last line splits into its parts (jobs/finetune.py measures them). That cost is why `engine: auto`
trains a single worker in-process and uses Ray Train only for `num_workers` > 1 (issue 18).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# Run as `python bench/jobs.py`, Python puts bench/ first on the path (and Ray Train's workers inherit it),
# where bench/profile.py would shadow the standard library's `profile`: torch's optimizers import
# torch._dynamo, which imports cProfile, which imports `profile`. Keep bench/ off the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=30, help="augmented copies of each digit (more samples per epoch)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--hidden", default="256,128")
    ap.add_argument("--batch-size", type=int, default=256)
    # One thread by default: on a 2-core machine Ray's own processes (raylet, controller, idle workers
    # it prestarts) take CPU while training runs, and a second torch thread then mostly spins.
    ap.add_argument("--cpus", type=int, default=1, help="CPUs given to the stage (torch threads = this)")
    args = ap.parse_args()
    os.environ["LHORCH_RESOURCES"] = json.dumps({"cpus": args.cpus, "gpus": 0})

    from lhorch.jobs import finetune, preprocess, pretrain
    from lhorch.jobs.context import StageContext

    with tempfile.TemporaryDirectory(prefix="lhorch-bench-") as tmp:
        root = Path(tmp)
        pre = preprocess.run({"augment": True, "augment_copies": args.copies}, StageContext(output_dir=root / "pre"))
        data = root / "pre" / "dataset"
        pretrain.run({"epochs": 1, "hidden": args.hidden},
                     StageContext(output_dir=root / "pt", inputs={"dataset": data}))
        inputs = {"dataset": data, "checkpoint": root / "pt" / "checkpoint"}
        common = {"epochs": args.epochs, "batch_size": args.batch_size, "checkpoint_every": 10_000}
        print(f"data: {pre['sizes']['train']} training samples; model: MLP 64-{args.hidden.replace(',', '-')}-10; "
              f"{args.epochs} epochs, batch {args.batch_size}, {args.cpus} CPU(s)")
        results = {}
        for engine in ("torch", "ray"):
            start = time.perf_counter()
            s = finetune.run({**common, "engine": engine}, StageContext(output_dir=root / engine, inputs=inputs))
            results[engine] = {"samples_per_s": s["train_samples_per_s"], "wall_s": time.perf_counter() - start,
                               "val_acc": s["val_acc"], "overhead": s.get("ray_overhead_s", {})}
    plain, ray_ = results["torch"], results["ray"]
    print(f"{'':24}{'in-loop samples/s':>20}{'end-to-end wall s':>20}{'val acc':>10}")
    print(f"{'plain PyTorch loop':24}{plain['samples_per_s']:>20,.0f}{plain['wall_s']:>20.1f}{plain['val_acc']:>10.3f}")
    print(f"{'Ray Train (1 worker)':24}{ray_['samples_per_s']:>20,.0f}{ray_['wall_s']:>20.1f}{ray_['val_acc']:>10.3f}")
    ratio = ray_["samples_per_s"] / plain["samples_per_s"]
    print(f"ratio Ray Train / plain, in-loop: {ratio:.2f} (target >= 0.90); "
          f"startup overhead: {ray_['wall_s'] - plain['wall_s']:.1f} s")
    parts = ray_["overhead"]
    print("Ray Train's time outside the loop, s: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
          + f" (sum {sum(parts.values()):.1f}; `import`: the driver's import of ray and ray.train, `init`: "
          "ray.init starting a private node, `to_loop`: controller, placement group, worker group and the "
          "worker's imports until the loop starts, `after_loop`: reporting the end and tearing the group down, "
          "`shutdown`: stopping the node)")


if __name__ == "__main__":
    main()
