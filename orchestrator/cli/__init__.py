"""The `lhorch` command. One module per command group; this file only assembles them and owns the
single place where a user error becomes one message and an exit code."""

from __future__ import annotations

import sys

import click

from lhorch.orchestrator.core.version import __version__
from lhorch.orchestrator.core.errors import LhorchError


class _Group(click.Group):
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


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lhorch")
@click.option("--debug", is_flag=True, help="Show stack traces for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """lhorch: run ML pipelines on this machine or in the cloud, within a budget."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def _register() -> None:
    from lhorch.orchestrator.cli import cloud, cost, models, plan, profile, runs, schedule

    for module in (runs, plan, profile, cloud, cost, schedule, models):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


def run() -> None:  # pragma: no cover - console entry
    main(obj={})


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(obj={}))

