"""`lhorch validate | schema`: check a pipeline file, print its JSON Schema. Fast: nothing of
execution, the store, Ray, torch, boto3 or rich is imported (tests/test_cli_imports.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from lhorch.orchestrator.cli.output import emit_json
from lhorch.orchestrator.core.graph import topological_order
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.pipeline.loader import load_pipeline


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the parsed pipeline as JSON.")
def validate(file: Path, as_json: bool) -> None:
    """Check a pipeline file; exit 2 with the line and field of the first problem."""
    pipeline = load_pipeline(file)
    if as_json:
        emit_json({"valid": True, "pipeline": pipeline.model_dump(mode="json", by_alias=True)})
        return
    order = topological_order(pipeline.stages)
    # click's styling rather than rich's console: one line does not need rich's import (~25 ms, issue 18).
    click.echo(f"{click.style('✓', fg='green')} {file}: pipeline {click.style(pipeline.name, bold=True)}, "
               f"{len(order)} stage(s): {' → '.join(order)}")


@click.command()
def schema() -> None:
    """Print the pipeline file's JSON Schema (for editors' completion)."""
    data = Pipeline.model_json_schema(by_alias=True)
    data["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    data["title"] = "lhorch pipeline"
    click.echo(json.dumps(data, indent=2))
