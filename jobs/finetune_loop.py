"""The fine-tuning loop that runs in each worker, with or without Ray Train.

One function, ``train_worker``, is the per-worker body under Ray Train's TorchTrainer and the whole
loop under ``engine: torch``; a small Session object hides the difference (rank, device, DDP wrapping,
reporting). Resumability: every ``checkpoint_every`` optimizer steps the writer writes model, optimizer,
loss-scaler and loop position to ``<output>/checkpoints/step-N.pt``; a new run in the same folder with
the same training parameters continues from the newest one and, because batch order depends only on
(seed, epoch), ends with the same weights as an uninterrupted run.

The writer is the lowest rank on the driver's node (rank 0 on one node): the stage's output folder is
on that node, so its checkpoints are the ones lhorch sends off the node while the stage runs and its
outputs the ones lhorch collects. Workers on other nodes get the inputs through Ray's object store
(``cfg["files"]``), written at the same paths before they are read.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from lhorch.jobs import progress
from lhorch.jobs.data import load_dataset
from lhorch.jobs.device import autocast_dtype, pick_device, set_threads
from lhorch.jobs.models import MODEL_FILE, build_model, mlp_config, save_model
from lhorch.jobs.params import FinetuneParams
from lhorch.jobs.training import as_tensors, batches, epoch_order, evaluate, seed_everything

# Parameters that do not change the trained weights, so a checkpoint stays valid when they differ.
_NOT_IN_FINGERPRINT = {"max_steps", "checkpoint_every", "keep_checkpoints", "engine", "init_checkpoint"}


class LocalSession:
    rank, world = 0, 1

    def __init__(self, device: torch.device | None = None) -> None:
        self.device = device or pick_device()

    def node(self) -> dict:
        return {"rank": 0, "ip": "127.0.0.1", "node_id": None, "host": socket.gethostname()}

    def prepare(self, model, freeze: bool):
        return model.to(self.device)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        pass


class RaySession:
    """Ray Train (V2, the default in Ray 2.60) inside a TorchTrainer worker."""

    def __init__(self) -> None:
        # deferred (here and below): only a Ray Train worker needs ray; LocalSession runs without it
        import ray.train
        import ray.train.torch  # deferred, as above

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def node(self) -> dict:
        """Where this worker runs, so a multi-node run can show that its workers used different nodes."""
        import ray  # see __init__

        return {"rank": self.rank, "ip": ray.util.get_node_ip_address(),
                "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}

    def prepare(self, model, freeze: bool):
        import ray.train.torch  # see __init__

        # A frozen backbone yields no gradients; DDP must be told, or it waits for them forever.
        kwargs = {"find_unused_parameters": True} if freeze and self.world > 1 else {}
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        import ray.train  # see __init__

        # Every rank must call report (it is collective in Train V2); only the writer passes a checkpoint.
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


def materialise(files) -> None:
    """Write the driver's input files (``{absolute path: bytes}``, an object-store reference under Ray)
    where this worker expects them, unless this node already has them (the driver's node)."""
    if files is None:
        return
    import ray  # deferred: only Ray Train workers receive files

    for path, data in ray.get(files).items():
        target = Path(path)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def writer_rank(workers: list[dict], driver_node: str | None) -> int:
    """The lowest rank on the driver's node, else rank 0."""
    on_driver = [w["rank"] for w in workers if driver_node and w.get("node_id") == driver_node]
    return min(on_driver) if on_driver else 0


def fingerprint(params: FinetuneParams, init_file: Path, dataset_sha: str, world: int) -> str:
    keep = {k: v for k, v in params.model_dump().items() if k not in _NOT_IN_FINGERPRINT}
    h = hashlib.sha256(json.dumps({**keep, "world": world, "dataset": dataset_sha}, sort_keys=True).encode())
    h.update(Path(init_file).read_bytes())
    return h.hexdigest()[:16]


def latest_checkpoint(folder: Path, fp: str) -> dict | None:
    for path in sorted(folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]), reverse=True):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file cut short by the interruption itself: try the one before
            print(f"ignoring unreadable checkpoint {path.name}: {exc}")
            continue
        if state.get("fingerprint") == fp:
            return state
        print(f"ignoring {path.name}: written with other parameters or inputs")
    return None


