"""Commands that run nothing import only what they need (issue 18): `lhorch validate` and `schema` answer
without Ray, torch, the AWS SDK, the state store or rich's console; `lhorch plan` without Ray, torch or
the AWS SDK. Checked by the modules a fresh interpreter holds after the command, not by timing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "digits" / "pipeline.yaml"
PROFILE = ROOT / "tests" / "fixtures" / "profiles" / "cpu_4core.json"

# Heavy SDKs no command that runs nothing may pay for.
NEVER = ("ray", "torch", "boto3", "botocore", "numpy", "sklearn", "matplotlib", "pandas")
# What `validate` and `schema` do not need either: the store and its SQLite, the runner, the providers
# that start things, machine inspection, and rich (one line of output does not need it).
NOT_FOR_VALIDATE = ("sqlite3", "psutil", "rich", "lhorch.orchestrator.state", "lhorch.orchestrator.execution",
                    "lhorch.orchestrator.machine", "lhorch.orchestrator.planning", "lhorch.providers.local",
                    "lhorch.providers.aws.provider")

_PROBE = """
import json, sys
from lhorch.orchestrator.cli import main
try:
    main(sys.argv[1:], obj={})
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def probe(args: list[str], env: dict[str, str]) -> tuple[set[str], subprocess.CompletedProcess]:
    """Run the CLI with ``args`` in a fresh interpreter, which must succeed: the modules it imported,
    and the process (its stdout is the command's)."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120, env=env)
    result = json.loads(out.stderr.strip().splitlines()[-1])
    assert result["code"] in (0, None), out.stdout + out.stderr
    return set(result["modules"]), out


def imported_by(args: list[str], home: Path) -> set[str]:
    return probe(args, {"PATH": "/usr/bin:/bin", "LHORCH_HOME": str(home), "HOME": str(home)})[0]


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (packages or modules) were imported, themselves or any module under them."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


@pytest.mark.parametrize("args", [["validate", str(EXAMPLE)], ["validate", "--json", str(EXAMPLE)], ["schema"]])
def test_validate_and_schema_import_no_sdk_store_or_runner(args, tmp_path):
    modules = imported_by(args, tmp_path)
    assert "lhorch.orchestrator.pipeline.loader" in modules or args == ["schema"]  # the probe ran the command
    assert loaded(modules, NEVER) == []
    assert loaded(modules, NOT_FOR_VALIDATE) == []


@pytest.mark.parametrize("args, ran", [
    (["plan", str(EXAMPLE), "--profile-file", str(PROFILE)], "lhorch.orchestrator.planning.planner"),
    (["runs"], "lhorch.orchestrator.state.store"),
])
def test_plan_and_runs_import_no_sdk(args, ran, tmp_path):
    modules = imported_by(args, tmp_path)
    assert ran in modules
    assert loaded(modules, NEVER) == []
