"""`lhorch report RUN`: write the run's self-contained HTML report into its folder and print its path."""

from __future__ import annotations

import webbrowser

import click

from lhorch.orchestrator.report.build import write_report
from lhorch.orchestrator.state.store import Store


@click.command()
@click.argument("run_id")
@click.option("--open", "open_it", is_flag=True, help="Open the report in the web browser.")
def report(run_id: str, open_it: bool) -> None:
    """Write RUN's report (timeline, costs, curves, history) as one HTML file and print its path."""
    path = write_report(Store(), run_id)
    click.echo(str(path))
    if open_it and not webbrowser.open(path.as_uri()):
        click.echo("No web browser found; open the file above by hand.", err=True)
