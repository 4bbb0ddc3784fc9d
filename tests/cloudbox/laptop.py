"""The laptop's side of the box tests: `lhorch` run as a user runs it (the installed CLI in its own
process, with the box's AWS settings), and what a test looks at afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

# The real CLI, as installed (its console script next to this interpreter).
LHORCH = [str(Path(sys.executable).with_name("lhorch"))] if Path(sys.executable).with_name("lhorch").exists() else [
    sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()"]
NOTHING = {"instances": [], "security_groups": [], "key_pairs": [], "parameters": [], "namespaces": []}


def lhorch(box, home: Path, *args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*LHORCH, *args], env=laptop(box, home),
                          capture_output=True, text=True, timeout=timeout, **kw)


def laptop(box, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, **box.laptop_env(), "LHORCH_HOME": str(home), "RAY_DISABLE_USAGE_STATS": "1"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def instances(box, run_id: str, states=("pending", "running", "shutting-down", "stopping", "stopped")) -> list[dict]:
    return [i for r in box.ec2.describe_instances(Filters=[
        {"Name": "tag:lhorch:run-id", "Values": [run_id]},
        {"Name": "instance-state-name", "Values": list(states)}])["Reservations"] for i in r["Instances"]]


def leftovers(box, run_id: str) -> dict[str, list]:
    ec2, ssm = box.ec2, box.client("ssm")
    tagged = [{"Name": "tag:lhorch:run-id", "Values": [run_id]}]
    params = [p["Name"] for p in ssm.describe_parameters(ParameterFilters=[
        {"Key": "Path", "Option": "Recursive", "Values": ["/lhorch"]}])["Parameters"] if run_id in p["Name"]]
    box.wait(lambda: not box.live_namespaces(), 15)
    return {"instances": [i["InstanceId"] for i in instances(box, run_id)],
            "security_groups": [g["GroupId"] for g in ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]],
            "key_pairs": [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]],
            "parameters": params, "namespaces": box.live_namespaces()}




def stage_log(home: Path, stage: str = "train") -> str:
    """The stage's first attempt's log on the laptop."""
    logs = sorted(home.glob(f"runs/*/stages/{stage}/attempt-*.log"))
    return logs[0].read_text(errors="replace") if logs else ""


def start(box, tmp_path: Path, text: str) -> tuple[subprocess.Popen, Path]:
    home = tmp_path / "home"
    proc = subprocess.Popen([*LHORCH, "run", str(write(tmp_path, text))], env=laptop(box, home),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, home


def new_node(box, known: set[str], step: str, timeout: float):
    """A node not in ``known`` that has reached boot ``step``, waiting up to ``timeout`` seconds."""
    found: list = []

    def ready():
        found[:] = [n for iid, n in box.nodes.items() if iid not in known and n.ended is None and step in n.boot_steps()]
        return bool(found)

    assert box.wait(ready, timeout), f"no new node reached {step!r}"
    return found[0]
