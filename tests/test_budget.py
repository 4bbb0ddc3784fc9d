"""Budget caps and the ledger, driven by a FakeClock: no Ray, no cloud, no network."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from lhorch.orchestrator.budget.caps import (
    CostMeter,
    Watchdog,
    check_plan,
    effective_cap,
    instance_cost,
    monthly_allows_cloud,
)
from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.clock import FakeClock
from lhorch.orchestrator.core.errors import EXIT_BUDGET, BudgetError
from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.spec import Budget
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import utcnow

T0 = datetime(2024, 3, 10, 12, 0, tzinfo=timezone.utc)


def _plan(costs: dict[str, float]) -> Plan:
    return Plan(pipeline="demo", policy="cheapest", est_total_cost_usd=sum(costs.values()), placements={
        name: Placement(stage=name, target="cloud", provider="aws", instance_type="g5.xlarge", market="spot",
                        est_seconds=600, est_cost_usd=usd) for name, usd in costs.items()})


class _Spec(BaseModel):
    name: str
    budget: dict


# --- billing ---------------------------------------------------------------------------------

def test_sixty_second_minimum_then_per_second():
    assert instance_cost(3.6, 1) == pytest.approx(0.06)        # 60 s billed
    assert instance_cost(3.6, 59.5) == pytest.approx(0.06)
    assert instance_cost(3.6, 60) == pytest.approx(0.06)
    assert instance_cost(3.6, 61) == pytest.approx(0.061)      # then whole seconds
    assert instance_cost(3.6, 61.2) == pytest.approx(0.062)    # a started second counts
    assert instance_cost(3.6, 3600) == pytest.approx(3.6)


def test_meter_bills_a_short_instance_the_minimum(store):
    meter = CostMeter(store, run_id="r1", pipeline="demo", source="catalogue")
    meter.started("i-1", 3.6, T0, stage="train")
    assert meter.spent(T0) == pytest.approx(0.06)
    assert meter.stopped("i-1", T0 + timedelta(seconds=5)) == pytest.approx(0.06)
    assert meter.stopped("i-1", T0 + timedelta(seconds=50)) == 0.0  # already gone: no error, no cost
    [row] = ledger.rows(store, "r1")
    assert (row["kind"], row["unit"], row["quantity"], row["source"]) == ("instance", "second", 60.0, "price:catalogue")


# --- the watchdog ------------------------------------------------------------------------------

def test_run_past_the_cap_is_stopped_before_it_with_at_most_one_interval_to_spare(store):
    """A stage that would run 3 h at $3.60/h ($10.80) under a $5 cap: the watchdog stops it, and the
    final bill (teardown included) is within the cap but no more than one check interval of spend short."""
    clock = FakeClock(T0)
    price, nodes, interval, teardown = 3.6, 2, 30.0, 45.0
    meter = CostMeter(store, run_id="r1", pipeline="demo")
    dog = Watchdog(meter, cap_usd=5.0, check_interval_s=interval, teardown_s=teardown, clock=clock)
    alerts = []
    dog.on_alert = lambda spent, cap: alerts.append(spent)

    assert dog.can_start(price * nodes)
    for n in range(nodes):
        meter.started(f"i-{n}", price, clock.now(), stage="train")
    hard_stop = dog.hard_stop_now()
    stage_end = T0 + timedelta(hours=3)
    stopped_at = None
    while clock.now() < stage_end:
        clock.sleep(interval)
        dog.alert()
        if dog.should_stop():
            stopped_at = clock.now()
            break
    assert stopped_at is not None and stopped_at < stage_end
    clock.advance(teardown)  # the teardown takes its full allowance
    meter.stop_all(clock.now())

    total = ledger.run_total(store, "r1")
    one_interval = price * nodes * interval / 3600
    assert total <= 5.0
    assert 5.0 - total <= one_interval + 1e-9
    assert len(alerts) == 1 and alerts[0] >= 0.8 * 5.0
    # The instances' own shutdown time would also have held the cap without the laptop.
    unattended = nodes * instance_cost(price, (hard_stop - T0).total_seconds() + teardown)
    assert unattended <= 5.0


def test_watchdog_refuses_to_launch_what_would_cross_the_cap_at_once():
    clock = FakeClock(T0)
    dog = Watchdog(CostMeter(), cap_usd=1.0, check_interval_s=60, teardown_s=60, clock=clock)
    assert dog.can_start(29.0)       # 120 s at $29/h = $0.97
    assert not dog.can_start(31.0)   # $1.03
    assert dog.hard_stop_at(0.0, 0.0) is None


def test_stage_cap_watches_only_that_stage():
    clock = FakeClock(T0)
    meter = CostMeter()
    meter.started("a", 36.0, T0, stage="prep")
    meter.started("b", 0.36, T0, stage="train")
    dog = Watchdog(meter, cap_usd=1.0, check_interval_s=30, teardown_s=30, clock=clock, stage="train")
    clock.advance(600)
    assert meter.spent(clock.now()) > 5
    assert not dog.should_stop()


# --- plans and the month ---------------------------------------------------------------------

def test_check_plan_refuses_an_over_cap_plan_with_exit_code_3():
    budget = Budget(max_usd=5, monthly_max_usd=60)
    check_plan(_plan({"prep": 1.0, "train": 3.0}), budget, month_spent=10)
    with pytest.raises(BudgetError) as err:
        check_plan(_plan({"prep": 1.0, "train": 4.5}), budget, month_spent=0)
    assert err.value.exit_code == EXIT_BUDGET == 3
    assert "max_usd" in str(err.value) and err.value.hint
    with pytest.raises(BudgetError, match="left this month"):
        check_plan(_plan({"train": 4.0}), budget, month_spent=57)
    with pytest.raises(BudgetError, match="budget_usd"):
        check_plan(_plan({"train": 4.0}), budget, stage_caps={"train": 2.0})
    assert effective_cap(budget, month_spent=57) == pytest.approx(3.0)


def test_monthly_cap_blocks_the_next_runs_cloud_work_until_next_month(store):
    budget = Budget(max_usd=5, monthly_max_usd=8)
    clock = FakeClock(T0)
    for run in ("r1", "r2"):  # two nightly runs at $4.00 each
        meter = CostMeter(store, run_id=run, pipeline="demo")
        assert monthly_allows_cloud(store, "demo", budget, clock.now())
        meter.started("i-1", 4.0, clock.now())
        meter.stopped("i-1", clock.advance(3600))
        clock.advance(days=1)
    assert ledger.month_to_date(store, "demo", clock.now()) == pytest.approx(8.0)
    assert not monthly_allows_cloud(store, "demo", budget, clock.now())
    assert monthly_allows_cloud(store, "other", budget, clock.now())
    assert monthly_allows_cloud(store, "demo", budget, datetime(2024, 4, 1, tzinfo=timezone.utc))


def test_ledger_adds_up_to_the_reported_totals(store, home):
    now = utcnow()
    store.create_run("demo-1", "demo", _Spec(name="demo", budget={"max_usd": 5, "monthly_max_usd": 60}), None)
    ledger.record_estimate(store, "demo-1", "demo", _plan({"prep": 0.5, "train": 2.0}), at=now)
    ledger.record_estimate(store, "demo-1", "demo", _plan({"prep": 0.5, "train": 2.5}), at=now)  # re-plan replaces
    meter = CostMeter(store, run_id="demo-1", pipeline="demo")
    meter.started("i-a", 1.2, now - timedelta(minutes=20), stage="prep")
    meter.started("i-b", 3.06, now - timedelta(minutes=50), stage="train")
    meter.stop_all(now)
    ledger.record(store, "demo-1", "demo", "train", "transfer", "s3-out", 0.09, 1.5, "GB", "catalogue", now)

    actual = ledger.rows(store, "demo-1", actual_only=True)
    assert len(actual) == 3
    assert all(r["usd"] == pytest.approx(r["unit_price"] * r["quantity"]) for r in actual)
    total = sum(r["usd"] for r in actual)
    assert ledger.run_total(store, "demo-1") == pytest.approx(total)
    assert ledger.run_total(store, "demo-1") == pytest.approx(0.4 + 2.55 + 0.135)

    result = CliRunner().invoke(main, ["cost", "demo-1", "--json"], obj={})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["run"]["actual_usd"] == pytest.approx(total)
    assert report["run"]["estimate_usd"] == pytest.approx(3.0)
    assert sum(s["actual_usd"] for s in report["run"]["stages"]) == pytest.approx(total)
    assert {s["stage"]: s["estimate_usd"] for s in report["run"]["stages"]} == {"prep": 0.5, "train": 2.5}
    assert report["month_to_date_usd"] == pytest.approx(total)
    assert (report["run"]["max_usd"], report["monthly_max_usd"]) == (5, 60)

    table = CliRunner().invoke(main, ["cost", "--pipeline", "demo"], obj={})
    assert table.exit_code == 0 and "demo-1" in table.output and "$3.08" in table.output
    missing = CliRunner().invoke(main, ["cost", "nope"], obj={})
    assert missing.exit_code == 2 and "no run" in missing.output
