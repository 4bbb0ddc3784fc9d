"""What every part of the AWS provider shares: settings, boto3 clients made from one injected
session, the store, and time (clock, sleep, monotonic, backoff), so tests control all of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from lhorch.orchestrator.core.cluster import ClusterRequest
from lhorch.orchestrator.core.errors import CloudError
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws import ec2 as ec2ops
from lhorch.providers.aws.prices import Fallback, PriceCache, PriceSource
from lhorch.providers.aws.retry import THROTTLING_CODES, Backoff, error_code
from lhorch.providers.aws.settings import AwsSettings


@contextmanager
def aws_errors() -> Iterator[None]:
    """Turn a raw AWS/botocore failure into a CloudError the CLI can print in one line."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        if error_code(exc) in THROTTLING_CODES:
            hint = (f"AWS kept throttling lhorch's requests ({max_attempts()} attempts each). Wait a minute and run "
                    "again (`lhorch run` resumes); `lhorch gc` removes anything left meanwhile.")
        else:
            hint = "Check your credentials and region (`aws sts get-caller-identity`)."
        raise CloudError(f"AWS: {exc}", hint=hint) from exc



def max_attempts() -> int:
    """Attempts per AWS call, throttling retried with botocore's standard backoff in between: the
    standard ``AWS_MAX_ATTEMPTS`` setting, else 5 (bounded: a throttled call ends in a CloudError)."""
    try:
        return max(1, int(os.environ.get("AWS_MAX_ATTEMPTS", "5")))
    except ValueError:
        return 5


class AwsClients:
    """boto3 clients for one region, made on first use: each costs ~0.1 s of model loading and
    `lhorch clusters` needs two. Standard boto3 settings apply (AWS_PROFILE, AWS_ENDPOINT_URL ...)."""

    def __init__(self, session: Any, region: str):
        self.session, self.region = session, region
        self._identity: dict[str, str] | None = None

    def client(self, service: str, region: str | None = None, config: Config | None = None) -> Any:
        cfg = config or Config(retries={"max_attempts": max_attempts(), "mode": "standard"},
                                     connect_timeout=10, read_timeout=60)
        return self.session.client(service, region_name=region or self.region, config=cfg)

    @cached_property
    def ec2(self) -> Any:
        return self.client("ec2")

    @cached_property
    def ssm(self) -> Any:
        return self.client("ssm")

    @cached_property
    def iam(self) -> Any:
        return self.client("iam")

    @cached_property
    def sts(self) -> Any:
        return self.client("sts")

    @cached_property
    def s3(self) -> Any:
        return self.client("s3")

    @cached_property
    def pricing(self) -> Any:
        # The Price List API is optional (prices fall back to the catalogue): do not retry it long.
        return self.client("pricing", "us-east-1", Config(retries={"max_attempts": 1, "mode": "standard"},
                                                          connect_timeout=5, read_timeout=20))

    def identity(self) -> dict[str, str]:
        """Account, ARN and owner (the ARN's last part) of the caller; asked once."""
        if self._identity is None:
            ident = self.sts.get_caller_identity()
            self._identity = {"account": ident["Account"], "arn": ident["Arn"],
                              "owner": ident["Arn"].rsplit("/", 1)[-1]}
        return self._identity


@dataclass
class AwsContext:
    """The shared handles, passed to launch, auxiliary, health and teardown alike."""

    settings: AwsSettings  # its region is resolved
    clients: AwsClients
    store: Store
    clock: Callable[[], datetime]
    sleep: Callable[[float], None]
    monotonic: Callable[[], float]
    backoff: Backoff
    price_fallback: Fallback

    @property
    def region(self) -> str:
        return self.clients.region

    @property
    def ec2(self) -> Any:
        return self.clients.ec2

    def row_details(self, request: ClusterRequest, **extra: Any) -> dict[str, Any]:
        """What every intent row of a cluster carries: its group (teardown finds rows by it), the region."""
        return {"group": request.group, "region": self.region, **extra}

    @cached_property
    def prices(self) -> PriceSource:
        return PriceSource(ec2=self.clients.ec2, pricing=self.clients.pricing, region=self.region,
                           cache=PriceCache(self.store.home / "cache" / "aws-prices.json", self.clock),
                           fallback=self.price_fallback)

    def wait_for(self, ids: list[str], done: Callable[[str | None], bool], timeout: float,
                 on_poll: Callable[[dict[str, dict[str, Any]]], None] | None = None) -> dict[str, dict[str, Any]]:
        """Poll the instances until ``done(state)`` holds for each (None: gone), or CloudError."""
        return ec2ops.wait_until(self.clients.ec2, ids, done, timeout, self.sleep, self.monotonic,
                                 self.settings.poll_interval, on_poll)
