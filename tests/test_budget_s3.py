"""Issue 16, finding 7 (the rest of it): the artifact store's own S3 requests and the bytes it brings
back from AWS are ledger rows at S3's list prices, shown by `lhorch cost`. Against moto's server."""

from __future__ import annotations

import boto3
import pytest

from lhorch.orchestrator.cli.cost import cost_report
from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.execution import staging
from lhorch.orchestrator.state import ledger
from lhorch.providers.aws.s3_meter import S3_READ_USD_PER_1000, S3_WRITE_USD_PER_1000, TRANSFER_OUT_USD_PER_GB
from lhorch.providers.transfer import S3Transfer


def test_downloads_and_requests_are_metered_into_the_ledger(store, aws):
    boto3.client("s3").create_bucket(Bucket="art")
    cluster = Cluster(provider="aws", name="c", address="http://127.0.0.1:1", remote=True,
                      artifacts_uri="s3://art/lhorch")
    uri = staging.outputs_uri(cluster, "r-s3", "train")
    sizes = {"model.bin": 300_000, "metrics.json": 2_000}
    produced = store.home / "produced"
    produced.mkdir()
    for name, size in sizes.items():
        (produced / name).write_bytes(b"x" * size)
    up = S3Transfer("art")
    up.put(produced, uri)
    counted = {i.item.rsplit(":", 1)[1]: i for i in up.cost_items()}
    assert counted["put-class"].quantity == 2 and counted["out"].quantity == 0  # two PUTs, nothing out

    staging.fetch_outputs(store, "r-s3", "train", cluster, store.home / "back")
    rows = ledger.rows(store, "r-s3", actual_only=True)
    out = [r for r in rows if r["kind"] == "transfer-out"]
    (gb,) = [r["quantity"] for r in out]
    assert gb == pytest.approx(sum(sizes.values()) / 1024**3)
    assert out[0]["usd"] == pytest.approx(gb * TRANSFER_OUT_USD_PER_GB)
    requests = {r["item"].rsplit(":", 1)[1]: r for r in rows if r["kind"] == "s3-requests"}
    # one LIST, then a HEAD and a GET per file
    assert requests["put-class"]["quantity"] == 1 and requests["get-class"]["quantity"] == 4
    assert requests["get-class"]["usd"] == pytest.approx(4 * S3_READ_USD_PER_1000 / 1000)
    assert requests["put-class"]["usd"] == pytest.approx(S3_WRITE_USD_PER_1000 / 1000)
    report = cost_report(store, "r-s3", "p")["run"]
    assert {"s3-requests", "transfer-out"} <= {i["kind"] for i in report["items"]}
    assert report["actual_usd"] == pytest.approx(sum(r["usd"] for r in rows), abs=1e-6)
