"""lhorch's core: pipeline spec, profiler, planner, runner, budget, store, scheduler and CLI."""

__version__ = "0.1.0"
