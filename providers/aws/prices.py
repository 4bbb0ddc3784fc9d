"""What AWS instances cost and what they are: live prices turned into ``Offer``s.

- On-demand: the Price List API (``pricing`` client, us-east-1), filtered to Linux, shared tenancy,
  no pre-installed software, capacity status "Used"; the answer is nested JSON strings.
- Spot: ``describe_spot_price_history``, the latest price per zone, median over zones (the
  provider may fall back to any zone, so the cheapest one is too optimistic).
- Facts (vCPUs, memory, GPUs, architecture): ``describe_instance_types``, which also lists the sizes
  of the catalogue's families that the bundled file lacks (:func:`discover_types`); such a type gets
  its family's throughput per vCPU / per GPU and is offered only when a live price is known.
Prices are cached with their date in ``$LHORCH_HOME/cache/aws-prices.json`` (TTL 24 h, clock
injected) and fall back to the bundled catalogue when the API cannot be asked.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from lhorch.orchestrator.core.plan import Offer
from lhorch.providers.aws.catalogue import catalogue_offers
from lhorch.providers.aws.ec2 import instance_facts

Clock = Callable[[], datetime]
Fallback = Callable[[str, bool], list[Offer]]

PRICING_REGION = "us-east-1"
# Sizes a user picks for one stage; bare metal and the tiny burst sizes are left out on purpose.
_SKIPPED_SIZES = ("metal", "nano", "micro", "small", "medium")


def family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def discover_types(ec2: Any, families: list[str]) -> list[str]:
    """Instance types of ``families`` this region's ``DescribeInstanceTypes`` lists (sizes users pick)."""
    names: set[str] = set()
    patterns = [f"{f}.*" for f in sorted(set(families))]
    for start in range(0, len(patterns), 50):  # the filter takes a bounded number of values
        pages = ec2.get_paginator("describe_instance_types").paginate(
            Filters=[{"Name": "instance-type", "Values": patterns[start:start + 50]}])
        for page in pages:
            for it in page.get("InstanceTypes", []):
                name = it["InstanceType"]
                if not any(size in name.split(".", 1)[1] for size in _SKIPPED_SIZES):
                    names.add(name)
    return sorted(names)


def _from_family(itype: str, market: str, fact: dict[str, Any], catalogue: list[Offer]) -> dict[str, Any] | None:
    """Offer fields for a type the bundled catalogue lacks, from a sibling of its family: the same
    throughput per vCPU and per GPU, start-up and interruption rate (the price must come live)."""
    siblings = [o for o in catalogue if family(o.instance_type) == family(itype) and o.market == market]
    if not siblings:
        return None
    sib = min(siblings, key=lambda o: abs(o.vcpus - fact["vcpus"]))
    fields = sib.model_dump()
    per_vcpu = (sib.gflops_fp32 or 0.0) / max(sib.vcpus, 1.0)
    fields.update(instance_type=itype, gflops_fp32=per_vcpu * fact["vcpus"] or None)
    return fields


def bundled_catalogue(region: str, spot: bool) -> list[Offer]:
    return catalogue_offers(region, spot)


def parse_on_demand(price_list: list[str]) -> float | None:
    """The hourly USD price from get_products' PriceList (each item a JSON document)."""
    prices = []
    for item in price_list:
        product = json.loads(item) if isinstance(item, str) else item
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dim in term.get("priceDimensions", {}).values():
                if dim.get("unit") not in ("Hrs", "Hours"):
                    continue
                usd = float(dim.get("pricePerUnit", {}).get("USD", "0") or 0)
                if usd > 0:
                    prices.append(usd)
    return min(prices) if prices else None


class PriceCache:
    """A small JSON file of {key: {"value": ..., "at": iso}}, written atomically."""

    def __init__(self, path: Path, clock: Clock, ttl: timedelta = timedelta(hours=24)):
        self.path, self.clock, self.ttl = path, clock, ttl
        try:
            self._data: dict[str, dict[str, Any]] = json.loads(path.read_text())
        except (OSError, ValueError):
            self._data = {}

    def get(self, key: str) -> tuple[Any, datetime] | None:
        entry = self._data.get(key)
        if not entry:
            return None
        at = datetime.fromisoformat(entry["at"])
        if self.clock() - at > self.ttl:
            return None
        return entry["value"], at

    def put(self, key: str, value: Any) -> datetime:
        at = self.clock()
        self._data[key] = {"value": value, "at": at.isoformat()}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".prices-")
        with os.fdopen(fd, "w") as f:
            json.dump(self._data, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)
        return at


