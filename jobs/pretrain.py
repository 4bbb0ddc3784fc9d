"""jobs.pretrain: train a backbone on a pretext task, for jobs.finetune to start from.

The pretext task is classification restricted to a subset of the classes (default: the lower half,
digits 0-4 in the example): the backbone learns stroke features that transfer to the full task,
while finetune must still learn a new head for all classes. Output `checkpoint` holds model.pt (whole
model, config included) of which finetune keeps the backbone.
"""

from __future__ import annotations

import json

import torch

from lhorch.jobs.cli import coerce, main
from lhorch.jobs.context import StageContext
from lhorch.jobs.data import DataError, load_dataset
from lhorch.jobs.device import set_threads, stage_resources
from lhorch.jobs.models import MODEL_FILE, build_model, count_parameters, mlp_config, save_model
from lhorch.jobs.params import PretrainParams
from lhorch.jobs.training import as_tensors, evaluate, fit, seed_everything


def _subset(X, y, classes: list[int]):
    keep = torch.isin(y, torch.tensor(classes))
    # Relabel to 0..k-1 so the pretext head has exactly k outputs.
    remap = torch.full((int(y.max()) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(classes)] = torch.arange(len(classes))
    return X[keep], remap[y[keep]]


def run(params: PretrainParams | dict | None, ctx: StageContext) -> dict:
    p = coerce(PretrainParams, params)
    set_threads(stage_resources().cpus)
    ds = load_dataset(ctx.input("dataset"))
    classes = p.classes if p.classes is not None else list(range(max(2, ds.n_classes // 2)))
    bad = [c for c in classes if not 0 <= c < ds.n_classes]
    if bad or len(set(classes)) < 2:
        raise DataError(f"classes {classes}: need at least two distinct label ids in 0..{ds.n_classes - 1}")
    train = _subset(*as_tensors(*ds.split("train")), classes)
    val = _subset(*as_tensors(*ds.split("val")), classes)

    seed_everything(p.seed)
    config = mlp_config(ds.n_features, p.hidden, len(classes), p.dropout)
    model = build_model(config)
    history = fit(model, train, val, epochs=p.epochs, batch_size=p.batch_size, lr=p.lr,
                  weight_decay=p.weight_decay, seed=p.seed)
    out = ctx.output("checkpoint")
    save_model(out / MODEL_FILE, model, config, task="pretext", classes=classes, dataset_sha=ds.meta.get("sha256"))
    (out / "history.json").write_text(json.dumps(history, indent=2))
    final = evaluate(model, *val)
    return {"classes": classes, "epochs": p.epochs, "val_acc": final["acc"], "parameters": count_parameters(model),
            "train_samples": int(len(train[1]))}


if __name__ == "__main__":
    main(PretrainParams, run, "jobs.pretrain", __doc__)
