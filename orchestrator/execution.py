"""From a loaded pipeline to a finished run: pick providers, profile, plan, then run.

This is the one place that wires the layers together for `lhorch run`; each piece it calls is
usable (and tested) on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.progress import make_reporter
from orchestrator.runner import RunOptions, RunResult, Runner, all_local_plan
from orchestrator.spec import Pipeline, topological_order
from orchestrator.store import Store
from providers.base import Provider
from providers.local import LocalProvider


def local_provider(store: Store, keep_ray: bool = False) -> LocalProvider:
    cpus = os.environ.get("LHORCH_LOCAL_CPUS")
    return LocalProvider(store.home, keep=keep_ray, cpus=float(cpus) if cpus else None)


def execute(store: Store, pipeline: Pipeline, file: Path, *, resume: str | None = None, fresh: bool = False,
            policy: str | None = None, keep_ray: bool = False, only_if_changed: bool = False, trigger: str = "manual",
            quiet: bool = False) -> RunResult:
    providers: dict[str, Provider] = {"local": local_provider(store, keep_ray)}
    plan = all_local_plan(pipeline)
    reporter = make_reporter(topological_order(pipeline.stages), quiet=quiet)
    try:
        runner = Runner(store, pipeline, file, providers=providers, plan=plan, reporter=reporter,
                        options=RunOptions(fresh=fresh, resume=resume, trigger=trigger, only_if_changed=only_if_changed))
        return runner.run()
    finally:
        reporter.close()
