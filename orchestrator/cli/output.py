"""Where commands print: one console for all of them."""

from __future__ import annotations

import sys

from rich.console import Console


def console() -> Console:
    """As wide as the terminal, or 200 columns when the output is a pipe or a file, so that tables
    are not folded into 80 columns."""
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
