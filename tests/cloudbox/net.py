"""Linux plumbing of the box: the host's endpoint address, one network namespace per node with a veth
pair, sockets opened inside a namespace, and killing everything that runs in one.

Every name the box creates starts with ``lhb``, so ``leftovers()`` can tell whether any is left.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time

PREFIX = "lhb"
DUMMY = "lhbox0"
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def add_endpoint_address(address: str) -> None:
    """A link of the box's own carrying ``address``: the AWS endpoint as nodes and the laptop both see
    it (moto listens there), reachable from the host and through every node's veth, from nowhere else.
    (A veth pair with its far end unused: not every kernel has the dummy link type.)"""
    ip("link", "del", DUMMY, check=False)
    ip("link", "add", DUMMY, "type", "veth", "peer", "name", DUMMY + "p")
    ip("addr", "add", f"{address}/32", "dev", DUMMY)
    ip("link", "set", DUMMY, "up")
    ip("link", "set", DUMMY + "p", "up")


def remove_endpoint_address() -> None:
    ip("link", "del", DUMMY, check=False)


FORWARDING = "/proc/sys/net/ipv4/ip_forward"
# Policy routing that keeps forwarded traffic inside the box: from a VPC address, only another VPC
# address is routed (main table); anything else is unreachable at once (table BOX_TABLE), never sent
# out of this host.
BOX_TABLE, RULE_PREF = "213", 21300


def fence_vpcs(cidrs: list[str]) -> None:
    unfence_vpcs(cidrs)
    ip("route", "replace", "unreachable", "default", "table", BOX_TABLE)
    for i, cidr in enumerate(cidrs):
        ip("rule", "add", "pref", str(RULE_PREF + 2 * i), "from", cidr, "to", cidr, "lookup", "main")
        ip("rule", "add", "pref", str(RULE_PREF + 2 * i + 1), "from", cidr, "lookup", BOX_TABLE)


def unfence_vpcs(cidrs: list[str]) -> None:
    for i in range(2 * max(len(cidrs), 1)):
        while ip("rule", "del", "pref", str(RULE_PREF + i), check=False).returncode == 0:
            pass
    ip("route", "flush", "table", BOX_TABLE, check=False)


def set_forwarding(value: str) -> str:
    """Set the host's IPv4 forwarding (``"1"``/``"0"``); return what it was. With it on, a node reaches
    another node's private address through the host, as instances of one VPC subnet reach each other."""
    with open(FORWARDING) as f:
        before = f.read().strip()
    if before != value:
        with open(FORWARDING, "w") as f:
            f.write(value)
    return before


def create_node_network(ns: str, index: int, private_ip: str, gateway: str) -> None:
    """Namespace ``ns`` with a veth pair: ``private_ip`` inside (plus the metadata address on lo),
    a /32 route to it on the host, and a default route inside through the host (``gateway``)."""
    host_if, node_if = f"{PREFIX}{index}h", f"{PREFIX}{index}n"
    ip("netns", "add", ns)
    ip("link", "add", host_if, "type", "veth", "peer", "name", node_if)
    ip("link", "set", node_if, "netns", ns)
    ip("link", "set", host_if, "up")
    ip("route", "replace", f"{private_ip}/32", "dev", host_if)
    inside = [
        ("link", "set", "lo", "up"),
        ("addr", "add", "169.254.169.254/32", "dev", "lo"),
        ("addr", "add", f"{private_ip}/32", "dev", node_if),
        ("link", "set", node_if, "up"),
        ("route", "add", f"{gateway}/32", "dev", node_if),
        ("route", "add", "default", "via", gateway, "dev", node_if, "onlink"),
    ]
    for args in inside:
        ip("netns", "exec", ns, "ip", *args)


def netns_pids(ns: str) -> list[int]:
    out = ip("netns", "pids", ns, check=False).stdout.split()
    return [int(p) for p in out if p.isdigit()]


def kill_netns(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL everything running in ``ns`` (bounded), then delete it (its veth pair goes with it)."""
    deadline = time.monotonic() + timeout
    while (pids := netns_pids(ns)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
    ip("netns", "del", ns, check=False)


def box_namespaces() -> list[str]:
    return [line.split()[0] for line in ip("netns", "list", check=False).stdout.splitlines()
            if line.startswith(PREFIX)]


def box_links() -> list[str]:
    out = ip("-o", "link", "show", check=False).stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in out if ":" in line]
    return [n for n in names if n.startswith(PREFIX)]


def listen_in_netns(ns: str, address: tuple[str, int]) -> socket.socket:
    """A listening TCP socket bound inside namespace ``ns``: opened by a short-lived thread that
    enters the namespace (a socket stays in the namespace it was made in), served from this one."""
    result: dict[str, object] = {}

    def work() -> None:
        target = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
        try:
            if _libc.setns(target, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {ns}")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(64)
            result["sock"] = sock
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result["error"] = exc
        finally:
            os.close(target)
        # This thread ends here, still in the namespace: no other thread is affected.

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(10)
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]
