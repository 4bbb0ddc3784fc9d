"""The stage cache: a finished stage's outputs kept by content, reused by any later run whose stage has
the same cache key (issue 20).

Each output file is kept once, under ``$LHORCH_HOME/cache/objects/<sha[:2]>/<sha256>``, as a hard link
to the file the producing run wrote; a run that reuses it gets hard links too. Nothing large is
copied, and a file's bytes live as long as any run or the cache holds a link, so deleting an old run
never breaks a newer one. Kept files are made read-only: a later stage that opened its input for
writing would otherwise change a finished run through the shared link. Where the disk cannot hard
link (another filesystem), the file is copied instead.

The rows are in lhorch.orchestrator.state.cache; `lhorch cache ls` and `lhorch cache prune` are in
lhorch.orchestrator.cli.cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from lhorch.orchestrator.pipeline.artifacts import CHUNK
from lhorch.orchestrator.state import cache as db
from lhorch.orchestrator.state.cache import CachedFile, CachedOutput, CacheEntry
from lhorch.orchestrator.state.store import Store, utcnow

READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH
EXEC = stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH


class StageCache:
    def __init__(self, store: Store):
        self.store = store
        self.objects = store.home / "cache" / "objects"

    def object_path(self, sha: str) -> Path:
        return self.objects / sha[:2] / sha

    # --- keeping a finished stage's outputs ---------------------------------------------------
    def keep(self, key: str, *, pipeline: str, stage: str, run_id: str, out_dir: Path,
             names: list[str]) -> list[CachedOutput]:
        """Put the outputs the attempt wrote into the object store and record them under ``key``;
        returns them with their digests (the ones the run's artifacts are recorded with)."""
        outputs = [self._keep_output(name, out_dir / name) for name in names if (out_dir / name).exists()]
        db.put(self.store, key, pipeline=pipeline, stage=stage, run_id=run_id, outputs=outputs)
        return outputs

    def _keep_output(self, name: str, path: Path) -> CachedOutput:
        # The output's digest is computed as artifacts.sha256_path does, in the same pass as each
        # file's own, so that cached and freshly run stages give their consumers the same keys.
        digest = hashlib.sha256()
        if path.is_file():
            members, dirs = [(path.name, "", path)], []
        else:
            members = sorted((str(p.relative_to(path)), p.relative_to(path).as_posix(), p)
                             for p in path.rglob("*") if p.is_file())
            dirs = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_dir())
        files, total = [], 0
        for rel, posix, file in members:
            digest.update(rel.encode() + b"\0")
            own = hashlib.sha256()
            size = 0
            with open(file, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
                    own.update(chunk)
                    size += len(chunk)
            digest.update(b"\0")
            total += size
            executable = bool(file.stat().st_mode & stat.S_IXUSR)
            self._store(file, own.hexdigest(), executable)
            files.append(CachedFile(path=posix, sha256=own.hexdigest(), size=size, executable=executable))
        return CachedOutput(name=name, sha256=digest.hexdigest(), size=total,
                            kind="file" if path.is_file() else "dir", files=files, dirs=dirs)

    def _store(self, file: Path, sha: str, executable: bool) -> None:
        obj = self.object_path(sha)
        obj.parent.mkdir(parents=True, exist_ok=True)
        if obj.exists():
            _replace_with_link(obj, file)  # the same bytes are kept once
            return
        try:
            os.link(file, obj)
        except FileExistsError:
            _replace_with_link(obj, file)  # another run kept it first
            return
        except OSError:  # another filesystem, or links not allowed: keep a copy
            tmp = obj.with_name(obj.name + f".{os.getpid()}.tmp")
            shutil.copyfile(file, tmp)
            os.replace(tmp, obj)
        obj.chmod(READ_ONLY | (EXEC if executable else 0))

    # --- reusing ------------------------------------------------------------------------------
    def lookup(self, key: str) -> CacheEntry | None:
        """The entry for ``key`` if every file of it is still in the object store."""
        entry = db.get(self.store, key)
        if entry is None:
            return None
        for out in entry.outputs:
            for f in out.files:
                obj = self.object_path(f.sha256)
                if not obj.is_file() or obj.stat().st_size != f.size:
                    db.delete(self.store, key)  # broken by hand: the stage runs again and replaces it
                    return None
        return entry

    def materialize(self, entry: CacheEntry, out_dir: Path) -> None:
        """Give ``out_dir`` the entry's outputs, as links to the kept files."""
        out_dir.mkdir(parents=True, exist_ok=True)
        for out in entry.outputs:
            target = out_dir / out.name
            if out.kind == "file":
                _link_or_copy(self.object_path(out.files[0].sha256), target)
                continue
            target.mkdir(parents=True, exist_ok=True)
            for d in out.dirs:
                (target / d).mkdir(parents=True, exist_ok=True)
            for f in out.files:
                (target / f.path).parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(self.object_path(f.sha256), target / f.path)
        db.touch(self.store, entry.key)

    # --- housekeeping -------------------------------------------------------------------------
    def own_bytes(self, entry: CacheEntry) -> int:
        """Bytes only the cache holds for this entry: files no run folder links to any more."""
        seen: set[str] = set()
        total = 0
        for out in entry.outputs:
            for f in out.files:
                obj = self.object_path(f.sha256)
                if f.sha256 not in seen and obj.exists() and obj.stat().st_nlink <= 1:
                    total += f.size
                seen.add(f.sha256)
        return total

    def prune(self, *, older_than: timedelta | None = None, max_bytes: int | None = None,
              dry_run: bool = False, now: datetime | None = None) -> PruneResult:
        """Remove entries last used before ``older_than`` ago, then the least recently used until the
        cache's own bytes fit ``max_bytes``. An entry a kept run still uses (a run folder links its
        files) is never removed: it costs no disk of its own, and removing it would only lose reuse."""
        now = now or utcnow()
        entries = db.entries(self.store)  # most recently used first
        result = PruneResult()
        candidates: list[CacheEntry] = []
        for entry in entries:
            if self._used_by_kept_run(entry):
                result.kept_in_use += 1
            else:
                candidates.append(entry)
        own = {e.key: self.own_bytes(e) for e in candidates}
        total = sum(own.values())
        for entry in reversed(candidates):  # least recently used first
            too_old = older_than is not None and now - entry.last_used_at > older_than
            too_big = max_bytes is not None and total > max_bytes
            if not (too_old or too_big):
                continue
            result.removed.append(entry)
            result.freed_bytes += own[entry.key]
            total -= own[entry.key]
            if not dry_run:
                db.delete(self.store, entry.key)
        if not dry_run:
            self._sweep_objects()
        return result

    def _used_by_kept_run(self, entry: CacheEntry) -> bool:
        runs = {entry.run_id, *db.runs_using(self.store, entry.key)}
        return any((self.store.runs_dir(r) / "stages" / entry.stage / "outputs").exists() for r in runs)

    def _sweep_objects(self) -> None:
        """Delete the kept files no entry names any more (a run folder that links one keeps its bytes)."""
        wanted = {f.sha256 for e in db.entries(self.store) for o in e.outputs for f in o.files}
        if not self.objects.exists():
            return
        for obj in self.objects.glob("*/*"):
            if obj.name not in wanted and not obj.name.endswith(".tmp"):
                obj.unlink()


@dataclass
class PruneResult:
    removed: list[CacheEntry] = field(default_factory=list)
    freed_bytes: int = 0
    kept_in_use: int = 0


def _replace_with_link(obj: Path, file: Path) -> None:
    """Make ``file`` a link to the kept ``obj`` of the same content (atomically: a reader sees one
    or the other)."""
    if file.stat().st_ino == obj.stat().st_ino:
        return
    tmp = file.with_name(file.name + ".lhorch-link")
    try:
        os.link(obj, tmp)
    except OSError:
        return  # another filesystem: the run keeps its own copy
    os.replace(tmp, file)


def _link_or_copy(obj: Path, target: Path) -> None:
    try:
        os.link(obj, target)
    except OSError:
        shutil.copy2(obj, target)


def break_links(folder: Path) -> None:
    """Give a folder that an attempt will write into again (its checkpoints) private copies of the
    files it shares with the cache, so that writing cannot reach a finished run."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_nlink > 1:
            tmp = path.with_name(path.name + ".lhorch-copy")
            shutil.copyfile(path, tmp)
            os.replace(tmp, path)
