"""Issue 16 against moto's server over HTTP: every billable resource is in the ledger before its
create call returns, closed with its real lifetime by release or gc, and one cap spans a run."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from test_aws_provider import (  # noqa: F401 - fixtures
    aws,
    crash_after_run_instances,
    make_provider,
    moto_endpoint,
    offer,
    request,
    run,
    sleeps,
    stand_in_head,
)

from lhorch.orchestrator.budget.guard import BudgetGuard
from lhorch.orchestrator.core.errors import BudgetError
from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.state import ledger


def test_ledger_row_is_open_from_launch_and_closed_at_release(make_provider, run):
    p = make_provider()
    cluster = p.acquire(request(run))
    rows = ledger.open_items(p.store, run)
    assert {r["kind"] for r in rows} == {"instance", "volume", "ipv4"}  # not only instance-seconds
    inst = [r for r in rows if r["kind"] == "instance"][0]
    assert inst["resource_id"] == cluster.head_id
    assert inst["unit_price"] * 3600 == pytest.approx(0.096)
    assert ledger.month_to_date(p.store, "", datetime.now(timezone.utc) + timedelta(seconds=1)) > 0.096  # worst case
    p.release(cluster)
    assert ledger.open_items(p.store, run) == []
    assert ledger.run_total(p.store, run) == pytest.approx(0.096 * 60 / 3600, rel=0.1)


def test_kill_9_then_gc_closes_the_instance_row(make_provider, home, run):
    crash_after_run_instances(home, run)
    p = make_provider()
    assert [r["kind"] for r in ledger.open_items(p.store, run) if r["kind"] == "instance"] == ["instance"]
    p.sweep(datetime.now(timezone.utc), live_runs=set())
    assert ledger.open_items(p.store, run) == []
    assert ledger.run_total(p.store, run) >= 0.096 * 60 / 3600


def _pipeline(cap: float) -> Pipeline:
    return Pipeline.model_validate({"name": "capped", "budget": {"max_usd": cap, "check_interval": "30s"},
                                    "stages": {"train": {"run": "true"}}})


def test_node_that_cannot_start_inside_the_cap_is_refused(home):
    from lhorch.orchestrator.state.store import Store

    store = Store(home)
    pipe = _pipeline(0.12)
    big = offer("p3.2xlarge", price=2.72, startup_seconds=100, teardown_seconds=20)
    plan = Plan(pipeline="capped", policy="t", placements={"train": Placement(
        stage="train", target="cloud", provider="aws", offer=big, est_seconds=60)})
    guard = BudgetGuard(store, pipe)
    guard.open("r-refuse", plan)
    with pytest.raises(BudgetError, match="start-up"):
        guard.before_acquire(request("r-refuse", offer=big), ["train"])


def test_a_resume_keeps_the_runs_spend(home):
    from lhorch.orchestrator.state.store import Store

    store = Store(home)
    t0 = datetime.now(timezone.utc)
    row = ledger.open_item(store, "r-resume", "instance", "n0", usd_per_second=1.0 / 3600, started_at=t0,
                           ends_by=t0 + timedelta(hours=1), source="t", minimum_s=60, pipeline="capped")
    ledger.close_row(store, row, t0 + timedelta(minutes=30))
    plan = Plan(pipeline="capped", policy="t", placements={})
    guard = BudgetGuard(store, _pipeline(5.0))
    guard.open("r-resume", plan)
    assert guard.meter is not None and guard.meter.spent(t0) == pytest.approx(0.5)
