"""Issue 16's findings, one test each, against moto's server over HTTP: the meter counts from EC2's
launch time (a failed start too), a fallback is billed and hard-stopped at its own price, a second
cluster lowers the first one's hard stop, and the watchdog checks from its own thread while the
runner blocks. Time that matters to the budget comes from an injected clock; EC2's own times (launch,
termination) come from moto."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from moto_server import StandInConnector
from test_aws_provider import (  # noqa: F401 - fixtures
    CALLER_IP,
    VERSIONS,
    aws,
    fail_run_instances,
    lhorch_instances,
    moto_endpoint,
    no_catalogue,
    offer,
    request,
    run,
    sleeps,
    stand_in_head,
)

from lhorch.orchestrator.budget.guard import BudgetGuard
from lhorch.orchestrator.core.clock import FakeClock
from lhorch.orchestrator.core.errors import BudgetError, ClusterUnreachable
from lhorch.orchestrator.core.plan import Placement, Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws.provider import AwsProvider
from lhorch.providers.aws.settings import AwsSettings


class SlowHead(StandInConnector):
    """The head answers only once ``boot_s`` of the budget's clock have passed since it was first
    asked (its boot), or never (``boot_s`` None); ``gate`` holds every answer until it is set."""

    def __init__(self, head, clock: FakeClock, boot_s: float | None = 0.0, gate: threading.Event | None = None):
        super().__init__(head)
        self.clock, self.boot_s, self.gate = clock, boot_s, gate

    def connect(self, node):
        if self.gate is not None:
            self.gate.wait(timeout=10)
        if self.boot_s is None:
            raise ClusterUnreachable("the head is not up")
        self.clock.advance(self.boot_s)
        self.boot_s = 0.0
        return super().connect(node)


def _provider(home, connector, clock=None, catalogue=no_catalogue, **settings) -> AwsProvider:
    return AwsProvider(boto3.Session(region_name="us-east-1"), store=Store(home),
                       settings=AwsSettings(**{"versions": VERSIONS, "host": "laptop", "poll_interval": 0.01,
                                               **settings}),
                       connector=connector, ip_lookup=lambda: CALLER_IP, sleep=lambda s: None,
                       price_fallback=catalogue, **({"clock": clock} if clock else {}))


def _pipeline(cap: float, groups: tuple[str, ...] = ("train",)) -> Pipeline:
    return Pipeline.model_validate({"name": "capped", "budget": {"max_usd": cap, "check_interval": "30s"},
                                    "stages": {g: {"run": "true"} for g in groups}})


def _plan(groups: tuple[str, ...] = ("train",), est_seconds: float = 60.0) -> Plan:
    return Plan(pipeline="capped", policy="t", placements={g: Placement(
        stage=g, target="cloud", provider="aws", group=g, offer=offer(), est_seconds=est_seconds) for g in groups})


def _clock_at_now() -> FakeClock:
    """A budget clock that starts at the real now (moto stamps launches with the real time)."""
    return FakeClock(datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1))


def _expires_tag(p: AwsProvider, instance_id: str) -> datetime:
    (inst,) = [i for r in p.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"] for i in r["Instances"]]
    return datetime.fromisoformat({t["Key"]: t["Value"] for t in inst["Tags"]}["lhorch:expires-at"])


def _instance_rows(store: Store, run_id: str) -> list[dict]:
    return [dict(r) for r in store.query("SELECT * FROM ledger WHERE run_id=? AND kind='instance'", (run_id,))]


# --- 1. start-up is billed ------------------------------------------------------------------------
def test_meter_counts_from_launch_time_not_from_the_heads_first_answer(home, aws, stand_in_head, run):
    clock = _clock_at_now()
    p = _provider(home, SlowHead(stand_in_head, clock, boot_s=40))
    guard = BudgetGuard(p.store, _pipeline(5.0), clock=clock)
    guard.open(run, _plan())
    req = request(run)
    launched_at = clock.now()
    guard.before_acquire(req, ["train"])
    cluster = p.acquire(req)  # the head answers 40 s after its launch
    guard.acquired(cluster, ["train"])
    try:
        assert clock.now() - launched_at >= timedelta(seconds=40)
        # 100 s after launch, 100 s are billed (not the 60 s minimum counted from the head's answer).
        at = cluster.launched_at + timedelta(seconds=100)
        assert guard.meter.spent(at, "train") >= 0.096 * 100 / 3600 - 1e-9
    finally:
        p.release(cluster)


def test_a_failed_start_is_metered_and_counts_against_the_cap(home, aws, stand_in_head, run):
    clock = _clock_at_now()
    p = _provider(home, SlowHead(stand_in_head, clock, boot_s=None), ready_timeout=0.2)
    guard = BudgetGuard(p.store, _pipeline(5.0), clock=clock)
    guard.open(run, _plan())
    req = request(run)
    guard.before_acquire(req, ["train"])
    with pytest.raises(ClusterUnreachable):
        p.acquire(req)  # launched, never answered, torn down: EC2 billed it at least its first minute
    assert lhorch_instances(p.ec2, run) == []
    assert ledger.run_total(p.store, run) >= 0.096 * 60 / 3600 - 1e-9
    guard.check()
    assert guard.meter.spent(clock.now()) >= 0.096 * 60 / 3600 - 1e-9


# --- 4. a resume keeps the cap ---------------------------------------------------------------------
def test_a_resume_starts_from_what_the_run_already_spent(home):
    store = Store(home)
    t0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
    # An earlier process of the run billed 30 minutes at $1/h before it was interrupted.
    ledger.record(store, "r-resumed", "capped", "train", "instance", "i-0", 1.0 / 3600, 1800, "second", "t", t0)
    guard = BudgetGuard(store, _pipeline(0.60), clock=FakeClock(t0 + timedelta(hours=1)))
    guard.open("r-resumed", _plan())
    assert guard.meter.spent(t0 + timedelta(hours=1)) == pytest.approx(0.5)
    with pytest.raises(BudgetError) as info:  # $0.10 left, not a fresh $0.60
        guard.before_acquire(request("r-resumed", offer=offer(price=2.0)), ["train"])
    assert info.value.exit_code == 3


# --- 5. no hard stop before the node can work -----------------------------------------------------
def test_a_node_told_to_stop_before_it_can_work_is_refused_with_exit_3_and_the_numbers(home, aws, stand_in_head,
                                                                                       run):
    clock = _clock_at_now()
    p = _provider(home, StandInConnector(stand_in_head))
    big = offer("p3.2xlarge", price=2.72, startup_seconds=100, teardown_seconds=20)
    plan = Plan(pipeline="capped", policy="t", placements={"train": Placement(
        stage="train", target="cloud", provider="aws", group="train", offer=big, est_seconds=60)})
    guard = BudgetGuard(p.store, _pipeline(0.12), clock=clock)
    guard.open(run, plan)
    with pytest.raises(BudgetError) as info:
        req = request(run, offer=big)
        guard.before_acquire(req, ["train"])
        p.acquire(req)
    assert info.value.exit_code == 3
    assert "160 s" in str(info.value) and "100 s" in str(info.value)  # start-up 100 s + the 60 s of work
    assert lhorch_instances(p.ec2, run) == []  # refused before anything was paid for


def test_outputs_coming_back_are_set_aside_before_launch_and_replaced_by_the_real_transfer(home):
    store = Store(home)
    clock = FakeClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    pipe = Pipeline.model_validate({"name": "capped", "budget": {"max_usd": 1.0, "check_interval": "30s"},
                                    "stages": {"train": {"run": "true", "hints": {"output_gb": 10}}}})
    egress = offer(transfer_usd_per_gb=0.09)  # 10 GB out: $0.90 of the $1.00
    guard = BudgetGuard(store, pipe, clock=clock)
    guard.open("r-out", Plan(pipeline="capped", policy="t", placements={"train": Placement(
        stage="train", target="cloud", provider="aws", group="train", offer=egress, est_seconds=600)}))
    req = request("r-out", offer=egress)
    req.expires_at = clock.now() + timedelta(hours=12)
    guard.before_acquire(req, ["train"])
    # $0.10 left buys ~1 h at $0.096/h (not the ~10 h the instance alone could run).
    assert (req.expires_at - clock.now()) < timedelta(hours=1, minutes=3)
    ledger.record_items(store, "r-out", "train", [ledger.CostItem(ledger.TRANSFER_OUT, "out", 0.09, 10, "GB", "t")],
                        clock.now())
    guard.check()
    assert guard.meter.spent(clock.now()) == pytest.approx(0.90)  # the real transfer, not twice


# --- 2. what nobody saw end is closed with its real lifetime ----------------------------------------
def test_gc_bills_a_node_that_powered_itself_off_to_its_hard_stop_not_to_gc(home, aws, stand_in_head, run):
    now = [datetime.now(timezone.utc)]
    p = _provider(home, StandInConnector(stand_in_head), clock=lambda: now[0])
    cluster = p.acquire(request(run))  # its hard stop: 2 h from now
    p.ec2.terminate_instances(InstanceIds=cluster.instance_ids)  # its dead-man switch, at the hard stop
    now[0] += timedelta(hours=5)  # `lhorch gc` comes much later
    p.sweep(now[0], live_runs=set())
    (row,) = _instance_rows(p.store, run)
    assert row["state"] == "closed"
    assert 2 * 3600 - 5 <= row["quantity"] <= 2 * 3600 + 1  # not the 5 h until gc noticed


def test_teardown_closes_the_rows_at_ec2s_termination_time(home, aws, stand_in_head, run):
    late = [datetime.now(timezone.utc) + timedelta(hours=1)]  # whoever tears down learns of it an hour late
    p = _provider(home, StandInConnector(stand_in_head), clock=lambda: late[0])
    cluster = p.acquire(request(run))
    p.release(cluster)
    (inst,) = [i for r in p.ec2.describe_instances(InstanceIds=cluster.instance_ids)["Reservations"]
               for i in r["Instances"]]
    assert "User initiated (" in inst["StateTransitionReason"]
    rows = p.store.query("SELECT kind, quantity, state FROM ledger WHERE run_id=? AND kind != 'estimate'", (run,))
    assert {r["kind"] for r in rows} == {"instance", "volume", "ipv4"} and {r["state"] for r in rows} == {"closed"}
    assert max(r["quantity"] for r in rows) <= 120  # launch to EC2's termination, not to the caller's clock


# --- 3. a fallback is billed and hard-stopped at its own price -------------------------------------
@pytest.mark.parametrize("known_from", ["price cache", "catalogue"])
def test_on_demand_fallback_is_recorded_and_hard_stopped_at_the_on_demand_price(home, aws, stand_in_head, run,
                                                                                known_from):
    clock = _clock_at_now()
    listed = [offer(price=0.17)] if known_from == "catalogue" else []
    p = _provider(home, StandInConnector(stand_in_head), catalogue=lambda region, spot: listed)
    if known_from == "price cache":  # the live on-demand price as the cache holds it
        cache = p.store.home / "cache" / "aws-prices.json"
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps({"on-demand:us-east-1:m5.large": {
            "value": 0.17, "at": datetime.now(timezone.utc).isoformat()}}))
    # else: moto has no Price List API (as for a user without pricing:GetProducts): the catalogue's price
    fail_run_instances(p, "InsufficientInstanceCapacity",
                       lambda params, n: "InstanceMarketOptions" in params or params["InstanceType"] != "m5.large")
    spot = offer(market="spot", price=0.068)
    guard = BudgetGuard(p.store, _pipeline(0.10), clock=clock)
    guard.open(run, Plan(pipeline="capped", policy="t", placements={"train": Placement(
        stage="train", target="cloud", provider="aws", group="train", offer=spot, est_seconds=60)}))
    req = request(run, offer=spot)
    guard.before_acquire(req, ["train"])
    cluster = p.acquire(req)
    try:
        (inst,) = lhorch_instances(p.ec2, run)
        assert "InstanceLifecycle" not in inst  # on-demand
        (row,) = _instance_rows(p.store, run)
        assert row["unit_price"] * 3600 == pytest.approx(0.17)
        # The node's own hard stop leaves the cap room at 0.17/h, not at the planned 0.068/h.
        window = (_expires_tag(p, cluster.head_id) - inst["LaunchTime"]).total_seconds()
        assert 0 < window <= 0.10 / 0.17 * 3600 + 2
    finally:
        p.release(cluster)


# --- 6. parallel clusters and a watchdog of its own ------------------------------------------------
def test_a_second_cluster_lowers_the_first_clusters_hard_stop(home, aws, stand_in_head, run):
    clock = _clock_at_now()
    p = _provider(home, StandInConnector(stand_in_head))
    groups = ("a", "b")
    guard = BudgetGuard(p.store, _pipeline(0.20, groups), clock=clock)
    guard.open(run, _plan(groups))
    clusters = []
    try:
        for g in groups:
            req = request(run, group=g)
            req.expires_at = clock.now() + timedelta(hours=3)
            guard.before_acquire(req, [g])
            clusters.append(p.acquire(req))
            guard.acquired(clusters[-1], [g], p.lower_hard_stop)
        first, second = clusters
        alone = 0.20 / 0.096 * 3600  # ~2.08 h: what the cap buys the first cluster on its own
        assert (_expires_tag(p, first.head_id) - clock.now()).total_seconds() < alone / 2 + 60
        assert _expires_tag(p, first.head_id) <= _expires_tag(p, second.head_id) + timedelta(seconds=1)
        # Its worst case in the ledger shrank with it.
        (row,) = [r for r in _instance_rows(p.store, run) if r["resource_id"] == first.head_id]
        assert row["quantity"] < alone / 2 + 60
    finally:
        for c in clusters:
            p.release(c)


def test_watchdog_checks_and_stops_while_an_acquire_blocks(home, aws, stand_in_head, run):
    clock = _clock_at_now()
    gate = threading.Event()
    p = _provider(home, StandInConnector(stand_in_head))
    blocked = _provider(home, SlowHead(stand_in_head, clock, gate=gate))
    groups = ("a", "b")
    guard = BudgetGuard(p.store, _pipeline(0.20, groups), clock=clock)
    guard.open(run, _plan(groups))
    first = p.acquire(request(run, group="a"))
    guard.acquired(first, ["a"], p.lower_hard_stop)
    guard.start(poll_s=0.2)
    second: list = []
    runner = threading.Thread(target=lambda: second.append(blocked.acquire(request(run, group="b"))), daemon=True)
    runner.start()  # the runner's thread blocks in the second acquire (its head does not answer yet)
    try:
        clock.advance(hours=2)  # past what the cap allows: only the watchdog's own thread can notice now
        deadline = time.monotonic() + 10
        while guard.stopped_for is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert runner.is_alive(), "the acquire was meant to be still blocking"
        assert guard.stopped_for is not None and "cap" in guard.stopped_for
        # The running cluster's nodes were told to stop now (their tag), without the runner.
        deadline = time.monotonic() + 10
        while _expires_tag(p, first.head_id) > clock.now() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _expires_tag(p, first.head_id) <= clock.now()
    finally:
        guard.stop()
        gate.set()
        runner.join(timeout=30)
        p.release(first)
        for c in second:
            p.release(c)


def test_a_run_stopped_at_the_cap_still_closes_every_row(home, aws, stand_in_head, run):
    clock = _clock_at_now()
    p = _provider(home, StandInConnector(stand_in_head))
    guard = BudgetGuard(p.store, _pipeline(0.20), clock=clock)
    guard.open(run, _plan())
    req = request(run)
    guard.before_acquire(req, ["train"])
    cluster = p.acquire(req)
    guard.acquired(cluster, ["train"], p.lower_hard_stop)
    clock.advance(hours=2)
    assert guard.check() is not None
    p.release(cluster)
    guard.released(cluster)
    guard.close()
    open_rows = p.store.query("SELECT kind FROM ledger WHERE run_id=? AND state='open'", (run,))
    assert [r["kind"] for r in open_rows] == []
    assert {r["kind"] for r in p.store.query("SELECT kind FROM ledger WHERE run_id=? AND kind!='estimate'", (run,))} \
        >= {"instance", "volume", "ipv4"}

