"""The user-data script every lhorch node boots with, and its dead-man switch.

Order matters: the two safety nets are armed *before* anything that can fail (package installs,
fetching the token, starting Ray), so a node whose bootstrap breaks still terminates itself.

1. ``shutdown -h +N`` at the hard stop (``lhorch:expires-at``), belt and braces.
2. ``lhorch-watchdog`` (a systemd service): every ``check`` seconds it reads the instance's own
   ``lhorch:heartbeat`` tag through IMDSv2 (instance metadata tags are enabled at launch) and runs
   ``shutdown -h now`` when lhorch has not touched the tag for ``idle`` seconds after the bootstrap
   finished (the idle clock starts then, so a slow install never counts as idleness; a bootstrap
   still unfinished after ``boot`` seconds shuts the node down too), or at the hard stop.
   An unreadable tag counts as no check-in, so the switch fails towards terminating. It re-reads the
   ``lhorch:expires-at`` tag at every check too and obeys it when it is earlier than the boot-time
   hard stop: lhorch lowers it when another cluster of the run starts (issue 16).
   InstanceInitiatedShutdownBehavior=terminate turns either shutdown into termination.
3. Install lhorch as the launching machine runs it: its own wheel, fetched from the run's artifact
   bucket with the node's role and checked against its sha256 (lhorch is on no public index), into a
   venv that sees the image's packages (a machine image's torch is reused when it is the pinned
   version), with every dependency pinned to the launching machine's version (``shipping``).
4. Fetch the Ray token from the SSM SecureString parameter (with the instance role; it never appears
   in user data), start Ray with ``RAY_AUTH_MODE=token``.

Progress goes to the instance's own ``lhorch:boot`` tag (``installing``, ``starting-ray``, ``ready``,
or ``failed:<what>``): acquire reads it and fails fast with the reason. A failed step also powers the
node off. Progress lines ``lhorch-boot: <step> <epoch>`` in ``/var/log/lhorch-bootstrap.log`` time the
boot. Stages run with the venv's interpreter, ``NODE_PYTHON``, named by absolute path.

Why tags for the heartbeat: reading them needs no IAM permission and no network beyond the
metadata service, so the dead-man switch works even when the instance role or the VPC's route to
AWS APIs is broken; lhorch's side is one ``ec2:CreateTags`` call (``health.heartbeat``).

``python -m lhorch.providers.aws.bootstrap`` prints the example used in docs/cloud.md.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HEARTBEAT_TAG = "lhorch:heartbeat"
EXPIRES_TAG = "lhorch:expires-at"
BOOT_TAG = "lhorch:boot"
BOOT_READY = "ready"
BOOT_FAILED = "failed:"
RAY_DASHBOARD_PORT = 8265
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001
VENV = "/opt/lhorch/venv"
NODE_PYTHON = f"{VENV}/bin/python"
BOOTED_FILE = "/etc/lhorch/booted"


@dataclass(frozen=True)
class NodeSoftware:
    """What a node installs: the interpreter version, lhorch's wheel in the bucket, pinned packages."""

    python: str  # "3.11"
    wheel_uri: str  # s3://bucket/prefix/wheels/<sha256>/<name>
    wheel_sha256: str
    requirements: tuple[str, ...] = ()  # "ray[default,train]==2.60.0", ...

    @property
    def wheel_name(self) -> str:
        return self.wheel_uri.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class BootstrapSpec:
    cluster: str
    role: str  # "head" | "worker"
    region: str
    token_parameter: str
    expires_at: datetime
    idle_minutes: float
    software: NodeSoftware
    head_ip: str | None = None  # workers only
    check_seconds: int | None = None  # None: a quarter of the idle time, between 5 and 30 s
    boot_minutes: float = 30.0  # a bootstrap still unfinished then shuts the node down
    gpu: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def check(self) -> int:
        if self.check_seconds is not None:
            return self.check_seconds
        return int(max(5, min(30, self.idle_minutes * 60 / 4)))


