"""The command line every job shares, derived from its Params model.

``python -m lhorch.jobs.finetune --epochs 3 --input dataset=out/dataset --output-dir out/ft`` runs a job by
hand. Run by lhorch, the same entry point reads ``LHORCH_PARAMS``, ``LHORCH_INPUTS`` and
``LHORCH_OUTPUT_DIR``; flags given on the command line win over the environment.
"""

from __future__ import annotations

import json
import sys
import typing
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel, ValidationError

from lhorch.jobs.context import MissingInput, StageContext, from_env


def _option(name: str, field: Any) -> click.Option:
    flag = name.replace("_", "-")
    help_text = field.description or ""
    if field.default is not None and not callable(field.default):
        help_text += f"  [default: {field.default}]"
    ann = field.annotation
    if ann is bool:
        return click.Option([f"--{flag}/--no-{flag}", name], default=None, help=help_text)
    if typing.get_origin(ann) is typing.Literal:
        return click.Option([f"--{flag}", name], type=click.Choice([str(a) for a in typing.get_args(ann)]),
                            default=None, help=help_text)
    # Everything else goes through as text and pydantic converts it, so the command line and the
    # pipeline file are checked by the same rules (lists are written comma-separated: --hidden 64,32).
    return click.Option([f"--{flag}", name], default=None, metavar="VALUE", help=help_text)


def _parse_inputs(values: tuple[str, ...]) -> dict[str, Path]:
    out = {}
    for item in values:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} should be NAME=PATH", param_hint="--input")
        out[name] = Path(path)
    return out


def validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "parameters"
        msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def command(params_cls: type[BaseModel], run: Callable[[BaseModel, StageContext], dict], name: str,
            doc: str) -> click.Command:
    def callback(input: tuple[str, ...], output_dir: str | None, **flags: Any) -> None:
        env_ctx = from_env()
        given = {k: v for k, v in flags.items() if v is not None}
        try:
            params = params_cls.model_validate({**env_ctx.params, **given})
        except ValidationError as exc:
            raise click.UsageError(validation_message(exc)) from None
        ctx = replace(env_ctx, inputs={**env_ctx.inputs, **_parse_inputs(input)}, params=params.model_dump(),
                      output_dir=Path(output_dir) if output_dir else env_ctx.output_dir)
        try:
            summary = run(params, ctx)
        except (MissingInput, FileNotFoundError, ValueError) as exc:
            # User-fixable problems (a missing input, unusable data): one line, no trace.
            click.echo(f"{name}: error: {exc}", err=True)
            sys.exit(1)
        click.echo(json.dumps(summary, indent=2, default=str))

    options = [_option(field_name, field) for field_name, field in params_cls.model_fields.items()]
    options += [
        click.Option(["--input", "-i"], multiple=True, metavar="NAME=PATH",
                     help="An input artifact, e.g. dataset=outputs/preprocess/dataset (repeatable)."),
        click.Option(["--output-dir", "-o"], default=None,
                     help="Folder for this job's outputs  [default: $LHORCH_OUTPUT_DIR or ./outputs]"),
    ]
    return click.Command(name, callback=callback, params=options, help=doc)


def main(params_cls: type[BaseModel], run: Callable[[BaseModel, StageContext], dict], name: str,
         doc: str | None) -> None:
    # `name` is the job as a pipeline names it (jobs.X); the module that runs it is lhorch.jobs.X.
    command(params_cls, run, name, (doc or "").strip())(prog_name=f"python -m lhorch.{name}")


def coerce(params_cls: type[BaseModel], params: BaseModel | dict | None) -> Any:
    """``run()`` accepts the Params model, a plain dict (as in LHORCH_PARAMS) or None for defaults."""
    if isinstance(params, params_cls):
        return params
    return params_cls.model_validate(params or {})
