"""`write_report`: one self-contained HTML file per run (``<run>/report.html``) and its figures as PNG
files beside it (``<run>/report/*.png``).

The HTML embeds the very PNG bytes written beside it, so it opens anywhere without a network and the
figures are drawn once. Training curves that `jobs.evaluate` already drew into its ``report.png``
are shown from that file rather than drawn again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.errors import NotFoundError
from lhorch.orchestrator.report import figures, html
from lhorch.orchestrator.report.figures import Figure
from lhorch.orchestrator.report.view import TRAINING_HISTORIES, RunRow, RunView, load_json, run_rows, run_view
from lhorch.orchestrator.state.store import Store, utcnow

HISTORY_RUNS = 10  # how many of the pipeline's runs the history chart compares
_MAX_SERIES = 12  # lines per user figure; more is unreadable


def _output_path(view: RunView, stage: str, output: str) -> Path | None:
    for out in view.stage(stage).outputs:
        if out["name"] == output:
            return Path(out["path"])
    return None


def _history_drawn_by_evaluate(view: RunView) -> set[str]:
    """Stages whose `history` an evaluate stage received (its nearest ancestor with one, as the runner
    resolves a plain input name) and drew into its report.png."""
    drawn = set()
    names = {s.name: s for s in view.stages}
    for s in view.stages:
        if s.uses != "jobs.evaluate" or not _evaluate_png(view, s.name):
            continue
        explicit = view.spec.stages[s.name].inputs.get("history")
        if isinstance(explicit, str) and explicit.split(".")[0] in names:  # `history: stage.output`
            drawn.add(explicit.split(".")[0])
            continue
        queue, seen = deque(s.needs), set()
        while queue:
            name = queue.popleft()
            if name in seen or name not in names:
                continue
            seen.add(name)
            if any(o["name"] == "history" for o in names[name].outputs):
                drawn.add(name)
                break
            queue.extend(names[name].needs)
    return drawn


def _evaluate_png(view: RunView, stage: str) -> Path | None:
    out = _output_path(view, stage, "metrics")
    png = out / "report.png" if out and out.is_dir() else None
    return png if png and png.is_file() else None


def training_history(view: RunView, stage: str) -> list[dict] | None:
    """A built-in training stage's per-epoch history, from the output its job writes it to."""
    job = view.stage(stage).uses
    if job not in TRAINING_HISTORIES:
        return None
    output, filename, key = TRAINING_HISTORIES[job]
    out = _output_path(view, stage, output)
    if out is None:
        return None
    data = load_json(out / filename if out.is_dir() else out)
    if key and isinstance(data, dict):
        data = data.get(key)
    if isinstance(data, list) and data and all(isinstance(h, dict) for h in data):
        return data
    return None


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def find_series(data: Any, prefix: str = "") -> dict[str, list[float]]:
    """Numeric series in a metrics JSON: lists of numbers, and numeric columns of a list of records
    (``[{"step": 1, "loss": 0.9}, ...]``), at the top level or one level down."""
    out: dict[str, list[float]] = {}
    if isinstance(data, list) and len(data) >= 2:
        if all(_number(x) for x in data):
            out[prefix or "value"] = [float(x) for x in data]
        elif all(isinstance(x, dict) for x in data):
            keys = [k for k in data[0] if k not in ("epoch", "step", "iteration")]
            for k in keys:
                column = [row.get(k) for row in data]
                if all(_number(v) for v in column):
                    out[f"{prefix}.{k}" if prefix else k] = [float(v) for v in column]
    elif isinstance(data, dict) and not prefix.count("."):
        for k, v in data.items():
            out.update(find_series(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def user_metric_files(view: RunView, stage: str) -> list[Path]:
    """The JSON files among a `run:` stage's declared outputs (an output that is a folder: its *.json)."""
    found = []
    for out in view.stage(stage).outputs:
        path = Path(out["path"])
        if path.is_dir():
            found += sorted(path.glob("*.json"))[:5]
        elif path.suffix == ".json" or "metric" in out["name"]:
            found.append(path)
    return found


def _figures(view: RunView, history_rows: list[RunRow], folder: Path, now: datetime) -> list[Figure]:
    made = []
    origin = min((a.started_at for s in view.stages for a in s.attempts if a.started_at), default=None)
    if origin is not None:
        made.append(Figure("timeline", None, "Timeline", figures.timeline(folder / "timeline.png", view.stages,
                                                                         origin, view.finished_at or now)))
    drawn = _history_drawn_by_evaluate(view)
    for s in view.stages:
        hist = training_history(view, s.name) if s.name not in drawn else None
        if hist:
            made.append(Figure("curves", s.name, f"{s.name} ({s.uses})",
                               figures.curves(folder / f"curves-{s.name}.png", s.name, hist)))
        png = _evaluate_png(view, s.name) if s.uses == "jobs.evaluate" else None
        if png:
            target = folder / f"evaluate-{s.name}.png"
            shutil.copyfile(png, target)
            made.append(Figure("evaluate", s.name, f"{s.name}: curves and confusion matrix (drawn by jobs.evaluate)",
                               target))
        if s.uses is None:
            for i, path in enumerate(user_metric_files(view, s.name)):
                data = find_series(load_json(path))
                if data:
                    data = dict(list(data.items())[:_MAX_SERIES])
                    made.append(Figure("series", s.name, f"{s.name}: {path.name}",
                                       figures.series(folder / f"series-{s.name}-{i}.png", f"{s.name}: {path.name}",
                                                      data)))
    if len(history_rows) > 1:
        made.append(Figure("history", None, "History", figures.history(folder / "history.png", history_rows,
                                                                       [s.name for s in view.stages])))
    return made


def write_report(store: Store, run_id: str, now: datetime | None = None, *, draw: bool = True,
                 note: str | None = None) -> Path:
    """Write ``<run folder>/report.html`` and ``<run folder>/report/*.png``; returns the HTML's path.

    ``draw=False`` writes the page alone, at once (tens of milliseconds: no matplotlib), with ``note``
    where the figures go; the figures already in the folder are left as they are. `lhorch run` writes
    that, then draws the figures in the background (report/background.py)."""
    now = now or utcnow()
    view = run_view(store, run_id, now)
    if view is None:
        raise NotFoundError(f"no run {run_id!r}", hint="`lhorch runs` lists the runs.")
    # Runs created up to this one: a report written later still shows the history as of its run.
    history_rows = [r for r in run_rows(store, view.pipeline, HISTORY_RUNS * 3)
                    if r.created_at <= (view.created_at.isoformat() if view.created_at else r.created_at)]
    history_rows = history_rows[:HISTORY_RUNS]
    path = view.run_dir / "report.html"
    with _writing(view.run_dir, draw):
        made: list[Figure] = []
        if draw:
            folder = view.run_dir / "report"
            if folder.exists():
                shutil.rmtree(folder)  # figures of an earlier report of this run (a stage may since have gone)
            folder.mkdir(parents=True)
            made = _figures(view, history_rows, folder, now)
        tmp = path.with_name(f".report.{os.getpid()}.html.tmp")
        tmp.write_text(html.render(view, made, history_rows, figures.place_colours(view.stages), now, note=note))
        tmp.replace(path)
    return path


@contextmanager
def _writing(run_dir: Path, exclusive: bool) -> Iterator[None]:
    """One drawing writer of a run's report at a time (a background writer and `lhorch report` may
    meet): the figures folder is emptied and refilled under this lock. The page alone takes none."""
    if not exclusive:
        yield
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / ".report.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
