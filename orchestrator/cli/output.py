"""Where commands print: one console for all of them, and one way to print JSON."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from rich.console import Console


def console() -> Console:
    """As wide as the terminal, or 200 columns when the output is a pipe or a file, so that tables
    are not folded into 80 columns."""
    # deferred: rich takes ~25 ms to import; a command that prints JSON or one plain line never needs it
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)


def emit_json(data: object) -> None:
    """One JSON line (anything not JSON, such as a datetime, as its text)."""
    click.echo(json.dumps(data, indent=None, default=str))
