"""Reaching a cluster's head from the laptop without opening any port to the internet.

``HeadConnector.connect(head) -> (address, token)`` returns a Ray Jobs address that works from this
machine and the token to use with it. ``cloud.connector`` picks one:

- ``ssm`` (the default): forward 127.0.0.1:<free port> to the head's 8265 through SSM Session Manager
  (no inbound rule at all; needs the AWS CLI and its session-manager-plugin);
- ``direct``: the head's private address is routable from here (VPN, peered VPC, the test box), so
  lhorch talks to ``http://<private ip>:8265``; a group of the user's own (``cloud.security_group_ids``)
  lets that traffic in.

``SshTunnel`` (port 22 open to the caller's /32 only, with a key pair) is kept for programmatic use;
it is the only connector with ``needs_ssh``, which is what makes lhorch create a key pair, an SSH
rule and look up the caller's public IP. Tests use a connector that returns a local stand-in.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import SecretStr

from lhorch.orchestrator.core.errors import ClusterUnreachable
from lhorch.providers.aws.bootstrap import RAY_DASHBOARD_PORT


@dataclass(frozen=True)
class HeadNode:
    cluster: str
    instance_id: str
    region: str
    private_ip: str | None
    public_ip: str | None
    token: SecretStr
    key_path: Path | None = None


@runtime_checkable
class HeadConnector(Protocol):
    def connect(self, head: HeadNode) -> tuple[str, SecretStr]:
        """Return (Ray Jobs address usable from here, token); raise ClusterUnreachable if it cannot."""
        ...

    def close(self, head: HeadNode) -> None:
        """Stop whatever connect started (a port-forward process); safe to call twice."""
        ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dashboard(address: str, path: str, token: SecretStr | None, timeout: float) -> bytes | None:
    """GET ``path`` from the Ray dashboard at ``address`` with the token; None when it does not answer 200."""
    req = urllib.request.Request(address.rstrip("/") + path)
    if token is not None:
        req.add_header("Authorization", "Bearer " + token.get_secret_value())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback tunnel or private address
            return resp.read() if resp.status == 200 else None
    except OSError:
        return None


def probe(address: str, token: SecretStr | None, timeout: float = 5.0) -> bool:
    """True when the Ray dashboard answers with the token."""
    return _dashboard(address, "/api/version", token, timeout) is not None


def alive_nodes(address: str, token: SecretStr | None, timeout: float = 5.0) -> int:
    """How many nodes Ray reports alive (its state API on the dashboard); 0 when it does not answer."""
    body = _dashboard(address, "/api/v0/nodes?detail=false&limit=1000", token, timeout)
    try:
        nodes = ((json.loads(body or b"{}").get("data") or {}).get("result") or {}).get("result") or []
    except ValueError:
        return 0
    return sum(1 for n in nodes if isinstance(n, dict) and n.get("state") == "ALIVE")


class DirectConnector:
    """The head's private address is routable from here: nothing to start or stop."""

    needs_ssh = False

    def connect(self, head: HeadNode) -> tuple[str, SecretStr]:
        if not head.private_ip:
            raise ClusterUnreachable(f"{head.instance_id} has no private address yet")
        return f"http://{head.private_ip}:{RAY_DASHBOARD_PORT}", head.token

    def close(self, head: HeadNode) -> None:
        pass


def make_connector(name: str) -> HeadConnector:
    """The connector ``cloud.connector`` names."""
    if name == "direct":
        return DirectConnector()
    if name == "ssm":
        return SsmPortForward()
    raise ValueError(f"unknown connector {name!r} (ssm | direct)")


def needs_ssh(connector: object) -> bool:
    return bool(getattr(connector, "needs_ssh", False))


class _ForwardingConnector:
    """Shared part: one port-forward subprocess per head, kept until close()."""

    needs_ssh = False

    def __init__(self, start_timeout: float = 30.0):
        self.start_timeout = start_timeout
        self._procs: dict[str, tuple[subprocess.Popen, int]] = {}

    def _command(self, head: HeadNode, local_port: int) -> list[str]:
        raise NotImplementedError

    def connect(self, head: HeadNode) -> tuple[str, SecretStr]:
        current = self._procs.get(head.instance_id)
        if current and current[0].poll() is None:
            return f"http://127.0.0.1:{current[1]}", head.token
        port = free_port()
        try:
            proc = subprocess.Popen(self._command(head, port), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
        except FileNotFoundError as exc:
            raise ClusterUnreachable(f"cannot reach the head of {head.cluster}: {exc.filename} not found",
                                     hint="Install the AWS CLI and its session-manager-plugin, "
                                          "or use the SSH connector.") from exc
        self._procs[head.instance_id] = (proc, port)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return f"http://127.0.0.1:{port}", head.token
            time.sleep(0.5)
        self.close(head)
        raise ClusterUnreachable(f"port forwarding to {head.instance_id} did not come up")

    def close(self, head: HeadNode) -> None:
        entry = self._procs.pop(head.instance_id, None)
        if entry and entry[0].poll() is None:
            entry[0].terminate()
            try:
                entry[0].wait(timeout=5)
            except subprocess.TimeoutExpired:
                entry[0].kill()


class SsmPortForward(_ForwardingConnector):
    """``aws ssm start-session --document-name AWS-StartPortForwardingSession`` to 8265."""

    def _command(self, head: HeadNode, local_port: int) -> list[str]:
        params = {"portNumber": [str(RAY_DASHBOARD_PORT)], "localPortNumber": [str(local_port)]}
        return ["aws", "ssm", "start-session", "--region", head.region, "--target", head.instance_id,
                "--document-name", "AWS-StartPortForwardingSession", "--parameters", json.dumps(params)]


class SshTunnel(_ForwardingConnector):
    """``ssh -N -L <port>:127.0.0.1:8265 ec2-user@<public ip>`` with the cluster's key pair."""

    needs_ssh = True

    def __init__(self, user: str = "ec2-user", start_timeout: float = 30.0):
        super().__init__(start_timeout)
        self.user = user

    def _command(self, head: HeadNode, local_port: int) -> list[str]:
        if not head.public_ip or head.key_path is None:
            raise ClusterUnreachable(f"{head.instance_id} has no public IP or key for an SSH tunnel",
                                     hint="Use the SSM connector (cloud.connector: ssm).")
        return ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "StrictHostKeyChecking=accept-new",
                "-o", "ServerAliveInterval=30", "-i", str(head.key_path),
                "-L", f"{local_port}:127.0.0.1:{RAY_DASHBOARD_PORT}", f"{self.user}@{head.public_ip}"]
