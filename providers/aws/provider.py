"""``AwsProvider``: Ray clusters on EC2 behind the ``lhorch.providers.base.Provider`` contract.

Every external effect is preceded by an intent row in ``cloud_resources`` and every resource is
tagged (``lhorch:run-id``, ``lhorch:group``, ``lhorch:owner``, ``lhorch:expires-at``, ``lhorch:host``,
``Name``), so a crash at any point leaves a trail that ``acquire`` (reuse) and ``sweep`` (delete)
follow. Nodes protect themselves too: a hard stop and a dead-man switch (see ``bootstrap``).

This module is the façade; the work is done by ``launch`` (which types, markets and zones; starting
nodes; waiting for the head), ``auxiliary`` (token, security group, key pair, node role, bucket),
``health`` (heartbeat, lost nodes, listing) and ``teardown`` (release and the sweep).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pydantic import SecretStr

from lhorch.orchestrator.core import interrupts
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest
from lhorch.orchestrator.core.errors import CloudError, UsageError
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.state.store import Store, utcnow
from lhorch.providers.aws import ec2 as ec2ops
from lhorch.providers.aws import health, records, security
from lhorch.providers.aws.auxiliary import Auxiliary
from lhorch.providers.aws.bootstrap import NODE_PYTHON
from lhorch.providers.aws.connect import HeadConnector, HeadNode, alive_nodes, make_connector, needs_ssh, probe
from lhorch.providers.aws.context import AwsClients, AwsContext, aws_errors
from lhorch.providers.aws.ec2 import (
    TAG_EXPIRES,
    TAG_GROUP,
    TAG_HOST,
    TAG_INSTALL,
    TAG_MARKET,
    TAG_OWNER,
    TAG_PRICE,
    TAG_RUN,
    tags_of,
)
from lhorch.providers.aws.launch import Launcher, NodeCount, NodeSetup, Probe, lower_hard_stop
from lhorch.providers.aws.names import cluster_name, iso, token_parameter
from lhorch.providers.aws.prices import Fallback, bundled_catalogue
from lhorch.providers.aws.retry import Backoff
from lhorch.providers.aws.settings import AwsSettings
from lhorch.providers.aws.teardown import Teardown

__all__ = ["AwsProvider", "AwsSettings", "aws_errors"]


class AwsProvider:
    """See the module docstring. ``settings`` say how to launch; the rest is injected: the boto3
    ``session`` (standard boto3 settings: AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL ...), the
    store, time and sleeping, the caller's IP lookup (only a connector that needs SSH uses one), the
    head connector (default: the one ``settings.connector`` names), readiness probe and count of the
    nodes Ray reports alive, and the price fallback, so tests run against moto in seconds."""

    name = "aws"

    def __init__(self, session: Any, *, store: Store, settings: AwsSettings | None = None,
                 connector: HeadConnector | None = None,
                 ip_lookup: Callable[[], str] | None = security.public_ip_from_checkip, probe: Probe = probe,
                 node_count: NodeCount = alive_nodes,
                 clock: Callable[[], datetime] = utcnow, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, backoff: Backoff | None = None,
                 price_fallback: Fallback = bundled_catalogue):
        settings = settings or AwsSettings()
        region = settings.region or session.region_name or "us-east-1"
        self.settings = settings.model_copy(update={"region": region})
        self.ctx = AwsContext(settings=self.settings, clients=AwsClients(session, region), store=store,
                              clock=clock, sleep=sleep, monotonic=monotonic,
                              backoff=backoff or Backoff(sleep=sleep, clock=monotonic), price_fallback=price_fallback)
        self.connector: HeadConnector = connector or make_connector(self.settings.connector)
        self.auxiliary = Auxiliary(self.ctx, ip_lookup, ssh=needs_ssh(self.connector))
        self.teardown = Teardown(self.ctx, self.connector)
        self.launcher = Launcher(self.ctx, self.connector, probe, node_count)

    @classmethod
    def from_environment(cls, store: Store, region: str | None = None, **collaborators: Any) -> AwsProvider:
        """For the CLI: standard boto3 settings from the environment; no IP lookup and no role
        creation (listing and deleting need neither)."""
        import boto3  # ~0.3 s to import; only the cloud commands need it

        session = boto3.Session(region_name=region) if region else boto3.Session()
        if not (region or session.region_name):
            raise UsageError("no AWS region configured", hint="Set AWS_DEFAULT_REGION or a region in your AWS profile.")
        if session.get_credentials() is None:
            raise CloudError("no AWS credentials found", hint="Run `aws configure` or set AWS_PROFILE.")
        collaborators.setdefault("ip_lookup", None)
        collaborators.setdefault("settings", AwsSettings(create_instance_profile=False))
        return cls(session, store=store, **collaborators)

    @classmethod
    def from_cloud(cls, cloud: Any, store: Store, *, settings: AwsSettings | None = None,
                   **collaborators: Any) -> AwsProvider:
        """Build from a pipeline's ``cloud:`` section (lhorch.orchestrator.core.spec.Cloud);
        ``settings`` replaces the ones derived from it (see ``AwsSettings.from_cloud``)."""
        import boto3  # ~0.3 s to import; only pipelines with a cloud section need it

        session = boto3.Session(profile_name=cloud.profile, region_name=cloud.region)
        return cls(session, store=store, settings=settings or AwsSettings.from_cloud(cloud), **collaborators)

    # --- what tests and the CLI look at --------------------------------------------------------
    @property
    def store(self) -> Store:
        return self.ctx.store

    @property
    def region(self) -> str:
        return self.ctx.region

    @property
    def ec2(self) -> Any:
        return self.ctx.clients.ec2

    @property
    def ssm(self) -> Any:
        return self.ctx.clients.ssm

    @property
    def iam(self) -> Any:
        return self.ctx.clients.iam

    @property
    def s3(self) -> Any:
        return self.ctx.clients.s3

    @property
    def instance_profile(self) -> str | None:
        """The nodes' instance profile, once acquire has ensured it."""
        return self.auxiliary.instance_profile

    def identity(self) -> dict[str, str]:
        return self.ctx.clients.identity()

    # --- Provider ------------------------------------------------------------------------------
    def offers(self) -> list[Offer]:
        with aws_errors():
            return self.ctx.prices.offers(spot=self.settings.spot, instance_types=self.settings.instance_types)

    def acquire(self, request: ClusterRequest) -> Cluster:
        """Start or reuse the cluster of (run_id, group): auxiliary resources first, then the nodes.
        Idempotent: everything is found by name or tag before it is created."""
        if request.nodes > self.settings.max_instances:
            raise UsageError(f"{request.nodes} nodes asked for, at most {self.settings.max_instances} allowed",
                             hint="Raise cloud.max_instances in the pipeline file.")
        with aws_errors():
            try:
                return self._acquire(request)
            except BaseException as error:
                # Whatever it had made (token, security group, key pair, role, nodes) goes with it, even
                # when Ctrl-C cut it short; further interrupts wait (issue 17).
                with interrupts.deferred():
                    self._discard(request, error)
                raise

    def _discard(self, request: ClusterRequest, error: BaseException) -> None:
        try:
            self.teardown.cluster(request.run_id, request.group)
        except Exception as exc:  # noqa: BLE001 - the error that stopped the start-up is what the user sees
            # Its intent rows stay open, so `lhorch gc` and the next run find what is left.
            error.add_note(f"lhorch: tearing the failed cluster down also failed: {exc}")
            self.store.event(request.run_id, "cluster", f"could not release the partly started cluster: {exc}",
                             group=request.group)

    def _acquire(self, request: ClusterRequest) -> Cluster:
        name = cluster_name(request.run_id, request.group)
        expires = request.expires_at or self.ctx.clock() + timedelta(hours=self.settings.max_hours)
        tags = {TAG_RUN: request.run_id, TAG_GROUP: request.group,
                TAG_OWNER: request.owner or self.identity()["owner"], TAG_EXPIRES: iso(expires),
                TAG_HOST: self.settings.host, TAG_INSTALL: self.store.install_id, "Name": name}
        aux, ctx = self.auxiliary, self.ctx
        # The cluster's own row first: what the pieces below belong to, and what it will cost.
        launch_id = self._launch_id(request.run_id, name)
        records.record_intent(self.store, request.run_id, "cluster", name,
                              details=ctx.row_details(request, launch_id=launch_id),
                              expires_at=expires, price_per_hour=request.offer.price_per_hour * request.nodes)
        bucket = aux.bucket()
        token = aux.token(request, tags)
        subnets = ec2ops.default_subnets(self.ec2, self.settings.subnet_ids)
        group_id = aux.security_group(request, name, subnets[0]["vpc"], tags)
        key_name = aux.key_pair(request, name, tags)
        setup = NodeSetup(subnets=subnets, security_group=group_id, key_name=key_name,
                          instance_profile=aux.node_role(request, tags), tags=tags, expires=expires, token=token,
                          software=aux.software(), launch_id=launch_id,
                          security_groups=tuple(self.settings.security_group_ids))
        started = self.launcher.start(request, setup)

        ids, running = started.instance_ids, started.running
        head = running[ids[0]]
        price = sum(float(tags_of(running[i]).get(TAG_PRICE, request.offer.price_per_hour)) for i in ids)
        market = tags_of(head).get(TAG_MARKET, request.offer.market)
        artifacts = f"s3://{bucket}/{self.settings.prefix}"
        details = ctx.row_details(request, head=ids[0], security_group=group_id, key_name=key_name or "",
                                  instance_type=head["InstanceType"], market=market, artifacts=artifacts,
                                  token_parameter=token_parameter(request.run_id, request.group),
                                  launch_id=launch_id)
        records.mark_created(self.store, "cluster", name, ids[0], price_per_hour=price, details=details)
        return Cluster(provider="aws", name=name, run_id=request.run_id, address=started.address,
                       token=started.token, remote=True, instance_ids=ids, price_per_hour=price,
                       launched_at=min(running[i]["LaunchTime"] for i in ids), expires_at=expires,
                       group=request.group, region=self.region, head_id=ids[0],
                       instance_types=sorted({running[i]["InstanceType"] for i in ids}), market=market,
                       owner=request.owner, host=self.settings.host, artifacts_uri=artifacts, python=NODE_PYTHON)

    def _launch_id(self, run_id: str, name: str) -> str:
        """This acquisition's id (in its client tokens): the open cluster row's, while a crashed or
        interrupted acquisition is being resumed, else a fresh one."""
        for row in records.open_rows(self.store, run_id):
            if row["kind"] == "cluster" and row["name"] == name and row["details"].get("launch_id"):
                return str(row["details"]["launch_id"])
        return secrets.token_hex(8)

    def lower_hard_stop(self, cluster: Cluster, when: datetime) -> None:
        """Move the nodes' hard stop earlier (see ``launch.lower_hard_stop``; budget, issue 16)."""
        if cluster.expires_at is None or when < cluster.expires_at:
            lower_hard_stop(self.ctx, cluster.instance_ids, when)

    def release(self, cluster: Cluster) -> None:
        """Tear the cluster down (see ``teardown``); safe to call twice."""
        head = None
        if cluster.head_id:
            head = HeadNode(cluster=cluster.name, instance_id=cluster.head_id, region=self.region,
                            private_ip=None, public_ip=None, token=SecretStr(""))
        with aws_errors(), interrupts.deferred():
            self.teardown.cluster(cluster.run_id, cluster.group, head=head, extra_ids=cluster.instance_ids)

    def release_run(self, run_id: str, *, all_installs: bool = False) -> list[str]:
        """Release every cluster of a run that is known here or tagged in AWS by this installation
        (any installation's with ``all_installs``); return their names."""
        with aws_errors():
            return self.teardown.run(run_id, all_installs=all_installs)

    def own_runs(self, *, all_installs: bool = False) -> list[str]:
        """Runs with a cluster up that this installation started (every installation's with ``all_installs``)."""
        with aws_errors():
            return self.teardown.runs(all_installs=all_installs)

    def clusters(self) -> list[Cluster]:
        with aws_errors():
            return health.running_clusters(self.ctx)

    def heartbeat(self, cluster: Cluster) -> None:
        """Check in and check the cluster is whole; ClusterUnreachable when not (see ``health``)."""
        with aws_errors():
            health.heartbeat(self.ctx, cluster)

    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False, *,
              all_installs: bool = False) -> list[str]:
        with aws_errors():
            return self.teardown.sweep(now, live_runs, dry_run=dry_run, all_installs=all_installs)
