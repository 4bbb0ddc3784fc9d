"""The provider seam: few verbs, with the contract in the docstrings.

Contract for every implementation:
- ``acquire`` is idempotent: asking twice for the same (run_id, group) returns the same cluster,
  never a second one; it records its intent in the store before making any external call.
- ``release`` tears down everything ``acquire`` started; releasing something already gone is not
  an error, so it is safe to call twice and from signal handlers and ``lhorch gc``.
- ``sweep`` finds and deletes what outlived its run (expired, or no live run) and returns what it
  deleted; with ``dry_run`` it only returns what it would delete.
- Providers raise (lhorch.orchestrator.core.errors.CloudError and subclasses); they never print.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.plan import Offer


@runtime_checkable
class Provider(Protocol):
    name: str

    def offers(self) -> list[Offer]:
        """What this provider can run on, with prices (may be cached)."""
        ...

    def acquire(self, request: ClusterRequest) -> Cluster:
        """Start or reuse the cluster for (run_id, group); idempotent."""
        ...

    def release(self, cluster: Cluster) -> None:
        """Tear the cluster down; safe to call twice."""
        ...

    def clusters(self) -> list[Cluster]:
        """What this provider has running now."""
        ...

    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False) -> list[str]:
        """Delete what outlived its run; return descriptions of what was (or would be) deleted."""
        ...


@runtime_checkable
class HeartbeatingProvider(Protocol):
    """A provider whose clusters stop themselves unless they are checked in with (a dead-man switch).

    Contract: ``heartbeat`` tells the cluster that its run is still alive, so it must not shut down
    for being idle; it is called from a thread of its own, every ``heartbeat_seconds``, while the
    cluster is held. It raises ``ClusterUnreachable`` when the cluster is gone (a spot interruption,
    a terminated node): the runner then treats the cluster as lost. Any other error is a failed
    check-in that the next beat retries. It never starts or releases anything.
    """

    def heartbeat(self, cluster: Cluster) -> None:
        """Check in with ``cluster``; raise ClusterUnreachable when it is gone."""
        ...


@runtime_checkable
class HardStoppingProvider(Protocol):
    """A provider whose nodes power themselves off at a hard stop that can be moved while they run.

    Contract: ``lower_hard_stop`` moves the cluster's hard stop to ``when`` if that is earlier (never
    later), and the nodes obey the new time without lhorch (issue 16: a second cluster of a run shares
    the cap, so the ones already running must stop sooner). Safe on a cluster already gone.
    """

    def lower_hard_stop(self, cluster: Cluster, when: datetime) -> None:
        """Move ``cluster``'s hard stop to ``when`` if earlier."""
        ...
