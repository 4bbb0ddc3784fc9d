"""Ctrl-C and SIGTERM that cannot cut a teardown in half (issue 17).

The first SIGINT/SIGTERM of `lhorch run` raises KeyboardInterrupt, as Python's own handler would; from
then on lhorch is stopping, and every further one is deferred: teardown (releasing clusters, deleting a
half-made security group or key pair) runs to its end. The second says so; the third and later say
what is still up and how to remove it should lhorch be killed anyway. Teardown after an error or a
budget stop runs inside ``deferred()`` too; an interrupt that came meanwhile is raised once it is done.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _State:
    stopping = False  # the first interrupt came: lhorch is on its way out
    depth = 0  # nesting of deferred()
    deferred = 0  # interrupts received and not acted on
    # What is still up, for the third interrupt; set by whoever holds resources (the run's cluster pool).
    still_up: Callable[[], list[str]] | None = None


_state = _State()


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _on_signal(signum: int, frame: FrameType | None) -> None:  # noqa: ARG001
    if not (_state.stopping or _state.depth):
        _state.stopping = True
        raise KeyboardInterrupt
    _state.deferred += 1
    if _state.deferred == 1:
        _say("lhorch is releasing what it started; the interrupt waits until that is done "
             "(Ctrl-C again to see what is still up).")
        return
    up = []
    if _state.still_up is not None:
        try:
            up = _state.still_up()
        except Exception:  # noqa: BLE001 - a signal handler must not fail; the hint below stands
            up = []
    _say(("Still up: " + ", ".join(up) + ". " if up else "")
         + "Teardown goes on; if you kill lhorch now, `lhorch gc` removes what it leaves.")


def install() -> None:
    """Handle SIGINT and SIGTERM this way for the rest of the process (`lhorch run`)."""
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)


def set_still_up(describe: Callable[[], list[str]] | None) -> None:
    _state.still_up = describe


@contextmanager
def deferred() -> Iterator[None]:
    """Run the block (a teardown) with SIGINT/SIGTERM deferred; raise KeyboardInterrupt after it if one
    came and lhorch was not already stopping. Outside the main thread it only runs the block (signals
    are delivered to the main thread, whose own teardown is shielded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = [signal.getsignal(sig) or signal.SIG_DFL for sig in _SIGNALS]
    for sig in _SIGNALS:
        signal.signal(sig, _on_signal)
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        for sig, handler in zip(_SIGNALS, previous, strict=True):
            signal.signal(sig, handler)
    if not _state.depth and _state.deferred and not _state.stopping:
        _state.stopping = True
        raise KeyboardInterrupt


class RunInterrupted(KeyboardInterrupt):
    """A run ended by Ctrl-C/SIGTERM after its teardown: which run, and what was released (only that)."""

    def __init__(self, run_id: str, released: list[str], stopped: list[str]):
        super().__init__(run_id)
        self.run_id, self.released, self.stopped = run_id, released, stopped
