"""The house rules, checked: one installed namespace, small files, layers, lint and types.

These run the real tools (ruff, import-linter, mypy) so that breaking a rule fails the suite, the
same way CI would fail on a broken test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("orchestrator", "providers", "policies", "jobs")
MAX_LINES = 500


def _tool(name: str) -> str:
    """The console script installed beside this interpreter (the test extra installs them)."""
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is not installed: pip install -e '.[test]'"
    return found


def _python_files() -> list[Path]:
    return sorted(p for folder in FOLDERS + ("bench",) for p in (ROOT / folder).rglob("*.py"))


def test_every_package_folder_is_installed_under_lhorch():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"lhorch." + str(init.parent.relative_to(ROOT)).replace(os.sep, ".")
               for folder in FOLDERS for init in (ROOT / folder).rglob("__init__.py")}
    assert set(config["packages"]) == folders
    assert config["package-dir"] == {f"lhorch.{f}": f for f in FOLDERS}


def test_only_lhorch_is_importable_from_outside_the_checkout(tmp_path):
    code = ("import importlib.util as u, lhorch.orchestrator, lhorch.jobs, lhorch.providers, lhorch.policies;"
            "print([m for m in ('jobs', 'orchestrator', 'providers', 'policies') if u.find_spec(m)])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_files_are_small_and_the_core_folder_is_grouped():
    long = [f"{p.relative_to(ROOT)}: {n}" for p in _python_files()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, f"files over {MAX_LINES} lines: {long}"
    top = [p.name for p in (ROOT / "orchestrator").iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()]
    assert len(top) <= 1 + 8, f"orchestrator/ holds {sorted(top)}"  # __init__.py plus at most 8 modules


def test_ruff_is_clean():
    out = subprocess.run([_tool("ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_imports_follow_the_layers():
    out = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.slow
def test_types_check_in_core_state_and_policies(tmp_path):
    # mypy does not run setuptools' editable finder: give it a tree named as the installed package.
    stage = tmp_path / "lhorch"
    stage.mkdir()
    for folder in FOLDERS:
        (stage / folder).symlink_to(ROOT / folder, target_is_directory=True)
    out = subprocess.run(
        [_tool("mypy"), "--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache"),
         "-p", "lhorch.orchestrator.core", "-p", "lhorch.orchestrator.state", "-p", "lhorch.policies"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
