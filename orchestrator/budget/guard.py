"""The budget during a run: what the runner asks before launching, after launching, at every loop
turn and at release. The arithmetic lives in budget.py; this only connects it to clusters.

- Before a cluster is launched: refuse it if its first check interval would cross the cap, and set
  its nodes' own hard stop time from the cap, so the cap holds even when the laptop is gone.
- While it runs: every turn of the runner's loop, alert once at `alert_fraction` and say "stop"
  when spend by the next check plus teardown would cross the cap.
- At release (or loss): the instances stop billing and their cost goes into the ledger.

Issue 16: the meter is the run's ledger, not this process's memory. Its items are the open ledger
rows the launch path wrote (every node, at the price of the candidate actually launched, from EC2's
launch time, with its volume and public address); on open it takes back what earlier attempts and
processes of the run spent, so one cap spans every resume. Each new cluster lowers the hard stop of
the clusters already running, and a thread of its own (``start``) keeps checking while the runner
blocks in an acquire, a transfer or a release.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime

from lhorch.orchestrator.budget.caps import MIN_BILLED_SECONDS, CostMeter, Watchdog, effective_cap
from lhorch.orchestrator.core.clock import Clock, SystemClock
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import BudgetError
from lhorch.orchestrator.core.nodes import cluster_startup_seconds
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store

DEFAULT_TEARDOWN_S = 120.0
LowerHardStop = Callable[[Cluster, datetime], None]


class BudgetGuard:
    def __init__(self, store: Store, pipeline: Pipeline, *, month_spent: float = 0.0, clock: Clock | None = None,
                 on_alert=None):
        self.store, self.pipeline = store, pipeline
        self.clock = clock or SystemClock()
        self.month_spent = month_spent
        self.cap = effective_cap(pipeline.budget, month_spent)
        self.on_alert = on_alert
        self.meter: CostMeter | None = None
        self.dogs: list[Watchdog] = []
        self.stopped_for: str | None = None
        self.plan: Plan | None = None
        self.run_id = ""
        self._clusters: dict[str, tuple[Cluster, list[str], LowerHardStop | None]] = {}
        self._lock = threading.RLock()  # the runner's thread and the watchdog's own share the meter
        self._thread: threading.Thread | None = None
        self._halt = threading.Event()

    def open(self, run_id: str, plan: Plan) -> None:
        self.run_id, self.plan = run_id, plan
        # A resume: what this run already spent is its own, not "the rest of the month" as well.
        own = ledger.run_total(self.store, run_id)
        self.cap = effective_cap(self.pipeline.budget, max(0.0, self.month_spent - own))
        ledger.record_estimate(self.store, run_id, self.pipeline.name, plan)
        self.meter = CostMeter(self.store, run_id, self.pipeline.name)
        self._sync()
        budget = self.pipeline.budget
        interval = budget.check_interval if budget else 30.0
        alert_fraction = budget.alert_fraction if budget else 0.8
        teardown = max([p.offer.teardown_seconds for p in plan.placements.values() if p.offer and not p.offer.is_local]
                       + [DEFAULT_TEARDOWN_S])
        if self.cap is not None:
            self.dogs.append(Watchdog(self.meter, self.cap, interval, teardown, self.clock, alert_fraction,
                                      on_alert=self.on_alert))
        for name, stage in self.pipeline.stages.items():
            if stage.budget_usd is not None:
                self.dogs.append(Watchdog(self.meter, stage.budget_usd, interval, teardown, self.clock, alert_fraction,
                                          stage=name, on_alert=self.on_alert))

    def _sync(self) -> None:
        """Take into the meter what the ledger knows and the meter does not: rows earlier processes of
        the run closed, launches that failed and were torn down, items still open from before."""
        meter = self.meter
        if meter is None:
            return
        with self._lock:
            mine = meter.open_rows()
            for r in ledger.closed_actual(self.store, self.run_id):
                if r["id"] not in meter.closed_rows and r["id"] not in mine:
                    meter.closed_rows.add(r["id"])
                    meter.restore(r["stage"], float(r["usd"]))
                    if r["kind"] == ledger.TRANSFER_OUT:  # the stage's outputs came back: the real cost replaces
                        meter.unreserve(f"out:{r['stage']}")  # what was set aside for them
            for r in ledger.open_items(self.store, self.run_id):
                if r["resource_id"] and r["id"] not in mine:
                    self._start_row(r, r["stage"])

    def _start_row(self, r: dict, stage: str | None) -> None:
        assert self.meter is not None
        self.meter.started(f"row:{r['id']}", float(r["unit_price"]) * 3600.0, datetime.fromisoformat(r["started_at"]),
                           stage=stage, source=r["source"], minimum_s=float(r["minimum_s"]), row_id=int(r["id"]))

    def _min_run_seconds(self, request: ClusterRequest, stages: list[str]) -> float:
        """Start-up plus the shortest useful work: the shortest estimated stage of the cluster."""
        works = [self.plan.placements[s].est_seconds for s in stages
                 if self.plan is not None and s in self.plan.placements and self.plan.placements[s].est_seconds > 0]
        # Every node must have joined before the work starts: the slowest one's start-up (core/nodes.py).
        return cluster_startup_seconds(request.offer.startup_seconds, request.nodes) + (min(works) if works else 0.0)

    def before_acquire(self, request: ClusterRequest, stages: list[str]) -> None:
        if self.meter is None or not self.dogs:
            return
        with self._lock:
            self._sync()
            self._before_acquire(request, stages)

    def _before_acquire(self, request: ClusterRequest, stages: list[str]) -> None:
        assert self.meter is not None
        price = request.offer.price_per_hour * request.nodes
        now = self.clock.now()
        # Bringing the stages' outputs back costs transfer out, which cannot be stopped once begun: it
        # is set aside now, so the cap check and the hard stop leave room for it.
        for stage in stages:
            gb = self.pipeline.stages[stage].hints.output_gb if stage in self.pipeline.stages else 0.0
            self.meter.reserve(f"out:{stage}", stage, gb * request.offer.transfer_usd_per_gb)
        for dog in self.dogs:
            if (dog.stage is None or dog.stage in stages) and not dog.can_start(price, now):
                spent = dog.meter.spent(now, dog.stage)
                raise BudgetError(
                    f"starting {request.offer.instance_type} for {', '.join(stages)} would cross the "
                    f"{'stage' if dog.stage else 'run'} cap of ${dog.cap:.2f} (spent ${spent:.2f})",
                    hint="Raise budget.max_usd, or pin the stages to local.")
        # The nodes' own shutdown time, as if they started now: the cap holds with no laptop at all.
        probe = f"pending:{request.run_id}:{request.group}"
        self.meter.started(probe, price, now, stage=stages[0] if len(stages) == 1 else None)
        try:
            stops = [t for t in (dog.hard_stop_now(now) for dog in self.dogs) if t is not None]
        finally:
            self.meter.forget(probe)
        if not stops:
            return
        hard_stop = min(stops)
        window = (hard_stop - now).total_seconds()
        need = self._min_run_seconds(request, stages)
        if window < need:
            raise BudgetError(
                f"{request.offer.instance_type} for {', '.join(stages)} at ${price:.4f}/h: the cap lets its nodes run "
                f"{window:.0f} s, less than the {need:.0f} s of start-up ({request.offer.startup_seconds:.0f} s) "
                f"plus the shortest useful work; refused before anything is paid for",
                hint="Raise budget.max_usd, use a cheaper instance type, or pin the stages to local.")
        if request.expires_at is None or hard_stop < request.expires_at:
            request.expires_at = hard_stop
        # What the nodes may bill until then: the launch path re-derives the hard stop from the price of
        # the candidate it actually launches (a fallback may cost more than the offer).
        request.spend_limit_usd = price * window / 3600.0
        request.min_run_seconds = need
        # The clusters already running share the cap with this one: they must stop by the same time.
        for cluster, _, lower in self._clusters.values():
            if lower is not None and (cluster.expires_at is None or cluster.expires_at > hard_stop):
                lower(cluster, hard_stop)
                cluster.expires_at = hard_stop

    def acquired(self, cluster: Cluster, stages: list[str], lower: LowerHardStop | None = None) -> None:
        if self.meter is None or not cluster.instance_ids:
            return
        stage = stages[0] if len(stages) == 1 else None
        with self._lock:
            rows = ledger.open_for(self.store, cluster.instance_ids)
            if rows:  # billed from its launch time, each node at its own price, every resource kind
                ledger.assign_stage(self.store, [r["id"] for r in rows], stage)
                items = []
                for r in rows:
                    self._start_row(r, stage)
                    items.append(f"row:{r['id']}")
            else:  # a provider without ledger rows: its instances, from now
                per_instance = cluster.price_per_hour / len(cluster.instance_ids)
                items = list(cluster.instance_ids)
                for item in items:
                    self.meter.started(item, per_instance, self.clock.now(), stage=stage, source=cluster.provider,
                                       minimum_s=MIN_BILLED_SECONDS)
            self._clusters[cluster.name] = (cluster, items, lower)

    def released(self, cluster: Cluster) -> None:
        if self.meter is None:
            return
        with self._lock:
            _, items, _ = self._clusters.pop(cluster.name, (cluster, list(cluster.instance_ids), None))
            for item in items:
                self.meter.stopped(item, self.clock.now())

    # --- the watchdog's own thread -------------------------------------------------------------
    def start(self, poll_s: float | None = None) -> None:
        """Check from a thread of its own, so a check comes due even while the runner blocks. When it
        says stop, the running clusters' hard stops are moved to now (their nodes power off by
        themselves) and the runner's next turn sees ``stopped_for`` and tears down."""
        if self._thread is not None or not self.dogs:
            return
        interval = poll_s or min(dog.check_interval_s for dog in self.dogs)

        def loop() -> None:
            while not self._halt.wait(max(0.05, interval / 4)):
                try:
                    if self.check() is not None:
                        now = self.clock.now()
                        with self._lock:
                            for cluster, _, lower in self._clusters.values():
                                if lower is not None:
                                    lower(cluster, now)
                        return
                except Exception:  # noqa: BLE001 - a failed check must not kill the thread; the runner checks too
                    continue

        self._thread = threading.Thread(target=loop, name="lhorch-budget-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def check(self) -> str | None:
        """A reason to stop the run now, or None."""
        if self.stopped_for is not None:
            return self.stopped_for
        if self.meter is None:
            return None
        with self._lock:
            self._sync()
            if not self.meter.running:
                return None
            return self._check()

    def _check(self) -> str | None:
        assert self.meter is not None
        now = self.clock.now()
        for dog in self.dogs:
            dog.alert(now)
            if dog.should_stop(now):
                what = f"stage {dog.stage}" if dog.stage else "run"
                self.stopped_for = (f"budget: the {what} would cross its cap of ${dog.cap:.2f} before the next check "
                                    f"(spent ${dog.meter.spent(now, dog.stage):.2f}); stopped with what finished kept")
                return self.stopped_for
        return None

    def close(self) -> None:
        self.stop()
        if self.meter is not None:
            with self._lock:
                self.meter.stop_all(self.clock.now())


def month_spent(store: Store, pipeline: Pipeline, clock: Clock | None = None) -> float:
    return ledger.month_to_date(store, pipeline.name, (clock or SystemClock()).now())