def _save_checkpoint(folder: Path, state: dict, keep: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{state['step']}.pt"
    # Write then rename: an interruption mid-write must not leave a truncated "latest" checkpoint.
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as tmp:
        torch.save(state, tmp)
    os.replace(tmp.name, path)
    old = sorted(folder.glob("step-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    for stale in old[:-keep]:
        stale.unlink(missing_ok=True)
    return path


def _set_frozen(model, frozen: bool) -> None:
    for p in getattr(model, "module", model).backbone.parameters():
        p.requires_grad_(not frozen)


def train_worker(cfg: dict, session=None) -> dict:
    """Fine-tune per ``cfg`` (plain data: picklable for Ray); the writer (see the module docstring)
    writes the outputs."""
    entered = time.time()  # wall clock, comparable with the driver's: Ray Train's start-up ends here
    session = session or RaySession()
    materialise(cfg.get("files"))
    p = FinetuneParams.model_validate(cfg["params"])
    set_threads(cfg["threads"])
    device = session.device
    out = Path(cfg["output_dir"])
    ds = load_dataset(Path(cfg["dataset"]))
    Xtr, ytr = as_tensors(*ds.split("train"), device)
    val = as_tensors(*ds.split("val"), device)

    init = torch.load(cfg["init_file"], map_location="cpu", weights_only=True)
    src = init["config"]
    if src["in_dim"] != ds.n_features:
        raise ValueError(f"the initial checkpoint expects {src['in_dim']} features, the dataset has {ds.n_features}")
    config = mlp_config(ds.n_features, src["hidden"], ds.n_classes, src.get("dropout", 0.0))
    seed_everything(p.seed)
    model = build_model(config)  # the new head's initialisation comes from the seed
    backbone = {k: v for k, v in init["state_dict"].items() if k.startswith("backbone.")}
    model.load_state_dict(backbone, strict=False)

    amp_dtype = autocast_dtype(device, p.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    fp = fingerprint(p, Path(cfg["init_file"]), ds.meta.get("sha256", ""), session.world)
    ckdir = out / "checkpoints"
    step, start_epoch, skip, history, running = 0, 0, 0, [], None
    workers = [session.node()]
    if session.world > 1:
        import torch.distributed as dist  # deferred: only multi-worker runs use it

        gathered: list = [None] * session.world
        dist.all_gather_object(gathered, workers[0])  # the writer records where every worker ran
        workers = gathered
    writer = writer_rank(workers, cfg.get("driver_node"))
    is_writer = session.rank == writer
    state = latest_checkpoint(ckdir, fp) if cfg.get("resume", True) and is_writer else None
    if session.world > 1:
        # Only the writer's node has the checkpoint folder; every rank must resume from the same state.
        box = [state]
        dist.broadcast_object_list(box, src=writer)
        state = box[0]
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        step, start_epoch, skip = state["step"], state["epoch"], state["next_batch"]
        history, running = state["history"], state["running"]
        print(f"resuming from step {step} (epoch {start_epoch + 1}, batch {skip})")
    model.to(device)
    for group_state in opt.state.values():  # optimizer state was loaded on CPU
        for k, v in group_state.items():
            if isinstance(v, torch.Tensor) and k != "step":
                group_state[k] = v.to(device)
    model = session.prepare(model, freeze=p.freeze_backbone and p.freeze_epochs > 0)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext

    def snapshot(epoch: int, next_batch: int, run_stats: dict) -> dict:
        return {"fingerprint": fp, "step": step, "epoch": epoch, "next_batch": next_batch, "history": history,
                "running": run_stats, "model": getattr(model, "module", model).state_dict(),
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": torch.get_rng_state()}

    stopped = False
    last_saved = None
    for epoch in range(start_epoch, p.epochs):
        frozen = p.freeze_backbone and epoch < p.freeze_epochs
        _set_frozen(model, frozen)
        model.train()
        order = batches(epoch_order(len(ytr), p.seed, epoch, session.rank, session.world), p.batch_size)
        stats = running or {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        running = None
        tick = time.perf_counter()
        for i in range(skip, len(order)):
            idx = order[i]
            with autocast():
                logits = model(Xtr[idx])
                loss = F.cross_entropy(logits.float(), ytr[idx])
            scaler.scale(loss / p.accumulate_steps).backward()
            stats["loss"] += loss.item() * len(idx)
            stats["correct"] += int((logits.argmax(1) == ytr[idx]).sum())
            stats["seen"] += len(idx)
            if (i + 1) % p.accumulate_steps and i + 1 < len(order):
                continue  # keep summing gradients; the last batch of an epoch always steps
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            at_limit = p.max_steps is not None and step >= p.max_steps
            if is_writer and (step % p.checkpoint_every == 0 or at_limit):
                stats["seconds"] += time.perf_counter() - tick
                tick = time.perf_counter()
                last_saved = _save_checkpoint(ckdir, snapshot(epoch, i + 1, dict(stats)), p.keep_checkpoints)
            if at_limit:
                stopped = True
                break
        skip = 0
        stats["seconds"] += time.perf_counter() - tick
        if stopped:
            break
        v = evaluate(model, *val)
        if session.world > 1:
            # Each worker saw its own share of the epoch: the history's loss and accuracy are over all of them.
            import torch.distributed as dist  # deferred: only multi-worker runs use it

            totals = torch.tensor([stats["loss"], stats["correct"], stats["seen"]], dtype=torch.float64, device=device)
            dist.all_reduce(totals)
            stats = {**stats, "loss": float(totals[0]), "correct": int(totals[1]), "seen": int(totals[2])}
        seen = stats["seen"]
        history.append({"epoch": epoch + 1, "train_loss": stats["loss"] / max(stats["seen"], 1),
                        "train_acc": stats["correct"] / max(stats["seen"], 1),
                        "val_loss": v["loss"], "val_acc": v["acc"],
                        "frozen": frozen, "steps": step, "seconds": stats["seconds"],
                        "samples_per_s": seen / stats["seconds"] if stats["seconds"] else None})
        if is_writer:
            progress.report(epoch + 1, p.epochs, {"val_acc": v["acc"], "train_loss": history[-1]["train_loss"]})
        session.report({k: x for k, x in history[-1].items() if x is not None})
    if is_writer and not stopped and (last_saved is None or step % p.checkpoint_every):
        _save_checkpoint(ckdir, snapshot(p.epochs, 0, None), p.keep_checkpoints)
    result = {"steps": step, "stopped_early": stopped, "history": history, "world": session.world,
              "device": str(device), "autocast": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
              "entered_at": entered, "workers": workers, "writer": writer}
    if is_writer:
        model_dir = out / "model"
        save_model(model_dir / MODEL_FILE, model, config, task="finetune", steps=step, complete=not stopped,
                   dataset_sha=ds.meta.get("sha256"), class_names=ds.meta.get("class_names"))
        (out / "history").mkdir(parents=True, exist_ok=True)
        (out / "history" / "history.json").write_text(json.dumps(history, indent=2))
        run_summary = {k: v for k, v in result.items() if k != "history"}
        run_summary["left_at"] = time.time()  # what Ray Train adds after the loop is measured from here
        (out / "history" / "run.json").write_text(json.dumps(run_summary, indent=2))
    # The final model also goes to Ray Train's storage, which is what reaches the driver when no worker
    # runs on its node.
    session.report({"done": 1, "steps": step}, checkpoint_dir=out / "model" if is_writer else None)
    return result
