"""The pipeline every cloud path's end-to-end test runs: `make` here (21) → `double` on the cluster
(its script writes n2) → `report` here (`result=42`), so artifacts cross both ways."""

from __future__ import annotations

import textwrap

DOUBLE = "echo $(( $(cat $LHORCH_INPUT_N) * 2 )) > $LHORCH_OUTPUT_DIR/n2"


def hybrid_pipeline(name: str, cloud: str, double: str = DOUBLE, retries: int = 0) -> str:
    """The pipeline file's text: ``cloud`` is its whole `cloud:` line, ``double`` the cloud stage's script."""
    script = textwrap.indent(textwrap.dedent(double).strip(), " " * 6)
    return f"""\
name: {name}
{cloud}
stages:
  make:
    run: echo 21 > $LHORCH_OUTPUT_DIR/n
    outputs: [n]
    placement: local
  double:
    needs: [make]
    placement: cloud
    retries: {retries}
    run: |
{script}
    outputs: [n2]
  report:
    needs: [double]
    placement: local
    run: echo "result=$(cat $LHORCH_INPUT_N2)"
"""
