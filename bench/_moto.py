"""moto's server on 127.0.0.1 for the benches, with boto3 pointed at it by its standard settings."""

from __future__ import annotations

import logging
import os


def start_moto():
    """Start moto's server on a free loopback port and set AWS_ENDPOINT_URL and test credentials
    for this process (and the Ray nodes it starts). Returns the server; call ``stop()`` on it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="testing",
                      AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    return server
