"""moto's server on 127.0.0.1, spoken to over real HTTP, for the AWS tests.

Import the fixtures into a test module (``from moto_server import aws, moto_endpoint``). Nothing
here patches boto3: clients find the server through the standard ``AWS_ENDPOINT_URL`` setting,
exactly as a user would point lhorch at another endpoint. Each test starts from an empty moto
(``/moto-api/reset``).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="session")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in [*_ENV, "AWS_ENDPOINT_URL", "AWS_PROFILE"]}
    os.environ.update(_ENV, AWS_ENDPOINT_URL=endpoint)
    os.environ.pop("AWS_PROFILE", None)
    yield endpoint
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def aws(moto_endpoint):
    """A fresh, empty moto; yields its endpoint."""
    urllib.request.urlopen(urllib.request.Request(moto_endpoint + "/moto-api/reset", method="POST")).close()
    return moto_endpoint


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that answers with ``_send`` and logs nothing."""

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class LoopbackServer:
    """An HTTP server on 127.0.0.1 (a free port) in a daemon thread; ``url``, then ``close()``."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class StandInHead(LoopbackServer):
    """A stand-in for a Ray head's dashboard, answering to the right bearer token: /api/version, and
    the state API's /api/v0/nodes with ``alive`` nodes (Ray 2.60's response shape), as a cluster
    whose nodes have all joined."""

    def __init__(self, token: str = "stand-in-token", alive: int = 8):
        self.token, self.alive = token, alive
        expected, stand_in = "Bearer " + token, self

        class Handler(QuietHandler):
            def do_GET(self):  # noqa: N802
                if self.headers.get("Authorization") != expected:
                    return self._send(401, b"{}")
                if self.path == "/api/version":
                    return self._send(200, json.dumps({"ray_version": "stand-in"}).encode())
                if self.path.startswith("/api/v0/nodes"):
                    nodes = [{"node_id": f"n{i}", "node_ip": f"10.0.0.{i + 1}", "is_head_node": i == 0,
                              "state": "ALIVE"} for i in range(stand_in.alive)]
                    body = {"result": True, "msg": "", "data": {"result": {"total": len(nodes), "result": nodes}}}
                    return self._send(200, json.dumps(body).encode())
                return self._send(404, b"{}")

        super().__init__(Handler)
        self.address = self.url


class StandInConnector:
    """HeadConnector for tests: every head is reached at the stand-in's address with its token."""

    def __init__(self, head: StandInHead):
        self.head = head
        self.connected: list[str] = []
        self.closed: list[str] = []

    def connect(self, head):
        self.connected.append(head.instance_id)
        return self.head.address, SecretStr(self.head.token)

    def close(self, head):
        self.closed.append(head.instance_id)


@pytest.fixture(scope="session")
def stand_in_head():
    head = StandInHead()
    yield head
    head.close()
