"""Follow a running attempt's log: keep all of it in the attempt's log file, show the stage's own lines.

The attempt's dispatcher says what is new since the last read (``read_log``). On the local node the
stage writes its log file itself and this only reads it; the Jobs API of a remote cluster returns the
whole log each time, and the new part is appended to the file here (secrets masked). On the terminal
go the stage's own lines; Ray's (its loggers, its core workers, Ray Train's controller) stay in the
file unless ``verbose``.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lhorch.orchestrator.execution.progress import Reporter
from lhorch.providers.dispatch import Dispatcher

# How often a running attempt's new lines are shown, at least (a remote one's follow its polling).
LOG_POLL_S = 0.5
# Lines Ray's job manager and the stage wrapper add to every job's log: kept in the file, not shown.
_JOB_NOISE = (r"job_manager\.py:\d+ -- Runtime env is setting up|^Running entrypoint for job "
              r"|^\[lhorch\] stage \S+ starting on ")
# Ray's own logging: its Python loggers ("2026-01-01 10:00:00,123\tINFO worker.py:1234 -- ..."), its C++
# core ("[2026-01-01 10:00:00,123 W 123 456] core_worker.cc:..."), and its usual banners.
_RAY_LOG = (r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\s+\S+\.py:\d+ -- "
            r"|^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIWEF] \d+ \d+\] "
            r"|^(View detailed results here|To visualize your results with TensorBoard|Training started with "
            r"configuration|Training (finished|completed) (iteration|after))|^\s*\*\*\* SIGTERM received"
            # Ray Train's worker-side lines (a metrics dict per epoch among them; issue 18 item 6).
            r"|^(Reporting training result \d+: |Setting up process group for: |Moving model to device: "
            r"|Checkpoint successfully created at: )")
RAY_NOISE = re.compile(f"{_JOB_NOISE}|{_RAY_LOG}")
# A line a Ray actor or worker printed, forwarded to the driver: "(Name pid=123, ip=10.0.0.1) text".
_ACTOR_LINE = re.compile(r"^\((?P<name>[\w.:]+) pid=\d+(?:, ip=[\w.:-]+)?\) ?(?P<text>.*)$")
# Ray Train's controller and Ray's own actors speak for Ray; a training worker speaks for the stage.
_RAY_ACTORS = re.compile(r"^(TrainController|TrainStateActor|_?Controller|StorageContext"
                         r"|.*(Watcher|Manager|Agent|Cleaner)|autoscaler\S*|raylet|gcs_server|monitor|dashboard\S*)$")
# Ray colours its actors' prefixes when it believes a terminal reads them.
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

MASK = "***"


def mask(text: str, values: tuple[str, ...] | list[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (longest first, so one that contains
    another is masked whole)."""
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


def shown(line: str) -> str | None:
    """The part of a log line the terminal shows by default: None for Ray's own lines; a training
    worker's line without Ray's prefix."""
    line = _ANSI.sub("", line)
    actor = _ACTOR_LINE.match(line)
    if actor is not None:
        if _RAY_ACTORS.match(actor["name"]):
            return None
        line = actor["text"]
    return None if RAY_NOISE.search(line) else line


@dataclass
class LogTail:
    stage: str
    job_id: str
    jobs: Dispatcher
    path: Path
    offset: int = 0
    last_poll: float = 0.0
    # Values of the stage's secrets: masked before a line reaches the file or the screen (the stage
    # wrapper masks them at the source too; this covers what Ray itself prints).
    secrets: tuple[str, ...] = ()
    verbose: bool = False  # show Ray's own lines too
    _partial: str = ""

    def due(self, now: float) -> bool:
        return now - self.last_poll >= LOG_POLL_S

    def pump(self, reporter: Reporter, final: bool = False) -> None:
        """Read what is new, append it to the file if the dispatcher does not write it, show its lines."""
        self.last_poll = time.monotonic()
        new, self.offset = self.jobs.read_log(self.job_id, self.offset)
        if new:
            new = mask(new, self.secrets)
            if not self.jobs.writes_log:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as f:
                    f.write(new)
        lines = (self._partial + new).split("\n")
        tail = lines.pop()
        self._partial = "" if final else tail  # a line not yet ended waits for its end
        if final and tail:
            lines.append(tail)
        for line in lines:
            line = line.rstrip("\r")
            out = line if self.verbose else shown(line)
            if out is not None:
                reporter.log(self.stage, out)
