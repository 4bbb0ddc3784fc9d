"""What a run shows on the terminal: stage log lines as they come and a live table of stages.

The runner talks to a Reporter; the CLI picks a live one for a terminal and a plain one otherwise
(CI, pipes, tests), so logs stay readable when nobody watches. Both show each stage's elapsed time.
A built-in training job's per-epoch progress line (lhorch.jobs.progress) becomes the stage's status in
the live table, updated in place; the plain reporter prints it as one short line. The attempt's log
file keeps every line as the job printed it (logs.py writes it before the reporter sees a line).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lhorch.jobs.progress import parse as parse_progress
from lhorch.orchestrator.core.durations import format_duration
from lhorch.orchestrator.core.status import StageStatus

# Shown, never recorded: a stage between a failed attempt and its retry, and one whose cluster starts.
RETRYING = "retrying"
STARTING = "starting"
STYLE = {StageStatus.SUCCEEDED: "green", StageStatus.CACHED: "cyan", StageStatus.FAILED: "red",
         StageStatus.RUNNING: "yellow", StageStatus.SKIPPED: "dim", RETRYING: "magenta", StageStatus.STOPPED: "red",
         StageStatus.WAITING: "dim", STARTING: "yellow"}
# A stage in one of these has a clock running.
_TIMED = (StageStatus.RUNNING, STARTING, RETRYING)
# A stage that reaches one of these has its clock stopped; the time it took stays shown.
_ENDED = (StageStatus.SUCCEEDED, StageStatus.FAILED, StageStatus.STOPPED)


class _Clocks:
    """When each stage started (its current attempt) and ended, for elapsed times."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.status: dict[str, str] = {}

    def update(self, stage: str, status: str) -> None:
        previous = self.status.get(stage)
        if status in (StageStatus.RUNNING, STARTING) and previous not in (StageStatus.RUNNING, STARTING):
            self.started[stage] = time.monotonic()
            self.ended.pop(stage, None)
        elif status in _ENDED and stage in self.started:
            self.ended[stage] = time.monotonic()
        self.status[stage] = status

    def elapsed(self, stage: str) -> float | None:
        if stage not in self.started or (stage not in self.ended and self.status.get(stage) not in _TIMED):
            return None
        return self.ended.get(stage, time.monotonic()) - self.started[stage]


class Reporter(Protocol):
    def stage(self, stage: str, status: str, detail: str = "") -> None: ...
    def log(self, stage: str, line: str) -> None: ...
    def info(self, message: str) -> None: ...
    def close(self) -> None: ...


class QuietReporter:
    def stage(self, stage: str, status: str, detail: str = "") -> None: ...
    def log(self, stage: str, line: str) -> None: ...
    def info(self, message: str) -> None: ...
    def close(self) -> None: ...


class PlainReporter:
    def __init__(self, stream: TextIO | None = None):
        self.console = Console(file=stream or sys.stderr, highlight=False, soft_wrap=True)
        self._lock = threading.Lock()
        self.clocks = _Clocks()

    def stage(self, stage: str, status: str, detail: str = "") -> None:
        self.clocks.update(stage, status)
        elapsed = self.clocks.elapsed(stage) if status in _ENDED else None
        took = f" in {format_duration(elapsed)}" if elapsed is not None else ""
        with self._lock:
            self.console.print(f"[{STYLE.get(status, '')}]● {stage}: {status}{took}[/]"
                               + (f" — {detail}" if detail else ""))

    def log(self, stage: str, line: str) -> None:
        progress = parse_progress(line)
        if progress is not None:
            line = progress.describe()  # one short line per epoch rather than the raw record
        with self._lock:
            self.console.out(f"{stage} | {line}", highlight=False)

    def info(self, message: str) -> None:
        with self._lock:
            self.console.print(message)

    def close(self) -> None: ...


class LiveReporter(PlainReporter):
    """Plain log lines scroll above a live table of the stages."""

    def __init__(self, stages: list[str], stream: TextIO | None = None):
        super().__init__(stream)
        # stage -> [status, detail, latest progress]
        self.rows: dict[str, list[str]] = {s: [StageStatus.WAITING, "", ""] for s in stages}
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False,
                         get_renderable=self._table)
        self.live.start()

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("stage")
        table.add_column("status")
        table.add_column("time", justify="right")
        table.add_column("")
        for name, (status, detail, progress) in self.rows.items():
            elapsed = self.clocks.elapsed(name)
            # Text, not markup: the table is also drawn inside console.out(), which renders no markup.
            table.add_row(name, Text(status, style=STYLE.get(status, "")),
                          format_duration(elapsed) if elapsed is not None else "",
                          " — ".join(part for part in (progress, detail) if part))
        return table

    def stage(self, stage: str, status: str, detail: str = "") -> None:
        row = self.rows.setdefault(stage, [StageStatus.WAITING, "", ""])
        if status in (StageStatus.RUNNING, STARTING) and row[0] not in (StageStatus.RUNNING, STARTING):
            row[2] = ""  # a new attempt: the last one's epochs no longer describe it
        row[0], row[1] = status, detail
        if status in (StageStatus.FAILED, StageStatus.STOPPED):
            super().stage(stage, status, detail)  # a line that stays above the table (and sets the clock)
        else:
            self.clocks.update(stage, status)

    def log(self, stage: str, line: str) -> None:
        progress = parse_progress(line)
        if progress is None:
            super().log(stage, line)
            return
        # The stage's row is its one updating progress line; the file keeps the record itself.
        self.rows.setdefault(stage, [StageStatus.RUNNING, "", ""])[2] = progress.describe()

    def close(self) -> None:
        self.live.stop()


def make_reporter(stages: list[str], *, quiet: bool = False, live: bool | None = None,
                  stream: TextIO | None = None) -> Reporter:
    if quiet:
        return QuietReporter()
    stream = stream or sys.stderr
    if live is None:
        live = stream.isatty()
    return LiveReporter(stages, stream) if live else PlainReporter(stream)
