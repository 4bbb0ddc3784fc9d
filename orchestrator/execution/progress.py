"""What a run shows on the terminal: stage log lines as they come and a live table of stages.

The runner talks to a Reporter; the CLI picks a live one for a terminal and a plain one otherwise
(CI, pipes, tests), so logs stay readable when nobody watches.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from lhorch.orchestrator.core.durations import format_duration
from lhorch.orchestrator.core.status import StageStatus

# Shown, never recorded: a stage between a failed attempt and its retry, and one whose cluster starts.
RETRYING = "retrying"
STARTING = "starting"
STYLE = {StageStatus.SUCCEEDED: "green", StageStatus.CACHED: "cyan", StageStatus.FAILED: "red",
         StageStatus.RUNNING: "yellow", StageStatus.SKIPPED: "dim", RETRYING: "magenta", StageStatus.STOPPED: "red",
         StageStatus.WAITING: "dim", STARTING: "yellow"}
# A stage in one of these has a clock running in the live table.
_TIMED = (StageStatus.RUNNING, STARTING, RETRYING)


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

    def stage(self, stage: str, status: str, detail: str = "") -> None:
        with self._lock:
            self.console.print(f"[{STYLE.get(status, '')}]● {stage}: {status}[/]" + (f" — {detail}" if detail else ""))

    def log(self, stage: str, line: str) -> None:
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
        self.rows: dict[str, list] = {s: [StageStatus.WAITING, "", None] for s in stages}
        self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False,
                         get_renderable=self._table)
        self.live.start()

    def _table(self) -> Table:
        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        table.add_column("stage")
        table.add_column("status")
        table.add_column("time", justify="right")
        table.add_column("")
        now = time.monotonic()
        for name, (status, detail, started) in self.rows.items():
            elapsed = format_duration(now - started) if started and status in _TIMED else ""
            table.add_row(name, f"[{STYLE.get(status, '')}]{status}[/]", elapsed, detail)
        return table

    def stage(self, stage: str, status: str, detail: str = "") -> None:
        row = self.rows.setdefault(stage, [StageStatus.WAITING, "", None])
        if status in (StageStatus.RUNNING, STARTING) and row[0] not in (StageStatus.RUNNING, STARTING):
            row[2] = time.monotonic()
        row[0], row[1] = status, detail
        if status in (StageStatus.FAILED, StageStatus.STOPPED):
            super().stage(stage, status, detail)

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
