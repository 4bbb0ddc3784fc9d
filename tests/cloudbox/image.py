"""The box's machine image: what an AMI and its VPC would provide, and nothing lhorch sends.

- This host's Python (with torch and Ray installed) as the image's ``python3.X``, the AWS CLI, curl,
  and this host's package-index configuration (pip.conf, PIP_* settings), as an AMI with a Python
  stack and a VPC with a package mirror would have. lhorch itself is *not* in the image: the host's
  editable install is hidden inside every node, so the node must install the wheel lhorch ships.
- An environment file: the AWS endpoint (moto on the host) and fake credentials, standing in for
  the VPC's route to AWS and the instance role.
- ``systemctl`` (no systemd in a namespace: ``enable --now`` runs the unit's ExecStart with its
  Environment=, restarted as Restart=always would), ``shutdown``/``poweroff`` (the power button:
  the box terminates the instance in moto and removes the node).
- ``boot.sh``: what the box runs as PID 1 of a node's own PID, UTS and mount namespaces: its hostname, private /etc,
  /opt, /root and /usr/local (overlays on the host's), private /tmp and /var/log, then the
  instance's user data as root, exactly as EC2 gave it, as cloud-init would.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

SHUTDOWN = r"""#!/bin/bash
# box image: shutdown [-h|-P|-r] [now|+MIN|hh:mm] [message]
when=now
for a in "$@"; do case "$a" in now|+*) when="$a";; esac; done
if [ "$when" = now ] || [ "$when" = +0 ]; then exec poweroff; fi
minutes=${when#+}
setsid nohup bash -c "sleep $((minutes * 60)); poweroff" >/dev/null 2>&1 < /dev/null &
echo "Shutdown scheduled in $minutes minute(s)"
"""

POWEROFF = r"""#!/bin/bash
# box image: the power button. The box terminates this instance and removes the node.
curl -s -m 5 -X POST http://169.254.169.254/lhorch-box/poweroff >/dev/null
sleep 30
"""

SYSTEMCTL = r"""#!/bin/bash
# box image: enough systemctl for `daemon-reload` and `enable --now UNIT` (Environment=, ExecStart=,
# restarted like Restart=always).
[ "${1:-}" = enable ] || exit 0
for unit in "$@"; do
  case "$unit" in enable|--now) continue;; esac
  file=/etc/systemd/system/$unit
  [ -f "$file" ] || { echo "systemctl: $unit not found" >&2; exit 5; }
  envs=$(sed -n 's/^Environment=//p' "$file" | tr '\n' ' ')
  exe=$(sed -n 's/^ExecStart=//p' "$file" | head -1)
  setsid nohup bash -c "while true; do env $envs $exe; sleep 5; done" >> "/var/log/${unit%.service}.log" 2>&1 < /dev/null &
done
"""

BOOT = r"""#!/bin/bash
# box: PID 1 of a node. $1: the node's folder on the host, $2: the editable-install file to hide,
# $3: the image's Python environment (this host's sys.prefix).
set -eu
NODE=$1
hostname "ip-$(cat "$NODE/private-ip" | tr . -)"  # as EC2 names its instances
mount --make-rprivate /
for d in etc opt root usr/local; do
  key=${d//\//_}
  mkdir -p "$NODE/fs/$key/upper" "$NODE/fs/$key/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$NODE/fs/$key/upper,workdir=$NODE/fs/$key/work" "/$d"
done
# The VPC's DNS resolves an instance's own name (ip-a-b-c-d) to its private address: distributed
# training (gloo) binds to the address its hostname resolves to.
echo "$(cat "$NODE/private-ip") $(hostname)" >> /etc/hosts
mkdir -p "$NODE/fs/tmp" "$NODE/fs/log"
chmod 1777 "$NODE/fs/tmp"
mount --bind "$NODE/fs/log" /var/log
if [ -n "${2:-}" ] && [ -e "$2" ]; then mount --bind /dev/null "$2"; fi
cp "$NODE/user-data" /var/log/.user-data && chmod 700 /var/log/.user-data
# A Python environment made under /tmp (a venv there) is part of the image: it stays visible.
case "${3:-}" in
  /tmp/*) mkdir -p "$NODE/fs$3" && mount --rbind "$3" "$NODE/fs$3" && mount --rbind "$NODE/fs/tmp" /tmp;;
  *) mount --bind "$NODE/fs/tmp" /tmp;;
esac
set +e
# cloud-init's part: run the user data as root, with the image's environment.
mapfile -t ENVIRONMENT < "$NODE/environment"
env -i "${ENVIRONMENT[@]}" setsid bash /var/log/.user-data > /var/log/cloud-init-output.log 2>&1 < /dev/null &
while true; do sleep 3600 & wait $!; done
"""


def _pip_config(key: str) -> str:
    out = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def hidden_lhorch_files() -> list[str]:
    """The host's editable-install hook of lhorch (a .pth file), hidden inside nodes."""
    out = []
    for d in site.getsitepackages():
        out += [str(p) for p in Path(d).glob("__editable__.lhorch-*.pth")]
    return out


def write_image(root: Path, endpoint: str) -> Path:
    """Write the image's files under ``root``; return it."""
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, text in {"shutdown": SHUTDOWN, "poweroff": POWEROFF, "systemctl": SYSTEMCTL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (root / "boot.sh").write_text(BOOT)
    (root / "boot.sh").chmod(0o755)
    python_bin = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:{python_bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root", "LANG": "C.UTF-8", "USER": "root",
        # The VPC's route to AWS and the instance role, in the box: moto on the host, fake keys.
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        # Ray's own telemetry would try the internet.
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if sys.prefix != sys.base_prefix:
        # This host's Python is a venv: the image's Python stack is that venv's packages (a venv made from
        # its interpreter, as the node's is, would otherwise see only the base interpreter's).
        env["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    env.update({k: v for k, v in os.environ.items() if k.startswith("PIP_")})
    # The box has no route to the internet: this host's local package indexes (its pip.conf's extra
    # indexes) are the node's only ones, as a package mirror in a private VPC would be.
    local = [u for u in _pip_config("global.extra-index-url").split() if u.startswith("file:")]
    if local:
        env["PIP_INDEX_URL"], env["PIP_EXTRA_INDEX_URL"] = local[0], " ".join(local[1:])
    (root / "environment").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return root
