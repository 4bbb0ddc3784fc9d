"""Bounded exponential backoff with full jitter for AWS throttling.

botocore already retries a few times inside one call; this is the outer loop around operations
whose throttling we want to outlast (a burst of RunInstances in a busy account). Bounded both in
attempts and in seconds, so a stuck API never holds a run (or a signal handler) forever.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from botocore.exceptions import ClientError

T = TypeVar("T")

THROTTLING = frozenset({
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "EC2ThrottledException",
})
# Everything botocore's retry modes treat as throttling (botocore/retries/standard.py): the CLI's hint.
THROTTLING_CODES = THROTTLING | frozenset({
    "ThrottledException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "BandwidthLimitExceeded", "LimitExceededException", "PriorRequestNotComplete",
})


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 20.0
    max_attempts: int = 8
    max_seconds: float = 120.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)

    def delays(self):
        """Yield the pause before each retry ("full jitter": uniform in [0, min(cap, base·2ⁿ)])."""
        for attempt in range(self.max_attempts - 1):
            yield self.rng.uniform(0, min(self.cap, self.base * 2 ** attempt))

    def call(self, fn: Callable[[], T], retry_on: frozenset[str] = THROTTLING) -> T:
        started = self.clock()
        delays = self.delays()
        while True:
            try:
                return fn()
            except ClientError as exc:
                if error_code(exc) not in retry_on:
                    raise
                delay = next(delays, None)
                if delay is None or self.clock() - started + delay > self.max_seconds:
                    raise
                self.sleep(delay)
