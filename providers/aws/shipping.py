"""lhorch ships itself to its nodes: a wheel of exactly the code this machine runs, and pins of this
machine's Python and package versions.

lhorch is not on the public package index (and whoever registered its name there would get root on
every node), so the nodes never ask an index for it. The wheel is assembled from the installed
packages' files, editable install or not, in a fixed order with fixed timestamps, so the same code
gives the same bytes; its sha256 names it, in the cache (``$LHORCH_HOME/cache/wheels/``), in the
artifact bucket (``<prefix>/wheels/<sha256>/``) and in the user data, where the node checks it
before installing. Its version carries the hash (``0.1.0+g<12 hex>``), so a node whose image
already has some lhorch still installs this one.

The pins are every runtime dependency of lhorch at the version installed here (a local build tag
such as ``+cpu`` dropped, so a GPU node gets the same release built for CUDA); a node whose image
already has them (torch, most often) reuses them instead of downloading them again.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import importlib.util
import io
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lhorch.orchestrator.core.version import lhorch_version

# lhorch's top-level packages (pyproject's package list, all under the `lhorch` namespace).
SHIPPED = ("jobs", "orchestrator", "policies", "providers")
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
_SKIP = re.compile(r"(^|/)(__pycache__|\.[^/]*)(/|$)|\.py[co]$")


@dataclass(frozen=True)
class Wheel:
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        return self.path.name


def package_files() -> list[tuple[str, Path]]:
    """(path inside the wheel, file here) for every file of lhorch's packages, sorted."""
    out: list[tuple[str, Path]] = []
    for top in SHIPPED:
        spec = importlib.util.find_spec(f"lhorch.{top}")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"lhorch.{top} is not importable: is lhorch installed?")
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not _SKIP.search(rel):
                out.append((f"lhorch/{top}/{rel}", path))
    return sorted(out)


def runtime_requirements() -> list[str]:
    """lhorch's declared runtime dependencies (extras such as `test` left out), markers applied."""
    from packaging.requirements import Requirement  # deferred: only launching nodes needs it

    out = []
    for text in metadata.requires("lhorch") or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        out.append(str(req))
    return out


def pins(only: dict[str, str] | None = None) -> list[str]:
    """``name[extras]==version`` for lhorch's runtime dependencies as installed here; ``only`` (name
    → version) pins those packages alone, at those versions (tests that must not depend on this
    machine)."""
    from packaging.requirements import Requirement  # deferred: only launching nodes needs it

    out = []
    for text in runtime_requirements():
        req = Requirement(text)
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        if only is not None:
            if req.name in only:
                out.append(f"{req.name}{extras}=={only[req.name]}")
            continue
        version = metadata.version(req.name).split("+", 1)[0]
        out.append(f"{req.name}{extras}=={version}")
    return out


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _metadata(version: str) -> str:
    lines = ["Metadata-Version: 2.1", "Name: lhorch", f"Version: {version}",
             "Summary: lhorch, shipped to its own nodes", "Requires-Python: >=3.10"]
    lines += [f"Requires-Dist: {r}" for r in runtime_requirements()]
    return "\n".join(lines) + "\n"


def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build(files: list[tuple[str, Path]]) -> tuple[str, bytes]:
    """(wheel file name, wheel bytes), deterministic for the same files."""
    contents = [(arcname, path.read_bytes()) for arcname, path in files]
    code_hash = hashlib.sha256()
    for arcname, data in contents:
        code_hash.update(arcname.encode() + b"\0" + hashlib.sha256(data).digest())
    version = f"{lhorch_version()}+g{code_hash.hexdigest()[:12]}"
    info = f"lhorch-{version}.dist-info"
    contents += [
        (f"{info}/METADATA", _metadata(version).encode()),
        (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: lhorch\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        (f"{info}/entry_points.txt", b"[console_scripts]\nlhorch = lhorch.orchestrator.cli:main\n"),
    ]
    record = "".join(f"{name},{_digest(data)},{len(data)}\n" for name, data in contents) + f"{info}/RECORD,,\n"
    contents.append((f"{info}/RECORD", record.encode()))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in contents:
            entry = zipfile.ZipInfo(name, _ZIP_TIME)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(entry, data)
    return f"lhorch-{version}-py3-none-any.whl", buf.getvalue()


def local_wheel(home: Path) -> Wheel:
    """The wheel of the lhorch running here, from the cache under ``home`` when the code is unchanged."""
    name, data = build(package_files())
    sha = hashlib.sha256(data).hexdigest()
    path = home / "cache" / "wheels" / sha / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
    return Wheel(path, sha)


def wheel_key(wheel: Wheel) -> str:
    """Where the wheel lives in the artifact bucket, under the prefix (the node role may read it)."""
    return f"wheels/{wheel.sha256}/{wheel.name}"
