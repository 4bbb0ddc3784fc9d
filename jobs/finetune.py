"""jobs.finetune: transfer learning from a pretrained backbone, on Ray Train.

Starts from input `checkpoint` (jobs.pretrain) or the file in `init_checkpoint`, gives the model a new
head for the dataset's classes, optionally trains the head alone for `freeze_epochs`, then everything.
Mixed precision, gradient accumulation, step checkpoints and resume live in jobs/finetune_loop.py.

`engine: auto` (default) trains in this process when one worker is asked for and under Ray Train's
TorchTrainer for `num_workers` > 1: Ray Train buys data parallelism across workers and nodes, and costs
its start-up (a controller, a placement group and a worker group: 30-55 s on a busy 2-core laptop).
`engine: ray` always uses Ray Train, `engine: torch` never. Under Ray Train, run by lhorch, the job is a
Ray Jobs driver (RAY_ADDRESS is set) and attaches to that cluster; run by hand it starts a private
local Ray and stops it afterwards.

Several nodes (issue 14): `num_workers` counts workers over all of the stage's `resources.nodes`, a
multiple of it, so each node runs num_workers / nodes of them; each worker gets an equal share of its
node's `resources.cpus` (and one GPU when the stage has GPUs). With more than one node the workers'
placement group is SPREAD, so they land on different nodes rather than packed onto the head. Each
worker's node (address and Ray node id) is in run.json's `workers`, and the stage's summary counts the
distinct nodes. `batch_size` is per worker: two workers at batch_size 32 take the same optimizer steps
on the same samples as one worker at 64 (the ranks deal one seeded permutation out round-robin and DDP
averages their gradients), which is what tests/test_multinode.py checks.
Outputs: `model` (model.pt), `history` (history.json per epoch, run.json), and `checkpoints/`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from lhorch.jobs.cli import coerce, main
from lhorch.jobs.context import StageContext
from lhorch.jobs.device import stage_resources
from lhorch.jobs.finetune_loop import LocalSession, train_worker
from lhorch.jobs.models import MODEL_FILE, model_file
from lhorch.jobs.params import FinetuneParams


def _init_file(p: FinetuneParams, ctx: StageContext) -> Path:
    if p.init_checkpoint:
        return model_file(Path(p.init_checkpoint)).resolve()
    return model_file(ctx.input("checkpoint")).resolve()


def _quiet_without_dashboard() -> None:
    # Train V2's placement-group cleaner asks the state API, served by the dashboard, whether the
    # controller is alive; without a dashboard it warns on every poll. Cleanup still happens on
    # ray.shutdown(), so in a private cluster those warnings are only noise.
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)


def _input_files(cfg: dict) -> dict[str, bytes]:
    """Every file a worker reads: the dataset folder's and the initial checkpoint, by absolute path."""
    paths = [p for p in Path(cfg["dataset"]).rglob("*") if p.is_file()] + [Path(cfg["init_file"])]
    return {str(p.resolve()): p.read_bytes() for p in paths}


def _ray_worker(cfg: dict) -> None:
    # Module-level so Ray pickles it by reference; the worker imports jobs.finetune_loop itself.
    train_worker(cfg)


