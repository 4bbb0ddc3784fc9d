"""A run's report figures drawn after `lhorch run` has returned, by a process of their own.

Drawing them takes matplotlib (about a second to import on a small laptop) and a few hundred
milliseconds a figure: on a run of trivial stages, most of what `lhorch run` cost (issue 18). So the
run writes the page at once without them (``write_report(draw=False)``, tens of milliseconds), prints
its path and exits with the run's code, and this process, started detached, draws the figures and
replaces the page with the full one; it ends as soon as that is done (a second or two), holding none
of the run's terminal or pipes. Should drawing fail, the page says so, the traceback goes to
``<run>/report.log``, and `lhorch report RUN` draws them again in the foreground.

    python -m lhorch.orchestrator.report.background RUN_ID --home LHORCH_HOME
"""

from __future__ import annotations

import argparse
import gc
import os
import subprocess
import sys
import traceback
from pathlib import Path

from lhorch.orchestrator.report.build import write_report
from lhorch.orchestrator.state.store import Store

DRAWING_NOTE = "The figures are being drawn; reload this page in a moment."
MODULE = "lhorch.orchestrator.report.background"  # run as `python -m`; the bench looks for it too


def draw_in_background(store: Store, run_id: str) -> subprocess.Popen:
    """Start the detached writer of ``run_id``'s figures; returns at once."""
    return subprocess.Popen(
        [sys.executable, "-m", MODULE, run_id, "--home", str(store.home)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # Its own session: the run's Ctrl-C or the end of its terminal does not cut a page in half.
        start_new_session=True, env={**os.environ, "LHORCH_HOME": str(store.home)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    parser.add_argument("run_id")
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    # A process of a second or two: collecting its garbage (matplotlib's import, the figures) before it
    # exits is wasted work, ~0.1 CPU-second of it.
    enabled = gc.isenabled()
    gc.disable()
    store = Store(args.home)
    try:
        return _draw(store, args.run_id)
    finally:
        store.close()
        if enabled:
            gc.enable()


def _draw(store: Store, run_id: str) -> int:
    try:
        write_report(store, run_id)
        return 0
    except Exception as exc:  # noqa: BLE001 - nobody is watching: the page and a log file say what happened
        (store.runs_dir(run_id) / "report.log").write_text(traceback.format_exc())
        try:
            write_report(store, run_id, draw=False, note=f"The figures could not be drawn ({exc}); "
                                                         f"`lhorch report {run_id}` draws them again.")
        except Exception:  # noqa: BLE001 - the log above has the first error, which matters
            pass
        return 1


if __name__ == "__main__":
    sys.exit(main())
