"""Artifacts of a stage placed on a remote cluster: up before it runs, back after it succeeds.

Everything of one run lives under ``<artifacts base>/runs/<run>/``: each stage's outputs under
``stages/<stage>/outputs/``, files the pipeline reads from the laptop under ``external/``. The
node side of this (fetch inputs, send outputs) is in lhorch.orchestrator.execution.stage_wrapper.
"""

from __future__ import annotations

from pathlib import Path

from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import LhorchError
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.stage_message import RemoteArtifacts
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.state.store import Store
from lhorch.providers.transfer import artifact_uri, store_for_uri


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
            store_for_uri(uri).put(path, uri)
        uris[ref.name] = uri
    return RemoteArtifacts(inputs=uris, output_uri=outputs_uri(cluster, run_id, stage))


def fetch_outputs(store: Store, run_id: str, stage: str, cluster: Cluster, out_dir: Path) -> None:
    uri = outputs_uri(cluster, run_id, stage)
    store.event(run_id, "transfer", "download outputs", stage=stage, uri=uri)
    store_for_uri(uri).get(uri, out_dir)
