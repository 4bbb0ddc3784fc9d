"""The instance-metadata stand-in a box node sees at http://169.254.169.254: IMDSv2 only (a token
from PUT /latest/api/token, required on every GET), the instance id, its private address, its user
data, and its tags read live from moto (as EC2 serves them with InstanceMetadataTags enabled).

One more path exists only in the box, the machine's power button: POST /lhorch-box/poweroff (the
image's ``poweroff``, which ``shutdown`` calls), as a real machine's ACPI power-off would reach EC2.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .net import listen_in_netns


class Imds:
    def __init__(self, ns: str, instance: dict[str, Any], user_data: str, ec2: Any,
                 poweroff: Callable[[str], None]):
        self.instance, self.user_data, self.ec2, self.poweroff = instance, user_data, ec2, poweroff
        self.tokens: set[str] = set()
        sock = listen_in_netns(ns, ("169.254.169.254", 80))
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self) -> None:  # noqa: N802
                if self.path != "/latest/api/token" or not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._send(400)
                token = secrets.token_urlsafe(24)
                outer.tokens.add(token)
                self._send(200, token)

            def do_POST(self) -> None:  # noqa: N802
                if self.path == "/lhorch-box/poweroff":
                    self._send(200, "powering off")
                    outer.poweroff(outer.instance["InstanceId"])
                else:
                    self._send(404)

            def do_GET(self) -> None:  # noqa: N802
                if self.headers.get("X-aws-ec2-metadata-token") not in outer.tokens:
                    return self._send(401)
                code, body = outer.answer(self.path)
                self._send(code, body)

        self.server = ThreadingHTTPServer(("169.254.169.254", 80), Handler, bind_and_activate=False)
        self.server.socket.close()
        self.server.socket = sock
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()

    def tags(self) -> dict[str, str]:
        iid = self.instance["InstanceId"]
        found = [i for r in self.ec2.describe_instances(InstanceIds=[iid])["Reservations"] for i in r["Instances"]]
        return {t["Key"]: t["Value"] for i in found for t in i.get("Tags", [])}

    def answer(self, path: str) -> tuple[int, str]:
        inst = self.instance
        fixed = {
            "/latest/meta-data/instance-id": inst["InstanceId"],
            "/latest/meta-data/local-ipv4": inst.get("PrivateIpAddress", ""),
            "/latest/meta-data/instance-type": inst.get("InstanceType", ""),
            "/latest/meta-data/placement/availability-zone": inst.get("Placement", {}).get("AvailabilityZone", ""),
            "/latest/user-data": self.user_data,
        }
        if path in fixed:
            return 200, fixed[path]
        prefix = "/latest/meta-data/tags/instance"
        if path in (prefix, prefix + "/"):
            return 200, "\n".join(sorted(self.tags()))
        if path.startswith(prefix + "/"):
            value = self.tags().get(path[len(prefix) + 1:])
            return (200, value) if value is not None else (404, "")
        return 404, ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
