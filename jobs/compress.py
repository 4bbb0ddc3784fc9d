"""jobs.compress: magnitude pruning, then dynamic int8 quantization, of the model in input `model`.

Pruning zeroes the `sparsity` share of smallest-magnitude weights in every Linear layer, optionally
recovers accuracy with a few epochs of training (the pruning masks keep the zeros at zero), and is
then made permanent. Dense storage does not shrink from zeros; the int8 step is what cuts the size on
disk (about 4x) and the CPU latency. Outputs: `model` (compressed model.pt) and `report` (report.json
with size, latency per batch and accuracy before and after).
"""

from __future__ import annotations

import copy
import json
import time

import torch
from torch import nn
from torch.nn.utils import prune

from lhorch.jobs.cli import coerce, main
from lhorch.jobs.context import StageContext
from lhorch.jobs.data import load_dataset
from lhorch.jobs.device import set_threads, stage_resources
from lhorch.jobs.models import MODEL_FILE, count_parameters, load_model, model_file, quantize_dynamic_int8, save_model
from lhorch.jobs.params import CompressParams
from lhorch.jobs.training import as_tensors, evaluate, fit, seed_everything


@torch.no_grad()
def latency_ms(model: nn.Module, X: torch.Tensor, batch: int, repeats: int) -> float:
    """Median milliseconds per forward pass of one batch (median: robust to a busy shared machine)."""
    xb = X[:batch] if len(X) >= batch else X.repeat((batch + len(X) - 1) // len(X), 1)[:batch]
    model.eval()
    for _ in range(5):
        model(xb)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(xb)
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[len(times) // 2]


def sparsity_of(model: nn.Module) -> float:
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


def run(params: CompressParams | dict | None, ctx: StageContext) -> dict:
    p = coerce(CompressParams, params)
    set_threads(stage_resources().cpus)
    ds = load_dataset(ctx.input("dataset"))
    src_file = model_file(ctx.input("model"))
    model, payload = load_model(src_file)
    if payload["config"].get("quantized"):
        raise ValueError(f"{src_file} is already quantized; compress a float model")
    config = dict(payload["config"])
    train, val, test = (as_tensors(*ds.split(s)) for s in ("train", "val", "test"))

    before = {"bytes": src_file.stat().st_size, "parameters": count_parameters(model),
              "test_acc": evaluate(model, *test)["acc"],
              "latency_ms": latency_ms(model, test[0], p.latency_batch, p.latency_repeats)}

    history: list[dict] = []  # the recovery training's epochs, drawn by `lhorch report`
    pruned = copy.deepcopy(model)
    layers = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    if p.sparsity > 0:
        for layer in layers:
            prune.l1_unstructured(layer, name="weight", amount=p.sparsity)
        if p.recover_epochs:
            seed_everything(p.seed)
            history = fit(pruned, train, val, epochs=p.recover_epochs, batch_size=64, lr=p.lr, weight_decay=0.0,
                          seed=p.seed)
        for layer in layers:
            prune.remove(layer, "weight")  # bake mask into the weight: a plain Linear again
    pruned_acc = evaluate(pruned, *test)["acc"]
    achieved = sparsity_of(pruned)

    final = quantize_dynamic_int8(pruned) if p.quantize else pruned
    if p.quantize:
        config["quantized"] = "dynamic_int8"
    out = ctx.output("model")
    out_file = save_model(out / MODEL_FILE, final, config, task="compress", source=str(src_file), sparsity=achieved,
                          class_names=ds.meta.get("class_names"), dataset_sha=ds.meta.get("sha256"))
    after = {"bytes": out_file.stat().st_size, "parameters": count_parameters(final),
             "test_acc": evaluate(final, *test)["acc"],
             "latency_ms": latency_ms(final, test[0], p.latency_batch, p.latency_repeats)}
    report = {
        "before": before, "after": after, "after_pruning_acc": pruned_acc, "sparsity": achieved,
        "quantized": p.quantize, "size_ratio": before["bytes"] / after["bytes"],
        "speedup": before["latency_ms"] / after["latency_ms"] if after["latency_ms"] else None,
        "accuracy_drop": before["test_acc"] - after["test_acc"], "latency_batch": p.latency_batch,
        "quantized_engine": torch.backends.quantized.engine if p.quantize else None,
    }
    (ctx.output("report") / "report.json").write_text(json.dumps({**report, "history": history}, indent=2))
    return report


if __name__ == "__main__":
    main(CompressParams, run, "jobs.compress", __doc__)
