"""lhorch's version: the installed distribution's, so that there is one number to bump (pyproject.toml).

Read on first use, not at import: importlib.metadata costs ~20 ms of every command's start-up, and
only `--version`, built-in jobs' cache keys and the wheel lhorch ships need the number."""

from __future__ import annotations

from functools import cache


@cache
def lhorch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # see the module docstring

    try:
        return version("lhorch")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "0.0.0+unknown"


def __getattr__(name: str) -> str:
    if name == "__version__":
        return lhorch_version()
    raise AttributeError(name)
