"""What an artifact store's S3 calls cost (issue 16): every request it makes, counted as botocore
sends it, and the bytes it downloads, priced at S3's list prices so they go into the ledger.

S3 Standard, us-east-1 (https://aws.amazon.com/s3/pricing/): PUT, COPY, POST and LIST requests per
1,000; GET and every other request per 1,000; DELETE and aborts are free. Data transfer out to the
internet per GB (the first 10 TB tier; the monthly free 100 GB is ignored, so the ledger errs high).
Downloads by a node in the bucket's region are not transfer out, but only the laptop's store records.
"""

from __future__ import annotations

import threading
from typing import Any

from lhorch.orchestrator.state.ledger import TRANSFER_OUT, CostItem

S3_WRITE_USD_PER_1000 = 0.005
S3_READ_USD_PER_1000 = 0.0004
TRANSFER_OUT_USD_PER_GB = 0.09
GB = 1024**3
WRITE_CLASS = frozenset({"PutObject", "CopyObject", "PostObject", "CreateMultipartUpload", "UploadPart",
                         "UploadPartCopy", "CompleteMultipartUpload", "ListObjects", "ListObjectsV2", "ListParts",
                         "ListMultipartUploads", "ListBuckets", "PutBucketLifecycleConfiguration",
                         "PutBucketEncryption", "PutPublicAccessBlock", "PutBucketTagging", "PutBucketPolicy",
                         "CreateBucket"})
FREE = frozenset({"DeleteObject", "DeleteObjects", "AbortMultipartUpload", "DeleteBucket"})


class S3Meter:
    """Counts the S3 requests of one client (thread-safe: transfers run in a pool)."""

    def __init__(self) -> None:
        self.writes = self.reads = self.bytes_down = 0
        self._lock = threading.Lock()

    def attach(self, client: Any) -> None:
        """Count every call the client makes from now on (botocore's public event system)."""
        client.meta.events.register("after-call.s3", self._after_call, unique_id=f"lhorch-s3-meter-{id(self)}")

    def _after_call(self, model: Any = None, parsed: Any = None, http_response: Any = None, **_: Any) -> None:
        name = getattr(model, "name", "")
        if name in FREE:
            return
        down = int(parsed.get("ContentLength") or 0) if name == "GetObject" and isinstance(parsed, dict) else 0
        with self._lock:
            if name in WRITE_CLASS:
                self.writes += 1
            else:
                self.reads += 1
            self.bytes_down += down

    def cost_items(self, bucket: str) -> list[CostItem]:
        """The counts as ledger items, at list prices."""
        with self._lock:
            writes, reads, down = self.writes, self.reads, self.bytes_down
        return [CostItem("s3-requests", f"s3:{bucket}:put-class", S3_WRITE_USD_PER_1000 / 1000, writes, "request",
                         "price:s3-standard:put-copy-post-list"),
                CostItem("s3-requests", f"s3:{bucket}:get-class", S3_READ_USD_PER_1000 / 1000, reads, "request",
                         "price:s3-standard:get-and-other"),
                CostItem(TRANSFER_OUT, f"s3:{bucket}:out", TRANSFER_OUT_USD_PER_GB, down / GB, "GB",
                         "price:data-transfer-out-internet")]
