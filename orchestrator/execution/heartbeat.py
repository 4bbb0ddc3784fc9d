"""Check in with every cloud cluster of a run, from a thread of its own.

A cloud node terminates itself after `cloud.idle_minutes` without a check-in (its dead-man switch),
so check-ins must not wait behind a long start-up of another cluster in the runner's loop. A
cluster found gone (a spot interruption, a terminated node) is marked ``lost`` for the loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.providers.base import HeartbeatingProvider, Provider


class _Beating(Protocol):
    cluster: Cluster | None
    provider: Provider
    released: bool
    lost: str | None


class Heartbeats:
    def __init__(self, targets: Callable[[], Iterable[_Beating]], interval: float,
                 on_error: Callable[[Exception], None] = lambda exc: None):
        self._targets, self.interval, self._on_error = targets, interval, on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lhorch-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for target in self._targets():
                provider = target.provider
                if target.cluster is None or target.released or target.lost:
                    continue
                if not isinstance(provider, HeartbeatingProvider):
                    continue
                try:
                    provider.heartbeat(target.cluster)
                except ClusterUnreachable as exc:
                    target.lost = str(exc)
                except Exception as exc:  # a failed check-in is retried at the next beat
                    self._on_error(exc)

    def stop(self) -> None:
        self._stop.set()
