"""Faults during a cloud run's start-up, on moto's server, in the real `lhorch` CLI's own process: a
double Ctrl-C at any moment, a throttled AWS call at each step of start-up (issue 17).

The pipeline reaches its head with the `direct` connector; moto's instances never boot (the cloud
box, tests/cloudbox, boots them), so the run stays in start-up until it is interrupted or fails."""

from __future__ import annotations

import http.client
import os
import random
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import boto3
import pytest
from moto_server import LoopbackServer, QuietHandler

PROFILE = Path(__file__).parent / "fixtures" / "profiles" / "cpu_4core.json"
# The real CLI, as installed (its console script next to this interpreter).
LHORCH = Path(sys.executable).with_name("lhorch")
PIPELINE = """\
    name: startup
    cloud: {provider: aws, region: us-east-1, spot: false, instance_types: [c6i.xlarge], connector: direct}
    stages:
      train:
        placement: cloud
        run: echo hi
    """


def _left(region: str = "us-east-1") -> dict[str, list]:
    """Everything lhorch made that is still there."""
    ec2, ssm = boto3.client("ec2", region_name=region), boto3.client("ssm", region_name=region)
    instances = [i["InstanceId"] for r in ec2.describe_instances(
        Filters=[{"Name": "tag-key", "Values": ["lhorch:run-id"]}])["Reservations"]
        for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]
    groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
              if any(t["Key"].startswith("lhorch:") for t in g.get("Tags", []))]
    keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"] if k["KeyName"].startswith("lhorch-")]
    params = [p["Name"] for p in ssm.describe_parameters()["Parameters"] if p["Name"].startswith("/lhorch")]
    return {k: v for k, v in {"instances": instances, "groups": groups, "keys": keys, "params": params}.items() if v}


def _lhorch_run(path: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([str(LHORCH), "run", str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _env(home: Path, **extra: str) -> dict[str, str]:
    # A saved profile (as LHORCH_PROFILE allows) spares each run measuring this machine.
    return dict(os.environ, LHORCH_HOME=str(home), LHORCH_PROFILE=str(PROFILE), **extra)


@pytest.mark.slow
def test_double_ctrl_c_during_start_up_leaves_nothing(write_pipeline, home, aws):
    path = write_pipeline(PIPELINE)
    env = _env(home)
    rng = random.Random(17)
    started_at = time.monotonic()
    codes = []
    for attempt in range(20):
        assert time.monotonic() - started_at < 200, f"only {attempt} rounds in 200 s"
        proc = _lhorch_run(path, env)
        try:
            # Ctrl-C anywhere in the start-up: bucket, wheel, token, group, role, the node's launch and boot.
            line = ""
            while "Starting aws" not in line:
                line = proc.stdout.readline()
                assert line, "the run ended before starting its cluster"
            time.sleep(rng.uniform(0, 2.5))  # the calls before the node's launch take ~2 s here
            proc.send_signal(signal.SIGINT)
            time.sleep(rng.uniform(0, 0.01))
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert "Traceback" not in out, out
        codes.append(proc.returncode)
        assert _left() == {}, f"round {attempt}: {out}"
    assert 130 in codes, codes


class _Throttling(QuietHandler):
    """Forwards to moto, except that one EC2 action (``throttled``) is always throttled."""

    upstream = ""
    throttled = b""

    def _forward(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if b"Action=" + self.throttled + b"&" in body + b"&":
            self._send(503, b"<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit "
                            b"exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>")
            return
        url = urllib.parse.urlsplit(self.upstream)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        conn.request(self.command, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        conn.close()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward  # noqa: N815


# Before anything is launched, the launch itself, and waiting for the launched node (teardown must
# then terminate an instance while its own describe calls are throttled too).
@pytest.mark.parametrize("action", ["CreateSecurityGroup", "RunInstances", "DescribeInstances"])
def test_throttled_call_ends_in_exit_5_with_a_hint_and_leaves_nothing(write_pipeline, home, aws, action):
    handler = type("Handler", (_Throttling,), {"upstream": aws, "throttled": action.encode()})
    proxy = LoopbackServer(handler)
    try:
        path = write_pipeline(PIPELINE)
        proc = _lhorch_run(path, _env(home, AWS_ENDPOINT_URL=proxy.url, AWS_MAX_ATTEMPTS="2"))
        out, _ = proc.communicate(timeout=120)
    finally:
        proxy.close()
    assert proc.returncode == 5, out
    assert "Traceback" not in out, out
    assert "RequestLimitExceeded" in out and "hint: AWS kept throttling" in out, out
    assert _left() == {}  # whatever was made before the throttled call is gone
