"""The machine's Profile for the planner: live inventory and load, cached measurements.

``get_profile(store)`` is the one entry point:

1. A profile *file* wins: the ``profile_file`` argument, else the ``LHORCH_PROFILE`` environment
   variable (a path to a Profile JSON, as ``lhorch profile --json`` prints). Tests and simulations use
   it to pose as another machine (a laptop with a small GPU, a 4-core box); nothing is measured and
   ``source`` is ``"file:<path>"``.
2. Otherwise the inventory (cores, memory, disk, GPUs, battery) and the current load are read live
   on every call; they are cheap.
3. The measured figures (matmul GFLOP/s, memory/disk/upload bandwidth) take seconds, so they are
   cached in the store's ``profile_cache`` table under the inventory fingerprint and reused while
   - the fingerprint is the same (same CPU, core counts, RAM size, GPUs),
   - they are younger than ``ttl`` (7 days by default; the clock is injectable),
   - they were measured by the same torch version, and
   - they are thorough when ``thorough=True`` is asked for.
   ``refresh=True`` measures again. ``source`` is ``"live"`` when just measured, ``"cache"`` when
   reused. Several hardware fingerprints keep their own rows (a laptop with and without its eGPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.core.profile import GpuInfo, Measurement, Profile
from lhorch.orchestrator.machine.inventory import Inventory, current_load, fingerprint, take_inventory
from lhorch.orchestrator.machine.microbench import (
    QUICK,
    THOROUGH,
    BenchSettings,
    Uploader,
    measure_all,
    try_upload_bandwidth,
)
from lhorch.orchestrator.state import profiles
from lhorch.orchestrator.state.store import Store, utcnow

PROFILE_ENV = "LHORCH_PROFILE"
DEFAULT_TTL = timedelta(days=7)


class Measure(Protocol):
    """What measures a machine; ``benchmarks.measure_all`` in production, a counting fake in tests."""

    def __call__(self, gpus: tuple[GpuInfo, ...], *, disk_dir: Path, settings: BenchSettings,
                 uploader: Uploader | None) -> tuple[dict[str, Measurement], list[str]]: ...


def load_profile_file(path: str | Path) -> Profile:
    """A Profile from JSON, marked ``source="file:<path>"``; a missing fingerprint is computed from
    the file's hardware so history recorded under it stays consistent."""
    path = Path(path)
    hint = "write one with `lhorch profile --json > my-machine.json`; docs/profile.md lists its keys"
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read profile file {path}: {exc.strerror or exc}", hint=hint) from exc
    try:
        profile = Profile.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise UsageError(f"{path}: not a valid profile: {where}: {first['msg']}"
                         f" ({exc.error_count()} error(s))", hint=hint) from exc
    update = {"source": f"file:{path}"}
    if not profile.fingerprint:
        update["fingerprint"] = fingerprint(profile)
    return profile.model_copy(update=update)


def dump_profile_json(profile: Profile) -> str:
    """The stable JSON form (keys in declaration order, documented in docs/profile.md)."""
    return profile.model_dump_json(indent=2)


def get_profile(
    store: Store,
    *,
    refresh: bool = False,
    thorough: bool = False,
    clock: Callable[[], datetime] = utcnow,
    profile_file: str | Path | None = None,
    ttl: timedelta = DEFAULT_TTL,
    uploader: Uploader | None = None,
    measure: Measure = measure_all,
    inventory: Callable[[Path], Inventory] = take_inventory,
    env: Mapping[str, str] | None = None,
    cpu_interval: float = 0.1,
) -> Profile:
    """This machine's Profile (see the module docstring for files, caching and invalidation).

    ``uploader``: where to measure upload bandwidth (``measured["upload"]``, MB/s); without one the
    figure comes from the cache or is absent. ``measure``, ``inventory``, ``clock`` and ``env`` are
    injectable for tests."""
    env = os.environ if env is None else env
    file = profile_file or env.get(PROFILE_ENV)
    if file:
        return load_profile_file(file)

    inv = inventory(store.home)
    fp = fingerprint(inv)
    now = clock()
    cached = None if refresh else _read_cache(store, fp)
    if cached is not None and not _still_valid(cached, inv, now=now, ttl=ttl, thorough=thorough):
        cached = None

    if cached is None:
        settings = THOROUGH if thorough else QUICK
        busy = _busy_note(inv)
        measured, notes = measure(inv.gpus, disk_dir=store.home, settings=settings, uploader=uploader)
        notes = [*notes, busy] if busy else notes
        measured_at, source, was_thorough = now, "live", thorough
        dirty = True
    else:
        measured, notes = dict(cached.measured), list(cached.notes)
        measured_at, source, was_thorough = cached.measured_at, "cache", cached.thorough
        dirty = False
        if uploader is not None and "upload" not in measured:
            # The first time a cloud endpoint is given: measure just that and keep it.
            upload, note = try_upload_bandwidth(uploader, mb=(THOROUGH if thorough else QUICK).upload_mb)
            if upload is not None:
                measured["upload"], dirty = upload, True
                notes = [n for n in notes if not n.startswith("upload not measured")]  # stale failure
            else:
                notes.append(note)

    profile = Profile(
        hostname=inv.hostname, os=inv.os, cpu_model=inv.cpu_model,
        physical_cores=inv.physical_cores, logical_cores=inv.logical_cores,
        ram_total_gb=inv.ram_total_gb, ram_available_gb=inv.ram_available_gb,
        swap_total_gb=inv.swap_total_gb, disk_free_gb=inv.disk_free_gb,
        gpus=list(inv.gpus), mps=inv.mps, on_battery=inv.on_battery, battery_percent=inv.battery_percent,
        torch_version=inv.torch_version, measured=measured,
        load=current_load(inv.gpus, cpu_interval=cpu_interval, now=clock),
        fingerprint=fp, measured_at=measured_at, source=source, thorough=was_thorough,
        notes=[*inv.notes, *notes],
    )
    if dirty:
        _write_cache(store, profile, inventory_notes=inv.notes)
    return profile


def _busy_note(inv: Inventory) -> str | None:
    """Figures measured on a busy machine are low and get cached for days: say so where it shows."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):
        return None
    if load < 0.5 * inv.logical_cores:
        return None
    return (f"measured while busy (load average {load:.1f} on {inv.logical_cores} logical cores): figures may be "
            f"low; run `lhorch profile --refresh` when the machine is idle")


def _still_valid(cached: Profile, inv: Inventory, *, now: datetime, ttl: timedelta, thorough: bool) -> bool:
    if cached.measured_at is None or now - cached.measured_at >= ttl or now < cached.measured_at - ttl:
        return False  # expired (or measured "in the future": a clock that jumped back)
    if cached.torch_version != inv.torch_version:
        return False  # kernels change between torch versions; so do the figures
    return cached.thorough or not thorough


def _read_cache(store: Store, fp: str) -> Profile | None:
    return profiles.get(store, fp)


def _write_cache(store: Store, profile: Profile, *, inventory_notes: tuple[str, ...]) -> None:
    # Inventory notes are live facts; only the measurement notes belong with the cached figures.
    profiles.put(store, profile.model_copy(update={"notes": [n for n in profile.notes if n not in inventory_notes]}))


def cached_profiles(store: Store) -> list[tuple[str, datetime | None]]:
    """(fingerprint, measured_at) of every cached measurement, newest first."""
    return profiles.cached(store)


__all__ = ["DEFAULT_TTL", "PROFILE_ENV", "Measure", "cached_profiles", "dump_profile_json", "get_profile",
           "load_profile_file"]
