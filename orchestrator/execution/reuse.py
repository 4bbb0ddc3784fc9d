"""Whether a stage runs or is reused: its cache key, the cache entry that key finds, and what reusing
or keeping one leaves in the run (issue 20).

A stage is reused from any earlier successful attempt in this LHORCH_HOME whose cache key is the same
(pipeline/artifacts.py ``cache_key``: the stage's spec, its inputs' content and its code), unless the
run is ``--fresh``, the stage is named in ``--no-cache`` or says ``cache: false``. Reused outputs are
links into the object store (stage_cache.py), so the run that produced them is never touched.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.execution.stage_cache import StageCache
from lhorch.orchestrator.pipeline import artifacts as art
from lhorch.orchestrator.state.cache import CacheEntry
from lhorch.orchestrator.state.store import Store


class StageReuse:
    """The cache decisions of one run."""

    def __init__(self, store: Store, pipeline: Pipeline, base_dir: Path, pipeline_file: Path | None, *,
                 fresh: bool = False, no_cache: Iterable[str] = ()):
        self.store, self.pipeline, self.base_dir = store, pipeline, base_dir
        self.cache = StageCache(store)
        self.fresh = fresh
        self.no_cache = set(no_cache)
        # Never code: the pipeline file (each stage's own part of it is in its key) and the state
        # under LHORCH_HOME when that lies inside the pipeline's folder.
        self.skip = [p for p in (pipeline_file, store.home) if p is not None]
        self._code: dict[str, str] = {}

    def enabled(self, stage: str) -> bool:
        """Whether this run may reuse the stage from the cache (or from before a resume)."""
        return not self.fresh and stage not in self.no_cache and self.pipeline.stages[stage].cache is not False

    def key(self, stage: str, input_hashes: dict[str, str]) -> str:
        if stage not in self._code:  # the folder is hashed once per stage and run
            self._code[stage] = art.code_digest(self.pipeline, stage, self.base_dir, self.skip)
        files = {}
        for path in art.external_paths(self.pipeline, stage, self.base_dir):
            files[_shown(path, self.base_dir)] = art.sha256_path(path)[0] if path.exists() else "missing"
        return art.cache_key(self.pipeline, stage, input_hashes, self._code[stage], files)

    def find(self, stage: str, key: str) -> CacheEntry | None:
        return self.cache.lookup(key) if self.enabled(stage) else None

    def restore(self, run_id: str, stage: str, entry: CacheEntry, out_dir: Path) -> bool:
        """Give the run the entry's outputs and record the stage as cached, with where it came from;
        False (and nothing recorded) when a kept file vanished meanwhile (a `cache prune` beside us)."""
        if out_dir.exists():
            shutil.rmtree(out_dir)  # what an earlier attempt of this run left, checkpoints included
        try:
            self.cache.materialize(entry, out_dir)
        except FileNotFoundError:
            shutil.rmtree(out_dir, ignore_errors=True)
            return False
        for out in entry.outputs:
            self.store.record_artifact(run_id, stage, out.name, out_dir / out.name, out.sha256, out.size)
        self.store.record_cached(run_id, stage, entry.key, f"from run {entry.run_id}")
        self.store.event(run_id, "stage", f"cached: outputs of run {entry.run_id}", stage=stage, key=entry.key)
        return True

    def keep(self, run_id: str, stage: str, key: str, out_dir: Path) -> None:
        """Record a succeeded attempt's outputs, and keep them in the cache unless the stage says
        `cache: false` (a later `--no-cache` or `--fresh` run replaces the entry with its result)."""
        names = art.declared_outputs(self.pipeline.stages[stage])
        if self.pipeline.stages[stage].cache is False:
            for name in names:
                if (out_dir / name).exists():
                    digest, size = art.sha256_path(out_dir / name)
                    self.store.record_artifact(run_id, stage, name, out_dir / name, digest, size)
            return
        outputs = self.cache.keep(key, pipeline=self.pipeline.name, stage=stage, run_id=run_id, out_dir=out_dir,
                                  names=names)
        for out in outputs:
            self.store.record_artifact(run_id, stage, out.name, out_dir / out.name, out.sha256, out.size)

    def all_cached(self, order: list[str], run_dir: Path) -> bool:
        """Whether every stage would be reused (``--only-if-changed``): each key is predicted from the
        digests its producers' entries record, without running or restoring anything."""
        produced: dict[str, dict[str, str]] = {}
        for stage in order:
            if not self.enabled(stage):
                return False
            hashes: dict[str, str] = {}
            for ref in art.stage_inputs(self.pipeline, stage, run_dir, self.base_dir):
                if ref.producer is not None:
                    digest = produced[ref.producer].get(ref.output or "")
                    if digest is not None:
                        hashes[ref.name] = digest
                elif ref.path.exists():
                    hashes[ref.name] = art.sha256_path(ref.path)[0]
                else:
                    return False  # the run will say which input is missing
            entry = self.cache.lookup(self.key(stage, hashes))
            if entry is None:
                return False
            produced[stage] = {o.name: o.sha256 for o in entry.outputs}
        return True


def _shown(path: Path, base_dir: Path) -> str:
    """A path as the key sees it: relative to the pipeline's folder, so that moving the folder keeps it."""
    try:
        return str(path.relative_to(base_dir.resolve()))
    except ValueError:
        return str(path)
