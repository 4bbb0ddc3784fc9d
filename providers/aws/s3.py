"""Artifact staging through S3: directories and files up and down, resumable, checksummed,
skipped when the same content is already there.

- Identity: the sha256 of the whole file, stored as object metadata ``sha256``. An upload whose
  object already carries the same sha256 and size is skipped; a download is verified against it.
- Transport integrity: small files go up with ``ChecksumSHA256`` (S3 verifies the whole body);
  parts of big files with CRC32 computed by botocore (S3 verifies each part).
- Big files: explicit multipart upload with parts sent by a small thread pool. An interrupted
  upload is *not* aborted: the next attempt finds it (list_multipart_uploads), asks which parts are
  there (list_parts), checks each one against the local bytes (CRC32, else the MD5 ETag) and sends
  only the missing ones. The bucket's lifecycle rule aborts uploads abandoned for a day.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from lhorch.orchestrator.core.errors import CloudError
from lhorch.providers.aws.retry import error_code
from lhorch.providers.aws.s3_meter import S3Meter

MiB = 1024 * 1024
MAX_PARTS = 10_000


@dataclass(frozen=True)
class Transfer:
    key: str
    size: int
    sha256: str
    skipped: bool = False
    parts_sent: int = 0


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def safe_relative(key: str) -> str:
    """``key`` as a relative path that cannot leave the folder it is joined to: any node that can
    write to the bucket can craft keys, so an empty, ``.`` or ``..`` segment (``a//b``, ``a/../b``) or
    a backslash is refused rather than normalised (issue 15)."""
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
        raise CloudError(f"refusing artifact key {key!r}: empty, '.' or '..' path segments are not allowed",
                         hint="Something wrote this key into the bucket by hand or from a compromised node; "
                              "delete it and run again.")
    return key


def inside(root: Path, relative: str) -> Path:
    """``root / relative``, checked to resolve (symlinks included) inside ``root``."""
    dest = root / safe_relative(relative)
    if not dest.resolve().is_relative_to(root.resolve()):
        raise CloudError(f"refusing to write {dest}: it resolves outside {root}",
                         hint="A symbolic link in the destination folder points elsewhere; remove it.")
    return dest


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class OwnedBucket:
    """An S3 client whose bucket calls all carry ``ExpectedBucketOwner``; S3 answers 403 when the
    bucket belongs to another account. Paginators get it too."""

    def __init__(self, client: Any, owner: str):
        self._client, self.owner = client, owner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name == "get_paginator":
            return lambda op: _OwnedPaginator(attr(op), self.owner)
        if not callable(attr) or name.startswith(("_", "can_", "generate_")):
            return attr
        return lambda **kw: attr(**{"ExpectedBucketOwner": self.owner, **kw})


class _OwnedPaginator:
    def __init__(self, paginator: Any, owner: str):
        self._paginator, self.owner = paginator, owner

    def paginate(self, **kw: Any) -> Any:
        return self._paginator.paginate(**{"ExpectedBucketOwner": self.owner, **kw})


class S3ArtifactStore:
    def __init__(self, bucket: str, prefix: str, client: Any, *, part_size: int = 16 * MiB,
                 threshold: int = 16 * MiB, workers: int = 8, owner: str | None = None):
        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Every call names the account the bucket must belong to (ExpectedBucketOwner), so a bucket of
        # the same name in another account is never written to or read from.
        self.client = OwnedBucket(client, owner) if owner else client
        self.part_size, self.threshold, self.workers = part_size, threshold, workers
        self.meter = S3Meter()  # its requests and downloads, for the ledger (issue 16)
        self.meter.attach(client)

    def key(self, key: str) -> str:
        key = key.lstrip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key(key)}"

    # --- upload --------------------------------------------------------------------------------
    def _remote(self, full_key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=full_key)
        except ClientError as exc:
            if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def put_file(self, path: str | os.PathLike, key: str, *, sha256: str | None = None) -> Transfer:
        path = Path(path)
        full = self.key(key)
        size = path.stat().st_size
        digest = sha256 or file_sha256(path)
        remote = self._remote(full)
        if remote and remote.get("Metadata", {}).get("sha256") == digest and remote.get("ContentLength") == size:
            return Transfer(full, size, digest, skipped=True)
        if size <= self.threshold:
            with open(path, "rb") as f:
                self.client.put_object(Bucket=self.bucket, Key=full, Body=f, Metadata={"sha256": digest},
                                       ChecksumSHA256=_b64(bytes.fromhex(digest)))
            return Transfer(full, size, digest, parts_sent=1)
        sent = self._multipart(path, full, size, digest)
        return Transfer(full, size, digest, parts_sent=sent)

    def _part_size(self, size: int) -> int:
        part = self.part_size
        while -(-size // part) > MAX_PARTS:
            part *= 2
        return part

    def _resume(self, path: Path, full: str, part_size: int, size: int) -> tuple[str, dict[int, str]] | None:
        """An unfinished upload of this key whose parts match our bytes: (upload id, {part: etag})."""
        uploads = []
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full):
            uploads += [u for u in page.get("Uploads", []) if u["Key"] == full]
        for upload in sorted(uploads, key=lambda u: u["Initiated"], reverse=True):
            parts: list[dict[str, Any]] = []
            for page in self.client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=full, UploadId=upload["UploadId"]):
                parts += page.get("Parts", [])
            good: dict[int, str] = {}
            with open(path, "rb") as f:
                for part in parts:
                    number = part["PartNumber"]
                    offset = (number - 1) * part_size
                    expected = min(part_size, size - offset)
                    if expected <= 0 or part["Size"] != expected:
                        continue
                    data = os.pread(f.fileno(), expected, offset)
                    if "ChecksumCRC32" in part:
                        same = part["ChecksumCRC32"] == _b64(zlib.crc32(data).to_bytes(4, "big"))
                    else:
                        same = part["ETag"].strip('"') == hashlib.md5(data, usedforsecurity=False).hexdigest()
                    if same:
                        good[number] = part["ETag"]
            if good or not parts:
                return upload["UploadId"], good
        return None

    def _multipart(self, path: Path, full: str, size: int, digest: str) -> int:
        part_size = self._part_size(size)
        count = -(-size // part_size)
        resumed = self._resume(path, full, part_size, size)
        if resumed:
            upload_id, done = resumed
        else:
            upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=full, Metadata={"sha256": digest}, ChecksumAlgorithm="CRC32")["UploadId"]
            done = {}
        missing = [n for n in range(1, count + 1) if n not in done]
        fd = os.open(path, os.O_RDONLY)
        try:
            def send(number: int) -> tuple[int, str, str]:
                offset = (number - 1) * part_size
                data = os.pread(fd, min(part_size, size - offset), offset)
                resp = self.client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number,
                                               Body=data, ChecksumAlgorithm="CRC32")
                return number, resp["ETag"], resp.get("ChecksumCRC32", "")

            checks: dict[int, str] = {}
            # On failure the upload stays open on purpose: the next put_file resumes it.
            with ThreadPoolExecutor(max_workers=min(self.workers, max(1, len(missing)))) as pool:
                for number, etag, crc in pool.map(send, missing):
                    done[number] = etag
                    checks[number] = crc
        finally:
            os.close(fd)
        parts = []
        for number in range(1, count + 1):
            item = {"PartNumber": number, "ETag": done[number]}
            if checks.get(number):
                item["ChecksumCRC32"] = checks[number]
            parts.append(item)
        if any("ChecksumCRC32" not in p for p in parts):  # resumed parts: no checksum known per part
            for p in parts:
                p.pop("ChecksumCRC32", None)
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                              MultipartUpload={"Parts": parts})
        return len(missing)

    def put_dir(self, local_dir: str | os.PathLike, key_prefix: str) -> list[Transfer]:
        """Upload every file under local_dir to <prefix>/<key_prefix>/<relative path>. Small files
        go in parallel; big ones one at a time, each with its parts in parallel."""
        root = Path(local_dir)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        key_of = {p: f"{key_prefix.rstrip('/')}/{p.relative_to(root).as_posix()}" for p in files}
        small = [p for p in files if p.stat().st_size <= self.threshold]
        big = [p for p in files if p not in set(small)]
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            results = list(pool.map(lambda p: self.put_file(p, key_of[p]), small))
        results += [self.put_file(p, key_of[p]) for p in big]
        return results

    # --- download ------------------------------------------------------------------------------
    def get_file(self, key: str, path: str | os.PathLike) -> Transfer:
        return self._get(self.key(key), Path(path))

    def _get(self, full: str, path: Path) -> Transfer:
        head = self._remote(full)
        if head is None:
            raise CloudError(f"s3://{self.bucket}/{full} does not exist")
        size, expected = head["ContentLength"], head.get("Metadata", {}).get("sha256")
        if expected and path.exists() and path.stat().st_size == size and file_sha256(path) == expected:
            return Transfer(full, size, expected, skipped=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            os.ftruncate(fd, size)
            ranges = [(o, min(o + self.part_size, size) - 1) for o in range(0, size, self.part_size)] or [(0, -1)]

            def fetch(r: tuple[int, int]) -> None:
                if r[1] < r[0]:
                    return
                body = self.client.get_object(Bucket=self.bucket, Key=full, Range=f"bytes={r[0]}-{r[1]}")["Body"]
                os.pwrite(fd, body.read(), r[0])

            with ThreadPoolExecutor(max_workers=min(self.workers, len(ranges))) as pool:
                list(pool.map(fetch, ranges))
            os.close(fd)
            fd = -1
            actual = file_sha256(Path(tmp))
            if expected and actual != expected:
                raise CloudError(f"s3://{self.bucket}/{full}: checksum mismatch after download",
                                 hint="The object changed or was corrupted; run again to re-fetch it.")
            os.replace(tmp, path)
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)
        return Transfer(full, size, actual, parts_sent=len(ranges))

    def get_dir(self, key_prefix: str, local_dir: str | os.PathLike) -> list[Transfer]:
        base = self.key(key_prefix.rstrip("/")) + "/"
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            keys += [o["Key"] for o in page.get("Contents", [])]
        root = Path(local_dir)
        # Every destination is checked before anything is written, so one bad key fetches nothing.
        dests = [(k, inside(root, k[len(base):])) for k in keys]
        return [self._get(k, dest) for k, dest in dests]


def ensure_bucket(client: Any, bucket: str, region: str, *, prefix: str = "lhorch", expire_days: int = 30,
                  tags: dict[str, str] | None = None, owner: str | None = None) -> bool:
    """Create the bucket if missing: private, encrypted (SSE-S3), ``<prefix>/runs/`` expiring after
    ``expire_days``, abandoned multipart uploads aborted after a day. A bucket lhorch did not create
    (no ``lhorch:managed`` tag) is left as it is. Returns True when lhorch manages the bucket.

    ``owner`` is this account: a bucket of that name owned by any other account is refused
    (CloudError), since its default name is predictable and anyone can create it first (issue 15)."""
    owned = OwnedBucket(client, owner) if owner else client
    try:
        owned.head_bucket(Bucket=bucket)
        try:
            existing = {t["Key"]: t["Value"] for t in owned.get_bucket_tagging(Bucket=bucket)["TagSet"]}
        except ClientError as exc:
            if error_code(exc) != "NoSuchTagSet":
                raise
            existing = {}
        if existing.get("lhorch:managed") != "true":
            return False
    except ClientError as exc:
        code = error_code(exc)
        if code in ("403", "AccessDenied", "Forbidden"):
            raise _foreign(bucket, owner) from exc
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise CloudError(f"bucket {bucket} exists but is not usable: {exc}",
                             hint="Pick another name in cloud.bucket.") from exc
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            # CreateBucket takes no ExpectedBucketOwner: the bucket cannot have an owner yet.
            client.create_bucket(**kwargs)
        except ClientError as exc2:
            if error_code(exc2) == "BucketAlreadyExists":
                raise _foreign(bucket, owner) from exc2
            if error_code(exc2) != "BucketAlreadyOwnedByYou":
                raise
    # Settings are (re)applied every time, so a crash between create and here heals itself.
    owned.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    owned.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    owned.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [
        {"ID": "lhorch-expire-runs", "Status": "Enabled", "Filter": {"Prefix": f"{prefix.strip('/')}/runs/"},
         "Expiration": {"Days": expire_days}},
        {"ID": "lhorch-abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
         "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}},
    ]})
    owned.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [
        {"Key": k, "Value": v} for k, v in {**(tags or {}), "lhorch:managed": "true"}.items()]})
    return True


def _foreign(bucket: str, owner: str | None) -> CloudError:
    return CloudError(f"bucket {bucket} belongs to another AWS account{f' (not {owner})' if owner else ''}; "
                      "lhorch will not read or write it",
                      hint="Set cloud.bucket in the pipeline file to a bucket of your own account.")


def default_bucket_name(account: str, region: str) -> str:
    """The bucket lhorch creates when ``cloud.bucket`` is unset: one per account and region."""
    return f"lhorch-{account}-{region}"
