"""The `lhorch` command. One module per command group; this file only names them and owns the single
place where a user error becomes one message and an exit code.

Commands load lazily (click's "LazyGroup" pattern): `lhorch validate` imports the pipeline loader and
nothing of execution, providers or the store; `lhorch --help` imports every command to list it.
"""

from __future__ import annotations

import gc
import importlib
import sys

import click

from lhorch.orchestrator.core.errors import LhorchError
from lhorch.orchestrator.core.version import lhorch_version

# Command name → "module:attribute" in this package.
COMMANDS = {
    "validate": "validate:validate",
    "schema": "validate:schema",
    "run": "run:run",
    "runs": "runs:runs",
    "status": "runs:status",
    "logs": "runs:logs",
    "report": "report:report",
    "plan": "plan:plan",
    "profile": "profile:profile",
    "cost": "cost:cost",
    "clusters": "cloud:clusters_cmd",
    "down": "cloud:down_cmd",
    "gc": "cloud:gc_cmd",
    "cloud": "cloud_setup:cloud",
    "schedule": "schedule:schedule",
    "scheduler": "scheduler:scheduler",
    "models": "models:models",
    "cache": "cache:cache",
}


# The module local stages run under (execution/launch.py's WRAPPER_MODULE), which their fork server preloads.
STAGE_WRAPPER = "lhorch.orchestrator.execution.stage_wrapper"


def _prestart_fork_server(ctx: click.Context) -> None:
    """`lhorch run`'s local stages fork from a warm Python (providers/forkserver.py) that takes ~0.2 s to
    start: started here, it comes up while `run` imports its own modules (~0.4 s), not after them (issue 18).
    One that no stage takes (a cached run, a cloud one, `run --help`) exits with lhorch."""
    if ctx.resilient_parsing:  # shell completion looks commands up without running them
        return
    # Standard library only, and only for `run`: `validate` and the rest do not pay for it.
    importlib.import_module("lhorch.providers.forkserver").prestart(STAGE_WRAPPER)


def _import_frozen(name: str) -> object:
    """Import a command's module with the garbage collector off, then freeze what it made: the import
    creates ~45,000 objects the collector tracks (pydantic's models above all) and frees none, so collecting during it
    is wasted (~15% of it), and frozen, they are not traversed again by later collections nor at exit
    (~45 ms less teardown). Measured for `lhorch run` on a small laptop (issue 18)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(name)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


class _LazyGroup(click.Group):
    """Imports a command's module only when the command is looked up, and turns a LhorchError into
    one line, its hint and its exit code (the trace only with --debug)."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy:
            return super().get_command(ctx, cmd_name)
        module, attribute = self.lazy[cmd_name].split(":")
        if cmd_name == "run":
            _prestart_fork_server(ctx)
        command = getattr(_import_frozen(f"{__name__}.{module}"), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{module}:{attribute} is not a click command")
        return command

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except LhorchError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.secho(f"error: {exc.message}", fg="red", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(exc.exit_code)


def _print_version(ctx: click.Context, _param: click.Parameter, wanted: bool) -> None:
    # click.version_option would read the version at import; every command would pay for it.
    if wanted:
        click.echo(f"lhorch, version {lhorch_version()}")
        ctx.exit()


@click.group(cls=_LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, is_eager=True, expose_value=False, callback=_print_version,
              help="Show the version and exit.")
@click.option("--debug", is_flag=True, help="Show stack traces for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """lhorch: run ML pipelines on this machine or in the cloud, within a budget."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def run() -> None:  # pragma: no cover - console entry
    main(obj={})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(obj={}))
