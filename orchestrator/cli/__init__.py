"""The `lhorch` command. One module per command group; this file only names them and owns the single
place where a user error becomes one message and an exit code.

Commands load lazily (click's "LazyGroup" pattern): `lhorch validate` imports the pipeline loader and
nothing of execution, providers or the store; `lhorch --help` imports every command to list it.
"""

from __future__ import annotations

import importlib
import sys

import click

from lhorch.orchestrator.core.errors import LhorchError
from lhorch.orchestrator.core.version import __version__

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
        command = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
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


@click.group(cls=_LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lhorch")
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
