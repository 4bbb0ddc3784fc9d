"""`lhorch cloud setup`: the one step that needs an AWS administrator, once per account.

It creates the permissions boundary every lhorch node role is created under. After it, lhorch's
users need only the rights in docs/iam-policy.json, which let them create node roles *with that
boundary* and nothing else, so those rights cannot be turned into more (issue 15).
"""

from __future__ import annotations

import click

from lhorch.orchestrator.cli.cloud import _aws_call, _provider
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws import security


@click.group("cloud")
def cloud() -> None:
    """One-time cloud setup (run by an AWS administrator)."""


@cloud.command("setup")
def setup() -> None:
    """Create the permissions boundary lhorch's node roles are created under, and say what was done."""
    provider = _provider(Store())
    account = _aws_call(provider.identity)["account"]
    arn, created = _aws_call(security.ensure_boundary, provider.iam, account)
    click.echo(f"{'created' if created else 'updated'} IAM policy {arn} (the node roles' permissions boundary)")
    click.echo(f"Users of lhorch in account {account} need the permissions in docs/iam-policy.json; with them "
               "they can create node roles only under this boundary.")
