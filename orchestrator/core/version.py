"""lhorch's version: the installed distribution's, so that there is one number to bump (pyproject.toml)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lhorch")
except PackageNotFoundError:  # imported from a checkout that was never installed
    __version__ = "0.0.0+unknown"
