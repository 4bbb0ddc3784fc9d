"""Open a run: create its row and folder, or reopen the unfinished run it continues.

A run is resumed when asked (``--resume RUN_ID``) or, unless ``--fresh`` or ``--new``, when the same pipeline
file has an unfinished run: attempts that were running when its lhorch process ended are marked
stopped, and what every stage had reached is kept so that the runner can reuse finished stages
whose cache key still matches.

One process per run: the opener takes the run's lock (state/run_lock.py) and the runner holds it to
the end. An unfinished run whose lock another process holds is live there: a plain ``lhorch run``
then starts a new run of its own, and ``--resume`` of it is refused; a live run is never adopted.
Runs whose process is gone are recorded as interrupted first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.errors import NotFoundError, UsageError
from lhorch.orchestrator.core.plan import Plan
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.core.status import RunStatus, StageStatus
from lhorch.orchestrator.execution.progress import Reporter
from lhorch.orchestrator.state.run_lock import RunLock, mark_gone_interrupted
from lhorch.orchestrator.state.store import Store, new_run_id


@dataclass
class RunOptions:
    fresh: bool = False
    resume: str | None = None
    trigger: str = "manual"
    only_if_changed: bool = False
    run_id: str | None = None
    no_cache: tuple[str, ...] = ()  # stages to run even when the cache has them
    new: bool = False  # a new run, not a resumed one, that still reuses from the cache (--fresh does not)
    verbose: bool = False  # show Ray's own log lines on the terminal too (they are always in the log files)


@dataclass
class OpenedRun:
    run_id: str
    run_dir: Path
    resumed: bool
    previous: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage → its last attempt before
    lock: RunLock | None = None  # held by this process until the run ends


def open_run(store: Store, pipeline: Pipeline, file: Path | None, plan: Plan, options: RunOptions,
             reporter: Reporter) -> OpenedRun:
    """Create the run, or reopen the one being resumed."""
    row, lock = None, None
    mark_gone_interrupted(store)
    if options.resume:
        row = store.get_run(options.resume)
        if row is None:
            raise NotFoundError(f"no run {options.resume!r}", hint="`lhorch runs` lists the runs.")
        if row["status"] in RunStatus.resumable():
            lock = RunLock.take(store.home, row["id"])
            if lock is None:
                raise UsageError(f"run {row['id']} is running in another lhorch process (pid {row['pid']})",
                                 hint="Wait for it to end, or start a new run without --resume.")
        if row["status"] not in RunStatus.resumable():
            # A finished run is never modified: a new run reuses its stages through the cache.
            reporter.info(f"Run {row['id']} is {row['status']}: starting a new run that reuses its stages "
                          "where nothing changed.")
            row = None
    elif not (options.fresh or options.new) and file is not None:
        row = store.latest_unfinished_run(pipeline.name, str(file))
        if row is not None:
            lock = RunLock.take(store.home, row["id"])
            if lock is None:
                reporter.info(f"Run {row['id']} is running in another lhorch process: starting a new run.")
                row = None
    if row is not None:
        run_id = row["id"]
        store.mark_running_attempts(run_id, StageStatus.STOPPED, "the lhorch process running it ended")
        previous = {name: dict(att) for name, att in store.stage_states(run_id).items()}
        store.event(run_id, "run", "resumed", pid=os.getpid())
        if row["spec_json"] != pipeline.model_dump_json(by_alias=True):
            reporter.info("The pipeline file changed since this run started: stages whose cache key changed run "
                          "again.")
            store.event(run_id, "run", "resumed with a changed pipeline file")
        done = [n for n, a in previous.items() if a["status"] in StageStatus.done()]
        reporter.info(f"Resuming run {run_id}: {len(done)} of {len(pipeline.stages)} stage(s) finished before.")
        return OpenedRun(run_id, store.runs_dir(run_id), resumed=True, previous=previous, lock=lock)
    if lock is not None:  # a finished run asked for with --resume is not continued
        lock.release()
    run_id = options.run_id or new_run_id(pipeline.name)
    lock = RunLock.take(store.home, run_id)
    run_dir = store.runs_dir(run_id)  # created, private
    store.create_run(run_id, pipeline.name, pipeline, str(file) if file else None, trigger=options.trigger, plan=plan)
    reporter.info(f"Run {run_id}")
    return OpenedRun(run_id, run_dir, resumed=False, lock=lock)

