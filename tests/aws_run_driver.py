"""A `lhorch run` of a cloud pipeline as its own process, as the CLI runs it (its signal handling,
its messages, its exit codes), with the AWS provider on moto (AWS_ENDPOINT_URL) and every head
reached at a stand-in address instead of through SSM, which moto cannot give.

    python tests/aws_run_driver.py PIPELINE PROFILE HEAD_ADDRESS HEAD_TOKEN
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import click
from pydantic import SecretStr

from lhorch.orchestrator.cli.run import _interrupted_message
from lhorch.orchestrator.core import interrupts
from lhorch.orchestrator.core.errors import EXIT_INTERRUPTED, LhorchError
from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.machine.profiler import load_profile_file
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws.provider import AwsProvider
from lhorch.providers.aws.settings import AwsSettings

VERSIONS = {"python": "3.11", "ray": "2.60.0", "lhorch": "0.1.0"}


class StandIn:
    def __init__(self, address: str, token: str):
        self.address, self.token = address, token

    def connect(self, head):
        return self.address, SecretStr(self.token)

    def close(self, head):
        pass


class Printer:
    def stage(self, stage, status, detail=""):
        print(f"stage {stage} {status} {detail}", flush=True)

    def log(self, stage, line): ...

    def info(self, message):
        print(message, flush=True)

    def close(self): ...


def main(pipeline_file: str, profile: str, address: str, token: str) -> int:
    path = Path(pipeline_file)
    store = Store()
    interrupts.install()
    try:
        pipeline = load_pipeline(path)
        settings = AwsSettings.from_cloud(pipeline.cloud, versions=VERSIONS, host="laptop", poll_interval=0.01,
                                          ready_timeout=5)
        provider = AwsProvider.from_cloud(pipeline.cloud, store, settings=settings, connector=StandIn(address, token),
                                          ip_lookup=lambda: "198.51.100.7", sleep=lambda s: time.sleep(min(s, 0.01)))
        runner = Runner(store, pipeline, path, providers={"aws": provider},
                        plan=make_plan(pipeline, load_profile_file(Path(profile))),
                        options=RunOptions(new=True), reporter=Printer())
        result = runner.run()
    except KeyboardInterrupt as exc:
        click.echo(_interrupted_message(exc), err=True)
        return EXIT_INTERRUPTED
    except LhorchError as exc:  # as the CLI prints it: one line, the hint, the exit code
        click.echo(f"error: {exc}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - the stand-in head is no Ray: a stage submitted to it fails
        click.echo(f"stage submission failed: {type(exc).__name__}", err=True)
        return 1
    return 0 if result.ok else 1


if __name__ == "__main__":
    code = main(*sys.argv[1:5])
    # The run is over: a late Ctrl-C must not interrupt the interpreter's own exit (Ray's atexit hook).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(code)
