"""Follow a running attempt's log: append what Ray has new to the attempt's log file, show the rest.

Ray's Jobs API returns the whole log each time; a tail remembers how far it has read, so each poll
writes and shows only the new part. The full text (Ray's own lines included) stays in the file.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lhorch.orchestrator.execution.progress import Reporter
from lhorch.orchestrator.execution.ray_jobs import RayJobs

# How often a running attempt's log is fetched (its state is polled more often).
LOG_POLL_S = 0.5
# Lines Ray's job manager and the stage wrapper add to every job's log: kept in the file, not shown live.
RAY_NOISE = re.compile(r"job_manager\.py:\d+ -- Runtime env is setting up|^Running entrypoint for job "
                       r"|^\[lhorch\] stage \S+ starting on ")


MASK = "***"


def mask(text: str, values: tuple[str, ...] | list[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (longest first, so one that contains
    another is masked whole)."""
    for value in sorted((v for v in values if v), key=len, reverse=True):
        text = text.replace(value, MASK)
    return text


@dataclass
class LogTail:
    stage: str
    job_id: str
    jobs: RayJobs
    path: Path
    offset: int = 0
    last_poll: float = 0.0
    # Values of the stage's secrets: masked before a line reaches the file or the screen (the stage
    # wrapper masks them at the source too; this covers what Ray itself prints).
    secrets: tuple[str, ...] = ()

    def due(self, now: float) -> bool:
        return now - self.last_poll >= LOG_POLL_S

    def pump(self, reporter: Reporter) -> None:
        """Fetch the log, append what is new to the file and show its lines."""
        self.last_poll = time.monotonic()
        text = self.jobs.logs(self.job_id)
        new = text[self.offset:]
        if not new:
            return
        self.offset = len(text)
        new = mask(new, self.secrets)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a") as f:
            f.write(new)
        for line in new.splitlines():
            if not RAY_NOISE.search(line):
                reporter.log(self.stage, line)
