"""Issue 15 against moto's server over HTTP: artifact keys cannot escape the run folder, S3 calls name
the bucket's owner, a foreign default bucket is refused, the node role is one cluster's, gc and down
touch only this installation's resources, stage secrets reach a cloud node through SSM and leave
with the cluster, and the IAM policy covers every call the code makes and passes parliament."""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import boto3
import botocore.session
import pytest
from botocore import xform_name
from click.testing import CliRunner
from moto_server import StandInConnector, aws, moto_endpoint, stand_in_head  # noqa: F401 - fixtures
from test_aws_provider import VERSIONS, leftovers, lhorch_instances, no_catalogue, request

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.cluster import Cluster
from lhorch.orchestrator.core.errors import CloudError, UsageError
from lhorch.orchestrator.core.spec import Pipeline
from lhorch.orchestrator.execution import staging
from lhorch.orchestrator.state.store import Store
from lhorch.providers.aws.names import TAG_INSTALL
from lhorch.providers.aws.provider import AwsProvider
from lhorch.providers.aws.s3 import S3ArtifactStore, ensure_bucket
from lhorch.providers.aws.security import boundary_policy, node_policy
from lhorch.providers.aws.settings import AwsSettings
from lhorch.providers.ray_cluster import PLAIN_HTTP_ENV, RayClusterProvider
from lhorch.providers.transfer import S3Transfer

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "lhorch-sec-artifacts"


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    ensure_bucket(client, BUCKET, "us-east-1")
    return client


@pytest.fixture
def make_provider(aws, home, stand_in_head):
    def make(store_home: Path | None = None, **kw) -> AwsProvider:
        settings = AwsSettings(**{"versions": VERSIONS, "host": "laptop", "poll_interval": 0.01, **kw})
        return AwsProvider(boto3.Session(region_name="us-east-1"), store=Store(store_home or home), settings=settings,
                           connector=StandInConnector(stand_in_head), ip_lookup=lambda: "203.0.113.7",
                           sleep=lambda s: None, price_fallback=no_catalogue)
    return make


# --- 1. artifact keys --------------------------------------------------------------------------
@pytest.mark.parametrize("evil", ["../../../escaped.txt", "a/../../../escaped.txt", "a//b.txt", "./x.txt",
                                  "a/./../../escaped.txt"])
def test_a_crafted_key_is_refused_and_nothing_lands_outside(s3, tmp_path, evil):
    base = "proj/runs/r1/stages/train/outputs"
    s3.put_object(Bucket=BUCKET, Key=f"{base}/good.txt", Body=b"fine")
    s3.put_object(Bucket=BUCKET, Key=f"{base}/{evil}", Body=b"pwned")
    dest = tmp_path / "run" / "stages" / "train" / "outputs"
    before = sorted(p for p in tmp_path.rglob("*"))
    with pytest.raises(CloudError, match="refusing"):
        S3Transfer(BUCKET, client=s3).get(f"s3://{BUCKET}/{base}/", dest)
    after = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert not any(p.read_bytes() == b"pwned" for p in after)
    assert not (tmp_path / "escaped.txt").exists() and [p for p in after if p not in before] == []


def test_a_symlink_out_of_the_run_folder_is_not_followed(s3, tmp_path):
    base = "proj/runs/r2/out"
    s3.put_object(Bucket=BUCKET, Key=f"{base}/link/file.txt", Body=b"x")
    dest = tmp_path / "dest"
    dest.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (dest / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CloudError, match="outside"):
        S3ArtifactStore(BUCKET, "proj/runs/r2", s3).get_dir("out", dest)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_uri_with_dot_segments_is_refused(s3, tmp_path):
    with pytest.raises(CloudError):
        S3Transfer(BUCKET, client=s3).get(f"s3://{BUCKET}/proj/../other/file", tmp_path / "f")


# --- 3. bucket owner ---------------------------------------------------------------------------
def test_every_s3_call_names_the_expected_owner(s3, tmp_path):
    seen: list[tuple[str, str | None]] = []
    s3.meta.events.register("before-call.s3", lambda model, params, **_: seen.append(
        (model.name, params["headers"].get("x-amz-expected-bucket-owner"))))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("hello")
    transfer = S3Transfer(BUCKET, client=s3)
    transfer.put(tmp_path / "d", f"s3://{BUCKET}/p/runs/r/x/")
    transfer.get(f"s3://{BUCKET}/p/runs/r/x/", tmp_path / "back")
    assert (tmp_path / "back" / "f.txt").read_text() == "hello"
    account = boto3.client("sts").get_caller_identity()["Account"]
    assert seen and all(owner == account for _, owner in seen), seen


