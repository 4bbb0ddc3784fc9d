"""The report's figures, drawn once with matplotlib and saved as PNG files (the HTML embeds the same bytes).

Each function takes plain data and a path, writes one PNG and returns the path. matplotlib is
imported inside them: it takes about a second to import, and `lhorch status` or `lhorch runs`, which
share this subsystem, never draw.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from lhorch.orchestrator.report.view import RunRow, StageView

DPI = 100
# One colour per place a stage ran; cloud clusters take the next colour of CLOUD_COLOURS in order.
LOCAL_COLOUR, CACHE_COLOUR = "#4C78A8", "#BBBBBB"
CLOUD_COLOURS = ("#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B")
FAILED_EDGE, CRITICAL_EDGE = "#D62728", "#111111"


@dataclass(frozen=True)
class Figure:
    """One PNG of the report."""

    kind: str  # timeline | curves | evaluate | series | history
    stage: str | None
    title: str
    path: Path


def _pyplot() -> Any:
    import matplotlib  # deferred: slow to import, and only the report draws

    matplotlib.use("Agg")  # no display: the report is written by CLI runs and schedulers alike
    import matplotlib.pyplot as plt  # after use("Agg"), so pyplot picks no display backend

    return plt


def place_colours(stages: list[StageView]) -> dict[str, str]:
    """Colour of each place (local, cache, each cloud cluster), in the order places first appear."""
    colours = {"local": LOCAL_COLOUR, "cache": CACHE_COLOUR}
    clouds = iter(CLOUD_COLOURS * 4)
    for s in stages:
        for a in s.attempts:
            if a.place not in colours:
                colours[a.place] = next(clouds)
    return colours


def timeline(path: Path, stages: list[StageView], origin: datetime, now: datetime) -> Path:
    """Gantt of every attempt: one row per stage, coloured by place; failed attempts hatched with a red
    edge, retries labelled #n, cached stages grey, the critical path outlined in black."""
    plt = _pyplot()
    colours = place_colours(stages)
    rows = list(reversed(stages))  # first stage on top
    fig, ax = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6))
    span = 1.0
    for y, s in enumerate(rows):
        for a in s.attempts:
            if a.started_at is None:
                continue
            start = (a.started_at - origin).total_seconds()
            width = max(((a.finished_at or now) - a.started_at).total_seconds(), 0.0)
            span = max(span, start + width)
            failed = a.status in ("failed", "stopped")
            final = a is s.last
            edge = FAILED_EDGE if failed else (CRITICAL_EDGE if s.critical and final else "none")
            ax.barh(y, max(width, span * 0.004), left=start, height=0.6, color=colours.get(a.place, LOCAL_COLOUR),
                    edgecolor=edge, linewidth=2.2 if edge != "none" else 0, hatch="//" if failed else None,
                    alpha=0.55 if a.status == "cached" else 1.0)
            label = f"#{a.number}" if len(s.attempts) > 1 else ""
            if a.status == "cached":
                label = "cached"
            if label:
                ax.text(start + width / 2, y, label, ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [("★ " if s.critical else "") + s.name for s in rows])
    ax.set_xlim(0, span * 1.02)
    ax.set_xlabel("seconds since the run started")
    ax.grid(axis="x", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for p, c in colours.items()
               if p in {a.place for s in stages for a in s.attempts}]
    labels = [p for p in colours if p in {a.place for s in stages for a in s.attempts}]
    handles += [plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor=CRITICAL_EDGE, linewidth=2),
                plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor=FAILED_EDGE, hatch="//", linewidth=2)]
    labels += ["critical path (★)", "failed attempt"]
    ax.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(len(labels), 6), fontsize=8,
              frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curves(path: Path, title: str, history: list[dict]) -> Path:
    """Loss and accuracy per epoch (train and val), as jobs.evaluate draws them."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    for ax, kind in zip(axes, ("loss", "acc"), strict=False):
        for split in ("train", "val"):
            values = [h.get(f"{split}_{kind}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, marker="o", markersize=3, label=split)
        ax.set(title=f"{title}: {'loss' if kind == 'loss' else 'accuracy'}", xlabel="epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def series(path: Path, title: str, data: dict[str, list[float]]) -> Path:
    """A user's metric series, one line each, against their index."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for name, values in data.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set(title=title, xlabel="step")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def history(path: Path, runs: list[RunRow], stage_names: list[str]) -> Path:
    """The pipeline across its last runs: each stage's duration (stacked bars) and the headline metric."""
    plt = _pyplot()
    runs = list(reversed(runs))  # oldest first, left to right
    fig, ax = plt.subplots(figsize=(10, 3.8))
    xs = list(range(len(runs)))
    bottom = [0.0] * len(runs)
    for name in stage_names:
        values = [r.stage_seconds.get(name, 0.0) for r in runs]
        if any(values):
            ax.bar(xs, values, bottom=bottom, label=name, width=0.6)
            bottom = [b + v for b, v in zip(bottom, values, strict=False)]
    ax.set_xticks(xs, [r.created_at[5:16].replace("T", " ") for r in runs], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("stage seconds (stacked)")
    ax.grid(axis="y", alpha=0.3)
    metric = next((r.metric for r in runs if r.metric), None)
    if metric:
        twin = ax.twinx()
        points = [(x, r.metric_value) for x, r in zip(xs, runs, strict=False) if r.metric_value is not None]
        twin.plot([p[0] for p in points], [p[1] for p in points], color="black", marker="D", label=metric)
        twin.set_ylabel(metric)
        twin.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_title("this pipeline's last runs")
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
