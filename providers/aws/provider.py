"""``AwsProvider``: Ray clusters on EC2 behind the ``lhorch.providers.base.Provider`` contract.

Every external effect is preceded by an intent row in ``cloud_resources`` and every resource is
tagged (``lhorch:run-id``, ``lhorch:group``, ``lhorch:owner``, ``lhorch:expires-at``, ``lhorch:host``,
``Name``), so a crash at any point leaves a trail that ``acquire`` (reuse) and ``sweep`` (delete)
follow. Nodes protect themselves too: a hard stop and a dead-man switch (see ``bootstrap``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import socket
import time
from datetime import datetime, timedelta, timezone
from contextlib import contextmanager
from functools import cached_property
from typing import Any, Callable, Iterator

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from lhorch.orchestrator.core.errors import CloudError, ClusterUnreachable, UsageError
from lhorch.orchestrator.state.store import Store, utcnow
from lhorch.orchestrator.core.plan import Offer
from lhorch.providers.aws import ec2 as ec2ops
from lhorch.providers.aws import records, security
from lhorch.providers.aws.bootstrap import BootstrapSpec, local_versions, render_user_data
from lhorch.providers.aws.connect import HeadConnector, HeadNode, SsmPortForward, probe
from lhorch.providers.aws.ec2 import BILLABLE_STATES, TAG_EXPIRES, TAG_GROUP, TAG_HEARTBEAT, TAG_HOST, TAG_MARKET, TAG_NODE, TAG_OWNER, TAG_PRICE, TAG_ROLE, TAG_RUN, UP_STATES, Candidate, tags_of
from lhorch.providers.aws.prices import PriceCache, PriceSource, bundled_catalogue
from lhorch.providers.aws.retry import Backoff, error_code
from lhorch.orchestrator.core.cluster import Cluster, ClusterRequest

@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn a raw AWS/botocore failure into a CloudError the CLI can print in one line."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise CloudError(f"AWS: {exc}", hint="Check your credentials and region (`aws sts get-caller-identity`).") from exc


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe(text: str) -> str:
    return _SAFE.sub("-", text)[:100]


def _iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).replace(microsecond=0).isoformat()


class AwsProvider:
    """See the module docstring. Clients come from the injected boto3 ``session`` (standard boto3
    settings: AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL ...); time, sleeping, the caller's IP,
    the head connector and readiness probe are injected so tests run against moto in seconds."""

    name = "aws"

    def __init__(self, session: Any, *, store: Store, region: str | None = None,
                 connector: HeadConnector | None = None,
                 ip_lookup: Callable[[], str] | None = security.public_ip_from_checkip,
                 probe: Callable[[str, SecretStr | None], bool] = probe,
                 instance_profile: str | None = None, create_instance_profile: bool = True,
                 bucket: str | None = None, prefix: str = "lhorch", ami: str | None = None,
                 subnet_ids: list[str] | None = None, instance_types: list[str] | None = None,
                 spot: bool = True, host: str | None = None, volume_gb: int = 100,
                 clock: Callable[[], datetime] = utcnow, sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic, backoff: Backoff | None = None,
                 launch_timeout: float = 600, ready_timeout: float = 900, release_timeout: float = 600,
                 poll_interval: float = 5.0, versions: dict[str, str] | None = None,
                 lhorch_requirement: str | None = None, price_fallback=bundled_catalogue,
                 max_hours: float = 12.0):
        self.store = store
        self.region = region or session.region_name or "us-east-1"
        self.session = session
        self.connector: HeadConnector = connector or SsmPortForward()
        self.ip_lookup, self.probe = ip_lookup, probe
        self.instance_profile, self.create_instance_profile = instance_profile, create_instance_profile
        self.bucket, self.prefix, self.ami = bucket, prefix.strip("/"), ami
        self.subnet_ids, self.instance_types, self.spot = subnet_ids, instance_types, spot
        self.host = host or socket.gethostname()
        self.volume_gb = volume_gb
        self.clock, self.sleep, self.monotonic = clock, sleep, monotonic
        self.backoff = backoff or Backoff(sleep=sleep, clock=monotonic)
        self.launch_timeout, self.ready_timeout = launch_timeout, ready_timeout
        self.release_timeout, self.poll_interval = release_timeout, poll_interval
        self._versions = versions
        self._lhorch_requirement = lhorch_requirement
        self.max_hours = max_hours
        self._price_fallback = price_fallback
        self._identity: dict[str, str] | None = None
        self._amis: dict[tuple[str, bool], tuple[str, str]] = {}
        self._facts: dict[str, dict[str, Any]] = {}
        self._prices_seen: dict[tuple[str, str], float] = {}

    # Clients are made on first use (each costs ~0.1 s of model loading; `lhorch clusters` needs two).
    def _client(self, service: str, region: str | None = None, config: Config | None = None) -> Any:
        cfg = config or Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
        return self.session.client(service, region_name=region or self.region, config=cfg)

    @cached_property
    def ec2(self) -> Any:
        return self._client("ec2")

    @cached_property
    def ssm(self) -> Any:
        return self._client("ssm")

    @cached_property
    def iam(self) -> Any:
        return self._client("iam")

    @cached_property
    def sts(self) -> Any:
        return self._client("sts")

    @cached_property
    def s3(self) -> Any:
        return self._client("s3")

    @cached_property
    def prices(self) -> PriceSource:
        # The Price List API is optional (prices fall back to the catalogue): do not retry it long.
        pricing = self._client("pricing", "us-east-1", Config(retries={"max_attempts": 1, "mode": "standard"},
                                                              connect_timeout=5, read_timeout=20))
        return PriceSource(ec2=self.ec2, pricing=pricing, region=self.region,
                           cache=PriceCache(self.store.home / "cache" / "aws-prices.json", self.clock),
                           fallback=self._price_fallback)

    @property
    def versions(self) -> dict[str, str]:
        """Python/Ray/lhorch versions the nodes install: the local ones (imports ray, so lazily)."""
        if self._versions is None:
            self._versions = local_versions()
        return self._versions

    @property
    def lhorch_requirement(self) -> str:
        return self._lhorch_requirement or f"lhorch=={self.versions['lhorch']}"

    @classmethod
    def from_environment(cls, store: Store, region: str | None = None, **overrides: Any) -> "AwsProvider":
        """For the CLI: standard boto3 settings from the environment; no IP lookup and no role
        creation (listing and deleting need neither)."""
        import boto3

        session = boto3.Session(region_name=region) if region else boto3.Session()
        if not (region or session.region_name):
            raise UsageError("no AWS region configured", hint="Set AWS_DEFAULT_REGION or a region in your AWS profile.")
        if session.get_credentials() is None:
            raise CloudError("no AWS credentials found", hint="Run `aws configure` or set AWS_PROFILE.")
        kwargs: dict[str, Any] = dict(ip_lookup=None, create_instance_profile=False)
        kwargs.update(overrides)
        return cls(session, store=store, **kwargs)

    @classmethod
    def from_cloud(cls, cloud: Any, store: Store, **overrides: Any) -> "AwsProvider":
        """Build from a pipeline's ``cloud:`` section (lhorch.orchestrator.core.spec.Cloud)."""
        import boto3

        session = boto3.Session(profile_name=cloud.profile, region_name=cloud.region)
        kwargs: dict[str, Any] = dict(bucket=cloud.bucket, prefix=cloud.prefix, spot=cloud.spot,
                                      instance_types=cloud.instance_types or None, max_hours=cloud.max_hours)
        kwargs.update(overrides)
        return cls(session, store=store, **kwargs)

    # --- identity and names --------------------------------------------------------------------
    def identity(self) -> dict[str, str]:
        if self._identity is None:
            ident = self.sts.get_caller_identity()
            self._identity = {"account": ident["Account"], "arn": ident["Arn"],
                              "owner": ident["Arn"].rsplit("/", 1)[-1]}
        return self._identity

    @staticmethod
    def cluster_name(run_id: str, group: str) -> str:
        return _safe(f"lhorch-{run_id}-{group}")

    @staticmethod
    def token_parameter(run_id: str, group: str) -> str:
        return f"/lhorch/{_safe(run_id)}/{_safe(group)}/ray-token"

    def _tags(self, request: ClusterRequest, name: str, expires: datetime) -> dict[str, str]:
        return {TAG_RUN: request.run_id, TAG_GROUP: request.group,
                TAG_OWNER: request.owner or self.identity()["owner"], TAG_EXPIRES: _iso(expires),
                TAG_HOST: self.host, "Name": name}

    def _details(self, request: ClusterRequest, **extra: Any) -> dict[str, Any]:
        return {"group": request.group, "region": self.region, **extra}

    # --- offers --------------------------------------------------------------------------------
    def offers(self) -> list[Offer]:
        return self.prices.offers(spot=self.spot, instance_types=self.instance_types)

    # --- acquire -------------------------------------------------------------------------------
    def acquire(self, request: ClusterRequest) -> Cluster:
        name = self.cluster_name(request.run_id, request.group)
        expires = request.expires_at or self.clock() + timedelta(hours=self.max_hours)
        tags = self._tags(request, name, expires)
        records.record_intent(self.store, request.run_id, "cluster", name, details=self._details(request),
                              expires_at=expires, price_per_hour=request.offer.price_per_hour * request.nodes)
        launched_any = False
        try:
            bucket = self.artifact_bucket()
            token = self._ensure_token(request, tags)
            subnets = ec2ops.default_subnets(self.ec2, self.subnet_ids)
            group_id = self._ensure_group(request, name, subnets[0]["vpc"], tags)
            key_name = self._ensure_key(request, name, tags)
            profile = self._ensure_profile()
            nodes = self._existing_nodes(request)
            if 0 not in nodes:
                launched_any = True
                nodes[0] = self._launch(request, 0, "head", None, subnets, group_id, key_name, profile, tags, expires)
            head = self._wait_running([nodes[0]["InstanceId"]])[nodes[0]["InstanceId"]]
            for index in range(1, request.nodes):
                if index not in nodes:
                    launched_any = True
                    nodes[index] = self._launch(request, index, "worker", head.get("PrivateIpAddress"), subnets,
                                                group_id, key_name, profile, tags, expires)
            running = self._wait_running([n["InstanceId"] for n in nodes.values()])
            head_node = self._head_node(name, running[nodes[0]["InstanceId"]], token)
            address, auth = self._connect(head_node)
        except BaseException as exc:
            if launched_any:
                # A cluster that never became usable must not outlive this call.
                try:
                    self._teardown(request.run_id, request.group, head=None)
                except Exception as cleanup:  # keep the original error; report the cleanup's too
                    exc.add_note(f"lhorch: tearing the failed cluster down also failed: {cleanup}")
            raise
        ids = [nodes[i]["InstanceId"] for i in sorted(nodes)]
        price = sum(float(tags_of(running[i]).get(TAG_PRICE, request.offer.price_per_hour)) for i in ids)
        details = self._details(request, head=ids[0], security_group=group_id, key_name=key_name or "",
                                instance_type=running[ids[0]]["InstanceType"],
                                market=tags_of(running[ids[0]]).get(TAG_MARKET, request.offer.market),
                                token_parameter=self.token_parameter(request.run_id, request.group),
                                artifacts=f"s3://{bucket}/{self.prefix}")
        records.mark_created(self.store, "cluster", name, ids[0], price_per_hour=price, details=details)
        launched = min(running[i]["LaunchTime"] for i in ids)
        return Cluster(provider="aws", name=name, run_id=request.run_id, address=address, token=auth, remote=True,
                       instance_ids=ids, price_per_hour=price, launched_at=launched, expires_at=expires,
                       group=request.group, region=self.region, head_id=ids[0],
                       instance_types=sorted({running[i]["InstanceType"] for i in ids}), market=details["market"],
                       owner=request.owner, host=self.host, artifacts_uri=details["artifacts"])

    def _ensure_token(self, request: ClusterRequest, tags: dict[str, str]) -> SecretStr:
        param = self.token_parameter(request.run_id, request.group)
        records.record_intent(self.store, request.run_id, "parameter", param, details=self._details(request))
        try:
            value = self.ssm.get_parameter(Name=param, WithDecryption=True)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
            value = secrets.token_hex(32)
            self.ssm.put_parameter(Name=param, Value=value, Type="SecureString", Tags=security.tag_list(tags),
                                   Description="lhorch Ray cluster token")
        records.mark_created(self.store, "parameter", param, param)
        return SecretStr(value)

    def _ensure_group(self, request: ClusterRequest, name: str, vpc: str, tags: dict[str, str]) -> str:
        records.record_intent(self.store, request.run_id, "security_group", name, details=self._details(request))
        caller_ip = self.ip_lookup() if self.ip_lookup else None
        group_id = security.ensure_security_group(self.ec2, name, vpc, tags, caller_ip)
        records.mark_created(self.store, "security_group", name, group_id)
        return group_id

    def _ensure_key(self, request: ClusterRequest, name: str, tags: dict[str, str]) -> str:
        records.record_intent(self.store, request.run_id, "key_pair", name, details=self._details(request))
        key_id = security.ensure_key_pair(self.ec2, name, tags, self.store.home)
        records.mark_created(self.store, "key_pair", name, key_id)
        return name

    def artifact_bucket(self) -> str:
        """The bucket stage artifacts go through; lhorch creates it (private, encrypted, with a
        lifecycle rule) when ``cloud.bucket`` is unset. Resolved before the node role, which is
        scoped to it."""
        if not getattr(self, "_bucket_ready", False):
            from lhorch.providers.aws.s3 import default_bucket_name, ensure_bucket

            if not self.bucket:
                self.bucket = default_bucket_name(self.identity()["account"], self.region)
            ensure_bucket(self.s3, self.bucket, self.region, prefix=self.prefix)
            self._bucket_ready = True
        return self.bucket

    def _ensure_profile(self) -> str | None:
        if self.instance_profile or not self.create_instance_profile:
            return self.instance_profile
        ident = self.identity()
        scope = hashlib.sha256(f"{self.bucket}/{self.prefix}".encode()).hexdigest()[:10]
        policy = security.node_policy(self.region, ident["account"], self.bucket, self.prefix)
        self.instance_profile = security.ensure_instance_profile(self.iam, f"lhorch-node-{scope}", policy,
                                                                 {TAG_OWNER: ident["owner"]})
        return self.instance_profile

    def _existing_nodes(self, request: ClusterRequest) -> dict[int, dict[str, Any]]:
        """Nodes already up for this (run, group), by node index: found by tag, so a process that
        crashed after RunInstances reuses them instead of starting more."""
        found: dict[int, dict[str, Any]] = {}
        for inst in ec2ops.cluster_instances(self.ec2, request.run_id, request.group, UP_STATES):
            index = int(tags_of(inst).get(TAG_NODE, "0"))
            if index < request.nodes and index not in found:
                found[index] = inst
                node = f"{self.cluster_name(request.run_id, request.group)}/node-{index}"
                records.mark_created(self.store, "instance", node, inst["InstanceId"])
        return found

    def _candidates(self, offer: Offer, subnets: list[dict[str, str]]) -> list[Candidate]:
        markets = [offer.market] + (["on-demand"] if offer.market == "spot" else [])
        siblings = ec2ops.sibling_types(offer.instance_type)
        if self.instance_types:
            siblings = [t for t in siblings if t in self.instance_types]
        facts = ec2ops.instance_facts(self.ec2, [offer.instance_type, *siblings])
        self._facts.update(facts)
        mine = facts.get(offer.instance_type)
        if mine:
            siblings = [t for t in siblings if t in facts and facts[t]["arch"] == mine["arch"]
                        and facts[t]["gpus"] == mine["gpus"] and facts[t]["memory_gb"] >= 0.9 * mine["memory_gb"]]
        else:
            siblings = []
        order = [(offer.instance_type, m) for m in markets] + [(t, m) for t in siblings for m in markets]
        return [Candidate(t, m, s) for t, m in order for s in subnets]

    def _price(self, offer: Offer, candidate: Candidate) -> float:
        """The hourly price of a candidate: the offer's own, else live (cached), else the offer's."""
        if candidate.instance_type == offer.instance_type and candidate.market == offer.market:
            return offer.price_per_hour
        key = (candidate.instance_type, candidate.market)
        if key not in self._prices_seen:
            try:
                live = (self.prices.spot if candidate.market == "spot" else self.prices.on_demand)(candidate.instance_type)
            except (ClientError, BotoCoreError):
                live = None
            self._prices_seen[key] = live[0] if live else offer.price_per_hour
        return self._prices_seen[key]

    def _image(self, instance_type: str) -> tuple[str, str]:
        if instance_type not in self._facts:
            self._facts.update(ec2ops.instance_facts(self.ec2, [instance_type]))
        facts = self._facts.get(instance_type, {"arch": "x86_64", "gpus": 0})
        key = (facts["arch"], facts["gpus"] > 0)
        if self.ami:
            image = self.ec2.describe_images(ImageIds=[self.ami])["Images"][0]
            return image["ImageId"], image.get("RootDeviceName", "/dev/xvda")
        if key not in self._amis:
            self._amis[key] = ec2ops.find_ami(self.ssm, self.ec2, *key)
        return self._amis[key]

    def _launch(self, request: ClusterRequest, index: int, role: str, head_ip: str | None,
                subnets: list[dict[str, str]], group_id: str, key_name: str | None, profile: str | None,
                tags: dict[str, str], expires: datetime) -> dict[str, Any]:
        name = self.cluster_name(request.run_id, request.group)
        node = f"{name}/node-{index}"
        spec = BootstrapSpec(cluster=name, role=role, region=self.region,
                             token_parameter=self.token_parameter(request.run_id, request.group),
                             expires_at=expires, idle_minutes=request.idle_minutes, head_ip=head_ip,
                             python=self.versions["python"], ray_version=self.versions["ray"],
                             lhorch_requirement=self.lhorch_requirement)
        user_data = render_user_data(spec)

        def launch(candidate: Candidate, attempt: int) -> dict[str, Any]:
            token = ec2ops.client_token(request.run_id, request.group, index, attempt)
            image_id, root = self._image(candidate.instance_type)
            price = self._price(request.offer, candidate)
            node_tags = {**tags, "Name": f"{name}-{role}" + (f"-{index}" if index else ""), TAG_ROLE: role,
                         TAG_NODE: str(index), TAG_PRICE: f"{price:.6f}", TAG_MARKET: candidate.market,
                         TAG_HEARTBEAT: _iso(self.clock())}
            # Intent first, with the exact token: a crash after this line is recoverable by tag or token.
            records.record_intent(self.store, request.run_id, "instance", node, expires_at=expires,
                                  price_per_hour=price, details=self._details(
                                      request, client_token=token, instance_type=candidate.instance_type,
                                      market=candidate.market, zone=candidate.subnet["zone"]))
            return ec2ops.run_instance(self.ec2, candidate=candidate, image_id=image_id, root_device=root,
                                       security_group=group_id, key_name=key_name, user_data=user_data,
                                       instance_profile=profile, tags=node_tags, token=token,
                                       volume_gb=self.volume_gb, backoff=self.backoff)

        instance, candidate = ec2ops.launch_first_fit(self._candidates(request.offer, subnets), launch)
        records.mark_created(self.store, "instance", node, instance["InstanceId"],
                             price_per_hour=float(self._price(request.offer, candidate)))
        return instance

    def _wait_running(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        def done(state: str | None) -> bool:
            if state in (None, "shutting-down", "terminated", "stopping", "stopped"):
                raise ClusterUnreachable(f"an instance of the cluster went away while starting ({state or 'gone'})",
                                         hint="Spot capacity may have been reclaimed; run again to retry.")
            return state == "running"

        return ec2ops.wait_until(self.ec2, ids, done, self.launch_timeout, self.sleep, self.monotonic,
                                 self.poll_interval)

    def _head_node(self, name: str, inst: dict[str, Any], token: SecretStr) -> HeadNode:
        return HeadNode(cluster=name, instance_id=inst["InstanceId"], region=self.region,
                        private_ip=inst.get("PrivateIpAddress"), public_ip=inst.get("PublicIpAddress"), token=token,
                        key_path=security.key_path(self.store.home, name))

    def _connect(self, head: HeadNode) -> tuple[str, SecretStr]:
        deadline = self.monotonic() + self.ready_timeout
        while True:
            try:
                address, auth = self.connector.connect(head)
                if self.probe(address, auth):
                    return address, auth
            except ClusterUnreachable:
                if self.monotonic() >= deadline:
                    raise
            if self.monotonic() >= deadline:
                raise ClusterUnreachable(f"the Ray head of {head.cluster} did not answer in {self.ready_timeout:.0f}s",
                                         hint="See /var/log/lhorch-bootstrap.log on the head (SSM session).")
            self.sleep(self.poll_interval)

    # --- while running -------------------------------------------------------------------------
    def heartbeat(self, cluster: Cluster) -> None:
        """Check in (tag ``lhorch:heartbeat`` = now on every node, which their dead-man switch reads)
        and check the head is still running; raise ClusterUnreachable if it is not (e.g. spot
        interruption). Call it every minute or so while the cluster is in use."""
        run_id, group = cluster.run_id, cluster.group
        nodes = ec2ops.cluster_instances(self.ec2, run_id, group, BILLABLE_STATES)
        up = [i for i in nodes if i["State"]["Name"] in UP_STATES]
        if up:
            self.backoff.call(lambda: self.ec2.create_tags(
                Resources=[i["InstanceId"] for i in up], Tags=[{"Key": TAG_HEARTBEAT, "Value": _iso(self.clock())}]))
        head = cluster.head_id or (cluster.instance_ids[0] if cluster.instance_ids else None)
        if head not in {i["InstanceId"] for i in up}:
            raise ClusterUnreachable(f"the head {head} of {cluster.name} is no longer running",
                                     hint="It was terminated (spot interruption, hard stop or dead-man switch); "
                                          "resume the run to start a new cluster.")
        missing = set(cluster.instance_ids) - {i["InstanceId"] for i in up}
        if missing:
            raise ClusterUnreachable(f"nodes {sorted(missing)} of {cluster.name} are no longer running",
                                     hint="Resume the run to start a new cluster.")

    def clusters(self) -> list[Cluster]:
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for inst in ec2ops.instances(self.ec2, [{"Name": "tag-key", "Values": [TAG_RUN]}], UP_STATES):
            t = tags_of(inst)
            groups.setdefault((t.get(TAG_RUN, ""), t.get(TAG_GROUP, "")), []).append(inst)
        out = []
        for (run_id, group), insts in sorted(groups.items()):
            insts.sort(key=lambda i: int(tags_of(i).get(TAG_NODE, "0")))
            t = tags_of(insts[0])
            expires = t.get(TAG_EXPIRES)
            out.append(Cluster(
                provider="aws", name=self.cluster_name(run_id, group), run_id=run_id,
                address=f"http://{insts[0].get('PrivateIpAddress', '')}:8265", remote=True,
                instance_ids=[i["InstanceId"] for i in insts],
                price_per_hour=sum(float(tags_of(i).get(TAG_PRICE, 0) or 0) for i in insts),
                launched_at=min(i["LaunchTime"] for i in insts),
                expires_at=datetime.fromisoformat(expires) if expires else None,
                group=group, region=self.region, head_id=insts[0]["InstanceId"],
                owner=t.get(TAG_OWNER, ""), host=t.get(TAG_HOST, ""),
                instance_types=sorted({i["InstanceType"] for i in insts}), market=t.get(TAG_MARKET, "")))
        return out

    # --- teardown ------------------------------------------------------------------------------
    def release(self, cluster: Cluster) -> None:
        head = None
        if cluster.head_id:
            head = HeadNode(cluster=cluster.name, instance_id=cluster.head_id, region=self.region,
                            private_ip=None, public_ip=None, token=SecretStr(""))
        self._teardown(cluster.run_id, cluster.group, head=head, extra_ids=cluster.instance_ids)

    def release_run(self, run_id: str) -> list[str]:
        """Release every cluster of a run that is known here or tagged in AWS; return their names."""
        groups = {r["details"].get("group") for r in records.open_rows(self.store, run_id)}
        for inst in ec2ops.instances(self.ec2, [{"Name": f"tag:{TAG_RUN}", "Values": [run_id]}]):
            groups.add(tags_of(inst).get(TAG_GROUP))
        for sg in self.ec2.describe_security_groups(Filters=[{"Name": f"tag:{TAG_RUN}", "Values": [run_id]}])["SecurityGroups"]:
            groups.add(tags_of(sg).get(TAG_GROUP))
        names = []
        for group in sorted(g for g in groups if g is not None):
            self._teardown(run_id, group, head=None)
            names.append(self.cluster_name(run_id, group))
        return names

    def _teardown(self, run_id: str, group: str, head: HeadNode | None, extra_ids: list[str] = ()) -> None:
        """Terminate (never stop) and wait, then delete the group, key pair and token parameter.
        Everything already gone is fine; every step is attempted even if an earlier one failed, and
        the failures are raised together at the end."""
        name = self.cluster_name(run_id, group)
        errors: list[str] = []
        if head is not None:
            self.connector.close(head)
        ids = sorted({i["InstanceId"] for i in ec2ops.cluster_instances(self.ec2, run_id, group)} | set(extra_ids))
        if ids:
            try:
                ec2ops.terminate(self.ec2, ids, self.backoff)
                ec2ops.wait_until(self.ec2, ids, lambda s: s in (None, "terminated"), self.release_timeout,
                                  self.sleep, self.monotonic, self.poll_interval)
            except (ClientError, BotoCoreError, CloudError) as exc:
                errors.append(f"instances {ids}: {exc}")
        groups = self.ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]
        for sg in groups:
            if not self._delete_group(sg["GroupId"]):
                errors.append(f"security group {sg['GroupId']} still in use")
        try:
            security.delete_key_pair(self.ec2, name, self.store.home)
        except ClientError as exc:
            errors.append(f"key pair {name}: {exc}")
        try:
            self.ssm.delete_parameter(Name=self.token_parameter(run_id, group))
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                errors.append(f"parameter {self.token_parameter(run_id, group)}: {exc}")
        if errors:
            raise CloudError(f"could not release all of {name}: " + "; ".join(errors),
                             hint="Run `lhorch gc` to retry; `lhorch clusters` shows what is still up.")
        records.mark_released(self.store, run_id=run_id, group=group)

    def _delete_group(self, group_id: str) -> bool:
        """Retry while the group is still attached to terminating instances (bounded)."""
        deadline = self.monotonic() + self.release_timeout
        while not security.delete_security_group(self.ec2, group_id):
            if self.monotonic() >= deadline:
                return False
            self.sleep(self.poll_interval)
        return True

    # --- garbage collection --------------------------------------------------------------------
    def _doomed(self, tags: dict[str, str], now: datetime, live_runs: set[str]) -> str | None:
        expires = tags.get(TAG_EXPIRES)
        if expires and datetime.fromisoformat(expires) <= now:
            return f"expired at {expires}"
        run = tags.get(TAG_RUN, "")
        # Another machine's runs are not ours to judge (except by expiry, above).
        if run not in live_runs and tags.get(TAG_HOST, self.host) == self.host:
            return f"run {run} is not live"
        return None

    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False) -> list[str]:
        found: list[tuple[str, str, str, str]] = []  # (kind, id, run, reason)
        for inst in ec2ops.instances(self.ec2, [{"Name": "tag-key", "Values": [TAG_RUN]}]):
            t = tags_of(inst)
            if reason := self._doomed(t, now, live_runs):
                found.append(("instance", inst["InstanceId"], t.get(TAG_RUN, ""), reason))
        for sg in self.ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": [TAG_RUN]}])["SecurityGroups"]:
            t = tags_of(sg)
            if reason := self._doomed(t, now, live_runs):
                found.append(("security group", sg["GroupId"], t.get(TAG_RUN, ""), reason))
        for kp in self.ec2.describe_key_pairs(Filters=[{"Name": "tag-key", "Values": [TAG_RUN]}])["KeyPairs"]:
            t = tags_of(kp)
            if reason := self._doomed(t, now, live_runs):
                found.append(("key pair", kp["KeyName"], t.get(TAG_RUN, ""), reason))
        for page in self.ssm.get_paginator("describe_parameters").paginate(
                ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": ["/lhorch"]}]):
            for param in page.get("Parameters", []):
                t = {x["Key"]: x["Value"] for x in self.ssm.list_tags_for_resource(
                    ResourceType="Parameter", ResourceId=param["Name"])["TagList"]}
                if reason := self._doomed(t, now, live_runs):
                    found.append(("parameter", param["Name"], t.get(TAG_RUN, ""), reason))
        descriptions = [f"{kind} {rid} ({reason})" for kind, rid, _, reason in found]
        if dry_run or not found:
            return descriptions
        errors: list[str] = []
        ids = [rid for kind, rid, _, _ in found if kind == "instance"]
        if ids:
            try:
                ec2ops.terminate(self.ec2, ids, self.backoff)
                ec2ops.wait_until(self.ec2, ids, lambda s: s in (None, "terminated"), self.release_timeout,
                                  self.sleep, self.monotonic, self.poll_interval)
            except (ClientError, BotoCoreError, CloudError) as exc:
                errors.append(f"instances: {exc}")
        for kind, rid, _, _ in found:
            try:
                if kind == "security group" and not self._delete_group(rid):
                    errors.append(f"security group {rid} still in use")
                elif kind == "key pair":
                    security.delete_key_pair(self.ec2, rid, self.store.home)
                elif kind == "parameter":
                    self.ssm.delete_parameter(Name=rid)
            except ClientError as exc:
                if error_code(exc) != "ParameterNotFound":
                    errors.append(f"{kind} {rid}: {exc}")
        for run in sorted({run for _, _, run, _ in found}):
            if run not in live_runs:
                records.mark_released(self.store, run_id=run)
        if errors:
            raise CloudError("lhorch gc could not delete everything: " + "; ".join(errors),
                             hint="Run `lhorch gc` again in a few minutes.")
        return descriptions
