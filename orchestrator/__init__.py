"""lhorch's core, one folder per subsystem, in the order a run goes through them: core (models,
errors, statuses), state (SQLite), pipeline (the file), machine (profile), planning, budget,
execution, scheduling, and the CLI."""

from lhorch.orchestrator.core.version import lhorch_version

__all__ = ["__version__"]


def __getattr__(name: str) -> str:
    if name == "__version__":  # read on first use (core/version.py)
        return lhorch_version()
    raise AttributeError(name)