def _foreign_s3():
    creds = boto3.client("sts").assume_role(RoleArn="arn:aws:iam::111111111111:role/other",
                                            RoleSessionName="other")["Credentials"]
    return boto3.client("s3", region_name="us-east-1", aws_access_key_id=creds["AccessKeyId"],
                        aws_secret_access_key=creds["SecretAccessKey"], aws_session_token=creds["SessionToken"])


def test_a_default_bucket_owned_by_another_account_is_refused(make_provider, aws):
    account = boto3.client("sts").get_caller_identity()["Account"]
    _foreign_s3().create_bucket(Bucket=f"lhorch-{account}-us-east-1")
    p = make_provider()
    with pytest.raises(CloudError, match="another AWS account") as err:
        p.acquire(request("run-foreign-bucket"))
    assert "cloud.bucket" in (err.value.hint or "")
    assert lhorch_instances(p.ec2, "run-foreign-bucket") == []


# --- 2. the node role is one cluster's ---------------------------------------------------------
def test_node_role_reads_only_its_cluster_and_writes_only_its_run(make_provider):
    p = make_provider(bucket="lhorch-artifacts", prefix="team/proj")
    cluster = p.acquire(request("run-role"))
    role = p.iam.get_role(RoleName=p.instance_profile)["Role"]
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"].endswith(":policy/lhorch/lhorch-node-boundary")
    doc = p.iam.get_role_policy(RoleName=p.instance_profile, PolicyName="lhorch-node")["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["OwnClusterParameters"]["Resource"].endswith(":parameter/lhorch/run-role/train/*")
    writes = [s for s in doc["Statement"] if "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in writes] == ["arn:aws:s3:::lhorch-artifacts/team/proj/runs/run-role/*"]
    tags = {t["Key"]: t["Value"] for t in role.get("Tags", [])}
    assert tags[TAG_INSTALL] == p.store.install_id
    p.release(cluster)
    with pytest.raises(p.iam.exceptions.NoSuchEntityException):
        p.iam.get_role(RoleName=p.instance_profile)


# --- 4. install id -----------------------------------------------------------------------------
def test_everything_created_carries_the_install_id(make_provider):
    p = make_provider()
    cluster = p.acquire(request("run-install"))
    mine = p.store.install_id
    (inst,) = lhorch_instances(p.ec2, "run-install")
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}[TAG_INSTALL] == mine
    tagged = [{"Name": f"tag:{TAG_INSTALL}", "Values": [mine]}]
    assert p.ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]
    vols = p.ec2.describe_volumes(Filters=tagged)["Volumes"]
    assert vols
    param = p.ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId="/lhorch/run-install/train/ray-token")
    assert {t["Key"]: t["Value"] for t in param["TagList"]}[TAG_INSTALL] == mine
    p.release(cluster)


def test_gc_and_down_leave_other_installations_alone(make_provider, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    mine = make_provider(host=socket.gethostname())
    theirs = make_provider(store_home=tmp_path / "colleague", host=socket.gethostname())
    mine.acquire(request("run-mine"))
    theirs.acquire(request("run-theirs"))
    later = datetime.now(timezone.utc) + timedelta(hours=3)  # past both clusters' expiry
    gone = mine.sweep(later, live_runs=set())
    assert gone and all("run-theirs" not in d for d in gone)
    assert leftovers(mine, "run-mine")["instances"] == [] and leftovers(mine, "run-theirs")["instances"]

    theirs_cluster = theirs.acquire(request("run-theirs"))
    runner = CliRunner()
    out = runner.invoke(main, ["down"], obj={})
    assert out.exit_code == 0, out.output
    assert leftovers(mine, "run-theirs")["instances"] == theirs_cluster.instance_ids
    out = runner.invoke(main, ["down", "--all"], obj={},
                        input="n\n")
    assert out.exit_code != 0 and leftovers(mine, "run-theirs")["instances"]
    out = runner.invoke(main, ["down", "--all", "--yes"],
                        obj={})
    assert out.exit_code == 0 and "run-theirs" in out.output, out.output
    assert leftovers(mine, "run-theirs")["instances"] == []


# --- 6. secrets on a cloud node ----------------------------------------------------------------
def test_cloud_secrets_go_through_ssm_and_leave_with_the_cluster(make_provider, monkeypatch):
    monkeypatch.setenv("TRACKER_TOKEN", "cloud-secret-value-123")
    p = make_provider()
    cluster: Cluster = p.acquire(request("run-secret"))
    pipeline = Pipeline.model_validate({"name": "p", "stages": {"train": {"run": "true", "secrets": ["TRACKER_TOKEN"]}}})
    values = staging.secret_values(pipeline, "train")
    env = staging.secret_env(p.store, "run-secret", "train", cluster, values)
    assert "cloud-secret-value-123" not in json.dumps(env) and env[staging.SECRET_NAMES_VAR] == "TRACKER_TOKEN"
    name = env[staging.SECRETS_URI_VAR].split("us-east-1", 1)[1]
    param = p.ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]
    assert param["Type"] == "SecureString" and json.loads(param["Value"]) == {"TRACKER_TOKEN": "cloud-secret-value-123"}
    # The stage wrapper's side, as on the node.
    wrapper = subprocess.run(
        [sys.executable, "-c", "import os;from lhorch.orchestrator.execution.stage_wrapper import _secrets;"
         "env=dict(os.environ);print(_secrets(env)==['cloud-secret-value-123'], env['TRACKER_TOKEN']=='cloud-secret-value-123')"],
        env={**os.environ, **env}, capture_output=True, text=True)
    assert wrapper.stdout.split() == ["True", "True"], wrapper.stderr
    p.release(cluster)
    assert leftovers(p, "run-secret")["parameters"] == []


# --- 2. the IAM policy -------------------------------------------------------------------------
# Calls only `lhorch cloud setup` makes, run once by an administrator (not by lhorch's users).
ADMIN_ONLY = {"iam:CreatePolicy", "iam:ListPolicyVersions", "iam:DeletePolicyVersion", "iam:CreatePolicyVersion"}
# Calls made outside boto3: the AWS CLI's port forward (connect.py).
CLI_CALLS = {"ssm:StartSession", "ssm:TerminateSession"}
# S3 operations whose IAM action is not named like the operation.
S3_ACTIONS = {
    "HeadObject": "GetObject", "HeadBucket": "ListBucket", "ListObjectsV2": "ListBucket",
    "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject", "CompleteMultipartUpload": "PutObject",
    "ListParts": "ListMultipartUploadParts", "ListMultipartUploads": "ListBucketMultipartUploads",
    "PutBucketEncryption": "PutEncryptionConfiguration", "PutBucketLifecycleConfiguration": "PutLifecycleConfiguration",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
}


def aws_calls_in_code() -> set[str]:
    """Every AWS API call in lhorch's code, as IAM actions: boto3 client methods and paginators."""

    session = botocore.session.get_session()
    services = {"ec2": "ec2", "s3": "s3", "ssm": "ssm", "iam": "iam", "sts": "sts", "pricing": "pricing"}
    ops = {s: {xform_name(o): o for o in session.get_service_model(s).operation_names} for s in services}
    # A method of a client (named as lhorch names its clients) or a paginator, in any module.
    call = re.compile(r"\b(?:ec2|ssm|iam|sts|s3|pricing|client|raw)\.(\w+)\(|get_paginator\(\s*\"(\w+)\"")
    actions = set()
    for folder in ("orchestrator", "providers", "jobs", "policies"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for m in call.finditer(text):
                method = m.group(1) or m.group(2)
                for service in [s for s in services if method in ops[s]]:
                    op = ops[service][method]
                    actions.add(f"s3:{S3_ACTIONS.get(op, op)}" if service == "s3" else f"{service}:{op}")
            if '"start-session"' in text:
                actions |= CLI_CALLS
    return actions


def _allowed(policy: dict, action: str) -> bool:
    for st in policy["Statement"]:
        listed = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if st["Effect"] == "Allow" and any(fnmatch.fnmatchcase(action, a) for a in listed):
            return True
    return False


def test_the_policy_allows_every_call_the_code_makes():
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    calls = aws_calls_in_code()
    assert {"ec2:RunInstances", "s3:PutObject", "ssm:PutParameter", "iam:CreateRole"} <= calls  # the scan works
    missing = sorted(a for a in calls - ADMIN_ONLY if not _allowed(policy, a))
    assert missing == [], f"docs/iam-policy.json does not allow: {missing}"


def test_the_policy_cannot_be_escalated():
    policy = json.loads((ROOT / "docs" / "iam-policy.json").read_text())
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if st["Effect"] != "Allow":
            continue
        assert not any("*" in a.split(":")[1] for a in actions), st["Sid"]
        if "iam:CreateRole" in actions or "iam:PutRolePolicy" in actions:
            assert "iam:PermissionsBoundary" in json.dumps(st.get("Condition", {})), st["Sid"]
        if "ec2:CreateTags" in actions:
            cond = json.dumps(st.get("Condition", {}))
            assert "ec2:CreateAction" in cond or ("aws:ResourceTag" in cond and "aws:TagKeys" in cond), st["Sid"]
        if {"ec2:TerminateInstances", "ec2:StopInstances"} & set(actions) or (
                "ssm:StartSession" in actions and "instance" in json.dumps(st["Resource"])):
            assert "lhorch:install" in json.dumps(st.get("Condition", {})), st["Sid"]
        assert not {"iam:AttachRolePolicy", "iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary",
                    "iam:UpdateAssumeRolePolicy", "iam:CreatePolicyVersion"} & set(actions), st["Sid"]


def _parliament(policy_text: str) -> list[tuple[str, str, str]]:
    if importlib.util.find_spec("parliament") is None:
        pytest.skip("parliament is in the test extra: pip install -e '.[test]'")
    # parliament 1.6 still imports pkg_resources, which setuptools >= 81 no longer ships; a two-line
    # stand-in on its path keeps the real linter running.
    code = ("import sys, types, importlib.resources as r\n"
            "m = types.ModuleType('pkg_resources'); m.resource_filename = lambda p, n: str(r.files(p) / n)\n"
            "sys.modules.setdefault('pkg_resources', m)\n"
            "from parliament import analyze_policy_string, config\n"
            "p = analyze_policy_string(sys.stdin.read(), config=config)\n"
            "for f in p.findings: print(config.get(f.issue, {}).get('severity', 'UNKNOWN'), f.issue, f.detail)\n")
    out = subprocess.run([sys.executable, "-c", code], input=policy_text, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [tuple(line.split(" ", 2)) for line in out.stdout.splitlines()]  # type: ignore[misc]


def test_parliament_finds_nothing_of_medium_or_above():
    for name, text in [("docs/iam-policy.json", (ROOT / "docs" / "iam-policy.json").read_text()),
                       ("boundary", json.dumps(boundary_policy())),
                       ("node role", json.dumps(node_policy("us-east-1", "123456789012", "lhorch-b", "p", "r", "g")))]:
        serious = [f for f in _parliament(text) if f[0] in ("MEDIUM", "HIGH", "CRITICAL")]
        assert serious == [], f"{name}: {serious}"


def test_cloud_setup_creates_the_boundary_and_says_so(aws, home):
    out = CliRunner().invoke(main, ["cloud", "setup"], obj={})
    assert out.exit_code == 0, out.output
    assert "created IAM policy arn:aws:iam::123456789012:policy/lhorch/lhorch-node-boundary" in out.output
    iam = boto3.client("iam")
    arn = "arn:aws:iam::123456789012:policy/lhorch/lhorch-node-boundary"
    assert iam.get_policy(PolicyArn=arn)["Policy"]["PolicyName"] == "lhorch-node-boundary"
    again = CliRunner().invoke(main, ["cloud", "setup"], obj={})
    assert again.exit_code == 0 and "updated" in again.output, again.output


# --- 5. a token never goes over plain HTTP to another machine ---------------------------------
def test_a_ray_token_is_not_sent_over_plain_http_unless_asked(monkeypatch):
    with pytest.raises(UsageError, match="plain HTTP"):
        RayClusterProvider("http://10.0.0.5:8265", "tok", bucket=None)
    with pytest.raises(UsageError):
        RayClusterProvider("ray.example.com:8265", "tok", bucket=None)
    for fine in ("https://ray.example.com", "http://127.0.0.1:8265", "http://localhost:8265", "http://[::1]:8265"):
        RayClusterProvider(fine, "tok", bucket=None)
    RayClusterProvider("http://10.0.0.5:8265", None, bucket=None)  # no token, nothing to leak
    RayClusterProvider("http://10.0.0.5:8265", "tok", bucket=None, allow_plain_http=True)
    cloud = Pipeline.model_validate({"name": "p", "cloud": {"provider": "ray", "address": "http://10.0.0.5:8265"},
                                     "stages": {"a": {"run": "true"}}}).cloud
    monkeypatch.setenv(cloud.token_env, "tok")
    with pytest.raises(UsageError):
        RayClusterProvider.from_config(cloud)
    monkeypatch.setenv(PLAIN_HTTP_ENV, "1")
    RayClusterProvider.from_config(cloud)
