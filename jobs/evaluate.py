"""jobs.evaluate: test-set metrics of the model in input `model` (float or int8-quantized).

Output `metrics`: metrics.json (accuracy, precision/recall/F1 macro, confusion matrix, n_test, ...)
and report.png (training curves when a `history` input is present, and the confusion matrix). The
promotion gate of a scheduled pipeline reads metrics.json (default metric: f1_macro).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lhorch.jobs.cli import coerce, main
from lhorch.jobs.context import StageContext
from lhorch.jobs.data import load_dataset
from lhorch.jobs.device import set_threads, stage_resources
from lhorch.jobs.models import load_model, model_file
from lhorch.jobs.params import EvaluateParams
from lhorch.jobs.training import as_tensors, predict


def metrics_of(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    # deferred: scikit-learn takes about a second to import
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    labels = list(range(n_classes))
    prec, rec, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    per_class = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "precision_macro": float(prec), "recall_macro": float(rec), "f1_macro": float(f1),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "per_class": {"precision": per_class[0].tolist(), "recall": per_class[1].tolist(), "f1": per_class[2].tolist(),
                      "support": per_class[3].tolist()},
        "n_test": int(len(y_true)),
    }


def _history(ctx: StageContext) -> list[dict] | None:
    if not ctx.has_input("history"):
        return None
    path = ctx.input("history")
    path = path / "history.json" if path.is_dir() else path
    return json.loads(path.read_text()) if path.exists() else None


def plot(path: Path, metrics: dict, class_names: list[str], history: list[dict] | None) -> None:
    import matplotlib  # deferred: only `plot: true` needs matplotlib, which is slow to import

    matplotlib.use("Agg")  # no display on servers and cloud nodes
    import matplotlib.pyplot as plt  # after use("Agg"), so pyplot picks no display backend

    ncols = 3 if history else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 4.5), squeeze=False)
    axes = axes[0]
    if history:
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
        axes[0].plot(epochs, [h["val_loss"] for h in history], label="val")
        axes[0].set(title="loss", xlabel="epoch")
        axes[1].plot(epochs, [h["train_acc"] for h in history], label="train")
        axes[1].plot(epochs, [h["val_acc"] for h in history], label="val")
        axes[1].set(title="accuracy", xlabel="epoch")
        for ax in axes[:2]:
            ax.legend()
            ax.grid(alpha=0.3)
    cm = np.asarray(metrics["confusion_matrix"])
    ax = axes[-1]
    ax.imshow(cm, cmap="Blues")
    ticks = range(len(class_names))
    ax.set(title=f"confusion (acc {metrics['accuracy']:.3f})", xlabel="predicted", ylabel="true",
           xticks=list(ticks), yticks=list(ticks), xticklabels=class_names, yticklabels=class_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _print_table(metrics: dict, model_desc: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"evaluation of {model_desc}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        table.add_row(key, f"{metrics[key]:.4f}")
    table.add_row("n_test", str(metrics["n_test"]))
    Console(stderr=True).print(table)  # stdout stays for the JSON summary


def run(params: EvaluateParams | dict | None, ctx: StageContext) -> dict:
    p = coerce(EvaluateParams, params)
    set_threads(stage_resources().cpus)
    ds = load_dataset(ctx.input("dataset"))
    mfile = model_file(ctx.input("model"))
    model, payload = load_model(mfile)
    X, y = as_tensors(*ds.split(p.split))
    y_pred = predict(model, X, p.batch_size).argmax(1).numpy()
    metrics = metrics_of(y.numpy(), y_pred, ds.n_classes)
    config = payload["config"]
    metrics.update({"split": p.split, "model": str(mfile), "quantized": config.get("quantized"),
                    "model_bytes": mfile.stat().st_size, "dataset_sha256": ds.meta.get("sha256")})
    out = ctx.output("metrics")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    class_names = ds.meta.get("class_names") or [str(i) for i in range(ds.n_classes)]
    if p.plot:
        plot(out / "report.png", metrics, class_names, _history(ctx))
    _print_table(metrics, f"{payload.get('info', {}).get('task', 'model')} ({config.get('quantized') or 'float'})")
    return {k: metrics[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "n_test", "quantized")}


if __name__ == "__main__":
    main(EvaluateParams, run, "jobs.evaluate", __doc__)
