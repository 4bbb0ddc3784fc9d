"""Budget caps: refuse a plan that would cost too much, and stop a running one before it does.

Pure apart from the optional ledger writes of ``CostMeter``; time comes in as arguments or from an
injected Clock, so tests drive a whole run with a FakeClock.

How a run stays under its cap:
1. ``check_plan`` refuses a plan whose estimate is over ``max_usd`` or over what is left of the month.
2. ``Watchdog.can_start`` refuses to launch an instance whose first interval would cross the cap.
3. Every ``check_interval`` the runner asks ``Watchdog.should_stop``; it says stop while the spend
   *if nothing is stopped until the next check, plus teardown* would still be within the cap.
4. ``Watchdog.hard_stop_at`` is the instances' own shutdown time, so the cap holds when the laptop is
   gone (asleep, crashed, offline) and no check runs at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from lhorch.orchestrator.core.clock import Clock
from lhorch.orchestrator.core.errors import BudgetError
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.spec import Budget
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store

# EC2 Linux on-demand and spot: per-second billing with a 60 s minimum each time an instance starts.
# https://aws.amazon.com/ec2/pricing/on-demand/ ("Per Second Billing")
MIN_BILLED_SECONDS = 60.0


def instance_cost(price_per_hour: float, seconds: float) -> float:
    """What AWS bills for one instance that ran ``seconds``: whole seconds, at least 60."""
    if seconds < 0 or price_per_hour < 0:
        raise ValueError(f"negative duration or price: {seconds} s at {price_per_hour}/h")
    return price_per_hour * billed_seconds(seconds) / 3600.0


def billed_seconds(seconds: float) -> float:
    return ledger.billed_seconds(seconds, MIN_BILLED_SECONDS)


def _money(usd: float) -> str:
    return f"${usd:,.2f}"


def effective_cap(budget: Budget | None, month_spent: float = 0.0) -> float | None:
    """The most one run may spend now: the smaller of max_usd and what is left of the month."""
    if budget is None:
        return None
    caps = [c for c in (budget.max_usd,
                        None if budget.monthly_max_usd is None else max(0.0, budget.monthly_max_usd - month_spent))
            if c is not None]
    return min(caps) if caps else None


def check_plan(plan: Plan, budget: Budget | None, month_spent: float = 0.0,
               stage_caps: dict[str, float | None] | None = None) -> None:
    """Raise BudgetError (exit 3) when the plan's estimate breaks a cap; return None when it fits."""
    est = plan.est_total_cost_usd
    if budget is not None and budget.max_usd is not None and est > budget.max_usd:
        raise BudgetError(
            f"plan for {plan.pipeline} is estimated at {_money(est)}, over budget.max_usd {_money(budget.max_usd)}",
            hint="Raise budget.max_usd, allow spot (cloud.spot: true), or pin stages to local.")
    if budget is not None and budget.monthly_max_usd is not None and month_spent + est > budget.monthly_max_usd:
        left = max(0.0, budget.monthly_max_usd - month_spent)
        raise BudgetError(
            f"plan for {plan.pipeline} is estimated at {_money(est)} but only {_money(left)} of "
            f"budget.monthly_max_usd {_money(budget.monthly_max_usd)} is left this month "
            f"({_money(month_spent)} spent)",
            hint="Raise budget.monthly_max_usd, run stages locally, or wait for next month. "
                 "`lhorch cost --pipeline NAME` shows the month's spend.")
    for stage, cap in (stage_caps or {}).items():
        p = plan.placements.get(stage)
        if cap is not None and p is not None and p.est_cost_usd > cap:
            raise BudgetError(
                f"stage {stage} is estimated at {_money(p.est_cost_usd)}, over its budget_usd {_money(cap)}",
                hint=f"Raise stages.{stage}.budget_usd or pin the stage to local.")


def monthly_allows_cloud(store: Store, pipeline: str, budget: Budget | None, now: datetime) -> bool:
    """False once this month's actual spend of the pipeline has reached budget.monthly_max_usd: the
    next (scheduled) run must not launch cloud work."""
    if budget is None or budget.monthly_max_usd is None:
        return True
    return ledger.month_to_date(store, pipeline, now) < budget.monthly_max_usd


