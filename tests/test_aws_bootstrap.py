"""The user-data script: it parses, pins the local versions, never carries the token, arms the
hard stop and the dead-man switch before anything else, and the switch really fires (run here
against a stand-in metadata service with a harmless shutdown command)."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from moto_server import LoopbackServer, QuietHandler

from lhorch.providers.aws.bootstrap import BootstrapSpec, NodeSoftware, docs_block, render_user_data, watchdog_script

ROOT = Path(__file__).resolve().parent.parent


SHA = "ab" * 32
SOFTWARE = NodeSoftware(python="3.11", wheel_uri=f"s3://b/lhorch/wheels/{SHA}/lhorch-0.1.0+g1-py3-none-any.whl",
                        wheel_sha256=SHA, requirements=("ray[default,train]==2.60.0", "torch==2.13.0"))


def spec(**kw) -> BootstrapSpec:
    args = {"cluster": "lhorch-r-g", "role": "head", "region": "eu-west-1", "token_parameter": "/lhorch/r/g/ray-token",
            "expires_at": datetime(2030, 1, 1, tzinfo=timezone.utc), "idle_minutes": 7, "software": SOFTWARE}
    args.update(kw)
    return BootstrapSpec(**args)


@pytest.mark.parametrize("role,head_ip", [("head", None), ("worker", "10.0.0.5")])
def test_user_data_parses_pins_and_arms_switches_first(tmp_path, role, head_ip):
    script = render_user_data(spec(role=role, head_ip=head_ip))
    path = tmp_path / "ud.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    assert "'ray[default,train]==2.60.0' torch==2.13.0" in script and "python3.11 -m venv" in script
    # lhorch comes from its own wheel in the bucket, checked, never from a package index by name.
    assert f"aws s3 cp --only-show-errors --region eu-west-1 {SOFTWARE.wheel_uri}" in script
    assert f"{SHA}  /opt/lhorch/wheels/lhorch-0.1.0+g1-py3-none-any.whl" in script and "sha256sum -c" in script
    assert "lhorch==" not in script and "--system-site-packages" in script
    assert "export RAY_AUTH_MODE=token" in script and "--with-decryption" in script
    assert "EXPIRES_EPOCH=1893456000" in script and 'shutdown -h +"$MINUTES"' in script
    assert "Environment=LHORCH_IDLE_SECONDS=420" in script
    # Both safety nets come before the first thing that can fail.
    assert script.index("shutdown -h +") < script.index("lhorch-watchdog.service") < script.index("aws s3 cp")
    assert script.index("aws s3 cp") < script.index("pip install")
    if role == "head":
        assert "/opt/lhorch/venv/bin/python -m ray.scripts.scripts start --head" in script
        assert "--dashboard-host 0.0.0.0" in script
    else:
        assert "--address 10.0.0.5:6379" in script


def test_docs_show_the_generated_script():
    assert docs_block() in (ROOT / "docs" / "cloud.md").read_text(), (
        "docs/cloud.md is stale: run `python -m lhorch.providers.aws.bootstrap --write-docs docs/cloud.md`")


class FakeImds(LoopbackServer):
    """IMDSv2 stand-in: a token for PUT /latest/api/token, the heartbeat tag only with that token."""

    def __init__(self, heartbeat):
        self.heartbeat = heartbeat
        outer = self

        class Handler(QuietHandler):
            def do_PUT(self):  # noqa: N802
                self._send(200, b"imds-token" if self.path == "/latest/api/token" else b"")

            def do_GET(self):  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") != "imds-token":
                    return self._send(401, b"")
                if self.path == "/latest/meta-data/tags/instance/lhorch:heartbeat":
                    return self._send(200, outer.heartbeat().encode())
                self._send(404, b"")

        super().__init__(Handler)


def start_watchdog(tmp_path, imds, idle=1, expires_in=3600, booted=True, boot=1800):
    script = tmp_path / "watchdog.sh"
    script.write_text(watchdog_script())
    marker = tmp_path / "shutdown-called"
    booted_file = tmp_path / "booted"
    if booted:
        booted_file.write_text(f"{int(time.time())}\n")
    env = {**os.environ, "LHORCH_IMDS": imds.url, "LHORCH_IDLE_SECONDS": str(idle), "LHORCH_CHECK_SECONDS": "0.2",
           "LHORCH_EXPIRES_EPOCH": str(int(time.time()) + expires_in), "LHORCH_SHUTDOWN_CMD": f"touch {marker}",
           "LHORCH_BOOTED_FILE": str(booted_file), "LHORCH_BOOT_SECONDS": str(boot)}
    return subprocess.Popen(["bash", str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), marker


def iso(dt):
    return dt.replace(microsecond=0).isoformat()


def test_dead_man_switch_fires_without_check_ins(tmp_path):
    stale = iso(datetime.now(timezone.utc) - timedelta(hours=1))
    imds = FakeImds(lambda: stale)
    proc, marker = start_watchdog(tmp_path, imds, idle=1)
    try:
        out, _ = proc.communicate(timeout=15)
    finally:
        imds.close()
    assert marker.exists() and b"no check-in" in out


def test_dead_man_switch_fires_at_hard_stop_even_with_check_ins(tmp_path):
    imds = FakeImds(lambda: iso(datetime.now(timezone.utc)))
    proc, marker = start_watchdog(tmp_path, imds, idle=600, expires_in=-1)
    try:
        out, _ = proc.communicate(timeout=15)
    finally:
        imds.close()
    assert marker.exists() and b"hard stop" in out


def test_dead_man_switch_holds_while_lhorch_checks_in(tmp_path):
    imds = FakeImds(lambda: iso(datetime.now(timezone.utc)))
    proc, marker = start_watchdog(tmp_path, imds, idle=2)
    try:
        time.sleep(3.5)  # longer than idle: only the check-ins keep it alive
        assert proc.poll() is None and not marker.exists()
    finally:
        proc.kill()
        proc.wait()
        imds.close()


def test_idle_clock_starts_when_the_bootstrap_finishes(tmp_path):
    """A long install is not idleness: with no check-in at all, the switch holds while the bootstrap
    runs; it still fires when the bootstrap is unfinished after its own limit."""
    stale = iso(datetime.now(timezone.utc) - timedelta(hours=1))
    imds = FakeImds(lambda: stale)
    proc, marker = start_watchdog(tmp_path, imds, idle=1, booted=False, boot=600)
    try:
        time.sleep(3)
        assert proc.poll() is None and not marker.exists()
    finally:
        proc.kill()
        proc.wait()
    proc, marker = start_watchdog(tmp_path, imds, idle=600, booted=False, boot=1)
    try:
        out, _ = proc.communicate(timeout=15)
    finally:
        imds.close()
    assert marker.exists() and b"bootstrap unfinished" in out
