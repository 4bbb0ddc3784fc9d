"""The user-data script every lhorch node boots with, and its dead-man switch.

Order matters: the two safety nets are armed *before* anything that can fail (package installs,
fetching the token, starting Ray), so a node whose bootstrap breaks still terminates itself.

1. ``shutdown -h +N`` at the hard stop (``lhorch:expires-at``), belt and braces.
2. ``lhorch-watchdog`` (a systemd service): every ``check`` seconds it reads the instance's own
   ``lhorch:heartbeat`` tag through IMDSv2 (instance metadata tags are enabled at launch) and runs
   ``shutdown -h now`` when lhorch has not touched the tag for ``idle`` seconds, or at the hard stop.
   An unreadable tag counts as no check-in, so the switch fails towards terminating. It re-reads the
   ``lhorch:expires-at`` tag at every check too and obeys it when it is earlier than the boot-time
   hard stop: lhorch lowers it when another cluster of the run starts (issue 16).
   InstanceInitiatedShutdownBehavior=terminate turns either shutdown into termination.
3. Install the same Python, Ray and lhorch versions as the laptop, fetch the Ray token from the
   SSM SecureString parameter (with the instance role; it never appears in user data), start Ray
   with ``RAY_AUTH_MODE=token``.

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

from lhorch.orchestrator.core.version import __version__

HEARTBEAT_TAG = "lhorch:heartbeat"
EXPIRES_TAG = "lhorch:expires-at"
RAY_DASHBOARD_PORT = 8265
RAY_GCS_PORT = 6379
RAY_CLIENT_PORT = 10001


def local_versions() -> dict[str, str]:
    import ray  # ~1 s to import; only needed when nodes are launched without pinned versions

    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}", "ray": ray.__version__,
            "lhorch": __version__}


@dataclass(frozen=True)
class BootstrapSpec:
    cluster: str
    role: str  # "head" | "worker"
    region: str
    token_parameter: str
    expires_at: datetime
    idle_minutes: float
    head_ip: str | None = None  # workers only
    python: str = "3.11"
    ray_version: str = "2.60.0"
    lhorch_requirement: str = "lhorch==0.1.0"
    extra_requirements: tuple[str, ...] = ()
    check_seconds: int = 30
    gpu: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def watchdog_script() -> str:
    """The dead-man switch. Every knob comes from the environment so tests can run it on a laptop
    against a stand-in metadata server and a harmless shutdown command."""
    return r"""#!/bin/bash
# lhorch dead-man switch: terminate this node when lhorch stops checking in, or at the hard stop.
IMDS="${LHORCH_IMDS:-http://169.254.169.254}"
IDLE="${LHORCH_IDLE_SECONDS:-600}"
CHECK="${LHORCH_CHECK_SECONDS:-30}"
EXPIRES="${LHORCH_EXPIRES_EPOCH:?}"
SHUTDOWN="${LHORCH_SHUTDOWN_CMD:-shutdown -h now}"
read_tag() {
  local t
  t=$(curl -sf -m 5 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/latest/api/token") || return 1
  curl -sf -m 5 -H "X-aws-ec2-metadata-token: $t" "$IMDS/latest/meta-data/tags/instance/$1"
}
last=$(date +%s)
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
  if [ $((now - last)) -gt "$IDLE" ]; then
    echo "lhorch-watchdog: no check-in from lhorch for $((now - last))s; shutting down"; $SHUTDOWN; exit 0
  fi
  sleep "$CHECK"
done
"""


def render_user_data(spec: BootstrapSpec) -> str:
    q = shlex.quote
    expires_epoch = int(spec.expires_at.astimezone(timezone.utc).timestamp())
    idle_seconds = int(spec.idle_minutes * 60)
    venv = "/opt/lhorch/venv"
    requirements = " ".join(q(r) for r in (f"ray[default]=={spec.ray_version}", spec.lhorch_requirement,
                                             *spec.extra_requirements))
    if spec.role == "head":
        ray_start = (f"{venv}/bin/ray start --head --port {RAY_GCS_PORT} --dashboard-host 0.0.0.0"
                     f" --dashboard-port {RAY_DASHBOARD_PORT} --ray-client-server-port {RAY_CLIENT_PORT}"
                     " --disable-usage-stats")
    else:
        if not spec.head_ip:
            raise ValueError("a worker needs the head's private IP")
        ray_start = f"{venv}/bin/ray start --address {q(spec.head_ip + ':' + str(RAY_GCS_PORT))} --disable-usage-stats"
    return f"""#!/bin/bash
# lhorch node bootstrap: cluster {spec.cluster}, role {spec.role}
set -uo pipefail
exec > >(tee -a /var/log/lhorch-bootstrap.log) 2>&1

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
Environment=LHORCH_CHECK_SECONDS={spec.check_seconds}
Environment=LHORCH_EXPIRES_EPOCH={expires_epoch}
ExecStart=/usr/local/bin/lhorch-watchdog
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
LHORCH_UNIT
systemctl daemon-reload
systemctl enable --now lhorch-watchdog.service

# 3. The same Python, Ray and lhorch versions as the machine that launched this node.
set -e
dnf install -y -q python{spec.python} python{spec.python}-pip
python{spec.python} -m venv {venv}
{venv}/bin/pip install -q --upgrade pip
{venv}/bin/pip install -q {requirements}

# 4. The Ray token, from an SSM SecureString parameter readable by this node's role only.
umask 077
aws ssm get-parameter --region {q(spec.region)} --name {q(spec.token_parameter)} --with-decryption \\
  --query Parameter.Value --output text > /etc/lhorch/ray-token

# 5. Ray, with token authentication.
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=/etc/lhorch/ray-token
{ray_start}
echo "lhorch bootstrap done"
"""


def example_spec() -> BootstrapSpec:
    """The fixed example shown in docs/cloud.md (versions are the local ones)."""
    v = local_versions()
    return BootstrapSpec(
        cluster="lhorch-myrun-train", role="head", region="us-east-1",
        token_parameter="/lhorch/myrun/train/ray-token",
        expires_at=datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc), idle_minutes=10,
        python=v["python"], ray_version=v["ray"], lhorch_requirement=f"lhorch=={v['lhorch']}",
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
