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
4. The figures stand for *capacity*, not for how busy the machine was when measured (issue 21: one
   busy measurement sent a pipeline to the cloud for a week). Each matmul is the best of several
   short windows; a re-measurement within the TTL keeps the best figure per key; a measurement
   taken while the machine is busy (load average >= half the logical cores) is *provisional*: its
   CPU figures are scaled by the share of the CPU the benchmark could get, it never replaces quiet
   figures, and it is measured again at the next quiet call.
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
from lhorch.orchestrator.state import history, profiles
from lhorch.orchestrator.state.store import Store, utcnow

PROFILE_ENV = "LHORCH_PROFILE"
DEFAULT_TTL = timedelta(days=7)
BUSY_LOAD_SHARE = 0.5  # load average >= this x logical cores: the machine is busy
MAX_BUSY_CORRECTION = 4.0  # a benchmark that got less than a quarter of the CPU says too little to scale
# Figures that compete with other processes for the CPU (GPU kernels do not).
_CPU_BOUND = ("matmul_cpu_", "mem_bandwidth")


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
    load_avg: Callable[[], float | None] | None = None,
) -> Profile:
    """This machine's Profile (see the module docstring for files, caching and invalidation).

    ``uploader``: where to measure upload bandwidth (``measured["upload"]``, MB/s); without one the
    figure comes from the cache or is absent. ``measure``, ``inventory``, ``clock`` and ``env`` are
    injectable for tests; ``load_avg`` gives the 1-minute load average before measuring (default:
    the OS's)."""
    env = os.environ if env is None else env
    file = profile_file or env.get(PROFILE_ENV)
    if file:
        return load_profile_file(file)

    inv = inventory(store.home)
    fp = fingerprint(inv)
    now = clock()
    load = (load_avg or _load_avg)()
    busy = load is not None and load >= BUSY_LOAD_SHARE * inv.logical_cores
    previous = _read_cache(store, fp)
    if previous is not None and not _still_valid(previous, inv, now=now, ttl=ttl, thorough=thorough):
        previous = None
    # A provisional (busy) cache is good enough while the machine stays busy; quiet, measure again.
    cached = None if refresh or (previous is not None and previous.provisional and not busy) else previous

    provisional = False
    if cached is None:
        settings = THOROUGH if thorough else QUICK
        measured, notes = measure(inv.gpus, disk_dir=store.home, settings=settings, uploader=uploader)
        measured_at, source, was_thorough, provisional = now, "live", thorough, busy
        if busy:
            assert load is not None
            measured = _capacity_from_busy(measured, load=load, cores=inv.logical_cores)
            notes = [*notes, _busy_note(load, inv.logical_cores)]
        kept: list[str] = []
        if previous is not None and provisional and not previous.provisional:
            # Quiet figures are the truth; a busy estimate only adds what they lack.
            kept = sorted(set(previous.measured) & set(measured))
            measured, provisional = {**measured, **previous.measured}, False
            measured_at, was_thorough = previous.measured_at, previous.thorough  # the truth ages from then
        elif previous is not None and previous.provisional == provisional:
            # Several measurements of the same machine in the same state: the best of each is its
            # capacity. (A busy cache never survives a quiet measurement: it is not merged.)
            measured, kept = _best_of(previous.measured, measured)
        if kept and previous is not None:
            notes = [*notes, f"kept the earlier figure for {', '.join(kept)} "
                             f"(measured {previous.measured_at:%Y-%m-%d %H:%M}): it is higher or was quiet"]
        dirty = True
    else:
        measured, notes = dict(cached.measured), list(cached.notes)
        measured_at, source, was_thorough = cached.measured_at, "cache", cached.thorough
        provisional, load = cached.provisional, cached.measured_load
        dirty = False
        if uploader is not None and "upload" not in measured:
            # The first time a cloud endpoint is given: measure just that and keep it.
            upload, note = try_upload_bandwidth(uploader, mb=(THOROUGH if thorough else QUICK).upload_mb)
            if upload is not None:
                measured["upload"], dirty = upload, True
                notes = [n for n in notes if not n.startswith("upload not measured")]  # stale failure
            else:
                notes.append(note)
    runs = history.runs_on(store, fp)
    level, why = confidence(measured, provisional=provisional, thorough=was_thorough, history_runs=runs)

    profile = Profile(
        hostname=inv.hostname, os=inv.os, cpu_model=inv.cpu_model,
        physical_cores=inv.physical_cores, logical_cores=inv.logical_cores,
        ram_total_gb=inv.ram_total_gb, ram_available_gb=inv.ram_available_gb,
        swap_total_gb=inv.swap_total_gb, disk_free_gb=inv.disk_free_gb,
        gpus=list(inv.gpus), mps=inv.mps, on_battery=inv.on_battery, battery_percent=inv.battery_percent,
        torch_version=inv.torch_version, measured=measured,
        load=current_load(inv.gpus, cpu_interval=cpu_interval, now=clock),
        fingerprint=fp, measured_at=measured_at, source=source, thorough=was_thorough,
        notes=[*inv.notes, *notes], provisional=provisional,
        measured_load=None if load is None else round(load, 2), confidence=level, confidence_reason=why,
    )
    if dirty:
        _write_cache(store, profile, inventory_notes=inv.notes)
    return profile


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None  # Windows has no load average: treated as quiet


