"""Multi-node clusters on the cloud box (issue 14): nodes of one VPC reach each other and nothing
outside the box; a two-node cluster runs jobs.finetune with a worker on each node, survives losing
its worker by retrying on a fresh cluster from the checkpoint, and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import pytest
from cloudbox import net
from cloudbox.fixtures import cloudbox  # noqa: F401 - the session's box

pytestmark = [pytest.mark.cloudbox]

CONNECT = ("import socket, sys, time\n"
           "t = time.monotonic()\n"
           "try:\n"
           "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10).close(); print('connected')\n"
           "except OSError as e:\n"
           "    print('refused' if isinstance(e, ConnectionRefusedError) else type(e).__name__, e.errno)\n"
           "print(round(time.monotonic() - t, 2))\n")


def _connect_from(ns: str, host: str, port: int) -> tuple[str, float]:
    out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CONNECT, host, str(port)],
                         capture_output=True, text=True, timeout=30)
    outcome, took = out.stdout.strip().splitlines()
    return outcome, float(took)


def test_nodes_of_the_vpc_reach_each_other_and_nothing_outside_the_box(cloudbox):
    a, b = f"{net.PREFIX}-test-a", f"{net.PREFIX}-test-b"
    try:
        net.create_node_network(a, 240, "172.31.250.1", "10.213.0.1")
        net.create_node_network(b, 241, "172.31.250.2", "10.213.0.1")
        server = net.listen_in_netns(b, ("172.31.250.2", 0))
        port = server.getsockname()[1]
        assert _connect_from(a, "172.31.250.2", port)[0] == "connected"
        server.close()
        # Outside the box (a registry's address, say): refused at once by the host, never sent out.
        outcome, took = _connect_from(a, "203.0.113.80", 443)
        assert outcome.startswith("OSError 113") or outcome.startswith("OSError 101"), outcome
        assert took < 5, took
        # A VPC address no node has: unreachable too, as on EC2.
        assert _connect_from(a, "172.31.250.9", 22)[0].startswith("OSError")
    finally:
        net.kill_netns(a)
        net.kill_netns(b)
