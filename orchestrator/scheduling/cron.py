"""When a schedule fires: cron in a time zone, DST included. Pure functions of the expression and time.

Fire times are computed in the schedule's own wall-clock time and then mapped to instants:

- a wall time that does not exist (spring forward: 02:30 in Europe/Berlin on the last Sunday of
  March) fires once, at the instant the clocks jump (03:00 local), like Vixie cron;
- a wall time that happens twice (fall back: 02:30 on the last Sunday of October) fires once, at its
  first occurrence, unless the hour field is a wildcard (``*/15 * * * *``): such interval-like
  schedules fire in both occurrences of the repeated hour.

Six fields mean seconds first (``*/5 * * * * *``: every 5 s), as in Quartz and Spring; five fields
are classic cron. Every instant leaving this module is timezone-aware UTC.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

from lhorch.orchestrator.core.errors import UsageError

UTC = timezone.utc


def _fields(cron: str) -> list[str]:
    return cron.split()


def validate_cron(cron: str, tz: str = "UTC") -> None:
    fields = _fields(cron)
    if len(fields) not in (5, 6):
        raise UsageError(f"{cron!r} is not a cron expression",
                         hint='Use 5 fields (minute hour day month weekday, e.g. "0 2 * * *") '
                              'or 6 with seconds first ("*/5 * * * * *").')
    try:
        ZoneInfo(tz)
    except Exception:
        raise UsageError(f"unknown time zone {tz!r}", hint="Use an IANA name such as Europe/Berlin or UTC.") from None
    if not croniter.is_valid(cron, second_at_beginning=len(fields) == 6):
        raise UsageError(f"{cron!r} is not a valid cron expression",
                         hint='Fields: minute hour day-of-month month day-of-week, e.g. "30 2 * * *".')
    try:
        next_fires(cron, tz, datetime(2024, 1, 1, tzinfo=UTC), 1)
    except Exception:
        raise UsageError(f"{cron!r} never fires",
                         hint="Check day and month: e.g. 30 February does not exist.") from None


def _local_naive(instant: datetime, tz: ZoneInfo) -> datetime:
    return instant.astimezone(tz).replace(tzinfo=None)


def _instants_of_wall(wall: datetime, tz: ZoneInfo, both_folds: bool) -> list[datetime]:
    """The UTC instants at which the local wall time ``wall`` occurs (0, 1 or 2 of them)."""
    first = wall.replace(tzinfo=tz, fold=0)
    second = wall.replace(tzinfo=tz, fold=1)
    if _local_naive(first.astimezone(UTC), tz) != wall:
        # Does not exist (spring forward): fire at the jump, the first instant whose wall time is later.
        lo = int(second.astimezone(UTC).timestamp())
        hi = int(first.astimezone(UTC).timestamp())
        while lo < hi:
            mid = (lo + hi) // 2
            if _local_naive(datetime.fromtimestamp(mid, UTC), tz) >= wall:
                hi = mid
            else:
                lo = mid + 1
        return [datetime.fromtimestamp(lo, UTC)]
    a, b = first.astimezone(UTC), second.astimezone(UTC)
    if a == b or not both_folds:
        return [a]
    return sorted({a, b})


def iter_fires(cron: str, tz_name: str, after: datetime, max_steps: int = 100_000) -> Iterator[datetime]:
    """Fire instants strictly after ``after``, in order (UTC)."""
    tz = ZoneInfo(tz_name)
    fields = _fields(cron)
    seconds_first = len(fields) == 6
    both_folds = fields[2 if seconds_first else 1].startswith("*")
    # Start a few wall hours early so an occurrence in a repeated hour is not missed.
    start_wall = _local_naive(after, tz) - timedelta(hours=3)
    it = croniter(cron, start_wall, second_at_beginning=seconds_first)
    heap: list[datetime] = []
    last: datetime | None = None
    for _ in range(max_steps):
        wall = it.get_next(datetime)
        instants = _instants_of_wall(wall, tz, both_folds)
        earliest = instants[0]
        while heap and heap[0] < earliest:
            t = heapq.heappop(heap)
            if t > after and t != last:
                last = t
                yield t
        for t in instants:
            heapq.heappush(heap, t)
    raise RuntimeError(f"cron {cron!r}: no further fire time within {max_steps} steps")


def next_fires(cron: str, tz: str, after: datetime, n: int = 5) -> list[datetime]:
    out: list[datetime] = []
    for t in iter_fires(cron, tz, after):
        out.append(t)
        if len(out) >= n:
            break
    return out


def fires_between(cron: str, tz: str, after: datetime, until: datetime, limit: int = 10_000) -> list[datetime]:
    """Fire instants in (after, until]; RuntimeError when there are more than ``limit``."""
    out: list[datetime] = []
    for t in iter_fires(cron, tz, after, max_steps=limit + 10):
        if t > until:
            break
        out.append(t)
    return out


def local_time(instant: datetime, tz: str) -> datetime:
    """``instant`` on the wall clock of the time zone ``tz``."""
    return instant.astimezone(ZoneInfo(tz))
