"""The budget during a run: what the runner asks before launching, after launching, at every loop
turn and at release. The arithmetic lives in budget.py; this only connects it to clusters.

- Before a cluster is launched: refuse it if its first check interval would cross the cap, and set
  its nodes' own hard stop time from the cap, so the cap holds even when the laptop is gone.
- While it runs: every turn of the runner's loop, alert once at `alert_fraction` and say "stop"
  when spend by the next check plus teardown would cross the cap.
- At release (or loss): the instances stop billing and their cost goes into the ledger.
"""

from __future__ import annotations

from lhorch.orchestrator.budget.caps import CostMeter, Watchdog, effective_cap
from lhorch.orchestrator.core.clock import Clock, SystemClock
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import BudgetError
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store

DEFAULT_TEARDOWN_S = 120.0


class BudgetGuard:
    def __init__(self, store: Store, pipeline: Pipeline, *, month_spent: float = 0.0, clock: Clock | None = None,
                 on_alert=None):
        self.store, self.pipeline = store, pipeline
        self.clock = clock or SystemClock()
        self.cap = effective_cap(pipeline.budget, month_spent)
        self.on_alert = on_alert
        self.meter: CostMeter | None = None
        self.dogs: list[Watchdog] = []
        self.stopped_for: str | None = None

    def open(self, run_id: str, plan: Plan) -> None:
        ledger.record_estimate(self.store, run_id, self.pipeline.name, plan)
        self.meter = CostMeter(self.store, run_id, self.pipeline.name)
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

    def before_acquire(self, request: ClusterRequest, stages: list[str]) -> None:
        if self.meter is None or not self.dogs:
            return
        price = request.offer.price_per_hour * request.nodes
        now = self.clock.now()
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
        if stops:
            hard_stop = min(stops)
            if request.expires_at is None or hard_stop < request.expires_at:
                request.expires_at = hard_stop

    def acquired(self, cluster: Cluster, stages: list[str]) -> None:
        if self.meter is None or not cluster.instance_ids:
            return
        per_instance = cluster.price_per_hour / len(cluster.instance_ids)
        stage = stages[0] if len(stages) == 1 else None
        for item in cluster.instance_ids:
            self.meter.started(item, per_instance, self.clock.now(), stage=stage, source=cluster.provider)

    def released(self, cluster: Cluster) -> None:
        if self.meter is None:
            return
        for item in cluster.instance_ids:
            self.meter.stopped(item, self.clock.now())

    def check(self) -> str | None:
        """A reason to stop the run now, or None."""
        if self.meter is None or not self.meter.running:
            return None
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
        if self.meter is not None:
            self.meter.stop_all(self.clock.now())


def month_spent(store: Store, pipeline: Pipeline, clock: Clock | None = None) -> float:
    return ledger.month_to_date(store, pipeline.name, (clock or SystemClock()).now())



