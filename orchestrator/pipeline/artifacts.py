"""Artifacts between stages: where they live, what they hash to, and what a stage gets as inputs.

A stage's outputs are files or folders under ``runs/<run>/stages/<stage>/outputs/<name>``. A stage
receives by name every output of the stages it depends on (nearest ancestor wins when two share a
name; every one is also there as ``<stage>.<name>``), plus its explicit ``inputs:``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from lhorch.jobs.index import find_job
from lhorch.orchestrator.core.graph import ancestors
from lhorch.orchestrator.core.spec import Pipeline, Stage

CHUNK = 1 << 20


def sha256_path(path: Path) -> tuple[str, int]:
    """Content hash and size of a file, or of a folder (relative paths and contents, sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    total = 0
    if path.is_file():
        files = [(path.name, path)]
    else:
        files = sorted((str(p.relative_to(path)), p) for p in path.rglob("*") if p.is_file())
    for rel, file in files:
        digest.update(rel.encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
                total += len(chunk)
        digest.update(b"\0")
    return digest.hexdigest(), total


def stage_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / "stages" / stage


def output_dir(run_dir: Path, stage: str) -> Path:
    return stage_dir(run_dir, stage) / "outputs"


def declared_outputs(stage: Stage) -> list[str]:
    names = list(stage.outputs)
    if stage.uses:
        job = find_job(stage.uses)
        if job is not None:
            names = list(job.outputs) + [n for n in names if n not in job.outputs]
    return names


@dataclass(frozen=True)
class InputRef:
    name: str
    producer: str | None  # stage name, or None for an external path
    output: str | None
    path: Path


def stage_inputs(pipeline: Pipeline, name: str, run_dir: Path, base_dir: Path) -> list[InputRef]:
    stage = pipeline.stages[name]
    refs: dict[str, InputRef] = {}
    for producer in reversed(ancestors(pipeline.stages, name)):  # farthest first; nearer ones overwrite
        for out in declared_outputs(pipeline.stages[producer]):
            path = output_dir(run_dir, producer) / out
            refs[out] = InputRef(out, producer, out, path)
            refs[f"{producer}.{out}"] = InputRef(f"{producer}.{out}", producer, out, path)
    # The nearest ancestor wins by plain name: re-apply direct needs in order, first need last.
    for producer in reversed(stage.needs):
        for out in declared_outputs(pipeline.stages[producer]):
            refs[out] = InputRef(out, producer, out, output_dir(run_dir, producer) / out)
    for key, ref in stage.inputs.items():
        producer, _, out = ref.partition(".")
        if producer in pipeline.stages and out:
            refs[key] = InputRef(key, producer, out, output_dir(run_dir, producer) / out)
        else:
            refs[key] = InputRef(key, None, None, (base_dir / Path(ref).expanduser()).resolve())
    return list(refs.values())


def external_paths(pipeline: Pipeline, name: str, base_dir: Path) -> list[Path]:
    """Files the stage reads from outside the run: explicit input paths and job params that are paths."""
    stage = pipeline.stages[name]
    paths = []
    for ref in stage.inputs.values():
        producer, _, out = ref.partition(".")
        if not (producer in pipeline.stages and out):
            paths.append((base_dir / Path(ref).expanduser()).resolve())
    for value in stage.with_.values():
        if isinstance(value, str) and ("/" in value or value.endswith((".csv", ".npz", ".pt", ".parquet"))):
            candidate = (base_dir / Path(value).expanduser())
            if candidate.exists():
                paths.append(candidate.resolve())
    return paths


def cache_key(pipeline: Pipeline, name: str, input_hashes: dict[str, str]) -> str:
    """What decides whether a finished stage can be reused: its spec, the pipeline env, its inputs."""
    stage = pipeline.stages[name]
    payload = {
        "stage": stage.model_dump(mode="json", by_alias=True,
                                  exclude={"retries", "timeout", "placement", "hints", "budget_usd"}),
        "env": pipeline.env,
        "inputs": dict(sorted(input_hashes.items())),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def spec_hash(stage: Stage) -> str:
    payload = stage.model_dump(mode="json", by_alias=True, exclude={"retries", "timeout", "placement", "hints"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def pipeline_fingerprint(pipeline: Pipeline, base_dir: Path) -> str:
    """Spec plus the content of every external input: equal fingerprints mean nothing changed."""
    digest = hashlib.sha256(pipeline.model_dump_json(by_alias=True, exclude={"schedule"}).encode())
    for name in pipeline.stages:
        for path in external_paths(pipeline, name, base_dir):
            h = sha256_path(path)[0] if path.exists() else "missing"
            digest.update(f"{name}:{path}:{h}".encode())
    return digest.hexdigest()
