"""The box: moto's server as the control plane, and a node runner that turns every instance lhorch
launches into a running machine on this host (see the package docstring).

    with Box() as box:          # or the `cloudbox` pytest fixture
        env = box.laptop_env()  # AWS_ENDPOINT_URL and fake credentials for `lhorch run`
        ...
        box.interrupt(instance_id)   # a spot interruption
        box.nodes                    # instance id -> Node (its folder, its bootstrap log)
"""

from __future__ import annotations

import atexit
import base64
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import net
from .image import hidden_lhorch_files, write_image
from .imds import Imds

ENDPOINT_ADDRESS = "10.213.0.1"
REGION = "us-east-1"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@dataclass
class Node:
    instance_id: str
    ns: str
    private_ip: str
    dir: Path
    started: float
    process: subprocess.Popen | None = None
    imds: Imds | None = None
    ended: float | None = None
    events: list[str] = field(default_factory=list)

    def log(self) -> str:
        """The node's bootstrap log (its /var/log/lhorch-bootstrap.log)."""
        path = self.dir / "fs" / "log" / "lhorch-bootstrap.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def boot_steps(self) -> dict[str, float]:
        """``lhorch-boot: <step> <epoch>`` lines of the log, by step (the first of each)."""
        out: dict[str, float] = {}
        for line in self.log().splitlines():
            if line.startswith("lhorch-boot: "):
                parts = line.split()
                if len(parts) >= 3:
                    try:
                        out.setdefault(parts[1], float(parts[2]))
                    except ValueError:
                        pass
        return out


