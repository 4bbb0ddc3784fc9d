"""Artifacts between stages: where they live, what they hash to, and what a stage gets as inputs.

A stage's outputs are files or folders under ``runs/<run>/stages/<stage>/outputs/<name>``. A stage
receives by name every output of the stages it depends on (nearest ancestor wins when two share a
name; every one is also there as ``<stage>.<name>``), plus its explicit ``inputs:``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lhorch.jobs.index import find_job
from lhorch.orchestrator.core.graph import ancestors
from lhorch.orchestrator.core.spec import CacheSettings, Pipeline, Stage
from lhorch.orchestrator.core.version import lhorch_version

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


# Never the code of a `run:` stage: version control, caches, environments, logs (`lhorch run ... | tee
# run.log` in the pipeline's folder must not make the next run start over). The same rule says what is
# shipped to a cloud node as the job's working directory, see shipped_excludes.
NOT_CODE = [".git", "__pycache__", ".venv", "*.egg-info", "*.log"]
# Stage settings that change how or where a stage runs but not what it produces.
NOT_IN_KEY = {"retries", "timeout", "placement", "hints", "budget_usd", "cache"}


def shipped_excludes(pipeline: Pipeline, base_dir: Path) -> list[str]:
    """What of the pipeline's folder is not shipped to a cloud node, in gitignore syntax: what is never
    code, and the data the stages read (it goes through the artifact store instead)."""
    excludes = list(NOT_CODE)
    for name in pipeline.stages:
        for path in external_paths(pipeline, name, base_dir):
            try:
                excludes.append("/" + str(path.relative_to(base_dir.resolve())))
            except ValueError:
                continue  # outside the folder: not shipped anyway
    return excludes


def _matches(rel: str, pattern: str) -> bool:
    """gitignore-like: a pattern without `/` matches any path component; a folder matches what is
    under it; `**/` may match no folder at all."""
    pattern = pattern.strip("/")
    parts = rel.split("/")
    if "/" not in pattern and any(fnmatch.fnmatchcase(part, pattern) for part in parts):
        return True
    prefixes = ("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    return any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase(p, pattern.replace("**/", ""))
               for p in prefixes)


def code_files(pipeline: Pipeline, name: str, base_dir: Path, skip: Sequence[Path] = ()) -> list[tuple[str, Path]]:
    """The files that are a `run:` stage's code, as (path relative to the folder, path): the files of
    the pipeline's folder that are shipped to a cloud node, narrowed by the stage's `cache:` globs.
    ``skip`` are paths that never count (the pipeline file, whose stage spec is in the key anyway;
    LHORCH_HOME when it lies inside the folder)."""
    stage = pipeline.stages[name]
    if stage.run is None:
        return []
    base = base_dir.resolve()
    settings = stage.cache if isinstance(stage.cache, CacheSettings) else CacheSettings()
    excludes = shipped_excludes(pipeline, base) + list(settings.exclude)
    skipped = [Path(p).resolve() for p in skip]
    files = []
    for root, dirs, names in os.walk(base):
        here = Path(root)
        rel_root = here.relative_to(base).as_posix()
        dirs[:] = sorted(d for d in dirs if here / d not in skipped
                         and not any(_matches(_join(rel_root, d), x) for x in excludes))
        for file in sorted(names):
            rel = _join(rel_root, file)
            path = here / file
            if path in skipped or not path.is_file() or any(_matches(rel, x) for x in excludes):
                continue
            if settings.include and not any(_matches(rel, x) for x in settings.include):
                continue
            files.append((rel, path))
    return files


def _join(folder: str, name: str) -> str:
    return name if folder in ("", ".") else f"{folder}/{name}"


def code_digest(pipeline: Pipeline, name: str, base_dir: Path, skip: Sequence[Path] = ()) -> str:
    """What a stage runs, as one digest: its code files' names and contents for `run:`, lhorch's
    version for a built-in job."""
    if pipeline.stages[name].run is None:
        return f"lhorch {lhorch_version()}"
    digest = hashlib.sha256()
    for rel, path in code_files(pipeline, name, base_dir, skip):
        digest.update(f"{rel}\0{sha256_path(path)[0]}\0".encode())
    return digest.hexdigest()


def cache_key(pipeline: Pipeline, name: str, input_hashes: dict[str, str], code: str,
              files: dict[str, str] | None = None) -> str:
    """What decides whether a finished stage can be reused: its spec (command or job and parameters,
    resources, env, the names of its secrets but never their values), the pipeline's env, its inputs'
    content, the files its parameters name, and the code it runs (``code_digest``)."""
    stage = pipeline.stages[name]
    payload = {
        "stage": stage.model_dump(mode="json", by_alias=True, exclude=NOT_IN_KEY),  # `secrets` holds names only
        "env": pipeline.env,
        "secrets": sorted(pipeline.secrets),
        "inputs": dict(sorted(input_hashes.items())),
        "files": dict(sorted((files or {}).items())),
        "code": code,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def spec_hash(stage: Stage) -> str:
    payload = stage.model_dump(mode="json", by_alias=True, exclude={"retries", "timeout", "placement", "hints"})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
