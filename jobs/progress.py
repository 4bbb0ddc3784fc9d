"""One progress line per epoch, which lhorch shows as a stage's live status instead of a metrics dict.

A training job prints ``[lhorch-progress] {"epoch": 3, "epochs": 15, "metrics": {...}}`` on stderr (stdout
stays for the job's JSON summary). The
line goes to the attempt's log file like every other line; lhorch's progress display
(orchestrator/execution/progress.py) recognises it anywhere in a line (Ray Train forwards a worker's
output behind its own prefix) and updates the stage's one status line on a terminal, or prints a short
plain line elsewhere. Run by hand, the line is readable as it is.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from typing import TextIO

MARK = "[lhorch-progress] "


@dataclass(frozen=True)
class Progress:
    epoch: int
    epochs: int
    metrics: dict[str, float]

    def describe(self) -> str:
        """``epoch 3/15 · val_acc 0.931 · train_loss 0.412``."""
        parts = [f"epoch {self.epoch}/{self.epochs}"]
        parts += [f"{name} {value:.4g}" for name, value in self.metrics.items()]
        return " · ".join(parts)


def report(epoch: int, epochs: int, metrics: dict[str, float], stream: TextIO | None = None) -> None:
    """Print the progress line of a finished epoch (``metrics``: a few figures, latest first in interest)."""
    finite = {k: round(float(v), 6) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
    out = stream or sys.stderr
    out.write(MARK + json.dumps({"epoch": epoch, "epochs": epochs, "metrics": finite}) + "\n")
    out.flush()  # the runner follows the log while the job runs


def parse(line: str) -> Progress | None:
    """The Progress a line carries, or None for any other line (a malformed one included: it is then
    only a line of output)."""
    at = line.find(MARK)
    if at < 0:
        return None
    try:
        data = json.loads(line[at + len(MARK):])
        metrics = {str(k): float(v) for k, v in dict(data.get("metrics") or {}).items()}
        return Progress(epoch=int(data["epoch"]), epochs=int(data["epochs"]), metrics=metrics)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
