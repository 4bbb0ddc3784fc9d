"""Parameter models of the built-in jobs (pydantic only: imported at validate time, without torch)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PreprocessParams(Params):
    dataset: str = Field("digits", description="Bundled data set name, or a path to the user's data.")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="Share of the data kept for validation.")
    seed: int = Field(0, description="Seed of the split.")
