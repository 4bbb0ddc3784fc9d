"""What this machine has: cores, memory, disk, GPUs, battery, and how busy it is right now.

Everything here is read, never benchmarked, so it is cheap enough to run on every plan. torch is
imported lazily (only to ask about CUDA/MPS) so that `current_load()` stays fast.

GPU discovery, in order:
1. torch.cuda (CUDA or ROCm builds): the GPUs torch can actually use.
2. NVML through ``pynvml`` when importable, else ``nvidia-smi --query-gpu ... --format=csv``: GPUs the
   driver sees but this torch cannot use (a CPU-only torch build). They are listed with
   ``usable=False`` so the planner knows a GPU exists but a stage run here would not get it.
3. Apple MPS (``torch.backends.mps.is_available()``): one entry with backend "mps"; its memory is
   the unified memory torch may use (``torch.mps.recommended_max_memory()`` where available).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psutil

from lhorch.orchestrator.core.profile import GpuInfo, Load

GB = 1024**3


@dataclass(frozen=True)
class Inventory:
    """The hardware facts a Profile is built on (no measurements)."""

    hostname: str
    os: str
    cpu_model: str
    physical_cores: int
    logical_cores: int
    ram_total_gb: float
    ram_available_gb: float
    swap_total_gb: float
    disk_free_gb: float
    gpus: tuple[GpuInfo, ...] = ()
    mps: bool = False
    on_battery: bool | None = None
    battery_percent: float | None = None
    torch_version: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self)


def fingerprint(inv: Inventory) -> str:
    """A short hash of what determines measured speed: CPU model and cores, RAM size (rounded to
    whole GiB, because the kernel's reservations move the exact figure between boots) and each GPU's
    name and memory. Free memory, disk, battery and hostname are left out on purpose: they change
    without the hardware changing. The torch version is not in it either (history keyed by this
    fingerprint should survive a torch upgrade); the profiler's cache checks it separately."""
    key = {
        "cpu": inv.cpu_model,
        "physical": inv.physical_cores,
        "logical": inv.logical_cores,
        "ram_gb": round(inv.ram_total_gb),
        "gpus": [[g.backend, g.name, round(g.memory_total_gb)] for g in inv.gpus],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


# --- CPU ----------------------------------------------------------------------------------------
def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux, sysctl on macOS, platform otherwise."""
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    if text:
        for line in text.splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; some ARM kernels say "Hardware" or "Processor".
            if key.strip() in ("model name", "Processor", "Hardware", "cpu model") and value.strip():
                return value.strip()
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                 text=True, timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown"


def physical_cores(cpuinfo: str | None = None) -> int:
    """psutil's count, else distinct (physical id, core id) pairs in /proc/cpuinfo, else logical."""
    count = psutil.cpu_count(logical=False)
    if count:
        return count
    text = cpuinfo if cpuinfo is not None else _read("/proc/cpuinfo")
    pairs, phys = set(), "0"
    for line in (text or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            phys = value.strip()
        elif key.strip() == "core id":
            pairs.add((phys, value.strip()))
    return len(pairs) or os.cpu_count() or 1


# --- GPUs ---------------------------------------------------------------------------------------
def _accelerator_possible() -> bool:
    """Whether this machine could have a GPU torch can use. Importing torch costs ~1.5 s, which every
    `lhorch run` would pay for nothing on a machine with no GPU driver at all."""
    if sys.platform == "darwin":
        return True  # Apple MPS
    devices = ("/proc/driver/nvidia", "/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/dxg")
    return any(Path(p).exists() for p in devices) or shutil.which("nvidia-smi") is not None


def _torch():
    if not _accelerator_possible():
        return None
    try:
        import torch  # deferred: ~1.5 s to import, and only a machine with a GPU driver needs it
    except ImportError:  # lhorch depends on torch, but the profiler must still describe the machine
        return None
    return torch


def _torch_version(torch) -> str | None:
    if torch is not None:
        return torch.__version__
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _torch_gpus(torch) -> list[GpuInfo]:
    if torch is None or not torch.cuda.is_available():
        return []
    backend = "rocm" if getattr(torch.version, "hip", None) else "cuda"
    driver = None
    if backend == "cuda":
        driver = _nvml_driver_version()
        if driver is None:  # no pynvml: the driver's own tool knows
            driver = next((g.driver_version for g in _nvidia_smi_gpus()), None)
    gpus = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free, total = torch.cuda.mem_get_info(i)
        except RuntimeError:  # a GPU in exclusive mode held by another process
            free, total = None, props.total_memory
        gpus.append(GpuInfo(
            index=i, name=props.name, backend=backend, memory_total_gb=round(total / GB, 2),
            memory_free_gb=None if free is None else round(free / GB, 2),
            compute_capability=f"{props.major}.{props.minor}", driver_version=driver,
            cuda_version=torch.version.hip if backend == "rocm" else torch.version.cuda,
        ))
    return gpus


def _nvml_driver_version() -> str | None:
    try:
        import pynvml  # optional (not a dependency of lhorch): present where NVIDIA's bindings are
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            version = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml raises NVMLError subclasses (and OSError when libnvidia-ml is missing)
        return None
    return version.decode() if isinstance(version, bytes) else version


def _nvml_gpus() -> list[GpuInfo] | None:
    """GPUs through NVML; None when pynvml is not installed or the driver is not there."""
    try:
        import pynvml  # optional (not a dependency of lhorch): present where NVIDIA's bindings are
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12020 -> "12.2"
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(GpuInfo(
                index=i, name=name.decode() if isinstance(name, bytes) else name, backend="cuda",
                memory_total_gb=round(mem.total / GB, 2), memory_free_gb=round(mem.free / GB, 2),
                compute_capability=f"{major}.{minor}",
                driver_version=driver.decode() if isinstance(driver, bytes) else driver,
                cuda_version=f"{cuda // 1000}.{cuda % 1000 // 10}", usable=False,
            ))
        return gpus
    except Exception:
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass  # shutdown after a failed query: nothing left to release


_SMI_FIELDS = "index,name,memory.total,memory.free,driver_version,compute_cap"


def parse_nvidia_smi(csv_text: str) -> list[GpuInfo]:
    """Rows of ``nvidia-smi --query-gpu=<_SMI_FIELDS> --format=csv,noheader,nounits`` (MiB)."""
    gpus = []
    for line in csv_text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        cc = parts[5] if len(parts) > 5 and parts[5] not in ("", "[N/A]", "[Not Supported]") else None
        gpus.append(GpuInfo(
            index=int(parts[0]), name=parts[1], backend="cuda",
            memory_total_gb=round(float(parts[2]) / 1024, 2), memory_free_gb=round(float(parts[3]) / 1024, 2),
            driver_version=parts[4], compute_capability=cc, usable=False,
        ))
    return gpus


def _nvidia_smi_gpus() -> list[GpuInfo]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    # compute_cap exists only in drivers >= 510; older ones reject the whole query, so ask again without.
    for fields in (_SMI_FIELDS, _SMI_FIELDS.rsplit(",", 1)[0]):
        try:
            out = subprocess.run([exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode == 0:
            return parse_nvidia_smi(out.stdout)
    return []


def _mps(torch, ram_total_gb: float, chip: str) -> GpuInfo | None:
    if torch is None or not getattr(torch.backends, "mps", None) or not torch.backends.mps.is_available():
        return None
    total = ram_total_gb
    recommended = getattr(getattr(torch, "mps", None), "recommended_max_memory", None)
    if recommended is not None:
        try:
            total = recommended() / GB
        except RuntimeError:
            pass  # older macOS: fall back to all unified memory
    # The GPU is part of the chip ("Apple M2 Pro"); MPS has no API for its name.
    return GpuInfo(index=0, name=f"{chip} GPU", backend="mps",
                   memory_total_gb=round(total, 2))


def gpu_inventory(ram_total_gb: float, chip: str = "") -> tuple[list[GpuInfo], bool, list[str]]:
    """(gpus, mps available, notes)."""
    torch = _torch()
    notes: list[str] = []
    gpus = _torch_gpus(torch)
    if not gpus:
        seen = _nvml_gpus()
        if seen is None:
            seen = _nvidia_smi_gpus()
        if seen:
            why = "this torch is a CPU-only build" if torch is None or not torch.version.cuda else \
                "torch.cuda.is_available() is False"
            notes.append(f"{len(seen)} NVIDIA GPU(s) visible to the driver but not usable: {why}")
            gpus = seen
    mps = _mps(torch, ram_total_gb, chip or cpu_model())
    if mps is not None:
        gpus.append(mps)
    return gpus, mps is not None, notes


# --- the whole inventory ------------------------------------------------------------------------
def disk_free_gb(path: Path) -> float:
    """Free space on the filesystem holding ``path`` (the nearest existing parent)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return round(shutil.disk_usage(path).free / GB, 2)


def take_inventory(home: Path) -> Inventory:
    vm, swap = psutil.virtual_memory(), psutil.swap_memory()
    ram_total = vm.total / GB
    chip = cpu_model()
    gpus, mps, notes = gpu_inventory(ram_total, chip)
    battery = psutil.sensors_battery() if hasattr(psutil, "sensors_battery") else None
    torch = _torch()
    return Inventory(
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()} ({platform.machine()})",
        cpu_model=chip,
        physical_cores=physical_cores(),
        logical_cores=os.cpu_count() or 1,
        ram_total_gb=round(ram_total, 2),
        ram_available_gb=round(vm.available / GB, 2),
        swap_total_gb=round(swap.total / GB, 2),
        disk_free_gb=disk_free_gb(home),
        gpus=tuple(gpus),
        mps=mps,
        on_battery=None if battery is None else not battery.power_plugged,
        battery_percent=None if battery is None else round(battery.percent, 1),
        torch_version=_torch_version(torch),
        notes=tuple(notes),
    )


def current_load(gpus: list[GpuInfo] | tuple[GpuInfo, ...] = (), *, cpu_interval: float = 0.1,
                 now: Callable[[], datetime] | None = None) -> Load:
    """How busy the machine is now: CPU % over ``cpu_interval`` seconds, free RAM, free memory of
    each listed usable CUDA/ROCm GPU (same order as ``gpus``; MPS and unusable GPUs report their
    inventory figure). Fast: no benchmark, torch is only touched when there is a usable CUDA GPU."""
    free: list[float] = []
    torch = _torch() if any(g.usable and g.backend in ("cuda", "rocm") for g in gpus) else None
    for g in gpus:
        if torch is not None and g.usable and g.backend in ("cuda", "rocm"):
            try:
                free.append(round(torch.cuda.mem_get_info(g.index)[0] / GB, 2))
                continue
            except RuntimeError:
                pass
        free.append(g.memory_free_gb if g.memory_free_gb is not None else g.memory_total_gb)
    try:
        load_avg = os.getloadavg()[0]
    except (OSError, AttributeError):  # Windows has no load average
        load_avg = None
    return Load(
        cpu_percent=psutil.cpu_percent(interval=cpu_interval),
        ram_available_gb=round(psutil.virtual_memory().available / GB, 2),
        gpu_memory_free_gb=free,
        load_avg_1m=None if load_avg is None else round(load_avg, 2),
        at=now() if now else None,
    )