def _busy_note(load: float, cores: int) -> str:
    return (f"measured while busy (load average {load:.1f} on {cores} logical cores): CPU figures are estimated "
            f"from the share the benchmark got, not cached as the machine's capacity, and measured again at the "
            f"next quiet `lhorch profile` or plan")


def _capacity_from_busy(measured: dict[str, Measurement], *, load: float, cores: int) -> dict[str, Measurement]:
    """CPU figures scaled to the whole machine: by the share of the CPU the benchmark's threads got
    (``cpu_share``, from the process's CPU time) where measured; otherwise from the load: with
    ``load`` other runnable threads on ``cores`` logical cores, one thread per core gets about
    cores / (cores + load) of them (the scheduler shares fairly)."""
    by_load = min(MAX_BUSY_CORRECTION, (cores + load) / max(cores, 1))
    out = dict(measured)
    for key, m in measured.items():
        if not key.startswith(_CPU_BOUND):
            continue
        if m.cpu_share:  # measured directly: the CPU time the benchmark's threads really got
            factor = min(MAX_BUSY_CORRECTION, 1.0 / m.cpu_share)
            why = f"it got {m.cpu_share:.0%} of the CPU"
        else:
            factor, why = by_load, f"load {load:.1f} on {cores} cores"
        out[key] = m.model_copy(update={
            "value": round(m.value * factor, 2),
            "method": f"{m.method}; measured {m.value:g} while busy, x{factor:.2f} because {why} (estimated capacity)"})
    return out


def _best_of(old: Mapping[str, Measurement], new: Mapping[str, Measurement]) -> tuple[dict[str, Measurement],
                                                                                     list[str]]:
    """Per key the higher figure (every figure is a throughput: more is better); which old ones won."""
    out, kept = dict(new), []
    for key, m in old.items():
        if key not in out:
            out[key] = m
        elif m.value > out[key].value:
            out[key], kept = m, [*kept, key]
    return out, kept


def confidence(measured: Mapping[str, Measurement], *, provisional: bool, thorough: bool,
               history_runs: int) -> tuple[str, str]:
    """How far the figures stand for this machine's capacity: (high | medium | low, why)."""
    if history_runs:
        return "high", (f"{history_runs} recorded stage run(s) on this machine: the planner uses their times for "
                        f"those stages and the benchmarks only for the others")
    cpu = measured.get("matmul_cpu_fp32")
    if cpu is None:
        return "low", "no CPU matmul figure: the planner assumes a typical laptop"
    if provisional:
        return "low", "measured while busy: CPU figures are estimates, measured again at the next quiet moment"
    spread = cpu.spread
    if spread is not None and spread > 0.25:
        return "medium", f"the CPU matmul windows disagreed by {spread:.0%}: something else ran meanwhile"
    if thorough or (spread is not None and spread <= 0.1):
        return "high", "quiet measurement, steady windows" + (" (thorough)" if thorough else "")
    return "medium", "quick measurement; no stage has run here yet (history outweighs benchmarks once it exists)"


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


__all__ = ["DEFAULT_TTL", "confidence", "PROFILE_ENV", "Measure", "cached_profiles", "dump_profile_json", "get_profile",
           "load_profile_file"]
