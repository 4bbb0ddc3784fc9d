"""Prices: the Price List API through botocore's Stubber on responses shaped like the real ones
(moto has no pricing service), spot history and instance facts from moto, cache and fallback."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.stub import Stubber
from moto_server import moto_endpoint  # noqa: F401 - fixture

from lhorch.orchestrator.core.plan import Offer
from lhorch.providers.aws.prices import PriceCache, PriceSource, parse_on_demand


def product(price: str, unit: str = "Hrs") -> str:
    """One PriceList item as the API returns it: a JSON document in a string."""
    return json.dumps({
        "product": {"productFamily": "Compute Instance", "attributes": {
            "instanceType": "g5.xlarge", "regionCode": "us-east-1", "operatingSystem": "Linux", "tenancy": "Shared",
            "capacitystatus": "Used", "preInstalledSw": "NA", "vcpu": "4", "memory": "16 GiB"}, "sku": "ABCD1234"},
        "serviceCode": "AmazonEC2",
        "terms": {"OnDemand": {"ABCD1234.JRTCKXETXF": {
            "offerTermCode": "JRTCKXETXF", "sku": "ABCD1234", "effectiveDate": "2026-11-01T00:00:00Z",
            "priceDimensions": {"ABCD1234.JRTCKXETXF.6YS6EN2CT7": {
                "unit": unit, "endRange": "Inf", "beginRange": "0", "rateCode": "ABCD1234.JRTCKXETXF.6YS6EN2CT7",
                "description": "$1.006 per On Demand Linux g5.xlarge Instance Hour", "appliesTo": [],
                "pricePerUnit": {"USD": price}}},
            "termAttributes": {}}}},
        "version": "20261101000000", "publicationDate": "2026-11-01T00:00:00Z"})


FILTERS = [{"Type": "TERM_MATCH", "Field": f, "Value": v} for f, v in (
    ("instanceType", "g5.xlarge"), ("regionCode", "us-east-1"), ("operatingSystem", "Linux"),
    ("tenancy", "Shared"), ("capacitystatus", "Used"), ("preInstalledSw", "NA"))]


def catalogue(region, spot):
    base = {"provider": "aws", "instance_type": "g5.xlarge", "region": region, "vcpus": 4, "memory_gb": 16, "gpus": 1,
                "gpu_model": "A10G", "gpu_memory_gb": 24, "startup_seconds": 240}
    return [Offer(market="on-demand", price_per_hour=1.0, **base), Offer(market="spot", price_per_hour=0.4, **base)]


@pytest.fixture
def clock():
    return [datetime(2026, 11, 23, 9, 0, tzinfo=timezone.utc)]


@pytest.fixture
def source(moto_endpoint, tmp_path, clock):
    session = boto3.Session(region_name="us-east-1")
    pricing = session.client("pricing", region_name="us-east-1")
    src = PriceSource(ec2=session.client("ec2"), pricing=pricing, region="us-east-1",
                      cache=PriceCache(tmp_path / "cache" / "aws-prices.json", lambda: clock[0]), fallback=catalogue)
    return src, Stubber(pricing)


def test_parse_on_demand_takes_hourly_usd():
    assert parse_on_demand([product("1.0060000000")]) == pytest.approx(1.006)
    assert parse_on_demand([product("0.0000000000")]) is None
    assert parse_on_demand([product("5.0", unit="Quantity")]) is None


def test_live_offers_with_cache_and_ttl(source, clock, tmp_path):
    src, stub = source
    stub.add_response("get_products", {"PriceList": [product("1.0060000000")], "FormatVersion": "aws_v1"},
                      {"ServiceCode": "AmazonEC2", "Filters": FILTERS, "FormatVersion": "aws_v1"})
    with stub:
        offers = {o.market: o for o in src.offers(spot=True)}
        stub.assert_no_pending_responses()
        od, spot = offers["on-demand"], offers["spot"]
        assert od.price_per_hour == pytest.approx(1.006) and od.price_source == "live:2026-11-23"
        assert od.gpus == 1 and od.gpu_model == "A10G" and od.vcpus == 4 and od.memory_gb == 16
        assert od.startup_seconds == 240  # kept from the catalogue
        assert spot.price_source.startswith("live:") and spot.price_per_hour > 0
        # Within the TTL the cache answers: no call (the stubber has no response left to give).
        assert src.on_demand("g5.xlarge")[0] == pytest.approx(1.006)
    assert "on-demand:us-east-1:g5.xlarge" in (tmp_path / "cache" / "aws-prices.json").read_text()

    clock[0] += timedelta(hours=25)
    stub.add_response("get_products", {"PriceList": [product("1.1")], "FormatVersion": "aws_v1"})
    with stub:
        assert src.on_demand("g5.xlarge")[0] == pytest.approx(1.1)


def test_api_failure_falls_back_to_catalogue(source):
    src, stub = source
    stub.add_client_error("get_products", "AccessDeniedException", "not allowed")
    with stub:
        offers = {o.market: o for o in src.offers(spot=False)}
    assert set(offers) == {"on-demand"}
    assert offers["on-demand"].price_per_hour == 1.0 and offers["on-demand"].price_source == "catalogue"


def test_refresh_discovers_every_size_of_the_catalogue_families(moto_endpoint, tmp_path, clock):
    """DescribeInstanceTypes (moto) lists sizes the bundled catalogue lacks; they get their family's
    throughput and the live price, and keep moto's facts (vCPUs, memory, GPUs, architecture)."""
    session = boto3.Session(region_name="us-east-1")
    pricing = session.client("pricing", region_name="us-east-1")
    src = PriceSource(ec2=session.client("ec2"), pricing=pricing, region="us-east-1",
                      cache=PriceCache(tmp_path / "prices.json", lambda: clock[0]), fallback=catalogue)
    stub = Stubber(pricing)
    for _ in range(40):  # one price per discovered g5 size; moto lists a handful
        stub.add_response("get_products", {"PriceList": [product("2.0")], "FormatVersion": "aws_v1"})
    with stub:
        offers = {o.instance_type: o for o in src.offers(spot=False, discover=True)}
    assert {"g5.xlarge", "g5.4xlarge", "g5.12xlarge"} <= set(offers)
    assert not any("metal" in t for t in offers)
    g54 = offers["g5.4xlarge"]
    assert (g54.vcpus, g54.gpus, g54.memory_gb) == (16, 1, 64)
    assert g54.price_source == "live:2026-11-23" and g54.startup_seconds == 240  # the family's start-up
    assert offers["g5.12xlarge"].gpus == 4
