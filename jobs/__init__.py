"""lhorch's built-in stages: real PyTorch jobs, each runnable on its own (`python -m lhorch.jobs.NAME --help`)."""
