"""The clusters of one run: which stages share one, acquiring them lazily, releasing them early.

A target is a cluster the plan asks for (the local node, or one cloud cluster per placement group)
together with the stages placed on it. It is acquired when its first stage is ready to start, so a
run whose stages are all cached starts nothing, and a cloud cluster is released as soon as its last
stage is done: idle cloud time is the user's money. Providers that take heartbeats get them from a
thread of their own (heartbeat.py), which marks a cluster found gone as ``lost``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lhorch.orchestrator.budget.guard import BudgetGuard
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import ClusterUnreachable, LhorchError
from lhorch.orchestrator.core.plan import Offer, Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.execution.heartbeat import Heartbeats
from lhorch.orchestrator.execution.progress import Reporter
from lhorch.orchestrator.execution.ray_jobs import RayJobs
from lhorch.orchestrator.state.store import Store, utcnow
from lhorch.providers.base import HardStoppingProvider, HeartbeatingProvider, Provider
from lhorch.providers.dispatch import Dispatcher, DispatchingProvider

LOCAL = "local"


@dataclass
class Target:
    """A cluster (once acquired) and what runs on it."""

    key: str
    provider: Provider
    request: ClusterRequest
    stages: list[str]
    cluster: Cluster | None = None
    jobs: Dispatcher | None = None
    released: bool = False
    unfinished: set[str] = field(default_factory=set)
    lost: str | None = None  # why the cluster is gone (spot interruption, terminated), set by the heartbeat

    @property
    def local(self) -> bool:
        return self.key == LOCAL


class ClusterPool:
    def __init__(self, store: Store, run_id: str, providers: dict[str, Provider], reporter: Reporter, *,
                 guard: BudgetGuard | None = None, heartbeat_seconds: float = 60.0,
                 on_acquired: Callable[[Cluster], None] | None = None):
        self.store, self.run_id, self.providers, self.reporter = store, run_id, providers, reporter
        self.guard = guard
        self.heartbeat_seconds = heartbeat_seconds
        self.on_acquired = on_acquired
        self.acquiring: str | None = None  # the target whose cluster is being started now
        self.released: list[str] = []  # targets released by this process, in order
        self.targets: dict[str, Target] = {}
        self._heartbeats: Heartbeats | None = None
        # Set by a dispatcher that notifies when one of its attempts ends: the runner's wait ends with it.
        self.wake = threading.Event()

    def plan_targets(self, pipeline: Pipeline, plan: Plan, order: list[str], hard_stop_at: datetime | None) -> None:
        """One target per placement group of the plan (every local stage shares the local node); a cloud
        target asks for as many nodes as its stages' ``resources.nodes``."""
        cloud = pipeline.cloud
        for name in order:
            placement = plan.placements[name]
            key: str
            provider_name: str
            if placement.target == LOCAL:
                key, provider_name = LOCAL, LOCAL
            else:
                provider_name = placement.provider
                key = f"{provider_name}:{placement.group or name}"
            if key not in self.targets:
                provider = self.providers.get(provider_name)
                if provider is None:
                    raise LhorchError(
                        f"stage {name} is placed on {provider_name!r}, which is not configured",
                        hint="Set `cloud:` in the pipeline file, or pin the stage with `placement: local`.")
                offer = placement.offer or Offer(provider=provider_name, vcpus=1, memory_gb=1)
                self.targets[key] = Target(key, provider, ClusterRequest(
                    run_id=self.run_id, group=placement.group or name if key != LOCAL else LOCAL, offer=offer,
                    expires_at=hard_stop_at or (utcnow() + timedelta(hours=cloud.max_hours)),
                    idle_minutes=cloud.idle_minutes), stages=[])
            target = self.targets[key]
            target.stages.append(name)
            target.unfinished.add(name)
            if key != LOCAL:
                # Every node of a multi-node stage is started (and metered) with its cluster (issue 14). The
                # planner groups only stages of one node count; a cluster shared otherwise has the most.
                target.request.nodes = max(target.request.nodes, pipeline.stages[name].resources.nodes)

    def target_of(self, stage: str) -> Target:
        for target in self.targets.values():
            if stage in target.stages:
                return target
        raise KeyError(stage)

    def acquire(self, target: Target) -> tuple[Cluster, Dispatcher]:
        """The target's cluster, started (or reused) now if it is not yet, and how stages reach it."""
        if target.cluster is None or target.jobs is None:
            dispatching = isinstance(target.provider, DispatchingProvider)
            if not dispatching:
                self.reporter.info(f"Starting {target.key} …")
            self.store.event(self.run_id, "cluster", f"acquire {target.key}")
            if self.guard is not None and not target.local:
                self.guard.before_acquire(target.request, target.stages)
            self.acquiring = target.key
            try:
                target.cluster = target.provider.acquire(target.request)
            finally:
                self.acquiring = None
            if self.guard is not None and not target.local:
                lower = target.provider.lower_hard_stop if isinstance(target.provider, HardStoppingProvider) else None
                self.guard.acquired(target.cluster, target.stages, lower)
            # A cluster with a dispatch of its own (the local node) gets its stages that way; the rest
            # through Ray's Jobs API.
            target.jobs = (target.provider.dispatcher(target.cluster, self.wake.set) if dispatching
                           else RayJobs(target.cluster))
            target.lost = None
            if isinstance(target.provider, HeartbeatingProvider) and self._heartbeats is None:
                self._heartbeats = Heartbeats(lambda: list(self.targets.values()), self.heartbeat_seconds,
                                              on_error=lambda exc: self.store.event(self.run_id, "cluster",
                                                                                    f"heartbeat failed: {exc}"))
            self.store.event(self.run_id, "cluster", f"acquired {target.key}", address=target.cluster.address)
            if not dispatching:
                # The Jobs address is the Ray dashboard (through the connector's tunnel for a cloud cluster).
                self.reporter.info(f"Ray dashboard of {target.key}: {target.cluster.address}")
            if self.on_acquired:
                self.on_acquired(target.cluster)
        return target.cluster, target.jobs

    def release(self, target: Target) -> None:
        if target.cluster is not None and not target.released:
            target.provider.release(target.cluster)
            target.released = True
            self.released.append(target.key)
            if self.guard is not None:
                self.guard.released(target.cluster)
            self.store.event(self.run_id, "cluster", f"released {target.key}")

    def still_up(self) -> list[str]:
        """What this run has up (or is starting) and not yet released, for the third Ctrl-C."""
        up = [t.key for t in self.targets.values() if t.cluster is not None and not t.released]
        return up + ([f"{self.acquiring} (starting)"] if self.acquiring else [])

    def release_all(self) -> None:
        """Stop the heartbeats and release every cluster, trying each; raise listing every failure."""
        if self._heartbeats is not None:
            self._heartbeats.stop()
        errors = []
        for target in self.targets.values():
            try:
                self.release(target)
            except Exception as exc:  # keep releasing the others; report every failure
                errors.append(f"{target.key}: {exc}")
        if errors:
            self.store.event(self.run_id, "cluster", "release failed", errors=errors)
            raise LhorchError("could not release: " + "; ".join(errors), hint="Run `lhorch gc` to clean up.")

    def stage_done(self, stage: str) -> None:
        """The stage will not run again in this run: release its cloud cluster if it was the last."""
        target = self.target_of(stage)
        target.unfinished.discard(stage)
        # A cloud cluster goes as soon as its last stage is done: idle cloud time is the user's money.
        if not target.unfinished and not target.local:
            self.release(target)

    def check_intact(self, target: Target) -> bool:
        """Whether the target's cloud cluster still has all its nodes (asked of the provider now, not at
        the next heartbeat); marks it ``lost`` when not. A failed attempt asks this before its retry: a
        worker node that died takes the stage down with it, and a retry on the rest would run short."""
        if target.lost:
            return False
        if target.cluster is None or not isinstance(target.provider, HeartbeatingProvider):
            return True
        try:
            target.provider.heartbeat(target.cluster)
        except ClusterUnreachable as exc:
            target.lost = str(exc)
            return False
        except Exception:  # noqa: BLE001 - a failed check-in is not a lost node; the heartbeat retries it
            return True
        return True

    def forget_lost(self, target: Target) -> str:
        """The target's cluster went away (e.g. a spot interruption): tear down its remains and forget
        it, so that the next attempt acquires a fresh one. Returns why, for the attempts it ended."""
        why = f"cluster lost: {target.lost}"
        self.store.event(self.run_id, "cluster", why)
        self.reporter.info(f"[red]{target.key}: {why}[/]")
        if target.cluster is not None:
            try:
                target.provider.release(target.cluster)
            except Exception as exc:  # the sweep (`lhorch gc`) finds what this could not delete
                self.store.event(self.run_id, "cluster", f"release after loss failed: {exc}")
            if self.guard is not None:
                self.guard.released(target.cluster)
        target.cluster, target.jobs, target.lost = None, None, None
        return why
