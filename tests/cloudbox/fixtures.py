"""The `cloudbox` pytest fixture: one box for the session, removed at its end whatever happens
(and at interpreter exit, should the session die first)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from .box import Box


def unavailable() -> str | None:
    """Why the box cannot run here, or None."""
    if os.geteuid() != 0:
        return "the cloud box needs root (network and mount namespaces)"
    for tool in ("ip", "unshare", "curl", "aws"):
        if shutil.which(tool) is None:
            return f"the cloud box needs `{tool}` on PATH"
    probe = subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"], capture_output=True)
    if probe.returncode != 0:
        return "this kernel or container does not allow mount/PID namespaces"
    return None


@pytest.fixture(scope="session")
def cloudbox():
    why = unavailable()
    if why:
        pytest.skip(why)
    box = Box()
    box.start()
    try:
        yield box
    finally:
        box.close()
