"""The house rules, checked: one installed namespace, small files, layers, lint and types.

These run the real tools (ruff, import-linter, mypy) so that breaking a rule fails the suite, the
same way CI would fail on a broken test.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

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
    # orchestrator/ is grouped into subsystem folders; at most 8 modules sit beside them.
    modules = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py"))
    assert len(modules) <= 8, f"orchestrator/ holds {modules}"
    folders = sorted(p.name for p in (ROOT / "orchestrator").iterdir() if (p / "__init__.py").exists())
    assert {"core", "state", "execution", "cli"} <= set(folders), folders


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


HEAVY = ("torch", "ray", "boto3", "botocore", "matplotlib", "sklearn", "numpy", "pandas")


def _local_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, imported module, the comment that explains it) for every import inside a function."""
    lines = path.read_text().splitlines()
    found = []
    for func in ast.walk(ast.parse("\n".join(lines))):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            # The why: a comment on the import's line or on the lines just above it.
            above = [lines[node.lineno - 1]]
            n = node.lineno - 2
            while n >= 0 and lines[n].strip().startswith("#"):
                above.append(lines[n])
                n -= 1
            comment = " ".join(line.split("#", 1)[1] for line in above if "#" in line)
            found.extend((node.lineno, m, comment) for m in modules)
    return found


def test_function_local_imports_only_defer_heavy_modules_and_say_why():
    bad = []
    for path in _python_files():
        if path.parts[len(ROOT.parts)] == "bench":
            continue
        for line, module, comment in _local_imports(path):
            where = f"{path.relative_to(ROOT)}:{line}: {module}"
            if module.split(".")[0] == "lhorch":
                # lhorch's own modules are imported at the top, unless the module pulls in a heavy SDK.
                if not any(h in comment for h in HEAVY):
                    bad.append(where + " (lhorch's own module: import it at the top)")
            elif module.split(".")[0] in HEAVY and not comment.strip():
                bad.append(where + " (say why it is deferred)")
    assert not bad, "\n".join(bad)
