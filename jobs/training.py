"""Training-loop pieces shared by the jobs: seeding, batch order, a plain fit loop, evaluation.

Batch order comes from a generator seeded by (seed, epoch) rather than from the global RNG, so that a
run resumed in the middle of an epoch sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lhorch.jobs import progress


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This worker's sample indices for ``epoch``: one seeded permutation, dealt out round-robin and
    cut to the same length on every worker (DDP needs equal step counts on all ranks)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    per_worker = n // world if world > 1 else n
    return perm[rank::world][:per_worker]


def batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(torch.split(order, batch_size))


def as_tensors(X: np.ndarray, y: np.ndarray, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(X, dtype=torch.float32, device=device), torch.as_tensor(y, dtype=torch.long, device=device)


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits for all of X, in eval mode (restores training mode after)."""
    was_training = model.training
    model.eval()
    if len(X):
        out = torch.cat([model(X[i:i + batch_size]).float() for i in range(0, len(X), batch_size)])
    else:
        out = torch.empty(0)
    model.train(was_training)
    return out


def evaluate(model: nn.Module, X: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    logits = predict(model, X, batch_size)
    if not len(y):
        return {"loss": float("nan"), "acc": float("nan")}
    return {"loss": float(F.cross_entropy(logits, y)), "acc": float((logits.argmax(1) == y).float().mean())}


LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
        epochs: int, batch_size: int, lr: float, weight_decay: float, seed: int,
        loss_fn: LossFn = cross_entropy, log: Callable[[dict], None] | None = None) -> list[dict]:
    """A plain single-process AdamW loop (pretrain, distill, compress recovery); returns the history.

    ``loss_fn(logits, y, idx)`` gets the batch's indices into the training split, so that a caller can
    look up per-sample targets such as a teacher's logits.
    """
    X, y = train
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    history: list[dict] = []
    model.train()
    for epoch in range(epochs):
        start = time.perf_counter()
        total, correct, loss_sum = 0, 0, 0.0
        for idx in batches(epoch_order(len(X), seed, epoch), batch_size):
            xb, yb = X[idx], y[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            loss_sum += loss.item() * len(idx)
        seconds = time.perf_counter() - start
        v = evaluate(model, *val)
        row = {"epoch": epoch + 1, "train_loss": loss_sum / total, "train_acc": correct / total,
               "val_loss": v["loss"], "val_acc": v["acc"], "seconds": seconds, "samples_per_s": total / seconds}
        history.append(row)
        progress.report(epoch + 1, epochs, {"val_acc": v["acc"], "train_loss": row["train_loss"]})
        if log:
            log(row)
    model.eval()
    return history


def distillation_loss(teacher_logits: torch.Tensor, temperature: float, alpha: float) -> LossFn:
    """Hinton et al. (2015): KL on temperature-softened outputs, scaled by T^2 so its gradients keep
    their size as T changes, mixed with cross-entropy on the true labels."""

    def loss(logits: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        soft_t = F.log_softmax(teacher_logits[idx] / temperature, dim=1)
        soft_s = F.log_softmax(logits / temperature, dim=1)
        kd = F.kl_div(soft_s, soft_t, reduction="batchmean", log_target=True) * temperature**2
        return alpha * kd + (1 - alpha) * F.cross_entropy(logits, y)

    return loss
