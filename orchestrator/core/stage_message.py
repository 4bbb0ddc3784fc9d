"""The one message a stage receives: what to run, where, for how long, and where its artifacts are.

The runner (on the laptop) writes it into the environment variable ``LHORCH_EXEC`` with
``model_dump_json()``; the stage wrapper (lhorch.orchestrator.execution.stage_wrapper, on whatever node
the stage was placed) reads it back with ``model_validate_json()``. Both ends share this model, so a
field renamed on one side fails loudly at the other instead of reading ``None``. It imports only
pydantic: the wrapper runs on bare cloud nodes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ENV_VAR = "LHORCH_EXEC"
# What the wrapper leaves for the runner: its exit code for a stage stopped at its timeout (as
# coreutils' `timeout`), and the file beside the outputs with wall time, peak RSS and the exit code.
EXIT_TIMEOUT = 124
USAGE_FILE = ".lhorch-usage.json"
# How a stage's secrets reach its wrapper: their names (to mask them), and where their values are,
# a private file on this machine or an SSM SecureString on a cloud node, never the values themselves.
SECRET_NAMES_VAR = "LHORCH_SECRET_NAMES"
SECRETS_URI_VAR = "LHORCH_SECRETS_URI"
SECRETS_FILE_VAR = "LHORCH_SECRETS_FILE"


class RemoteArtifacts(BaseModel):
    """Where a stage on a remote cluster (no shared disk) finds its inputs and sends its outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    inputs: dict[str, str] = Field(
        default_factory=dict,
        description="Input name → URI in the artifact store (s3://… or file://…), uploaded by the runner.")
    output_uri: str = Field(
        ..., description="Folder URI the node sends the stage's outputs to, and a retry fetches checkpoints from.")
    checkpoint_seconds: float = Field(
        600.0, gt=0, description="How often the node sends new step checkpoints while the stage runs (the stage's "
        "hints.checkpoint_minutes): what a lost node costs the retry at most.")


class StageMessage(BaseModel):
    """What the stage wrapper runs. Exactly one of ``module`` (kind ``uses``) and ``command`` (kind ``run``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["run", "uses"] = Field(
        ..., description="`uses`: a built-in job run as `python -m module`; `run`: a shell command.")
    module: str | None = Field(None, description="The built-in job's Python module (kind `uses`).")
    command: str | None = Field(None, description="The shell command, run with bash (kind `run`).")
    cwd: str | None = Field(
        None, description="Working folder: the pipeline file's folder; ignored where it does not exist (remote nodes).")
    timeout: float | None = Field(
        None, gt=0, description="Seconds one attempt may run; the node stops it then and exits with code 124.")
    remote: RemoteArtifacts | None = Field(
        None, description="Set when the cluster does not share the laptop's disk: artifacts go through the store.")

    @model_validator(mode="after")
    def _one_thing_to_run(self) -> StageMessage:
        if self.kind == "uses" and not self.module:
            raise ValueError("kind `uses` needs `module`")
        if self.kind == "run" and not self.command:
            raise ValueError("kind `run` needs `command`")
        return self