def _trim_ray_train() -> None:
    """Ray Train's parts that a fine-tune does not use, off unless the user set them (measured in
    bench/jobs.py). The controller polls its workers every 2 s by default, so a finished
    fit is noticed up to 2 s late; metrics callbacks export to a Prometheus agent nobody reads here."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")


def _fit_with_ray(cfg: dict, p: FinetuneParams, out: Path, cpus: float, use_gpu: bool, nodes: int = 1) -> dict:
    t_import = time.time()
    import ray  # deferred: Ray takes seconds to import, and the in-process engine runs without it
    from ray.train import RunConfig, ScalingConfig  # deferred, as above
    from ray.train.torch import TorchTrainer  # deferred, as above

    # ``cpus`` is per node: the node's workers share it.
    cpus_per_worker = max(1, int(cpus // p.workers_per_node(nodes)))
    cfg = {**cfg, "threads": cpus_per_worker}
    _trim_ray_train()
    started_here = False
    t_init = time.time()
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # a Ray Jobs driver: attach to the cluster that runs us
        else:
            ray.init(num_cpus=max(int(cpus), cpus_per_worker * p.num_workers), include_dashboard=False,
                     runtime_env={"worker_process_setup_hook": "lhorch.jobs.finetune._quiet_without_dashboard"})
            started_here = True
    alive = sum(1 for node in ray.nodes() if node.get("Alive"))
    cfg["driver_node"] = ray.get_runtime_context().get_node_id()
    if alive > 1:
        # Workers on other nodes do not have the inputs this node was given: ship them through the
        # object store (a dataset and a checkpoint of a fine-tune, not a corpus).
        cfg["files"] = ray.put(_input_files(cfg))
    if alive == 1:
        # One node (this laptop, or a one-node cluster): when it is drained there is nowhere to move the
        # workers, so Train's preemption watcher buys nothing and costs an actor process to start.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    t_fit = time.time()
    try:
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(
                num_workers=p.num_workers, use_gpu=use_gpu,
                resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
                # PACK (the default) would fill the head first; a multi-node stage paid for every node.
                placement_strategy="SPREAD" if nodes > 1 else "PACK",
            ),
            run_config=RunConfig(storage_path=str((out / "ray_train").resolve()), name="finetune"),
        )
        result = trainer.fit()
        t_fitted = time.time()
    finally:
        if started_here:
            ray.shutdown()
    t_done = time.time()
    # No worker ran on this node (the writer is elsewhere): the model reaches us through Ray Train's storage.
    if not (out / "model" / MODEL_FILE).exists() and result.checkpoint is not None:
        with result.checkpoint.as_directory() as d:
            shutil.copytree(d, out / "model", dirs_exist_ok=True)
    info = json.loads((out / "history" / "run.json").read_text())
    # Where Ray Train's time goes besides training (bench/jobs.py prints it).
    info["ray_overhead_s"] = {"import": t_init - t_import, "init": t_fit - t_init,
                              "to_loop": info["entered_at"] - t_fit, "after_loop": t_fitted - info["left_at"],
                              "shutdown": t_done - t_fitted}
    return info


def run(params: FinetuneParams | dict | None, ctx: StageContext) -> dict:
    p = coerce(FinetuneParams, params)
    out = ctx.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    res = stage_resources()
    cfg = {"params": p.model_dump(), "dataset": str(ctx.input("dataset").resolve()),
           "init_file": str(_init_file(p, ctx)), "output_dir": str(out), "threads": max(1, int(res.cpus))}
    # Run by lhorch, the stage's reservation says whether it may use a GPU; by hand, any GPU present.
    reserved = bool(os.environ.get("LHORCH_RESOURCES"))
    use_gpu = res.gpus > 0 if reserved else torch.cuda.is_available()
    engine = p.resolved_engine
    start = time.perf_counter()
    if engine == "torch":
        info = train_worker(cfg, LocalSession(torch.device("cpu") if reserved and not use_gpu else None))
    else:
        info = _fit_with_ray(cfg, p, out, res.cpus, use_gpu, res.nodes)
    wall = time.perf_counter() - start
    history = json.loads((out / "history" / "history.json").read_text())
    timed = history[1:] or history  # the first epoch pays for warm-up (allocations, thread pools)
    seconds = sum(h["seconds"] for h in timed)
    samples = sum(h["samples_per_s"] * h["seconds"] for h in timed if h["samples_per_s"])
    return {
        "engine": engine, "workers": p.num_workers, "device": info.get("device"), "autocast": info.get("autocast"),
        "steps": info["steps"], "stopped_early": info["stopped_early"], "epochs_done": len(history),
        "val_acc": history[-1]["val_acc"] if history else None,
        "train_samples_per_s": samples / seconds if seconds else None, "wall_s": wall,
        "nodes": len({w.get("node_id") or w.get("ip") for w in info.get("workers", [])}) or 1,
        **({"ray_overhead_s": info["ray_overhead_s"]} if "ray_overhead_s" in info else {}),
    }


if __name__ == "__main__":
    main(FinetuneParams, run, "jobs.finetune", __doc__)