@dataclass
class _Open:
    price_per_hour: float
    start: datetime
    stage: str | None
    source: str
    minimum_s: float = MIN_BILLED_SECONDS
    row_id: int | None = None  # its open ledger row (issue 16), closed when it stops

    def cost(self, until: datetime) -> float:
        seconds = ledger.billed_seconds((until - self.start).total_seconds(), self.minimum_s)
        return self.price_per_hour * seconds / 3600.0


class CostMeter:
    """Actual spend of one run from instance start/stop events. A running instance counts as billed
    up to ``now`` (60 s minimum included); a stopped one is written to the ledger when it stops."""

    def __init__(self, store: Store | None = None, run_id: str = "", pipeline: str = "",
                 source: str = "catalogue") -> None:
        self.store, self.run_id, self.pipeline, self.source = store, run_id, pipeline, source
        self._open: dict[str, _Open] = {}
        self._closed: list[tuple[str | None, float]] = []  # (stage, usd)
        # Spend that is coming and cannot be stopped once begun (a stage's outputs brought back out of
        # the cloud): counted as spent until the real item replaces it.
        self._reserved: dict[str, tuple[str | None, float]] = {}
        self.closed_rows: set[int] = set()  # ledger rows this meter closed (or took back from the ledger)

    def started(self, item: str, price_per_hour: float, at: datetime, stage: str | None = None,
                source: str | None = None, minimum_s: float = MIN_BILLED_SECONDS, row_id: int | None = None) -> None:
        """An item began billing at ``at`` (its launch time). Starting an item already running is a
        no-op (idempotent). With ``row_id`` the item is an open ledger row, closed when it stops."""
        if price_per_hour < 0:
            raise ValueError(f"negative price for {item}: {price_per_hour}")
        self._open.setdefault(item, _Open(price_per_hour, at, stage, source or self.source, minimum_s, row_id))

    def restore(self, stage: str | None, usd: float) -> None:
        """Spend already in the ledger (earlier attempts and processes of the run, failed launches)."""
        self._closed.append((stage, usd))

    def reserve(self, key: str, stage: str | None, usd: float) -> None:
        """Count ``usd`` as spent from now on, until ``unreserve(key)`` (the real item arrived)."""
        if usd > 0:
            self._reserved[key] = (stage, usd)

    def unreserve(self, key: str) -> None:
        self._reserved.pop(key, None)

    def open_rows(self) -> set[int]:
        return {o.row_id for o in self._open.values() if o.row_id is not None}

    def stopped(self, item: str, at: datetime) -> float:
        """An instance stopped billing (terminated, interrupted); returns its cost. Stopping an item
        that is not running is not an error and costs nothing."""
        o = self._open.pop(item, None)
        if o is None:
            return 0.0
        seconds = ledger.billed_seconds((at - o.start).total_seconds(), o.minimum_s)
        usd = o.price_per_hour * seconds / 3600.0
        if o.row_id is not None:
            self.closed_rows.add(o.row_id)
        if self.store is not None and o.row_id is not None:
            usd = ledger.close_row(self.store, o.row_id, at)
        elif self.store is not None:
            usd = ledger.record(self.store, self.run_id, self.pipeline, o.stage, "instance", item,
                                o.price_per_hour / 3600.0, seconds, "second", f"price:{o.source}", at)
        self._closed.append((o.stage, usd))
        return usd

    def forget(self, item: str) -> None:
        """Drop an item without billing it: a launch that was only being priced, or never happened."""
        self._open.pop(item, None)

    def stop_all(self, at: datetime) -> float:
        return sum(self.stopped(item, at) for item in list(self._open))

    @property
    def running(self) -> list[str]:
        return list(self._open)

    def spent(self, now: datetime, stage: str | None = None) -> float:
        """Stopped items plus running ones billed as if stopped at ``now``, plus what is reserved."""
        closed = sum(usd for s, usd in [*self._closed, *self._reserved.values()] if stage is None or s == stage)
        return closed + sum(o.cost(now) for o in self._open.values() if stage is None or o.stage == stage)

    def burn_rate(self, stage: str | None = None) -> float:
        """USD per second of everything running now."""
        return sum(o.price_per_hour for o in self._open.values() if stage is None or o.stage == stage) / 3600.0


