"""A `lhorch run` of a cloud pipeline as its own process with the budget guard the CLI gives it
(``pipeline_run.execute``), on moto (AWS_ENDPOINT_URL). Its head never answers, so the run sits in
its cloud stage's start-up with the instance up and billing until it is killed: what `kill -9` of
a real run leaves behind.

    python tests/budget_run_driver.py PIPELINE PROFILE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lhorch.orchestrator.budget.guard import BudgetGuard, month_spent
from lhorch.orchestrator.core.clock import SystemClock
from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.machine.profiler import load_profile_file
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws.provider import AwsProvider
from lhorch.providers.aws.settings import AwsSettings

VERSIONS = {"python": "3.11", "ray": "2.60.0", "lhorch": "0.1.0"}


class Printer:
    def stage(self, stage, status, detail=""):
        print(f"stage {stage} {status} {detail}", flush=True)

    def log(self, stage, line): ...

    def info(self, message):
        print(message, flush=True)

    def close(self): ...


class Silent:
    """A head that never answers (its boot never ends)."""

    def connect(self, head):
        raise ClusterUnreachable(f"{head.instance_id} does not answer")

    def close(self, head):
        pass


def main(pipeline_file: str, profile: str) -> int:
    path = Path(pipeline_file)
    store = Store()
    pipeline = load_pipeline(path)
    settings = AwsSettings.from_cloud(pipeline.cloud, versions=VERSIONS, poll_interval=0.05,
                                      ready_timeout=120)
    provider = AwsProvider.from_cloud(pipeline.cloud, store, settings=settings, connector=Silent(),
                                      ip_lookup=lambda: "198.51.100.7", sleep=lambda s: time.sleep(min(s, 0.05)))
    clock = SystemClock()
    guard = BudgetGuard(store, pipeline, month_spent=month_spent(store, pipeline, clock), clock=clock)
    runner = Runner(store, pipeline, path, providers={"aws": provider},
                    plan=make_plan(pipeline, load_profile_file(Path(profile))),
                    options=RunOptions(new=True), reporter=Printer(), guard=guard)
    return 0 if runner.run().ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
