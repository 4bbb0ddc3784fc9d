"""`lhorch clusters`, `lhorch down`, `lhorch gc`: see what is up in the cloud, and make sure nothing
is left running. The provider is built from the standard AWS settings of the environment
(AWS_PROFILE, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL ...); boto3 is imported only through
lhorch.providers.aws, only when one of these commands runs."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar

import click
from rich.table import Table

from lhorch.orchestrator.cli.output import console
from lhorch.orchestrator.core.errors import LhorchError
from lhorch.orchestrator.state import run_lock
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws import records
from lhorch.providers.local import LocalProvider

_T = TypeVar("_T")


def _provider(store: Store, region: str | None = None):
    # Deferred: the provider module imports botocore (~0.5 s), which only the AWS commands need.
    from lhorch.providers.aws.provider import AwsProvider

    return AwsProvider.from_environment(store, region)


def _regions(store: Store, default: str) -> list[str]:
    """The configured region plus every region lhorch recorded a still-open resource in."""
    regions = {default} | {r["details"].get("region") for r in records.open_rows(store)}
    return sorted(r for r in regions if r)


def _aws_call(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    # Deferred: the provider module imports botocore (~0.5 s), which only the AWS commands need.
    from lhorch.providers.aws.provider import aws_errors

    with aws_errors():
        return fn(*args, **kwargs)


def live_runs(store: Store) -> set[str]:
    """Runs that may still be using their clusters: decided by each run's lock (state/run_lock.py),
    never by the status column, which a killed process leaves at running."""
    return run_lock.live_runs(store)


@click.command("clusters")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def clusters_cmd(as_json: bool) -> None:
    """What lhorch has running (the local Ray node, cloud clusters), where their Ray dashboards are, and
    what they cost per hour."""
    store = Store()
    found = LocalProvider(store.home).clusters()
    regions: list[str] = []
    try:
        provider = _provider(store)
    except LhorchError as exc:  # no AWS configured: nothing of lhorch's can be running there
        click.echo(f"AWS skipped: {exc.message}", err=True)
    else:
        regions = _regions(store, provider.region)
        for region in regions:
            p = provider if region == provider.region else _provider(store, region)
            found += _aws_call(p.clusters)
    if as_json:
        # `dashboard`: the Ray dashboard, which also serves the Jobs API (for AWS, through the connector).
        click.echo(json.dumps([c.model_dump(mode="json", exclude={"token"}) | {"dashboard": c.address}
                               for c in found], indent=2))
        return
    if not found:
        where = f", no lhorch clusters in {', '.join(regions)}" if regions else ""
        click.echo(f"Nothing running: no local Ray node{where}.")
        return
    table = Table("run", "group", "region", "instances", "types", "$/hour", "up since", "expires", "Ray dashboard")
    for c in found:
        table.add_row(c.run_id or ("(local node)" if c.provider == "local" else ""), c.group or c.name,
                      c.region or "", str(len(c.instance_ids)),
                      ",".join(c.instance_types), f"{c.price_per_hour:.3f}",
                      c.launched_at.strftime("%Y-%m-%d %H:%M") if c.launched_at else "",
                      c.expires_at.strftime("%Y-%m-%d %H:%M") if c.expires_at else "", c.address)
    console().print(table)
    click.echo(f"Total: ${sum(c.price_per_hour for c in found):.3f}/hour")


def _confirm_all(all_installs: bool, yes: bool, what: str) -> None:
    """``--all`` reaches other people's resources in a shared account: ask first, unless ``--yes``."""
    if all_installs and not yes:
        click.confirm(f"--all {what} resources of EVERY lhorch installation in this account, not only this "
                      "one's. Go on?", abort=True)


@click.command("down")
@click.argument("run", required=False)
@click.option("--local", "local_only", is_flag=True, help="Stop the local Ray node kept by `lhorch run --keep-ray`.")
@click.option("--all", "all_installs", is_flag=True,
              help="Also release clusters other lhorch installations started (asks first).")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
def down_cmd(run: str | None, local_only: bool, all_installs: bool, yes: bool) -> None:
    """Release the clusters of RUN, or every cluster this installation started when RUN is omitted."""
    store = Store()
    if local_only:
        kept = LocalProvider(store.home).clusters()
        LocalProvider(store.home).release(force=True)
        click.echo("stopped the local Ray node" if kept else "No local Ray node is running.")
        return
    _confirm_all(all_installs, yes, "releases the clusters and")
    provider = _provider(store)
    released = 0
    named = store.get_run(run) if run else None
    for region in _regions(store, provider.region):
        p = provider if region == provider.region else _provider(store, region)
        if run:
            runs = [named["id"] if named else run]
        else:
            runs = _aws_call(p.own_runs, all_installs=all_installs)
        for run_id in runs:
            for name in _aws_call(p.release_run, run_id, all_installs=all_installs):
                released += 1
                click.echo(f"released {name} ({region})")
    if run and not released and not all_installs:
        click.echo(f"Nothing of {run} was started by this installation of lhorch (`--all` reaches others').")
    click.echo("Done. `lhorch clusters` shows what is still up.")


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only list what would be deleted.")
@click.option("--all", "all_installs", is_flag=True,
              help="Also collect what other lhorch installations left (asks first).")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
def gc_cmd(dry_run: bool, all_installs: bool, yes: bool) -> None:
    """Delete every instance, security group, key pair, parameter and node role this installation of
    lhorch made that is past its expiry or whose run is no longer live on this host."""
    if not dry_run:
        _confirm_all(all_installs, yes, "deletes the")
    store = Store()
    live = live_runs(store)
    now = datetime.now(timezone.utc)
    if not dry_run:  # issue 16: a killed run shows as interrupted once gc has closed its ledger rows
        run_lock.mark_gone_interrupted(store)
    total = 0
    for line in LocalProvider(store.home).sweep(now, live, dry_run=dry_run):
        total += 1
        click.echo(f"{'would stop' if dry_run else 'stopped'} {line}")
    try:
        provider = _provider(store)
    except LhorchError as exc:  # no AWS configured: nothing of lhorch's can be running there
        click.echo(f"AWS skipped: {exc.message}")
        if not total:
            click.echo("Nothing to collect.")
        return
    for region in _regions(store, provider.region):
        p = provider if region == provider.region else _provider(store, region)
        for line in _aws_call(p.sweep, now, live, dry_run=dry_run, all_installs=all_installs):
            total += 1
            click.echo(f"{'would delete' if dry_run else 'deleted'} {line} [{region}]")
    if not total:
        click.echo("Nothing to collect.")

