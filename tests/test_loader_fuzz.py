"""Property: whatever the pipeline file holds, loading it gives a Pipeline or a SpecError (exit 0 or 2),
never another exception, and quickly (issue 17). `bench/fuzz_loader.py` runs the same for longer."""

from __future__ import annotations

import time

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lhorch.orchestrator.core.errors import SpecError
from lhorch.orchestrator.pipeline.loader import parse_pipeline

VALID = """\
name: fuzz
cloud: {provider: aws, region: us-east-1, instance_types: [g4dn.xlarge]}
schedule: {cron: "0 2 * * *", timezone: Europe/Berlin}
stages:
  prep: &p
    run: python prep.py
    outputs: [data]
    resources: {cpus: 2, memory_gb: 4}
  train:
    uses: jobs.finetune
    needs: [prep]
    inputs: {data: prep.data}
    timeout: 30m
  other: *p
"""

# Pieces that reach the loader's edges: YAML syntax, tags, anchors, deep brackets, odd scalars.
TOKENS = ["[", "]", "{", "}", ":", "- ", "&a ", "*a", "!!int ", "!!timestamp ", "!!binary ", "!!python/name:x ",
          "<<: ", "? ", "|", ">", "'", '"', "#", "\n", "  ", "\t", "\x00", "needs", "stages", "run", "uses",
          "cron", "region", "1e999", "-1", "null", "yes", "on", "9" * 5000, "\ufeff", "---\n", "...\n"]


def load(text: str) -> float:
    """Load one file; any exception but SpecError fails. Returns how long it took."""
    start = time.monotonic()
    try:
        parse_pipeline(text, file="fuzz.yaml")
    except SpecError:
        pass
    took = time.monotonic() - start
    assert took < 5  # generous bound: a bad file is answered at once
    return took


def mutate(data: st.DataObject) -> str:
    text = VALID
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(text)))
        kind = data.draw(st.sampled_from(["insert", "delete", "token", "repeat"]))
        if kind == "insert":
            text = text[:at] + data.draw(st.text(max_size=8)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + data.draw(st.integers(1, 20)):]
        elif kind == "token":
            text = text[:at] + data.draw(st.sampled_from(TOKENS)) + text[at:]
        else:
            text = text[:at] + data.draw(st.sampled_from(TOKENS)) * data.draw(st.integers(1, 200)) + text[at:]
    return text


FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@FAST
@given(st.text(max_size=400))
def test_arbitrary_text_is_a_pipeline_or_a_spec_error(text):
    load(text)


@FAST
@given(st.data())
def test_mutated_pipeline_is_a_pipeline_or_a_spec_error(data):
    load(mutate(data))


@FAST
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=30))
def test_any_yaml_data_under_stages_is_a_pipeline_or_a_spec_error(value):
    load(yaml.safe_dump({"name": "p", "stages": {"s": value} if not isinstance(value, dict) else value}))
