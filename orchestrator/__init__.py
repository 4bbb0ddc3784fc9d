"""lhorch's core, one folder per subsystem, in the order a run goes through them: core (models,
errors, statuses), state (SQLite), pipeline (the file), machine (profile), planning, budget,
execution, scheduling, and the CLI."""

from lhorch.orchestrator.core.version import __version__

__all__ = ["__version__"]
