"""Placement policies: pure functions from a pipeline, a profile and offers to a Plan."""
