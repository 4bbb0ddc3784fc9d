"""Bad input that used to hang, crash or pass (issue 17): the loader's bounds, cloud settings named
field by field, cron at validate time, and missing AWS credentials found before anything starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import boto3
import pytest

from lhorch.orchestrator.pipeline.loader import MAX_FILE_BYTES
from lhorch.providers.aws.preflight import ec2_regions


def lhorch(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    # A subprocess, as a user runs it: a traceback or a RecursionError would show on stderr.
    return subprocess.run([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def validate(path: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = lhorch("validate", str(path))
    return result, time.monotonic() - start


def assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "Traceback" not in out
    for word in words:
        assert word in out, out


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


SIMPLE = "name: p\nstages:\n  s: {run: echo hi}\n"


def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    result, seconds = validate(write(tmp_path, "\n".join(lines) + "\n" + SIMPLE))
    assert_refused(result, "aliases expand to more than")
    assert seconds < 30  # generous: it answers in well under a second; it used to run for minutes


def test_modest_aliases_still_work(tmp_path):
    text = "name: p\nx-defaults: &res {cpus: 1, memory_gb: 2}\nstages:\n  s: {run: echo, resources: *res}\n"
    result = lhorch("validate", str(write(tmp_path, text)))
    assert result.returncode == 2 and "x-defaults" in result.stderr  # unknown top-level key, not the alias
    text = "name: p\nstages:\n  s: &s {run: echo, resources: {cpus: 2}}\n  t: *s\n"
    assert lhorch("validate", str(write(tmp_path, text))).returncode == 0


def test_5000_nested_brackets_are_refused_without_recursion_error(tmp_path):
    result, seconds = validate(write(tmp_path, SIMPLE + "x: " + "[" * 5000 + "]" * 5000 + "\n"))
    assert_refused(result, "nested more than")
    assert "RecursionError" not in result.stderr
    assert seconds < 30


def test_a_10_mb_file_of_200000_stages_is_answered_within_10_seconds(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("w") as f:
        f.write("name: big\nstages:\n  s0: {run: echo 0}\n")
        for i in range(1, 200_000):
            f.write(f"  s{i}: {{run: echo {i}, needs: [s{i - 1}]}}\n")
    assert path.stat().st_size > 5_000_000
    result, seconds = validate(path)
    assert_refused(result, "MiB")  # over the size limit, said so at once
    assert seconds < 10


def test_a_file_near_the_size_limit_validates_and_a_long_chain_is_fine(tmp_path):
    parts = ["name: chain\nstages:\n  s0: {run: echo 0, outputs: [out]}\n"]
    size, i = len(parts[0]), 1
    while True:
        line = f"  s{i}: {{run: echo {i}, needs: [s{i - 1}], inputs: {{x: s{i - 1}.out}}, outputs: [out]}}\n"
        if size + len(line) > MAX_FILE_BYTES - 100:
            break
        parts.append(line)
        size, i = size + len(line), i + 1
    result, seconds = validate(write(tmp_path, "".join(parts)))
    assert result.returncode == 0, result.stderr[-2000:]
    assert seconds < 30  # generous: a few seconds; the recursive cycle check used to hit the recursion limit


@pytest.mark.parametrize("cron", ["61 25 * * *", "0 2 * 13 *", "* * * * 9"])
def test_impossible_cron_is_refused_at_validate_time(tmp_path, cron):
    path = write(tmp_path, f'name: p\nschedule:\n  cron: "{cron}"\nstages:\n  s: {{run: echo}}\n')
    assert_refused(lhorch("validate", str(path)), "p.yaml:3: schedule.cron", cron)


def test_good_cron_and_time_zone_pass_and_a_bad_zone_is_named(tmp_path):
    good = 'name: p\nschedule: {cron: "30 2 * * 1-5", timezone: Europe/Berlin}\nstages:\n  s: {run: echo}\n'
    assert lhorch("validate", str(write(tmp_path, good))).returncode == 0
    bad = good.replace("Europe/Berlin", "Mars/Olympus")
    assert_refused(lhorch("validate", str(write(tmp_path, bad))), "schedule.timezone", "Mars/Olympus")


@pytest.mark.parametrize("region, hint", [("us-moon-1", ""), ("us-east1", "us-east-1")])
def test_unknown_region_is_refused_naming_field_and_value(tmp_path, region, hint):
    path = write(tmp_path, f"name: p\ncloud:\n  provider: aws\n  region: {region}\nstages:\n  s: {{run: echo}}\n")
    assert_refused(lhorch("validate", str(path)), "p.yaml:4: cloud.region", repr(region), hint)


def test_known_regions_are_botocores_ec2_regions_in_every_partition():
    session = boto3.session.Session()
    expected = {r for p in session.get_available_partitions() for r in session.get_available_regions("ec2", p)}
    assert ec2_regions() == expected
    assert {"us-east-1", "eu-west-1", "cn-north-1", "us-gov-west-1"} <= ec2_regions()


def test_unknown_instance_type_is_named(tmp_path):
    text = "name: p\ncloud:\n  provider: aws\n  instance_types:\n    - g4dn.xlarge\n    - p9.huge\nstages:\n" \
           "  s: {run: echo}\n"
    assert_refused(lhorch("validate", str(write(tmp_path, text))), "p.yaml:6: cloud.instance_types[1]", "'p9.huge'")


def test_a_stage_no_listed_type_fits_says_so_in_the_plan(tmp_path, home):
    text = textwrap.dedent("""\
        name: p
        cloud: {provider: aws, region: us-east-1, instance_types: [g4dn.xlarge]}
        stages:
          big: {run: echo, resources: {gpus: 8, memory_gb: 900}}
        """)
    env = {**os.environ, "LHORCH_HOME": str(home)}
    result = lhorch("plan", str(write(tmp_path, text)), "--json", env=env)
    assert "Traceback" not in result.stderr
    plan = json.loads(result.stdout)
    assert "no type in cloud.instance_types fits" in plan["placements"]["big"]["reason"]


def no_credentials_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(LHORCH_HOME=str(home), AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_CONFIG_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true")
    return env


CLOUD_PINNED = "name: p\ncloud: {provider: aws, region: us-east-1}\nstages:\n  s: {run: echo, placement: cloud}\n"


@pytest.mark.parametrize("command", ["plan", "run"])
def test_no_credentials_is_exit_5_with_a_hint_before_anything_starts(tmp_path, home, command):
    path = write(tmp_path, CLOUD_PINNED)
    result = lhorch(command, str(path), env=no_credentials_env(home), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 5, out
    assert "Traceback" not in out and "no AWS credentials" in out and "hint" in out.lower()
    assert "Starting" not in out  # nothing was started (no cluster, no bucket)


def test_no_region_anywhere_is_exit_5(tmp_path, home):
    path = write(tmp_path, CLOUD_PINNED.replace(", region: us-east-1", ""))
    env = {**no_credentials_env(home), "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"}
    result = lhorch("plan", str(path), env=env)
    assert result.returncode == 5 and "no AWS region" in result.stdout + result.stderr
