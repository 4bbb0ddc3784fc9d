"""A stage attempt's processes as one unit: the process group the stage wrapper and the stage share.

The dispatcher starts every attempt's wrapper in a session of its own (Ray does for a job's entrypoint
on a remote cluster, lhorch's local dispatcher on this machine) and kills that whole group when the
attempt is stopped; the stage runs in the same group, so it goes too. The wrapper ends
the rest of the group itself on a timeout, when the lhorch that owns it is gone, and when the stage
ends (a `tee` or a daemon it left).

The wrapper records the group in a small file beside the stage's outputs (``PGID_FILE``: the group
id and its leader's start time, so a recycled id is never mistaken for it); before a later attempt of
the stage starts on this machine the launcher ends whatever of that group is still alive, so that two
copies of one stage never write into the same folder (issue 17). Standard library only: the stage
wrapper imports it on bare cloud nodes.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

PGID_FILE = ".lhorch-pgid.json"
# Set by the launcher for stages on this machine: where the wrapper records its stage's group.
PGID_FILE_VAR = "LHORCH_PGID_FILE"
# Set by the launcher for stages on this machine: the lhorch process the stage must not outlive.
OWNER_PID_VAR = "LHORCH_OWNER_PID"


def _stat(pid: int | str) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (state, ppid, pgrp, ...; Linux), or None when it is gone.
    The command name (field 2) may hold spaces and parentheses: fields are counted after its last ')'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when it is gone."""
    fields = _stat(pid)
    return fields[19] if fields else None


def pid_alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not: in a container nobody may ever reap it)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _members(pgid: int) -> list[int]:
    """The running processes in group ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        fields = _stat(entry.name) if entry.name.isdigit() else None
        if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _ancestors() -> set[int]:
    pids, pid = {os.getpid()}, os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        fields = _stat(pid)
        if fields is None:
            break
        pid = int(fields[1])
    return pids


def end_others(grace: float = 5.0) -> None:
    """End every process of this process's group but itself and its ancestors (the shell Ray runs the
    wrapper under, which must see the wrapper's own exit code): SIGTERM, then SIGKILL after ``grace``."""
    pgid, spared = os.getpgid(0), _ancestors()
    deadline = time.monotonic() + grace
    for sig in (signal.SIGTERM, signal.SIGKILL):
        others = [p for p in _members(pgid) if p not in spared]
        for pid in others:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        while others and sig == signal.SIGTERM and time.monotonic() < deadline:
            time.sleep(0.05)
            others = [p for p in _members(pgid) if p not in spared]
        if not others:
            return


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def record(path: Path, pgid: int) -> None:
    path.write_text(json.dumps({"pgid": pgid, "started": start_time(pgid)}))


def end_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the whole group, then SIGKILL what is left after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and group_alive(pgid):
        time.sleep(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def end_recorded(path: Path, grace: float = 5.0) -> bool:
    """End the group an earlier attempt recorded in ``path`` if any of it is alive; True if it was."""
    try:
        info = json.loads(path.read_text())
        pgid = int(info["pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    leader = start_time(pgid)
    # The leader may be gone while the rest of its group lives on; a live leader must be the same process.
    if leader is not None and info.get("started") not in (None, leader):
        path.unlink(missing_ok=True)
        return False
    alive = group_alive(pgid)
    if alive:
        end_group(pgid, grace)
    path.unlink(missing_ok=True)
    return alive
