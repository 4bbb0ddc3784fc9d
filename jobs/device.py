"""Which accelerator a job uses and how much of the machine it may take.

The runner describes the stage's reservation in ``LHORCH_RESOURCES`` (JSON of the stage's Resources:
nodes, and per node cpus, gpus, memory_gb, ...). A job sizes its threads and Ray Train workers from it,
so that it does not use more cores than the scheduler gave it; standalone, the reservation is read from
the machine (one node).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StageResources:
    cpus: float  # per node
    gpus: int  # per node
    memory_gb: float | None = None
    nodes: int = 1


def stage_resources(environ: dict[str, str] | None = None) -> StageResources:
    env = os.environ if environ is None else environ
    raw = env.get("LHORCH_RESOURCES")
    if raw:
        data = json.loads(raw)
        return StageResources(cpus=float(data.get("cpus", 1.0)), gpus=int(data.get("gpus", 0)),
                              memory_gb=data.get("memory_gb"), nodes=max(1, int(data.get("nodes", 1))))
    return StageResources(cpus=float(os.cpu_count() or 1), gpus=torch.cuda.device_count())


def pick_device():
    """CUDA, then Apple MPS, then CPU: the first one present."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def set_threads(cpus: float) -> int:
    """Intra-op threads = the CPUs reserved (at least 1): more threads than cores only adds contention."""
    n = max(1, int(cpus))
    torch.set_num_threads(n)
    return n


def autocast_dtype(device, precision: str):
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32.

    auto picks bf16 on CUDA cards that have it (no loss scaling needed), fp16 on older cards, and fp32
    on CPU/MPS, where bf16 is often slower than fp32 for small models and changes numerics.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None
