"""While clusters run: the heartbeat the nodes' dead-man switch reads, noticing a lost head or node
(spot interruption, hard stop), and listing what is up from the tags alone (no store needed, so
`lhorch clusters` also sees what another process or machine started).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.providers.aws import ec2 as ec2ops
from lhorch.providers.aws.bootstrap import RAY_DASHBOARD_PORT
from lhorch.providers.aws.context import AwsContext
from lhorch.providers.aws.ec2 import (
    BILLABLE_STATES,
    TAG_EXPIRES,
    TAG_GROUP,
    TAG_HEARTBEAT,
    TAG_HOST,
    TAG_MARKET,
    TAG_NODE,
    TAG_OWNER,
    TAG_PRICE,
    TAG_RUN,
    UP_STATES,
    tags_of,
)
from lhorch.providers.aws.names import cluster_name, iso


def heartbeat(ctx: AwsContext, cluster: Cluster) -> None:
    """Check in (tag ``lhorch:heartbeat`` = now on every node, which their dead-man switch reads)
    and check the head is still running; raise ClusterUnreachable if it is not (e.g. spot
    interruption). Call it every minute or so while the cluster is in use."""
    nodes = ec2ops.cluster_instances(ctx.ec2, cluster.run_id, cluster.group, BILLABLE_STATES)
    up = [i for i in nodes if i["State"]["Name"] in UP_STATES]
    if up:
        ctx.backoff.call(lambda: ctx.ec2.create_tags(
            Resources=[i["InstanceId"] for i in up], Tags=[{"Key": TAG_HEARTBEAT, "Value": iso(ctx.clock())}]))
    up_ids = {i["InstanceId"] for i in up}
    head = cluster.head_id or (cluster.instance_ids[0] if cluster.instance_ids else None)
    if head not in up_ids:
        raise ClusterUnreachable(f"the head {head} of {cluster.name} is no longer running",
                                 hint="It was terminated (spot interruption, hard stop or dead-man switch); "
                                      "resume the run to start a new cluster.")
    missing = set(cluster.instance_ids) - up_ids
    if missing:
        raise ClusterUnreachable(f"nodes {sorted(missing)} of {cluster.name} are no longer running",
                                 hint="Resume the run to start a new cluster.")


def running_clusters(ctx: AwsContext) -> list[Cluster]:
    """Every lhorch cluster with a node up in this region, grouped by (run, group) tags."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for inst in ec2ops.instances(ctx.ec2, [{"Name": "tag-key", "Values": [TAG_RUN]}], UP_STATES):
        t = tags_of(inst)
        groups.setdefault((t.get(TAG_RUN, ""), t.get(TAG_GROUP, "")), []).append(inst)
    out = []
    for (run_id, group), insts in sorted(groups.items()):
        insts.sort(key=lambda i: int(tags_of(i).get(TAG_NODE, "0")))
        t = tags_of(insts[0])
        expires = t.get(TAG_EXPIRES)
        out.append(Cluster(
            provider="aws", name=cluster_name(run_id, group), run_id=run_id,
            address=f"http://{insts[0].get('PrivateIpAddress', '')}:{RAY_DASHBOARD_PORT}", remote=True,
            instance_ids=[i["InstanceId"] for i in insts],
            price_per_hour=sum(float(tags_of(i).get(TAG_PRICE, 0) or 0) for i in insts),
            launched_at=min(i["LaunchTime"] for i in insts),
            expires_at=datetime.fromisoformat(expires) if expires else None,
            group=group, region=ctx.region, head_id=insts[0]["InstanceId"],
            owner=t.get(TAG_OWNER, ""), host=t.get(TAG_HOST, ""),
            instance_types=sorted({i["InstanceType"] for i in insts}), market=t.get(TAG_MARKET, "")))
    return out