class PriceSource:
    def __init__(self, *, ec2: Any, pricing: Any, region: str, cache: PriceCache,
                 fallback: Fallback = bundled_catalogue):
        self.ec2, self.pricing, self.region, self.cache, self.fallback = ec2, pricing, region, cache, fallback

    # --- single prices -------------------------------------------------------------------------
    def on_demand(self, instance_type: str) -> tuple[float, datetime] | None:
        key = f"on-demand:{self.region}:{instance_type}"
        hit = self.cache.get(key)
        if hit:
            return hit
        filters = [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
            ("instanceType", instance_type), ("regionCode", self.region), ("operatingSystem", "Linux"),
            ("tenancy", "Shared"), ("capacitystatus", "Used"), ("preInstalledSw", "NA"))]
        items: list[str] = []
        for page in self.pricing.get_paginator("get_products").paginate(
                ServiceCode="AmazonEC2", Filters=filters, FormatVersion="aws_v1"):
            items.extend(page.get("PriceList", []))
        price = parse_on_demand(items)
        if price is None:
            return None
        return price, self.cache.put(key, price)

    def spot(self, instance_type: str) -> tuple[float, datetime] | None:
        key = f"spot:{self.region}:{instance_type}"
        hit = self.cache.get(key)
        if hit:
            return hit
        resp = self.ec2.describe_spot_price_history(
            InstanceTypes=[instance_type], ProductDescriptions=["Linux/UNIX"],
            StartTime=self.cache.clock() - timedelta(hours=6), MaxResults=100)
        latest: dict[str, tuple[datetime, float]] = {}
        for entry in resp.get("SpotPriceHistory", []):
            zone, at = entry["AvailabilityZone"], entry["Timestamp"]
            if zone not in latest or at > latest[zone][0]:
                latest[zone] = (at, float(entry["SpotPrice"]))
        if not latest:
            return None
        price = statistics.median(p for _, p in latest.values())
        return price, self.cache.put(key, price)

    # --- offers --------------------------------------------------------------------------------
    def offers(self, spot: bool = True, instance_types: list[str] | None = None,
               discover: bool = False) -> list[Offer]:
        """Live offers for the catalogue's instance types (or the given ones); each price falls back
        to the catalogue's when the API cannot answer. ``discover`` adds every size of the
        catalogue's families that DescribeInstanceTypes lists here (one price request per type)."""
        try:
            catalogue = self.fallback(self.region, spot)
        except (ImportError, OSError, ValueError):
            catalogue = []
        by_key = {(o.instance_type, o.market): o for o in catalogue}
        types = instance_types or sorted({o.instance_type for o in catalogue})
        if discover and not instance_types:
            try:  # every current size of the catalogue's families, not only the bundled ones
                types = sorted(set(types) | set(discover_types(self.ec2, [family(t) for t in types])))
            except (ClientError, BotoCoreError):
                pass
        try:
            facts = instance_facts(self.ec2, types)
        except (ClientError, BotoCoreError):
            facts = {}
        out: list[Offer] = []
        for itype in types:
            for market in (("on-demand", "spot") if spot else ("on-demand",)):
                base = by_key.get((itype, market))
                fact = facts.get(itype)
                if base is None and fact is None:
                    continue
                derived = _from_family(itype, market, fact, catalogue) if base is None and fact else None
                fields: dict[str, Any] = base.model_dump() if base else derived or {
                    "provider": "aws", "instance_type": itype, "market": market, "startup_seconds": 180.0,
                    "teardown_seconds": 60.0, "vcpus": 0, "memory_gb": 0}
                fields["region"] = self.region
                if fact:
                    fields.update({k: fact[k] for k in ("vcpus", "memory_gb", "gpus", "gpu_model", "gpu_memory_gb",
                                                        "arch") if k in fact})
                try:
                    live = self.spot(itype) if market == "spot" else self.on_demand(itype)
                except (ClientError, BotoCoreError):
                    live = None
                if live:
                    fields["price_per_hour"] = live[0]
                    fields["price_source"] = f"live:{live[1].date().isoformat()}"
                elif base is None:
                    continue  # neither a live nor a catalogue price: not an offer
                out.append(Offer(**fields))
        return out


def utc_clock() -> datetime:
    return datetime.now(timezone.utc)
