"""S3 artifact staging against moto's server: round trips, skip-if-same, resume after an
interrupted multipart upload, checksum verification, bucket security settings."""

from __future__ import annotations

import os

import boto3
import pytest
from botocore.exceptions import ClientError
from moto_server import moto_endpoint  # noqa: F401 - fixture

from lhorch.orchestrator.core.errors import CloudError
from lhorch.providers.aws.s3 import MiB, S3ArtifactStore, ensure_bucket, file_sha256

BUCKET = "lhorch-test-artifacts"


@pytest.fixture
def s3(moto_endpoint):
    client = boto3.Session(region_name="us-east-1").client("s3")
    ensure_bucket(client, BUCKET, "us-east-1", prefix="proj", expire_days=14)
    return client


def count_calls(client, operation: str) -> list[dict]:
    calls: list[dict] = []
    client.meta.events.register(f"before-parameter-build.s3.{operation}", lambda params, **_: calls.append(params))
    return calls


def test_bucket_is_private_encrypted_and_expires_runs(s3):
    block = s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
                     "RestrictPublicBuckets": True}
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert rules["lhorch-expire-runs"]["Filter"]["Prefix"] == "proj/runs/"
    assert rules["lhorch-expire-runs"]["Expiration"]["Days"] == 14
    assert rules["lhorch-abort-incomplete-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    assert ensure_bucket(s3, BUCKET, "us-east-1", prefix="proj") is True  # idempotent


def test_existing_foreign_bucket_is_left_alone(s3):
    s3.create_bucket(Bucket="someone-elses-bucket")
    assert ensure_bucket(s3, "someone-elses-bucket", "us-east-1") is False
    with pytest.raises(ClientError):
        s3.get_bucket_lifecycle_configuration(Bucket="someone-elses-bucket")


def test_put_dir_get_dir_round_trip_and_skip_if_same(s3, tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("hello")
    (src / "sub" / "b.bin").write_bytes(os.urandom(6 * MiB))
    (src / "empty").write_bytes(b"")
    store = S3ArtifactStore(BUCKET, "proj/runs/r1", s3, part_size=5 * MiB, threshold=5 * MiB)
    sent = store.put_dir(src, "stage/out")
    assert sorted(t.key for t in sent) == ["proj/runs/r1/stage/out/a.txt", "proj/runs/r1/stage/out/empty",
                                           "proj/runs/r1/stage/out/sub/b.bin"]
    assert not any(t.skipped for t in sent)
    head = s3.head_object(Bucket=BUCKET, Key="proj/runs/r1/stage/out/sub/b.bin")
    assert head["Metadata"]["sha256"] == file_sha256(src / "sub" / "b.bin")

    puts, parts = count_calls(s3, "PutObject"), count_calls(s3, "UploadPart")
    again = store.put_dir(src, "stage/out")
    assert all(t.skipped for t in again) and puts == [] and parts == []

    dst = tmp_path / "dst"
    got = store.get_dir("stage/out", dst)
    assert len(got) == 3
    for rel in ("a.txt", "empty", "sub/b.bin"):
        assert (dst / rel).read_bytes() == (src / rel).read_bytes()
    assert all(t.skipped for t in store.get_dir("stage/out", dst))  # same content already here


def test_changed_file_is_uploaded_again(s3, tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"v1")
    store = S3ArtifactStore(BUCKET, "proj/runs/r2", s3)
    store.put_file(f, "model.bin")
    f.write_bytes(b"v2")
    assert not store.put_file(f, "model.bin").skipped
    store.get_file("model.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"v2"


def test_interrupted_multipart_upload_resumes(s3, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 * 5 * MiB + 123))  # 6 parts of 5 MiB
    k = 3

    class Crash(Exception):
        pass

    crashing = boto3.Session(region_name="us-east-1").client("s3")
    sent: list[int] = []

    def hook(params, **_):
        if len(sent) == k:
            raise Crash("connection lost")
        sent.append(params["PartNumber"])

    crashing.meta.events.register("before-parameter-build.s3.UploadPart", hook)
    first = S3ArtifactStore(BUCKET, "proj/runs/r3", crashing, part_size=5 * MiB, threshold=5 * MiB, workers=1)
    with pytest.raises(Crash):
        first.put_file(big, "big.bin")
    (upload,) = s3.list_multipart_uploads(Bucket=BUCKET, Prefix="proj/runs/r3/big.bin")["Uploads"]
    assert len(s3.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])["Parts"]) == k

    resumed_parts = count_calls(s3, "UploadPart")
    creates = count_calls(s3, "CreateMultipartUpload")
    second = S3ArtifactStore(BUCKET, "proj/runs/r3", s3, part_size=5 * MiB, threshold=5 * MiB, workers=4)
    result = second.put_file(big, "big.bin")
    assert result.parts_sent == 6 - k and len(resumed_parts) == 6 - k and creates == []
    assert sorted(p["PartNumber"] for p in resumed_parts) == list(range(k + 1, 7))
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix="proj/runs/r3/").get("Uploads", []) == []
    second.get_file("big.bin", tmp_path / "back.bin")
    assert file_sha256(tmp_path / "back.bin") == file_sha256(big)


def test_download_is_verified_against_sha256(s3, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="proj/runs/r4/x", Body=b"tampered", Metadata={"sha256": "0" * 64})
    store = S3ArtifactStore(BUCKET, "proj/runs/r4", s3)
    with pytest.raises(CloudError, match="checksum"):
        store.get_file("x", tmp_path / "x")
    assert not (tmp_path / "x").exists()
