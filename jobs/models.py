"""Model definitions shared by the jobs, and the model.pt file format.

A model.pt holds ``{"config": {...}, "state_dict": {...}, "info": {...}}``; the config alone rebuilds
the architecture (``build_model``), so a file from a previous run, another machine or the user can be
loaded without the code that trained it. Quantized models are rebuilt as float and re-quantized
before their state is loaded, because a dynamic-int8 state dict only fits a quantized module tree.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

MODEL_FILE = "model.pt"


class MLP(nn.Module):
    """A backbone of Linear+ReLU layers and a Linear head, kept apart so that the head can be
    replaced (transfer learning) and the backbone frozen."""

    def __init__(self, in_dim: int, hidden: list[int], n_classes: int, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def mlp_config(in_dim: int, hidden: list[int], n_classes: int, dropout: float = 0.0) -> dict:
    return {"arch": "mlp", "in_dim": int(in_dim), "hidden": [int(h) for h in hidden],
            "n_classes": int(n_classes), "dropout": float(dropout), "quantized": None}


def build_model(config: dict) -> nn.Module:
    if config.get("arch") != "mlp":
        raise ValueError(f"unknown architecture {config.get('arch')!r} in model config")
    model = MLP(config["in_dim"], config["hidden"], config["n_classes"], config.get("dropout", 0.0))
    if config.get("quantized") == "dynamic_int8":
        model = quantize_dynamic_int8(model)
    return model


@contextmanager
def _quiet_quantization():
    # torch.ao.quantization is deprecated in favour of torchao (https://github.com/pytorch/ao/issues/2259),
    # which is not a dependency; the eager API still works in torch 2.13, so its warnings are noise here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\..*")
        yield


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    from torch.ao.quantization import quantize_dynamic  # deferred: only jobs.compress quantizes

    engines = torch.backends.quantized.supported_engines
    if torch.backends.quantized.engine not in engines or torch.backends.quantized.engine == "none":
        # ARM machines (Apple silicon) only have qnnpack.
        torch.backends.quantized.engine = "qnnpack" if "qnnpack" in engines else engines[0]
    with _quiet_quantization():
        return quantize_dynamic(model.cpu().eval(), {nn.Linear}, dtype=torch.qint8)


def model_file(path: Path) -> Path:
    """``path`` itself, or the model.pt inside a folder."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (MODEL_FILE, "checkpoint.pt"):
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(f"{path}: no {MODEL_FILE} in this folder")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def save_model(path: Path, model: nn.Module, config: dict, **info) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    raw = model.state_dict()
    state = OrderedDict((k, v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in raw.items())
    # Quantized modules read their format version from this metadata when loading; keep it.
    state._metadata = getattr(raw, "_metadata", None)  # type: ignore[attr-defined]
    with _quiet_quantization():
        torch.save({"config": config, "state_dict": state, "info": info}, path)
    return path


def load_model(path: Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(model in eval mode, the file's payload). weights_only: a model file must not run code on load."""
    with _quiet_quantization():
        payload = torch.load(model_file(path), map_location=map_location, weights_only=True)
        model = build_model(payload["config"])
        model.load_state_dict(payload["state_dict"])
    return model.eval(), payload


def count_parameters(model: nn.Module) -> int:
    """Float parameters, or for a quantized model the elements of its packed int8 weights and biases."""
    n = sum(p.numel() for p in model.parameters())
    for mod in model.modules():
        if hasattr(mod, "_packed_params") and hasattr(mod, "weight"):
            w = mod.weight()
            b = mod.bias()
            n += w.numel() + (b.numel() if b is not None else 0)
    return n
