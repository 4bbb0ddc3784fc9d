"""A longer run of tests/test_loader_fuzz.py: many more arbitrary and mutated pipeline files.

    python bench/fuzz_loader.py [EXAMPLES]     (default 5,000 per property)

Prints, per property, the examples tried and the slowest load; baseline (2 cores, issue 17): every
file answered with a Pipeline or a SpecError, the slowest in well under a second.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import test_loader_fuzz as fuzz  # noqa: E402 - the properties live with the tests


def main() -> None:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    slowest = [0.0]

    def load(text: str) -> None:
        slowest[0] = max(slowest[0], fuzz.load(text))

    long = settings(max_examples=examples, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))

    @long
    @given(st.text(max_size=2000))
    def arbitrary(text: str) -> None:
        load(text)

    @long
    @given(st.data())
    def mutated(data: st.DataObject) -> None:
        load(fuzz.mutate(data))

    for name, prop in (("arbitrary text", arbitrary), ("mutated pipeline", mutated)):
        slowest[0] = 0.0
        start = time.monotonic()
        prop()
        print(f"{name}: {examples} examples in {time.monotonic() - start:.1f} s, slowest load {slowest[0]:.3f} s "
              "(baseline: no exception but SpecError, slowest < 1 s)")


if __name__ == "__main__":
    main()
