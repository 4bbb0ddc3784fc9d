"""Stage secrets on a cloud node: one SSM SecureString per (run, cluster, stage), written by the
laptop just before the stage is submitted, read by the stage wrapper on the node with the node's
role, and deleted with the cluster at teardown (``teardown`` deletes every parameter under the
cluster's path; ``gc`` finds strays by their tags).

The values never travel in Ray's job submission (which Ray keeps and shows to anyone with the
cluster's token) and are never written to lhorch's store: only the parameter's name is.
"""

from __future__ import annotations

import json
from typing import Any

from lhorch.providers.aws.names import cluster_path, safe, token_parameter


def secrets_parameter(run_id: str, group: str, stage: str) -> str:
    return f"{cluster_path(run_id, group)}/secrets/{safe(stage)}"


def put_secrets(ssm: Any, name: str, values: dict[str, str], tags: dict[str, str]) -> None:
    """Write (or overwrite) the stage's secrets as one SecureString, tagged as lhorch's."""
    body = json.dumps(values)
    if tags:
        try:
            ssm.delete_parameter(Name=name)  # PutParameter refuses Tags together with Overwrite
        except ssm.exceptions.ParameterNotFound:
            pass
    ssm.put_parameter(Name=name, Value=body, Type="SecureString", Description="lhorch stage secrets",
                      Tags=[{"Key": k, "Value": v} for k, v in tags.items()])


def get_secrets(ssm: Any, name: str) -> dict[str, str]:
    value = ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"]
    return dict(json.loads(value))


def delete_cluster_parameters(ssm: Any, run_id: str, group: str) -> list[str]:
    """Delete every parameter under the cluster's path (its token and its stages' secrets). The token
    is deleted by name whatever the listing says: a listing that lags must not leave the secret."""
    names: list[str] = [token_parameter(run_id, group)]
    for page in ssm.get_paginator("describe_parameters").paginate(
            ParameterFilters=[{"Key": "Path", "Option": "Recursive", "Values": [cluster_path(run_id, group)]}]):
        names += [p["Name"] for p in page.get("Parameters", []) if p["Name"] not in names]
    for name in names:
        try:
            ssm.delete_parameter(Name=name)
        except ssm.exceptions.ParameterNotFound:
            pass
    return names