def watchdog_script() -> str:
    """The dead-man switch. Every knob comes from the environment so tests can run it on a laptop
    against a stand-in metadata server and a harmless shutdown command."""
    return r"""#!/bin/bash
# lhorch dead-man switch: terminate this node when lhorch stops checking in, or at the hard stop.
IMDS="${LHORCH_IMDS:-http://169.254.169.254}"
IDLE="${LHORCH_IDLE_SECONDS:-600}"
CHECK="${LHORCH_CHECK_SECONDS:-30}"
BOOT="${LHORCH_BOOT_SECONDS:-1800}"
BOOTED="${LHORCH_BOOTED_FILE:-/etc/lhorch/booted}"
EXPIRES="${LHORCH_EXPIRES_EPOCH:?}"
SHUTDOWN="${LHORCH_SHUTDOWN_CMD:-shutdown -h now}"
read_tag() {
  local t
  t=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/latest/api/token") || return 1
  curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" "$IMDS/latest/meta-data/tags/instance/$1"
}
started=$(date +%s)
last=0
while true; do
  now=$(date +%s)
  if hb=$(read_tag lhorch:heartbeat) && seen=$(date -d "$hb" +%s 2>/dev/null); then
    if [ "$seen" -gt "$last" ]; then last=$seen; fi
  fi
  # The hard stop can move earlier while the node runs (a second cluster of the run shares its cap).
  if ex=$(read_tag lhorch:expires-at) && e=$(date -d "$ex" +%s 2>/dev/null); then
    if [ "$e" -lt "$EXPIRES" ]; then EXPIRES=$e; fi
  fi
  if [ "$now" -ge "$EXPIRES" ]; then
    echo "lhorch-watchdog: hard stop reached; shutting down"; $SHUTDOWN; exit 0
  fi
  # The idle clock starts when the bootstrap has finished: installing is not idleness.
  if booted=$(cat "$BOOTED" 2>/dev/null) && [ -n "$booted" ]; then
    if [ "$booted" -gt "$last" ]; then ref=$booted; else ref=$last; fi
    if [ $((now - ref)) -gt "$IDLE" ]; then
      echo "lhorch-watchdog: no check-in from lhorch for $((now - ref))s; shutting down"; $SHUTDOWN; exit 0
    fi
  elif [ $((now - started)) -gt "$BOOT" ]; then
    echo "lhorch-watchdog: bootstrap unfinished after $((now - started))s; shutting down"; $SHUTDOWN; exit 0
  fi
  sleep "$CHECK"
done
"""


