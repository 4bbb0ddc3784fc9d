"""Launch planning: which instance types, markets and zones to try, in what order; starting the
head, then the workers; waiting until they run and the Ray head answers.

Fallbacks, in order: the offer's type in its market in every zone, then on-demand for a spot offer,
then sibling types of the same architecture, GPUs and at least 90% of the memory (``ec2.sibling_types``).
Nodes found by tag are reused, so a process that crashed after RunInstances starts no second one.

While it waits, the launcher checks in for the nodes (their dead-man switch must not fire during a
slow start) and reads each node's own ``lhorch:boot`` tag: a node that reports a failed bootstrap (or
is gone) ends the wait at once with the reason, instead of waiting out ``ready_timeout``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from lhorch.orchestrator.core.cluster import ClusterRequest
from lhorch.orchestrator.core.errors import BudgetError, CloudError, ClusterUnreachable
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.state import ledger
from lhorch.providers.aws import ec2 as ec2ops
from lhorch.providers.aws import records, security
from lhorch.providers.aws.bootstrap import BOOT_FAILED, BOOT_TAG, BootstrapSpec, NodeSoftware, render_user_data
from lhorch.providers.aws.connect import HeadConnector, HeadNode, alive_nodes
from lhorch.providers.aws.context import AwsContext
from lhorch.providers.aws.ec2 import (
    TAG_EXPIRES,
    TAG_HEARTBEAT,
    TAG_MARKET,
    TAG_NODE,
    TAG_PRICE,
    TAG_ROLE,
    UP_STATES,
    Candidate,
    tags_of,
)
from lhorch.providers.aws.names import cluster_name, iso, node_name, token_parameter
from lhorch.providers.aws.retry import error_code

Probe = Callable[[str, SecretStr | None], bool]
NodeCount = Callable[[str, SecretStr | None], int]  # nodes Ray reports alive, through the head's dashboard
# States from which an instance never comes back to running: the launch has failed.
GONE_STATES = (None, "shutting-down", "terminated", "stopping", "stopped")
# What a node bills besides its instance-seconds (us-east-1 list prices): the gp3 root volume per
# GB-month (https://aws.amazon.com/ebs/pricing/, a month being 730 h) and its public IPv4 address
# per hour (https://aws.amazon.com/vpc/pricing/, since Feb 2024). EC2 bills at least 60 s per start.
EBS_USD_PER_GB_MONTH = 0.08
IPV4_USD_PER_HOUR = 0.005
EC2_MIN_BILLED_S = 60.0
MAX_BEAT_S = 60.0


@dataclass(frozen=True)
class NodeSetup:
    """What every node of a cluster is launched with (the auxiliary resources, already ensured)."""

    subnets: list[dict[str, str]]
    security_group: str
    key_name: str | None
    instance_profile: str | None
    tags: dict[str, str]
    expires: datetime
    token: SecretStr
    software: NodeSoftware
    # This acquisition's id: part of every RunInstances client token, so a later acquisition of the
    # same (run, group) (after a spot loss, on a resume) never gets an old, terminated instance back.
    launch_id: str = ""
    security_groups: tuple[str, ...] = ()  # the user's own, besides the cluster's


@dataclass(frozen=True)
class Started:
    """A cluster whose nodes run and whose head answers."""

    instance_ids: list[str]  # head first, then workers by index
    running: dict[str, dict[str, Any]]  # instance id -> describe_instances entry
    address: str
    token: SecretStr


class Launcher:
    """Starts the nodes of one cluster. A start that fails leaves its nodes to the caller:
    ``AwsProvider.acquire`` tears down everything of the (run, group) whatever cut it short."""

    def __init__(self, ctx: AwsContext, connector: HeadConnector, probe: Probe, count: NodeCount = alive_nodes):
        self.ctx, self.connector, self.probe, self.count = ctx, connector, probe, count
        self._last_beat: float | None = None
        self._amis: dict[tuple[str, bool], tuple[str, str]] = {}
        self._facts: dict[str, dict[str, Any]] = {}
        self._prices_seen: dict[tuple[str, str], float] = {}

    def start(self, request: ClusterRequest, setup: NodeSetup) -> Started:
        """Reuse or launch the head, then the workers (they join the head's private IP); wait for
        all of them and for the head to answer."""
        nodes = self.existing_nodes(request)
        if 0 not in nodes:
            nodes[0] = self.launch_node(request, setup, 0, "head", None)
        self._last_beat = None
        # Check in while waiting as the runner does afterwards: well within the nodes' idle time.
        beat = min(MAX_BEAT_S, request.idle_minutes * 60 / 4)
        head = self.wait_running([nodes[0]["InstanceId"]], beat)[nodes[0]["InstanceId"]]
        for index in range(1, request.nodes):
            if index not in nodes:
                nodes[index] = self.launch_node(request, setup, index, "worker", head.get("PrivateIpAddress"))
        ids = [nodes[i]["InstanceId"] for i in sorted(nodes)]
        running = self.wait_running(ids, beat)
        address, auth = self.connect(self.head_node(request, running[ids[0]], setup.token), ids, beat)
        return Started(instance_ids=ids, running=running, address=address, token=auth)

    def existing_nodes(self, request: ClusterRequest) -> dict[int, dict[str, Any]]:
        """Nodes already up for this (run, group), by node index: found by tag, so a process that
        crashed after RunInstances reuses them instead of starting more."""
        found: dict[int, dict[str, Any]] = {}
        name = cluster_name(request.run_id, request.group)
        for inst in ec2ops.cluster_instances(self.ctx.ec2, request.run_id, request.group, UP_STATES):
            index = int(tags_of(inst).get(TAG_NODE, "0"))
            if index < request.nodes and index not in found:
                found[index] = inst
                records.mark_created(self.ctx.store, "instance", node_name(name, index), inst["InstanceId"])
                # A process that died right after RunInstances left its rows unbound: bind them now.
                ledger.launched(self.ctx.store, request.run_id, node_name(name, index), inst["InstanceId"],
                                _launch_time(inst, self.ctx.clock()))
        return found

    def candidates(self, offer: Offer, subnets: list[dict[str, str]]) -> list[Candidate]:
        """Every (type, market, zone) to try, most preferred first (see the module docstring)."""
        markets = [offer.market] + (["on-demand"] if offer.market == "spot" else [])
        siblings = ec2ops.sibling_types(offer.instance_type)
        allowed = self.ctx.settings.instance_types
        if allowed:
            siblings = [t for t in siblings if t in allowed]
        facts = ec2ops.instance_facts(self.ctx.ec2, [offer.instance_type, *siblings])
        self._facts.update(facts)
        mine = facts.get(offer.instance_type)
        if mine:
            siblings = [t for t in siblings if t in facts and facts[t]["arch"] == mine["arch"]
                        and facts[t]["gpus"] == mine["gpus"] and facts[t]["memory_gb"] >= 0.9 * mine["memory_gb"]]
        else:
            siblings = []
        order = [(offer.instance_type, m) for m in markets] + [(t, m) for t in siblings for m in markets]
        return [Candidate(t, m, s) for t, m in order for s in subnets]

    def price(self, offer: Offer, candidate: Candidate) -> float:
        """The hourly price of a candidate: the offer's own, else live (cached), else the catalogue's,
        else the offer's. Never the offer's when the catalogue knows better: an on-demand fallback
        recorded at the spot price it replaced under-counts the run (issue 16)."""
        if candidate.instance_type == offer.instance_type and candidate.market == offer.market:
            return offer.price_per_hour
        key = (candidate.instance_type, candidate.market)
        if key not in self._prices_seen:
            prices = self.ctx.prices
            try:
                live = (prices.spot if candidate.market == "spot" else prices.on_demand)(candidate.instance_type)
            except (ClientError, BotoCoreError):
                live = None
            listed = [] if live else [o.price_per_hour for o in prices.fallback(self.ctx.region, True)
                                      if (o.instance_type, o.market) == key]
            self._prices_seen[key] = live[0] if live else listed[0] if listed else offer.price_per_hour
        return self._prices_seen[key]

    def image(self, instance_type: str) -> tuple[str, str]:
        """(image id, root device) for the type's architecture and GPU-ness; looked up once each."""
        if instance_type not in self._facts:
            self._facts.update(ec2ops.instance_facts(self.ctx.ec2, [instance_type]))
        facts = self._facts.get(instance_type, {"arch": "x86_64", "gpus": 0})
        key = (facts["arch"], facts["gpus"] > 0)
        if self.ctx.settings.ami:
            image = self.ctx.ec2.describe_images(ImageIds=[self.ctx.settings.ami])["Images"][0]
            return image["ImageId"], image.get("RootDeviceName", "/dev/xvda")
        if key not in self._amis:
            self._amis[key] = ec2ops.find_ami(self.ctx.clients.ssm, self.ctx.ec2, *key)
        return self._amis[key]

    def launch_node(self, request: ClusterRequest, setup: NodeSetup, index: int, role: str,
                    head_ip: str | None) -> dict[str, Any]:
        """Launch node ``index`` on the first candidate with capacity; its intent row first."""
        ctx, name = self.ctx, cluster_name(request.run_id, request.group)
        node = node_name(name, index)
        spec = BootstrapSpec(cluster=name, role=role, region=ctx.region,
                             token_parameter=token_parameter(request.run_id, request.group),
                             expires_at=setup.expires, idle_minutes=request.idle_minutes, head_ip=head_ip,
                             software=setup.software)

        def launch(candidate: Candidate, attempt: int) -> dict[str, Any]:
            token = ec2ops.client_token(request.run_id, request.group, index, attempt, setup.launch_id)
            image_id, root = self.image(candidate.instance_type)
            price = self.price(request.offer, candidate)
            now = ctx.clock()
            # The hard stop of the candidate actually launched, from its own price (a fallback may cost more).
            expires = hard_stop(request, setup.expires, price, now)
            user_data = render_user_data(replace(spec, expires_at=expires))
            node_tags = {**setup.tags, "Name": f"{name}-{role}" + (f"-{index}" if index else ""), TAG_ROLE: role,
                         TAG_NODE: str(index), TAG_PRICE: f"{price:.6f}", TAG_MARKET: candidate.market,
                         TAG_HEARTBEAT: iso(now), TAG_EXPIRES: iso(expires)}
            # Intent first, with the exact token: a crash after this line is recoverable by tag or token.
            records.record_intent(ctx.store, request.run_id, "instance", node, expires_at=expires,
                                  price_per_hour=price, details=ctx.row_details(
                                      request, client_token=token, instance_type=candidate.instance_type,
                                      market=candidate.market, zone=candidate.subnet["zone"]))
            # The ledger too, at its worst case: if lhorch dies from here on, the month still counts it.
            self.open_ledger(request, node, candidate, price, now, expires)
            return ec2ops.run_instance(ctx.ec2, candidate=candidate, image_id=image_id, root_device=root,
                                       security_groups=[setup.security_group, *setup.security_groups],
                                       key_name=setup.key_name,
                                       user_data=user_data, instance_profile=setup.instance_profile, tags=node_tags,
                                       token=token, volume_gb=ctx.settings.volume_gb, backoff=ctx.backoff)

        try:
            instance, candidate = ec2ops.launch_first_fit(self.candidates(request.offer, setup.subnets), launch)
        except BaseException:
            ledger.drop_unlaunched(ctx.store, request.run_id, node)  # no candidate was created: nothing bills
            raise
        records.mark_created(ctx.store, "instance", node, instance["InstanceId"],
                             price_per_hour=float(self.price(request.offer, candidate)))
        ledger.launched(ctx.store, request.run_id, node, instance["InstanceId"], _launch_time(instance, ctx.clock()))
        return instance

    def open_ledger(self, request: ClusterRequest, node: str, candidate: Candidate, price: float,
                    now: datetime, expires: datetime) -> None:
        """Open ledger rows for everything the node bills: its seconds at the candidate's price, its
        root volume and its public IPv4 address (issue 16)."""
        store, run = self.ctx.store, request.run_id
        ledger.open_item(store, run, "instance", node, usd_per_second=price / 3600.0, started_at=now, ends_by=expires,
                         minimum_s=EC2_MIN_BILLED_S, source=f"price:{candidate.market}:{candidate.instance_type}")
        gb = self.ctx.settings.volume_gb
        ledger.open_item(store, run, "volume", f"{node}:ebs", started_at=now, ends_by=expires,
                         usd_per_second=gb * EBS_USD_PER_GB_MONTH / (730 * 3600.0), source=f"price:ebs-gp3:{gb}GB")
        ledger.open_item(store, run, "ipv4", f"{node}:ipv4", started_at=now, ends_by=expires,
                         usd_per_second=IPV4_USD_PER_HOUR / 3600.0, source="price:public-ipv4")

    def wait_running(self, ids: list[str], beat: float = 60.0) -> dict[str, dict[str, Any]]:
        def done(state: str | None) -> bool:
            if state in GONE_STATES:
                raise ClusterUnreachable(f"an instance of the cluster went away while starting ({state or 'gone'})",
                                         hint="Spot capacity may have been reclaimed; run again to retry.")
            return state == "running"

        return self.ctx.wait_for(ids, done, self.ctx.settings.launch_timeout,
                                 on_poll=lambda found: self.check_boot(ids, found, beat))

    def check_in(self, ids: list[str], beat: float) -> None:
        """Heartbeat tag on the nodes at most every ``beat`` seconds, from the moment they exist."""
        now = self.ctx.monotonic()
        if self._last_beat is not None and now - self._last_beat < beat:
            return
        try:
            self.ctx.backoff.call(lambda: self.ctx.ec2.create_tags(
                Resources=ids, Tags=[{"Key": TAG_HEARTBEAT, "Value": iso(self.ctx.clock())}]))
        except ClientError as exc:
            if "NotFound" not in error_code(exc):
                raise
        self._last_beat = now

    def check_boot(self, ids: list[str], found: dict[str, dict[str, Any]], beat: float) -> None:
        """Fail fast when a node reports a failed bootstrap (its ``lhorch:boot`` tag) or is gone;
        else check in for the nodes."""
        for iid in ids:
            inst = found.get(iid)
            status = tags_of(inst).get(BOOT_TAG, "") if inst else ""
            if status.startswith(BOOT_FAILED):
                reason = status[len(BOOT_FAILED):].strip() or "no reason given"
                raise CloudError(f"node {iid} failed to boot: {reason}",
                                 hint="The node powered itself off. Its log is /var/log/lhorch-bootstrap.log (EC2 "
                                      "console output: `aws ec2 get-console-output --instance-id " + iid + "`).")
        gone = [i for i in ids if i not in found or found[i]["State"]["Name"] in GONE_STATES]
        if gone:
            raise ClusterUnreachable(f"node {gone[0]} went away while starting "
                                     f"({found[gone[0]]['State']['Name'] if gone[0] in found else 'gone'})",
                                     hint="Spot capacity may have been reclaimed, or its bootstrap powered it off; "
                                          "run again to retry.")
        self.check_in(ids, beat)

    def poll_nodes(self, ids: list[str], beat: float) -> None:
        found = {i["InstanceId"]: i for i in ec2ops.instances(
            self.ctx.ec2, [{"Name": "instance-id", "Values": ids}], states=ec2ops.ALL_STATES)}
        self.check_boot(ids, found, beat)

    def head_node(self, request: ClusterRequest, inst: dict[str, Any], token: SecretStr) -> HeadNode:
        name = cluster_name(request.run_id, request.group)
        return HeadNode(cluster=name, instance_id=inst["InstanceId"], region=self.ctx.region,
                        private_ip=inst.get("PrivateIpAddress"), public_ip=inst.get("PublicIpAddress"), token=token,
                        key_path=security.key_path(self.ctx.store.home, name))

    def connect(self, head: HeadNode, ids: list[str] | None = None, beat: float = 60.0) -> tuple[str, SecretStr]:
        """Connect to the head until its Ray dashboard answers with the token and Ray reports every
        node of the cluster alive (the workers have joined), or ready_timeout; a node that reports a
        failed bootstrap or is gone ends the wait at once."""
        ctx, ids = self.ctx, ids or [head.instance_id]
        timeout = ctx.settings.ready_timeout
        deadline = ctx.monotonic() + timeout
        answered, joined = False, 0
        while True:
            self.poll_nodes(ids, beat)
            try:
                address, auth = self.connector.connect(head)
                answered = self.probe(address, auth)
                joined = self.count(address, auth) if answered and len(ids) > 1 else len(ids)
                if answered and joined >= len(ids):
                    return address, auth
            except ClusterUnreachable:
                if ctx.monotonic() >= deadline:
                    raise
            if ctx.monotonic() >= deadline:
                what = (f"only {joined} of its {len(ids)} nodes joined its Ray cluster" if answered
                        else "its Ray head did not answer")
                raise ClusterUnreachable(f"{head.cluster}: {what} in {timeout:.0f}s",
                                         hint="See /var/log/lhorch-bootstrap.log on the nodes (SSM session).")
            ctx.sleep(ctx.settings.poll_interval)


def _launch_time(instance: dict[str, Any], default: datetime) -> datetime:
    at = instance.get("LaunchTime")
    return at if isinstance(at, datetime) and at.tzinfo is not None else default


def hard_stop(request: ClusterRequest, planned: datetime, price_per_hour: float, now: datetime) -> datetime:
    """The hard stop of a node launched now at ``price_per_hour``: no later than ``planned``, and early
    enough that the cluster's nodes at this price stay within ``request.spend_limit_usd``. Refused
    (BudgetError, exit 3) before the launch when that leaves less than start-up plus the shortest
    useful work: a node told to die before it can work is money spent for nothing."""
    burn = price_per_hour * request.nodes / 3600.0
    if request.spend_limit_usd is None or burn <= 0:
        return planned
    affordable = request.spend_limit_usd / burn
    if affordable < request.min_run_seconds:
        raise BudgetError(
            f"{request.offer.instance_type if price_per_hour == request.offer.price_per_hour else 'the fallback'} "
            f"at ${price_per_hour:.4f}/h × {request.nodes} node(s): the ${request.spend_limit_usd:.2f} left of the cap "
            f"buys {affordable:.0f} s, less than the {request.min_run_seconds:.0f} s of start-up plus the shortest "
            f"useful work of {request.group}",
            hint="Raise budget.max_usd, use a cheaper instance type, or pin the stages to local.")
    return min(planned, now + timedelta(seconds=affordable))


def lower_hard_stop(ctx: AwsContext, cluster_ids: list[str], when: datetime) -> None:
    """Move the nodes' hard stop (their ``lhorch:expires-at`` tag, re-read by the dead-man switch
    every check) to ``when``; the ledger's worst case shrinks with it. Ids already gone are fine."""
    if not cluster_ids:
        return
    try:
        ctx.ec2.create_tags(Resources=cluster_ids, Tags=[{"Key": TAG_EXPIRES, "Value": iso(when)}])
    except ClientError as exc:
        if "NotFound" not in error_code(exc):
            raise
    ledger.lower_ends_by(ctx.store, cluster_ids, when)