class Box:
    def __init__(self, root: Path | None = None, poll: float = 0.3):
        self.root = Path(root or tempfile.mkdtemp(prefix="lhorch-box-", dir="/var/tmp"))
        self.poll = poll
        self.nodes: dict[str, Node] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._count = 0
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""
        self.errors: list[str] = []
        # Fault injection: before the next node boots, flip a byte of every lhorch wheel in the buckets
        # (keeping their recorded sha256), as a corrupted or tampered bucket would serve them.
        self.corrupt_wheels = False

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> Box:
        import boto3
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        atexit.register(self.close)
        for ns in net.box_namespaces():  # a box killed before its close (SIGKILL) left them
            net.kill_netns(ns)
        net.add_endpoint_address(ENDPOINT_ADDRESS)
        self._server = ThreadedMotoServer(ip_address=ENDPOINT_ADDRESS, port=0, verbose=False)
        self._server.start()
        _, port = self._server.get_host_and_port()
        self.endpoint = f"http://{ENDPOINT_ADDRESS}:{port}"
        self.image = write_image(self.root / "image", self.endpoint)
        session = boto3.Session(region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing",
                                aws_session_token="testing")
        self.ec2 = session.client("ec2", endpoint_url=self.endpoint)
        self.session = session
        # The VPCs' addresses belong to the box: a node that is gone is unreachable (as on EC2), never
        # routed out of this host to whatever answers there.
        self.vpc_cidrs = sorted({v["CidrBlock"] for v in self.ec2.describe_vpcs()["Vpcs"]})
        for cidr in self.vpc_cidrs:
            net.ip("route", "replace", "unreachable", cidr)
        net.fence_vpcs(self.vpc_cidrs)
        # Nodes of a multi-node cluster talk to each other through the host (restored at close).
        self._forwarding = net.set_forwarding("1")
        self._thread = threading.Thread(target=self._run, name="cloudbox-nodes", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> Box:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything the box made: nodes, namespaces, links, moto, folders. Safe twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for iid in list(self.nodes):
            self._remove(iid)
        for ns in net.box_namespaces():
            net.kill_netns(ns)
        for link in net.box_links():
            net.ip("link", "del", link, check=False)
        for cidr in getattr(self, "vpc_cidrs", []):
            net.ip("route", "del", "unreachable", cidr, check=False)
        net.unfence_vpcs(getattr(self, "vpc_cidrs", []))
        net.remove_endpoint_address()
        if getattr(self, "_forwarding", None) is not None:
            net.set_forwarding(self._forwarding)
            self._forwarding = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        shutil.rmtree(self.root, ignore_errors=True)

    # --- what tests use ------------------------------------------------------------------------
    def laptop_env(self) -> dict[str, str]:
        """The laptop's AWS settings: the box's endpoint and credentials, the standard way."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "AWS_EC2_METADATA_DISABLED": "true", **CREDENTIALS}

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint)

    def live_namespaces(self) -> list[str]:
        return net.box_namespaces()

    def interrupt(self, instance_id: str) -> None:
        """A spot interruption: the instance is terminated under the node, which dies at once.
        (moto records it as a user-initiated termination; EC2 would say Server.SpotInstanceTermination.)"""
        self.ec2.terminate_instances(InstanceIds=[instance_id])
        self._remove(instance_id)

    def wait(self, condition: Any, timeout: float, interval: float = 0.3) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(interval)
        return bool(condition())

    # --- the node runner -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self._step()
            except Exception as exc:  # noqa: BLE001 - the runner keeps going; tests see box.errors
                self.errors.append(repr(exc))

    def _step(self) -> None:
        found = [i for r in self.ec2.describe_instances(
            Filters=[{"Name": "tag-key", "Values": ["lhorch:run-id"]}])["Reservations"] for i in r["Instances"]]
        states = {i["InstanceId"]: i["State"]["Name"] for i in found}
        for inst in found:
            if states[inst["InstanceId"]] in ("pending", "running") and inst["InstanceId"] not in self.nodes:
                self._boot(inst)
        for iid, node in list(self.nodes.items()):
            if node.ended is None and states.get(iid, "terminated") not in ("pending", "running"):
                self._remove(iid)

    def _corrupt_wheels(self) -> None:
        s3 = self.client("s3")
        for bucket in s3.list_buckets()["Buckets"]:
            for obj in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
                if obj["Key"].endswith(".whl"):
                    head = s3.head_object(Bucket=bucket["Name"], Key=obj["Key"])
                    body = bytearray(s3.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read())
                    body[len(body) // 2] ^= 0xFF
                    s3.put_object(Bucket=bucket["Name"], Key=obj["Key"], Body=bytes(body), Metadata=head["Metadata"])

    def _boot(self, inst: dict[str, Any]) -> None:
        iid, private_ip = inst["InstanceId"], inst["PrivateIpAddress"]
        if self.corrupt_wheels:
            self._corrupt_wheels()
            self.corrupt_wheels = False
        user_data = base64.b64decode(self.ec2.describe_instance_attribute(
            InstanceId=iid, Attribute="userData")["UserData"].get("Value", "")).decode()
        self._count += 1
        ns = f"{net.PREFIX}-{iid}"
        node = Node(iid, ns, private_ip, self.root / "nodes" / iid, time.time())
        node.dir.mkdir(parents=True)
        (node.dir / "user-data").write_text(user_data)
        (node.dir / "private-ip").write_text(private_ip)
        shutil.copy(self.image / "environment", node.dir / "environment")
        with self._lock:
            self.nodes[iid] = node
        net.create_node_network(ns, self._count, private_ip, ENDPOINT_ADDRESS)
        node.imds = Imds(ns, inst, user_data, self.ec2, self._poweroff)
        hidden = hidden_lhorch_files()
        node.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, "unshare", "--mount", "--uts", "--pid", "--fork", "--mount-proc",
             "--propagation", "private", "bash", str(self.image / "boot.sh"), str(node.dir), hidden[0] if hidden else "",
             sys.prefix],
            stdin=subprocess.DEVNULL, stdout=open(node.dir / "box.log", "ab"), stderr=subprocess.STDOUT,
            start_new_session=True)
        node.events.append(f"booted {time.time():.3f}")

    def _poweroff(self, instance_id: str) -> None:
        """The node pressed its power button: shutdown behaviour `terminate`."""
        def go() -> None:
            try:
                self.ec2.terminate_instances(InstanceIds=[instance_id])
            finally:
                self._remove(instance_id)

        threading.Thread(target=go, daemon=True).start()

    def _remove(self, instance_id: str) -> None:
        with self._lock:
            node = self.nodes.get(instance_id)
            if node is None or node.ended is not None:
                return
            node.ended = time.time()
        net.kill_netns(node.ns)
        if node.imds is not None:
            node.imds.close()
        if node.process is not None:
            try:
                node.process.wait(5)
            except subprocess.TimeoutExpired:
                node.process.kill()
        node.events.append(f"removed {node.ended:.3f}")
