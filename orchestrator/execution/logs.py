"""Follow a running attempt's log: append what Ray has new to the attempt's log file, show the rest.

Ray's Jobs API returns the whole log each time; a tail remembers how far it has read, so each poll
writes and shows only the new part. The full text (Ray's own lines included) stays in the file.
"""

from __future__ import annotations

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


@dataclass
class LogTail:
    stage: str
    job_id: str
    jobs: RayJobs
    path: Path
    offset: int = 0
    last_poll: float = 0.0

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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(new)
        for line in new.splitlines():
            if not RAY_NOISE.search(line):
                reporter.log(self.stage, line)
