"""The pipeline file: what is accepted, and how each kind of mistake is reported."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.errors import SpecError
from lhorch.orchestrator.pipeline.loader import load_pipeline, parse_pipeline

GOOD = """\
name: digits-nightly
policy: balanced
budget: {max_usd: 5.00, monthly_max_usd: 60}
schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
deadline: 4h
cloud: {provider: aws, region: us-east-1, spot: true}
stages:
  preprocess:
    uses: jobs.preprocess
    with: {dataset: digits, val_fraction: 0.2, seed: 0}
    resources: {cpus: 1, memory_gb: 1}
    placement: local
  train:
    run: python train.py
    needs: [preprocess]
    resources: {cpus: 2, gpus: 0, memory_gb: 2}
    retries: 1
    timeout: 30m
    outputs: [model]
  export:
    run: echo export
    needs: [train]
    inputs: {weights: train.model}
    env: {EXPORT_FORMAT: onnx}
"""


def test_the_sketch_shape_is_accepted():
    p = parse_pipeline(GOOD, "good.yaml")
    assert p.name == "digits-nightly"
    assert p.policy.name == "balanced"
    assert p.deadline == 4 * 3600
    assert p.stages["train"].timeout == 1800
    assert p.stages["preprocess"].with_["val_fraction"] == 0.2
    assert p.budget.max_usd == 5.0 and p.schedule.timezone == "Europe/Berlin"
    assert list(p.stages) == ["preprocess", "train", "export"]


def test_shared_sketch_file_validates(tmp_path):
    from pathlib import Path

    sketch = Path(__file__).resolve().parents[2] / "shared" / "pipeline-sketch.yaml"
    if not sketch.exists():
        pytest.skip("shared/ is not beside this checkout")
    text = sketch.read_text().replace("run: python scripts/export.py", "run: echo export")
    p = parse_pipeline(text, "sketch.yaml")
    assert set(p.stages) >= {"preprocess", "finetune", "distill", "evaluate", "export"}


# Each case: (what is wrong, the file text, the field path the message must name, the line it must name).
BAD = [
    ("unknown top-level field", "name: x\nstagez: {}\nstages: {a: {run: echo}}\n", "stagez", 2),
    ("unknown stage field", "name: x\nstages:\n  a:\n    run: echo\n    retry: 3\n", "stages.a.retry", 5),
    ("unknown resource field", "name: x\nstages:\n  a:\n    run: echo\n    resources: {cpu: 2}\n",
     "stages.a.resources.cpu", 5),
    ("wrong type for retries", "name: x\nstages:\n  a:\n    run: echo\n    retries: many\n", "stages.a.retries", 5),
    ("negative cpus", "name: x\nstages:\n  a:\n    run: echo\n    resources:\n      cpus: -1\n",
     "stages.a.resources.cpus", 6),
    ("negative memory", "name: x\nstages:\n  a:\n    run: echo\n    resources: {memory_gb: -2}\n",
     "stages.a.resources.memory_gb", 5),
    ("negative gpus", "name: x\nstages:\n  a:\n    run: echo\n    resources: {gpus: -1}\n",
     "stages.a.resources.gpus", 5),
    ("negative disk", "name: x\nstages:\n  a:\n    run: echo\n    resources: {disk_gb: -5}\n",
     "stages.a.resources.disk_gb", 5),
    ("cycle in needs", "name: x\nstages:\n  a:\n    run: echo\n    needs: [b]\n  b:\n    run: echo\n    needs: [a]\n",
     "stages.a.needs", 5),
    ("unknown stage in needs", "name: x\nstages:\n  a:\n    run: echo\n    needs: [nope]\n", "stages.a.needs[0]", 5),
    ("stage needs itself", "name: x\nstages:\n  a:\n    run: echo\n    needs: [a]\n", "stages.a.needs[0]", 5),
    ("duplicate stage names", "name: x\nstages:\n  a:\n    run: echo\n  a:\n    run: echo 2\n", "stages.a", 5),
    ("both uses and run", "name: x\nstages:\n  a:\n    run: echo\n    uses: jobs.preprocess\n", "stages.a", 3),
    ("neither uses nor run", "name: x\nstages:\n  a:\n    retries: 1\n", "stages.a", 3),
    ("unknown built-in job", "name: x\nstages:\n  a:\n    uses: jobs.nosuch\n", "stages.a.uses", 4),
    ("bad job parameter name", "name: x\nstages:\n  a:\n    uses: jobs.preprocess\n    with: {val_fraktion: 0.2}\n",
     "stages.a.with.val_fraktion", 5),
    ("bad job parameter value", "name: x\nstages:\n  a:\n    uses: jobs.preprocess\n    with:\n      val_fraction: 3\n",
     "stages.a.with.val_fraction", 6),
    ("missing name", "stages:\n  a:\n    run: echo\n", "name", None),
    ("missing stages", "name: x\n", "stages", None),
    ("bad placement", "name: x\nstages:\n  a:\n    run: echo\n    placement: moon\n", "stages.a.placement", 5),
    ("bad timeout", "name: x\nstages:\n  a:\n    run: echo\n    timeout: soon\n", "stages.a.timeout", 5),
    ("bad policy", "name: x\npolicy: greedy\nstages:\n  a:\n    run: echo\n", "policy.name", 2),
    ("negative budget", "name: x\nbudget: {max_usd: -5}\nstages:\n  a:\n    run: echo\n", "budget.max_usd", 2),
    ("bad cron", "name: x\nschedule: {cron: 'every night'}\nstages:\n  a:\n    run: echo\n", "schedule.cron", 2),
    ("bad time zone", "name: x\nschedule: {cron: '0 2 * * *', timezone: Mars/Olympus}\nstages:\n  a:\n    run: echo\n",
     "schedule.timezone", 2),
    ("bad provider", "name: x\ncloud: {provider: gcp}\nstages:\n  a:\n    run: echo\n", "cloud.provider", 2),
    ("ray provider without address", "name: x\ncloud: {provider: ray}\nstages:\n  a:\n    run: echo\n", "cloud", 2),
    ("input from a stage not needed", "name: x\nstages:\n  a:\n    run: echo\n    outputs: [m]\n  b:\n    run: echo\n"
                                     "    inputs: {m: a.m}\n",
     "stages.b.inputs.m", 8),
    ("input of an undeclared output", "name: x\nstages:\n  a:\n    run: echo\n  b:\n    run: echo\n    needs: [a]\n"
                                     "    inputs: {m: a.m}\n",
     "stages.b.inputs.m", 8),
    ("bad stage name", "name: x\nstages:\n  9lives:\n    run: echo\n", "stages", 2),
    ("bad env name", "name: x\nstages:\n  a:\n    run: echo\n    env: {'BAD-NAME': '1'}\n", "stages.a.env", 5),
    ("reserved env name", "name: x\nstages:\n  a:\n    run: echo\n    env: {LHORCH_OUTPUT_DIR: /tmp}\n",
     "stages.a.env", 5),
    ("stages is a list", "name: x\nstages:\n  - run: echo\n", "stages", 2),
    ("top level is a list", "- name: x\n", None, 1),
    ("YAML syntax error", "name: x\nstages:\n  a:\n    run: [echo\n", None, 5),
    ("tab indentation", "name: x\nstages:\n\ta:\n", None, 3),
    ("empty file", "", None, None),
]


@pytest.mark.parametrize("what,text,field,line", BAD, ids=[b[0] for b in BAD])
def test_malformed_pipeline_is_rejected_naming_field_and_line(what, text, field, line):
    with pytest.raises(SpecError) as info:
        parse_pipeline(text, "bad.yaml")
    err = info.value
    message = str(err)
    assert message.startswith("bad.yaml"), message
    if field is not None:
        assert err.field == field, message
        assert f": {field}: " in message
    if line is not None:
        assert err.line == line, message
        assert message.startswith(f"bad.yaml:{line}:"), message


def test_there_are_at_least_20_distinct_malformed_cases():
    assert len({b[0] for b in BAD}) >= 20


def test_missing_file_and_folder_are_clear_errors(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_pipeline(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="is a folder"):
        load_pipeline(tmp_path)


def test_validate_cli_exit_codes(write_pipeline):
    runner = CliRunner()
    good = write_pipeline("name: ok\nstages:\n  a:\n    run: echo hi\n  b:\n    run: echo\n    needs: [a]\n")
    res = runner.invoke(main, ["validate", str(good)])
    assert res.exit_code == 0, res.output
    assert "a → b" in res.output
    bad = write_pipeline("name: ok\nstages:\n  a:\n    run: echo hi\n    retries: -1\n", "bad.yaml")
    res = runner.invoke(main, ["validate", str(bad)])
    assert res.exit_code == 2
    assert f"{bad}:5: stages.a.retries:" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["validate", "/no/such/pipeline.yaml"])
    assert res.exit_code == 2 and "no such file" in res.output


def test_bad_file_launches_nothing(write_pipeline, home):
    bad = write_pipeline("name: ok\nstages:\n  a:\n    run: echo hi\n    needs: [ghost]\n")
    res = CliRunner().invoke(main, ["run", str(bad)])
    assert res.exit_code == 2
    assert "unknown stage 'ghost'" in res.output
    # Nothing was recorded or started: no run in the store, no Ray node.
    assert not list((home / "ray").glob("head*.json"))
    from lhorch.orchestrator.state.store import Store

    assert Store(home).list_runs() == []


def test_schema_has_a_description_on_every_field():
    res = CliRunner().invoke(main, ["schema"])
    assert res.exit_code == 0
    schema = json.loads(res.output)
    missing = []

    def walk(node, path):
        if isinstance(node, dict):
            for name, prop in (node.get("properties") or {}).items():
                if "description" not in prop:
                    missing.append(f"{path}.{name}")
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(schema, "")
    assert "stages" in schema["properties"]
    # Plain-data sub-models (Profile etc.) are not in the pipeline schema; every pipeline field is described.
    assert not missing, missing


def test_durations():
    from lhorch.orchestrator.core.durations import parse_duration

    assert parse_duration("1h30m") == 5400
    assert parse_duration(90) == 90
    with pytest.raises(ValueError):
        parse_duration("3 weeks")


def test_needs_order_and_ancestors():
    p = parse_pipeline(textwrap.dedent("""\
        name: d
        stages:
          d: {run: echo, needs: [b, c]}
          b: {run: echo, needs: [a]}
          c: {run: echo, needs: [a]}
          a: {run: echo}
        """))
    from lhorch.orchestrator.core.graph import ancestors, topological_order

    order = topological_order(p.stages)
    assert order.index("a") < order.index("b") < order.index("d")
    assert ancestors(p.stages, "d") == ["b", "c", "a"]