def render_user_data(spec: BootstrapSpec) -> str:
    q = shlex.quote
    sw = spec.software
    expires_epoch = int(spec.expires_at.astimezone(timezone.utc).timestamp())
    idle_seconds = int(spec.idle_minutes * 60)
    wheel = f"/opt/lhorch/wheels/{sw.wheel_name}"
    python = f"python{sw.python}"
    requirements = " ".join(q(r) for r in sw.requirements)
    region = q(spec.region)
    # `python -m ray.scripts.scripts`, not venv/bin/ray: a Ray the image already has (reused through the
    # venv's system site packages) has its console script outside the venv.
    ray = f"{NODE_PYTHON} -m ray.scripts.scripts"
    if spec.role == "head":
        ray_start = (f"{ray} start --head --port {RAY_GCS_PORT} --dashboard-host 0.0.0.0"
                     f" --dashboard-port {RAY_DASHBOARD_PORT} --ray-client-server-port {RAY_CLIENT_PORT}"
                     " --disable-usage-stats")
    else:
        if not spec.head_ip:
            raise ValueError("a worker needs the head's private IP")
        ray_start = f"{ray} start --address {q(spec.head_ip + ':' + str(RAY_GCS_PORT))} --disable-usage-stats"
    return f"""#!/bin/bash
# lhorch node bootstrap: cluster {spec.cluster}, role {spec.role}
set -uo pipefail
exec > >(tee -a /var/log/lhorch-bootstrap.log) 2>&1
stamp() {{ echo "lhorch-boot: $1 $(date +%s.%N)"; }}
stamp started

# 0. This node's id (IMDSv2), and its progress in its own {BOOT_TAG} tag; a failed step powers it off.
imds() {{
  local t
  t=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" http://169.254.169.254/latest/api/token) &&
    curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" "http://169.254.169.254/latest/$1"
}}
IID=$(imds meta-data/instance-id || true)
report() {{
  stamp "$1"
  if [ -n "$IID" ]; then
    aws ec2 create-tags --region {region} --resources "$IID" --tags "Key={BOOT_TAG},Value=$1" >/dev/null 2>&1 || true
  fi
}}
fail() {{
  report "{BOOT_FAILED}$(echo "$1" | tr -c 'A-Za-z0-9 ._:/+@-' ' ' | cut -c1-200)"
  echo "lhorch bootstrap failed: $1"
  shutdown -h now "lhorch bootstrap failed"
  exit 1
}}

# 1. Hard stop, belt and braces: scheduled before anything else can fail.
EXPIRES_EPOCH={expires_epoch}
MINUTES=$(( (EXPIRES_EPOCH - $(date +%s)) / 60 ))
if [ "$MINUTES" -lt 1 ]; then MINUTES=1; fi
shutdown -h +"$MINUTES" "lhorch hard stop"

# 2. Dead-man switch: terminate when lhorch stops checking in (tag {HEARTBEAT_TAG}).
mkdir -p /etc/lhorch && chmod 700 /etc/lhorch
cat > /usr/local/bin/lhorch-watchdog <<'LHORCH_WATCHDOG'
{watchdog_script()}LHORCH_WATCHDOG
chmod 755 /usr/local/bin/lhorch-watchdog
cat > /etc/systemd/system/lhorch-watchdog.service <<'LHORCH_UNIT'
[Unit]
Description=lhorch dead-man switch
After=network-online.target

[Service]
Environment=LHORCH_IDLE_SECONDS={idle_seconds}
Environment=LHORCH_CHECK_SECONDS={spec.check}
Environment=LHORCH_BOOT_SECONDS={int(spec.boot_minutes * 60)}
Environment=LHORCH_EXPIRES_EPOCH={expires_epoch}
ExecStart=/usr/local/bin/lhorch-watchdog
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
LHORCH_UNIT
systemctl daemon-reload
systemctl enable --now lhorch-watchdog.service || fail "could not start the dead-man switch"

# 3. lhorch as the launching machine runs it: its own wheel (checked), pinned packages, a venv that
#    reuses what the image already has at the pinned versions (e.g. the image's torch).
report installing
command -v {python} >/dev/null || dnf install -y -q {python} {python}-pip || fail "could not install {python}"
mkdir -p /opt/lhorch/wheels
aws s3 cp --only-show-errors --region {region} {q(sw.wheel_uri)} {q(wheel)} \\
  || fail "could not fetch the lhorch wheel {sw.wheel_uri}"
echo {q(sw.wheel_sha256 + "  " + wheel)} | sha256sum -c --status || fail "lhorch wheel sha256 mismatch"
{python} -m venv --system-site-packages {VENV} || fail "could not create {VENV}"
{VENV}/bin/pip install -q --no-input {requirements} {q(wheel)} || fail "pip install failed"
stamp installed

# 4. The Ray token, from an SSM SecureString parameter readable by this node's role only.
report starting-ray
(umask 077 && aws ssm get-parameter --region {region} --name {q(spec.token_parameter)} --with-decryption \\
  --query Parameter.Value --output text > /etc/lhorch/ray-token) || fail "could not read the Ray token"

# 5. Ray, with token authentication; its jobs (the stages) inherit this environment, region included.
export AWS_DEFAULT_REGION={region}
export PATH={VENV}/bin:$PATH  # a stage's own `python` is the venv's too
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=/etc/lhorch/ray-token
{ray_start} || fail "ray start failed"
date +%s > {BOOTED_FILE}
report {BOOT_READY}
echo "lhorch bootstrap done"
"""


def example_spec() -> BootstrapSpec:
    """The fixed example shown in docs/cloud.md (fixed versions, so the docs do not follow the laptop)."""
    sha = "0" * 64
    return BootstrapSpec(
        cluster="lhorch-myrun-train", role="head", region="us-east-1",
        token_parameter="/lhorch/myrun/train/ray-token",
        expires_at=datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc), idle_minutes=10,
        software=NodeSoftware(
            python="3.11", wheel_sha256=sha,
            wheel_uri=f"s3://lhorch-123456789012-us-east-1/lhorch/wheels/{sha}/lhorch-0.1.0+g0123456789ab-py3-none-any.whl",
            requirements=("torch==2.13.0", "ray[default,train]==2.60.0", "boto3==1.43.11", "pydantic==2.13.4")),
    )


DOC_BEGIN = ("<!-- bootstrap:begin (generated by "
             "`python -m lhorch.providers.aws.bootstrap --write-docs docs/cloud.md`) -->")
DOC_END = "<!-- bootstrap:end -->"


def docs_block() -> str:
    return f"{DOC_BEGIN}\n```bash\n{render_user_data(example_spec())}```\n{DOC_END}"


def write_docs(path: str) -> None:
    p = Path(path)
    text = p.read_text()
    head, _, rest = text.partition(DOC_BEGIN)
    _, _, tail = rest.partition(DOC_END)
    p.write_text(head + docs_block() + tail)


if __name__ == "__main__":  # pragma: no cover - docs helper
    if len(sys.argv) == 3 and sys.argv[1] == "--write-docs":
        write_docs(sys.argv[2])
    else:
        sys.stdout.write(render_user_data(example_spec()))
