"""Teardown, the most important code path: one cluster, every cluster of a run, and the sweep
(``lhorch gc``) that finds what outlived its run by tag.

Instances are terminated, never stopped, and waited for; then the security group (retried while
terminating instances still hold it), the key pair and the token parameter are deleted. Whatever is
already gone is fine. The cluster's node role goes too, and every parameter under its path (the
token, the stages' secrets). Every step is attempted even when an earlier one failed, and the failures are
raised together at the end, so one stuck resource never hides the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

from botocore.exceptions import BotoCoreError, ClientError

from lhorch.orchestrator.core.errors import CloudError
from lhorch.orchestrator.state import ledger
from lhorch.providers.aws import ec2 as ec2ops
from lhorch.providers.aws import records, security
from lhorch.providers.aws.connect import HeadConnector, HeadNode
from lhorch.providers.aws.context import AwsContext
from lhorch.providers.aws.ec2 import TAG_EXPIRES, TAG_GROUP, TAG_HOST, TAG_INSTALL, TAG_RUN, UP_STATES, tags_of
from lhorch.providers.aws.names import cluster_name, cluster_path, node_role_name
from lhorch.providers.aws.retry import error_code
from lhorch.providers.aws.secrets import delete_cluster_parameters


@dataclass(frozen=True)
class Doomed:
    """A resource the sweep found, and why it goes."""

    kind: str  # instance | security group | key pair | parameter | role
    resource_id: str
    run_id: str
    reason: str

    def describe(self) -> str:
        return f"{self.kind} {self.resource_id} ({self.reason})"


class Teardown:
    def __init__(self, ctx: AwsContext, connector: HeadConnector):
        self.ctx, self.connector = ctx, connector

    # --- one cluster, one run ------------------------------------------------------------------
    def cluster(self, run_id: str, group: str, head: HeadNode | None = None, extra_ids: Iterable[str] = ()) -> None:
        """Release everything of (run_id, group); see the module docstring. ``extra_ids`` are
        instances known to the caller that may have lost their tags' visibility."""
        ec2, ssm = self.ctx.ec2, self.ctx.clients.ssm
        name = cluster_name(run_id, group)
        errors: list[str] = []
        if head is not None:
            self.connector.close(head)
        # The store knows the ids of instances it saw launched: when EC2 cannot be asked (throttled), those
        # still go, and the rest of the cluster with them.
        known = {r["resource_id"] for r in records.open_rows(self.ctx.store, run_id)
                 if r["kind"] == "instance" and r["resource_id"] and r["details"].get("group") == group}
        try:
            known |= {i["InstanceId"] for i in ec2ops.cluster_instances(ec2, run_id, group)}
        except (ClientError, BotoCoreError) as exc:
            errors.append(f"listing the instances: {exc}")
        ids = sorted(known | set(extra_ids))
        if ids and (error := self._terminate(ids)):
            errors.append(f"instances {ids}: {error}")
        elif ids:
            self._close_billing(ids)
        for sg in ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": [name]}])["SecurityGroups"]:
            if not self._delete_group(sg["GroupId"]):
                errors.append(f"security group {sg['GroupId']} still in use")
        try:
            security.delete_key_pair(ec2, name, self.ctx.store.home)
        except ClientError as exc:
            errors.append(f"key pair {name}: {exc}")
        try:
            delete_cluster_parameters(ssm, run_id, group)  # the Ray token and the stages' secrets
        except ClientError as exc:
            errors.append(f"parameters under {cluster_path(run_id, group)}: {exc}")
        if not self.ctx.settings.instance_profile:  # a role of the user's own is not ours to delete
            try:
                security.delete_instance_profile(self.ctx.clients.iam, node_role_name(run_id, group))
            except ClientError as exc:
                errors.append(f"node role {node_role_name(run_id, group)}: {exc}")
        if errors:
            raise CloudError(f"could not release all of {name}: " + "; ".join(errors),
                             hint="Run `lhorch gc` to retry; `lhorch clusters` shows what is still up.")
        records.mark_released(self.ctx.store, run_id=run_id, group=group, at=self.ctx.clock())

    def ours(self, tags: dict[str, str], all_installs: bool = False) -> bool:
        """Made by this installation of lhorch (its install id tag); anything without one is not."""
        return all_installs or tags.get(TAG_INSTALL) == self.ctx.store.install_id

    def runs(self, all_installs: bool = False) -> list[str]:
        """Runs with a node up that this installation started (any installation's with ``all_installs``)."""
        found = ec2ops.instances(self.ctx.ec2, [{"Name": "tag-key", "Values": [TAG_RUN]}], UP_STATES)
        return sorted({tags_of(i)[TAG_RUN] for i in found if self.ours(tags_of(i), all_installs)})

    def run(self, run_id: str, all_installs: bool = False) -> list[str]:
        """Release every cluster of a run that is known here or tagged in AWS by this installation
        (any installation's with ``all_installs``); return their names."""
        ec2 = self.ctx.ec2
        tagged = [{"Name": f"tag:{TAG_RUN}", "Values": [run_id]}]
        groups = {r["details"].get("group") for r in records.open_rows(self.ctx.store, run_id)}
        groups |= {tags_of(inst).get(TAG_GROUP) for inst in ec2ops.instances(ec2, tagged)
                   if self.ours(tags_of(inst), all_installs)}
        groups |= {tags_of(sg).get(TAG_GROUP) for sg in ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]
                   if self.ours(tags_of(sg), all_installs)}
        names = []
        for group in sorted(g for g in groups if g is not None):
            self.cluster(run_id, group)
            names.append(cluster_name(run_id, group))
        return names

    # --- the sweep -----------------------------------------------------------------------------
    def sweep(self, now: datetime, live_runs: set[str], dry_run: bool = False, all_installs: bool = False
              ) -> list[str]:
        """Delete every resource of this installation (any lhorch installation's with ``all_installs``)
        past its expiry or whose run is not live on this host; return what was (with ``dry_run``:
        would be) deleted."""
        found = self.find_doomed(now, live_runs, all_installs)
        descriptions = [d.describe() for d in found]
        if dry_run or not found:
            return descriptions
        errors: list[str] = []
        ids = [d.resource_id for d in found if d.kind == "instance"]
        if ids and (error := self._terminate(ids)):
            errors.append(f"instances: {error}")
        elif ids:
            self._close_billing(ids)
        for d in found:
            try:
                if d.kind == "security group" and not self._delete_group(d.resource_id):
                    errors.append(f"security group {d.resource_id} still in use")
                elif d.kind == "key pair":
                    security.delete_key_pair(self.ctx.ec2, d.resource_id, self.ctx.store.home)
                elif d.kind == "parameter":
                    self.ctx.clients.ssm.delete_parameter(Name=d.resource_id)
                elif d.kind == "role":
                    security.delete_instance_profile(self.ctx.clients.iam, d.resource_id)
            except ClientError as exc:
                if error_code(exc) != "ParameterNotFound":
                    errors.append(f"{d.kind} {d.resource_id}: {exc}")
        for run in sorted({d.run_id for d in found}):
            if run not in live_runs:
                records.mark_released(self.ctx.store, run_id=run, at=self.ctx.clock())
        if errors:
            raise CloudError("lhorch gc could not delete everything: " + "; ".join(errors),
                             hint="Run `lhorch gc` again in a few minutes.")
        return descriptions

    def find_doomed(self, now: datetime, live_runs: set[str], all_installs: bool = False) -> list[Doomed]:
        ec2, ssm = self.ctx.ec2, self.ctx.clients.ssm
        any_run = [{"Name": "tag-key", "Values": [TAG_RUN]}]
        tagged: list[tuple[str, str, dict[str, str]]] = []  # (kind, id, tags)
        tagged += [("instance", i["InstanceId"], tags_of(i)) for i in ec2ops.instances(ec2, any_run)]
        tagged += [("security group", sg["GroupId"], tags_of(sg))
                   for sg in ec2.describe_security_groups(Filters=any_run)["SecurityGroups"]]
        tagged += [("key pair", kp["KeyName"], tags_of(kp))
                   for kp in ec2.describe_key_pairs(Filters=any_run)["KeyPairs"]]
        for page in ssm.get_paginator("describe_parameters").paginate(
                ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": ["/lhorch"]}]):
            for param in page.get("Parameters", []):
                tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=param["Name"])["TagList"]
                tagged.append(("parameter", param["Name"], {t["Key"]: t["Value"] for t in tags}))
        iam = self.ctx.clients.iam
        for page in iam.get_paginator("list_roles").paginate(PathPrefix=security.IAM_PATH):
            for role in page.get("Roles", []):
                tags = iam.list_role_tags(RoleName=role["RoleName"])["Tags"]
                tagged.append(("role", role["RoleName"], {t["Key"]: t["Value"] for t in tags}))
        return [Doomed(kind, rid, tags.get(TAG_RUN, ""), reason) for kind, rid, tags in tagged
                if TAG_RUN in tags and self.ours(tags, all_installs) and (reason := self._doomed(tags, now, live_runs))]

    def _doomed(self, tags: dict[str, str], now: datetime, live_runs: set[str]) -> str | None:
        expires = tags.get(TAG_EXPIRES)
        if expires and datetime.fromisoformat(expires) <= now:
            return f"expired at {expires}"
        run = tags.get(TAG_RUN, "")
        host = self.ctx.settings.host
        # Another machine's runs are not ours to judge (except by expiry, above).
        if run not in live_runs and tags.get(TAG_HOST) == host:
            return f"run {run} is not live"
        return None

    # --- steps ---------------------------------------------------------------------------------
    def _terminate(self, ids: list[str]) -> str | None:
        """Terminate and wait until gone; the failure as text (the caller goes on with the rest)."""
        try:
            ec2ops.terminate(self.ctx.ec2, ids, self.ctx.backoff)
            self.ctx.wait_for(ids, lambda s: s in (None, "terminated"), self.ctx.settings.release_timeout)
        except (ClientError, BotoCoreError, CloudError) as exc:
            return str(exc)
        return None

    def _close_billing(self, ids: list[str]) -> None:
        """Close the ledger rows of terminated instances at EC2's own termination time (issue 16), not
        at this call's: ``lhorch gc`` may run long after. Rows EC2 gives no time for are closed by
        ``records.mark_released`` at now."""
        try:
            reservations = self.ctx.ec2.describe_instances(InstanceIds=ids)["Reservations"]
        except ClientError:
            return
        for inst in (i for r in reservations for i in r["Instances"]):
            if (ended := terminated_at(inst)) is not None:
                ledger.close_resources(self.ctx.store, [inst["InstanceId"]], ended)

    def _delete_group(self, group_id: str) -> bool:
        """Retry while the group is still attached to terminating instances (bounded)."""
        deadline = self.ctx.monotonic() + self.ctx.settings.release_timeout
        while not security.delete_security_group(self.ctx.ec2, group_id):
            if self.ctx.monotonic() >= deadline:
                return False
            self.ctx.sleep(self.ctx.settings.poll_interval)
        return True


_USER_INITIATED = re.compile(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)")


def terminated_at(instance: dict) -> datetime | None:
    """When EC2 says the instance was terminated: its StateTransitionReason reads
    "User initiated (2026-11-24 05:10:00 GMT)". None when it gives no time."""
    if instance.get("State", {}).get("Name") not in ("shutting-down", "terminated"):
        return None
    found = _USER_INITIATED.search(instance.get("StateTransitionReason") or "")
    return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc) if found else None
