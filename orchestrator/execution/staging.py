"""Artifacts of a stage placed on a remote cluster: up before it runs, back after it succeeds.

Everything of one run lives under ``<artifacts base>/runs/<run>/``: each stage's outputs under
``stages/<stage>/outputs/``, files the pipeline reads from the laptop under ``external/``. The
node side of this (fetch inputs, send outputs) is in lhorch.orchestrator.execution.stage_wrapper.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import LhorchError, UsageError
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.stage_message import SECRET_NAMES_VAR, SECRETS_FILE_VAR, SECRETS_URI_VAR, RemoteArtifacts
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws.names import TAG_EXPIRES, TAG_GROUP, TAG_HOST, TAG_INSTALL, TAG_RUN, iso
from lhorch.providers.transfer import artifact_uri, secrets_uri, store_for_uri, write_secrets


def _artifacts_base(cluster: Cluster) -> str:
    if not cluster.artifacts_uri:
        raise LhorchError(f"cluster {cluster.name} does not share this disk and has no artifact store",
                          hint="Its provider must set `artifacts_uri` for remote clusters.")
    return cluster.artifacts_uri


def outputs_uri(cluster: Cluster, run_id: str, stage: str) -> str:
    return artifact_uri(_artifacts_base(cluster), "runs", run_id, "stages", stage, "outputs", folder=True)


def send_inputs(store: Store, pipeline: Pipeline, run_id: str, run_dir: Path, base_dir: Path, stage: str,
                inputs: dict[str, Path], cluster: Cluster) -> RemoteArtifacts:
    """Upload a remote stage's inputs (unchanged content is skipped by the store); return where they
    are and where its outputs go, for the stage wrapper on the node."""
    base = _artifacts_base(cluster)
    uris: dict[str, str] = {}
    for ref in art.stage_inputs(pipeline, stage, run_dir, base_dir):
        if ref.name not in inputs:
            continue
        path = inputs[ref.name]
        where = ("stages", ref.producer, "outputs", ref.output) if ref.producer else ("external", stage, ref.name)
        uri = artifact_uri(base, "runs", run_id, *where, folder=path.is_dir())
        if uri not in uris.values():  # one artifact under two names goes up once
            store.event(run_id, "transfer", f"upload {ref.name}", stage=stage, uri=uri)
            transfer = store_for_uri(uri)
            try:
                transfer.put(path, uri)
            finally:  # its requests, paid for even when the upload fails (issue 16)
                ledger.record_items(store, run_id, stage, transfer.cost_items())
        uris[ref.name] = uri
    return RemoteArtifacts(inputs=uris, output_uri=outputs_uri(cluster, run_id, stage),
                           checkpoint_seconds=pipeline.stages[stage].hints.checkpoint_minutes * 60)


def fetch_outputs(store: Store, run_id: str, stage: str, cluster: Cluster, out_dir: Path) -> None:
    uri = outputs_uri(cluster, run_id, stage)
    store.event(run_id, "transfer", "download outputs", stage=stage, uri=uri)
    transfer = store_for_uri(uri)
    try:
        transfer.get(uri, out_dir)
    finally:  # its requests and the bytes out of AWS, paid for even when the download fails (issue 16)
        ledger.record_items(store, run_id, stage, transfer.cost_items())


def secret_values(pipeline: Pipeline, stage: str) -> dict[str, str]:
    """The stage's secrets (its own and the pipeline's), read from this machine's environment now;
    the values live only in memory and in what the stage is given (issue 15)."""
    names = list(dict.fromkeys([*pipeline.secrets, *pipeline.stages[stage].secrets]))
    missing = [n for n in names if n not in os.environ]
    if missing:
        raise UsageError(f"stage {stage}: secret {', '.join(missing)} is not set in this environment",
                         hint="Export it before `lhorch run` (a secret is never read from the pipeline file).")
    return {n: os.environ[n] for n in names}


def secret_env(store: Store, run_id: str, stage: str, cluster: Cluster, values: dict[str, str]) -> dict[str, str]:
    """The environment that brings the stage its secrets. On this machine and on an AWS cluster only
    where to read them (a private file; a per-run SecureString deleted with the cluster), so the values
    never sit in Ray's job table or its logs; to a Ray cluster of the user's, the values themselves,
    over HTTPS or a tunnel."""
    if not values:
        return {}
    env = {SECRET_NAMES_VAR: ",".join(values)}
    if not cluster.remote:
        # Not through Ray's job environment, which Ray's runtime-env agent writes to its log: a file only
        # this user can read (mkstemp: 0600, a name nobody can guess), which the wrapper deletes on reading.
        fd, path = tempfile.mkstemp(prefix="lhorch-secrets-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(values, f)
        return {**env, SECRETS_FILE_VAR: path}
    if cluster.provider != "aws" or not cluster.region:
        return {**env, **values}  # a Ray cluster of the user's: over HTTPS or a tunnel (ray_cluster.py)
    uri = secrets_uri(cluster.region, run_id, cluster.group, stage)
    tags = {TAG_RUN: run_id, TAG_GROUP: cluster.group, TAG_INSTALL: store.install_id}
    if cluster.host:
        tags[TAG_HOST] = cluster.host
    if cluster.expires_at:
        tags[TAG_EXPIRES] = iso(cluster.expires_at)
    store.event(run_id, "secrets", f"stage secrets {', '.join(values)} stored for the node", stage=stage, uri=uri)
    write_secrets(uri, values, tags)
    return {**env, SECRETS_URI_VAR: uri}