class Watchdog:
    """Decides, at each check, whether the run must stop now to stay under ``cap_usd``.

    The cap holds as long as checks come at most ``check_interval_s`` apart and a teardown takes at
    most ``teardown_s``; ``hard_stop_at`` covers the case where they do not."""

    def __init__(self, meter: CostMeter, cap_usd: float, check_interval_s: float, teardown_s: float,
                 clock: Clock, alert_fraction: float = 0.8, stage: str | None = None,
                 on_alert: Callable[[float, float], None] | None = None) -> None:
        if cap_usd <= 0 or check_interval_s <= 0 or teardown_s < 0:
            raise ValueError("cap and check interval must be positive, teardown not negative")
        self.meter, self.cap, self.clock = meter, cap_usd, clock
        self.check_interval_s, self.teardown_s = check_interval_s, teardown_s
        self.alert_fraction, self.stage, self.on_alert = alert_fraction, stage, on_alert
        self.alerted = False

    @property
    def horizon_s(self) -> float:
        """How long what runs now may keep running if this check lets it: to the next check, then teardown."""
        return self.check_interval_s + self.teardown_s

    def _now(self, now: datetime | None) -> datetime:
        return now if now is not None else self.clock.now()

    def projected(self, now: datetime | None = None) -> float:
        """Spend if nothing is stopped before the next check and the teardown after it."""
        return self.meter.spent(self._now(now) + timedelta(seconds=self.horizon_s), self.stage)

    def should_stop(self, now: datetime | None = None) -> bool:
        return self.projected(now) > self.cap

    def can_start(self, price_per_hour: float, now: datetime | None = None) -> bool:
        """Whether launching one more instance at this price keeps the projection within the cap."""
        return self.projected(now) + instance_cost(price_per_hour, self.horizon_s) <= self.cap

    def alert(self, now: datetime | None = None) -> bool:
        """True exactly once: the first time spend reaches alert_fraction of the cap."""
        if self.alerted:
            return False
        spent = self.meter.spent(self._now(now), self.stage)
        if spent < self.alert_fraction * self.cap:
            return False
        self.alerted = True
        if self.on_alert is not None:
            self.on_alert(spent, self.cap)
        return True

    def hard_stop_at(self, now_spent: float, burn_rate: float, now: datetime | None = None) -> datetime | None:
        """Latest time the instances may keep billing at ``burn_rate`` (USD/s) so that, with
        ``now_spent`` already spent, the cap holds with no laptop at all; to be the instances' own
        shutdown time. Leaves ``teardown_s`` for the shutdown itself and one second per started
        second of rounding. None when nothing burns."""
        now = self._now(now)
        if burn_rate <= 0:
            return None
        left_s = (self.cap - now_spent) / burn_rate - self.teardown_s - 1.0
        return now + timedelta(seconds=max(0.0, left_s))

    def hard_stop_now(self, now: datetime | None = None) -> datetime | None:
        """``hard_stop_at`` for what the meter has running now, but exact about the 60 s minimum
        (a fresh instance's first minute is already paid, so the linear bound would stop it a minute
        early): the latest whole second T with spent(T + teardown) within the cap."""
        now = self._now(now)
        burn = self.meter.burn_rate(self.stage)
        linear = self.hard_stop_at(self.meter.spent(now, self.stage), burn, now)
        if linear is None:
            return None

        def fits(t: float) -> bool:
            return self.meter.spent(now + timedelta(seconds=t + self.teardown_s), self.stage) <= self.cap

        lo = (linear - now).total_seconds()  # fits, or is 0 and nothing fits
        hi = lo + MIN_BILLED_SECONDS + 2.0   # the minimum is the only slack the linear bound leaves
        if not fits(lo):
            return now
        while hi - lo > 1.0:
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return now + timedelta(seconds=math.floor(lo))
