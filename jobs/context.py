"""The small artifact API a stage uses, wherever it runs.

The runner hands a stage its parameters and artifact locations through the environment:
``LHORCH_PARAMS`` (JSON), ``LHORCH_INPUTS`` (JSON name -> path) and ``LHORCH_OUTPUT_DIR``; each
input is also in ``LHORCH_INPUT_<NAME>``. A job reads its inputs with ``ctx.input(name)`` and writes
each output under ``ctx.output(name)``. Nothing here knows whether it runs on a laptop or on a
cloud node: the runner (or the remote wrapper) puts files in place before and collects them after.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class MissingInput(LookupError):
    pass


@dataclass(frozen=True)
class StageContext:
    output_dir: Path
    inputs: dict[str, Path] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    stage: str = "stage"
    run_id: str = "local"

    def input(self, name: str) -> Path:
        try:
            return self.inputs[name]
        except KeyError:
            have = ", ".join(sorted(self.inputs)) or "none"
            raise MissingInput(f"input {name!r} was not given to this stage (inputs: {have})") from None

    def has_input(self, name: str) -> bool:
        return name in self.inputs

    def output(self, name: str) -> Path:
        """Folder for output ``name`` (created)."""
        path = self.output_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def from_env(environ: dict[str, str] | None = None) -> StageContext:
    env = os.environ if environ is None else environ
    out = Path(env.get("LHORCH_OUTPUT_DIR", "outputs"))
    inputs = {k: Path(v) for k, v in json.loads(env.get("LHORCH_INPUTS", "{}")).items()}
    params = json.loads(env.get("LHORCH_PARAMS", "{}"))
    return StageContext(output_dir=out, inputs=inputs, params=params,
                        stage=env.get("LHORCH_STAGE", "stage"), run_id=env.get("LHORCH_RUN_ID", "local"))


def to_env(ctx: StageContext) -> dict[str, str]:
    env = {
        "LHORCH_OUTPUT_DIR": str(ctx.output_dir),
        "LHORCH_INPUTS": json.dumps({k: str(v) for k, v in ctx.inputs.items()}),
        "LHORCH_PARAMS": json.dumps(ctx.params),
        "LHORCH_STAGE": ctx.stage,
        "LHORCH_RUN_ID": ctx.run_id,
    }
    for name, path in ctx.inputs.items():
        env["LHORCH_INPUT_" + name.upper().replace("-", "_").replace(".", "_")] = str(path)
    return env
