"""A default catalogue of AWS instance types, usable with no credentials and no boto3.

The figures live in ``catalogue.json`` beside this file (its ``catalogue_date`` and ``notes`` say
where each number comes from and how rough it is): on-demand prices for us-east-1, a typical spot
discount and interruption rate, start-up time including the Ray bootstrap, and approximate
sustained CPU and GPU throughput. The planner uses these offers when nothing live is known; the
live price source (``providers/aws/prices.py``) can call :func:`merge_live_prices` to replace the
prices while keeping everything else, so the planner sees the same ``Offer`` shape either way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from lhorch.orchestrator.core.plan import Offer

CATALOGUE_FILE = Path(__file__).with_name("catalogue.json")
TEARDOWN_SECONDS = 30.0  # terminate call to "terminated": billed, not on the critical path


@lru_cache(maxsize=1)
def _raw() -> dict[str, Any]:
    # Read once per process: the file ships with the package and never changes at run time.
    return json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))


def catalogue_date() -> str:
    return str(_raw()["catalogue_date"])


def instance_types() -> list[dict[str, Any]]:
    """The raw rows of the catalogue (copies), for docs and the AWS provider."""
    return [dict(row) for row in _raw()["instance_types"]]


@lru_cache(maxsize=1)
def type_names() -> frozenset[str]:
    """The instance types the catalogue knows (what `cloud.instance_types` may name)."""
    return frozenset(row["name"] for row in _raw()["instance_types"])


def is_known_type(name: str) -> bool:
    return name in type_names()


def region_price_factor(region: str | None) -> float:
    """Rough price of ``region`` relative to us-east-1 (documented in catalogue.json)."""
    raw = _raw()
    if region is None:
        return 1.0
    return float(raw["region_price_factor"].get(region, raw["default_region_price_factor"]))


def catalogue_offers(region: str | None = None, spot: bool = True,
                     only: Iterable[str] | None = None) -> list[Offer]:
    """On-demand (and, with ``spot``, spot) offers for every catalogue type.

    ``region`` scales prices by a rough regional factor; ``only`` keeps just those instance types
    (``cloud.instance_types`` in the pipeline file). Offers carry ``price_source="catalogue:<date>"``.
    """
    raw = _raw()
    factor = region_price_factor(region)
    wanted = set(only) if only else None
    source = f"catalogue:{raw['catalogue_date']}"
    offers: list[Offer] = []
    for row in raw["instance_types"]:
        if wanted is not None and row["name"] not in wanted:
            continue
        base = {
            "provider": "aws",
            "instance_type": row["name"],
            "region": region or raw["region"],
            "arch": row.get("arch", "x86_64"),
            "vcpus": row["vcpus"],
            "cores": row.get("cores"),
            "memory_gb": row["memory_gb"],
            "gpus": row["gpus"],
            "gpu_model": row["gpu_model"],
            "gpu_memory_gb": row["gpu_memory_gb"],
            "startup_seconds": row["startup_seconds"],
            "teardown_seconds": TEARDOWN_SECONDS,
            "gflops_fp32": row["cpu_gflops_fp32"],
            "gpu_gflops": row["gpu_gflops"],
            "transfer_usd_per_gb": raw["transfer_usd_per_gb_out"],
            "price_source": source,
        }
        on_demand = round(row["on_demand"] * factor, 4)
        offers.append(Offer(market="on-demand", price_per_hour=on_demand, **base))
        if spot:
            offers.append(Offer(
                market="spot",
                price_per_hour=round(on_demand * (1.0 - row["spot_discount"]), 4),
                interruption_rate_per_hour=row["interruption_rate_per_hour"],
                **base,
            ))
    return offers


def merge_live_prices(offers: Iterable[Offer], live: Mapping[tuple[str, str], float],
                      source: str = "live") -> list[Offer]:
    """Offers with prices replaced where ``live`` knows them.

    ``live`` maps ``(instance_type, market)`` (market ``"on-demand"`` or ``"spot"``) to USD per
    hour; offers it does not mention keep their catalogue price and source. ``source`` is written
    to ``price_source`` of the replaced ones, e.g. ``"live:2025-06-01T10:00Z"``.
    """
    merged: list[Offer] = []
    for offer in offers:
        price = live.get((offer.instance_type, offer.market))
        if price is None:
            merged.append(offer)
        else:
            merged.append(offer.model_copy(update={"price_per_hour": float(price), "price_source": source}))
    return merged


__all__ = ["catalogue_offers", "merge_live_prices", "catalogue_date", "instance_types", "is_known_type",
           "region_price_factor", "type_names"]
