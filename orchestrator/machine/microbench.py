"""Short benchmarks that say how fast this machine really is. Each returns a ``Measurement`` that
carries its own method, so a user can judge the figure.

Every loop is bounded in time *and* in count (``timed_loop``), after an untimed warm-up (first
calls allocate, JIT-select kernels and fault pages in). Figures are sustained rates: total work
over total time of the timed window, not a best iteration, because the planner multiplies them by
hours of work.

Methods:
- matmul: ``a @ b`` on n×n random tensors; 2·n³ FLOP per product. fp32 on every device; on CUDA also
  bf16 (where ``torch.cuda.is_bf16_supported()``), fp16 and tf32 (compute capability ≥ 8.0, by
  enabling ``torch.backends.cuda.matmul.allow_tf32`` for the measurement only); on MPS fp16 (and bf16
  if the OS supports it). On CPU, bf16 is probed on a small product first and kept only when it
  reaches ``CPU_BF16_MIN_RATIO`` of fp32: CPUs without AVX512-BF16/AMX emulate it tens of times
  slower than fp32, and a figure the planner should never choose is noise.
- memory bandwidth: ``dst.copy_(src)`` of a large fp32 tensor; bytes read + bytes written per copy
  (STREAM "copy" counting). On CUDA also device-to-device and pinned host-to-device.
- disk: sequential write of random bytes in 4 MiB chunks to a temporary file in the given directory,
  then ``fsync`` (its time is included: data on the disk, not in the page cache). Read: the file is
  then evicted from the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (after fsync the
  pages are clean, so Linux drops them) and read back sequentially. Where fadvise does not exist
  (macOS, Windows) the read may be served from memory; its method says "may be cached".
- upload: one timed ``put`` of a few MB through an injected ``Uploader`` after a tiny untimed put
  that opens the connection (DNS, TLS). Absent unless an uploader is given.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from lhorch.orchestrator.core.profile import GpuInfo, Measurement

MB = 1_000_000
MiB = 1024 * 1024
# Keep CPU bf16 only when it is at least this fraction of fp32 throughput (see module docstring).
CPU_BF16_MIN_RATIO = 0.5


@dataclass(frozen=True)
class BenchSettings:
    """Sizes and time bounds of one profiling pass."""

    matmul_n_cpu: int = 1024
    matmul_n_gpu: int = 4096
    matmul_seconds: float = 0.8        # timed time per device and precision, split into windows
    matmul_windows: int = 4            # short windows, the best kept: a neighbour's burst lowers one, not all
    matmul_max_iters: int = 500
    probe_n: int = 256                 # CPU bf16 go/no-go probe
    probe_seconds: float = 0.15
    copy_mib: int = 64
    copy_seconds: float = 0.4
    copy_max_iters: int = 200
    disk_mib: int = 64
    disk_seconds: float = 2.0          # bound for each of write and read
    upload_mb: int = 4
    warmup: int = 1


QUICK = BenchSettings()
THOROUGH = BenchSettings(matmul_n_cpu=2048, matmul_n_gpu=8192, matmul_seconds=4.0, matmul_max_iters=5000,
                         probe_n=512, probe_seconds=0.5, copy_mib=256, copy_seconds=2.0, copy_max_iters=2000,
                         disk_mib=1024, disk_seconds=15.0, upload_mb=32, warmup=3)


@dataclass(frozen=True)
class Timing:
    iters: int
    seconds: float
    warmup: int


def timed_loop(fn: Callable[[], object], *, seconds: float, max_iters: int, warmup: int = 1,
               sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then repeatedly until ``seconds`` have passed or
    ``max_iters`` ran (at least once). ``sync`` waits for queued device work; it is called per batch,
    and batches are sized from the warm-up so that a fast GPU kernel is not dominated by syncs."""
    per_iter = None
    for _ in range(warmup):
        t0 = clock()
        fn()
        sync()
        per_iter = clock() - t0
    batch = 1 if not per_iter else max(1, min(max_iters, int(0.02 / per_iter)))
    iters, start = 0, clock()
    elapsed = 0.0
    while iters < max_iters:
        n = min(batch, max_iters - iters)
        for _ in range(n):
            fn()
        sync()
        iters += n
        elapsed = clock() - start
        if elapsed >= seconds:
            break
    return Timing(iters=iters, seconds=elapsed, warmup=warmup)


# --- devices ------------------------------------------------------------------------------------
def device_key(gpu: GpuInfo | None) -> str:
    """The device part of a measurement key: "cpu", "cuda0", "mps"."""
    if gpu is None:
        return "cpu"
    return "mps" if gpu.backend == "mps" else f"cuda{gpu.index}"


def _torch_device(gpu: GpuInfo | None) -> str:
    if gpu is None:
        return "cpu"
    return "mps" if gpu.backend == "mps" else f"cuda:{gpu.index}"


def _sync_for(torch, device: str) -> Callable[[], None]:
    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)
    if device == "mps":
        return torch.mps.synchronize
    return lambda: None


# --- matmul -------------------------------------------------------------------------------------
def matmul_gflops(device: str = "cpu", precision: str = "fp32", *, n: int = 1024, seconds: float = 0.8,
                  max_iters: int = 500, warmup: int = 1, windows: int = 1) -> Measurement:
    """Sustained GFLOP/s of an n×n matmul on ``device`` ("cpu", "cuda:0", "mps") in ``precision``
    (fp32, tf32, bf16, fp16): the best of ``windows`` short timed windows sharing ``seconds``.

    Best, not mean: the question is what the machine can do (its capacity), and other work on it
    only ever lowers a window; ``spread`` says how much the windows disagreed (issue 21)."""
    import torch  # deferred: ~1.5 s to import, paid only when something is measured

    dtype = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    sync = _sync_for(torch, device)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        out = torch.empty(n, n, device=device, dtype=dtype)
        sync()
        windows = max(1, windows)
        timings, cpu_seconds = [], []
        for k in range(windows):
            cpu0 = _process_cpu_seconds()
            timings.append(timed_loop(lambda: torch.matmul(a, b, out=out), seconds=seconds / windows,
                                      max_iters=max(1, max_iters // windows), warmup=warmup if k == 0 else 0,
                                      sync=sync))
            cpu_seconds.append(_process_cpu_seconds() - cpu0)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    rates = [2 * n**3 * t.iters / t.seconds / 1e9 for t in timings]
    best = max(range(len(rates)), key=rates.__getitem__)
    share = None
    if device == "cpu" and timings[best].seconds > 0:
        # The warm-up's CPU time is in the first window's count: slightly high, never low.
        share = round(min(1.0, cpu_seconds[best] / timings[best].seconds / max(torch.get_num_threads(), 1)), 3)
    timing, value = timings[best], rates[best]
    threads = f", {torch.get_num_threads()} threads" if device == "cpu" else ""
    spread = (value - min(rates)) / value if len(rates) > 1 and value > 0 else None
    of = f"best of {len(rates)} windows (spread {spread:.0%}): " if spread is not None else ""
    return Measurement(
        value=round(value, 2), unit="GFLOP/s",
        method=(f"torch.matmul {n}x{n} {precision} on {device}{threads}: {of}{timing.iters} products in "
                f"{timing.seconds:.2f}s after {warmup} warm-up; 2n^3 FLOP each, sustained"),
        seconds=round(sum(t.seconds for t in timings), 4), spread=None if spread is None else round(spread, 4),
        cpu_share=share,
    )


def _process_cpu_seconds() -> float:
    """CPU seconds this process has used (all threads): how much of the machine the benchmark got."""
    times = os.times()
    return times.user + times.system


def precisions(gpu: GpuInfo | None) -> list[str]:
    """Precisions worth measuring on a device beyond fp32 (CPU bf16 is decided by a probe)."""
    if gpu is None:
        return []
    if gpu.backend == "mps":
        return ["fp16", "bf16"]
    import torch  # deferred: ~1.5 s to import, paid only when something is measured

    extra = []
    cc = float(gpu.compute_capability or 0)
    if cc >= 8.0 and gpu.backend == "cuda":
        extra.append("tf32")
    if torch.cuda.is_bf16_supported():
        extra.append("bf16")
    extra.append("fp16")
    return extra


# --- memory -------------------------------------------------------------------------------------
def copy_bandwidth(device: str = "cpu", *, mib: int = 64, seconds: float = 0.4, max_iters: int = 200,
                   warmup: int = 1, source: str | None = None) -> Measurement:
    """GB/s of ``dst.copy_(src)`` with ``mib`` MiB tensors; ``source`` another device for transfers
    (e.g. source="cpu", device="cuda:0" is pinned host-to-device, counted once: bytes moved)."""
    import torch  # deferred: ~1.5 s to import, paid only when something is measured

    numel = mib * MiB // 4
    src_device = source or device
    src = torch.ones(numel, dtype=torch.float32, device=src_device,
                     pin_memory=source == "cpu" and device != "cpu")
    dst = torch.empty(numel, dtype=torch.float32, device=device)
    sync = _sync_for(torch, device if device != "cpu" else src_device)
    timing = timed_loop(lambda: dst.copy_(src, non_blocking=True), seconds=seconds, max_iters=max_iters,
                        warmup=warmup, sync=sync)
    per_copy = numel * 4 * (1 if source else 2)  # a transfer moves once; an in-memory copy reads + writes
    what = f"{src_device}->{device} transfer" if source else f"copy on {device}, read+write counted"
    return Measurement(
        value=round(per_copy * timing.iters / timing.seconds / 1e9, 2), unit="GB/s",
        method=f"tensor.copy_ of {mib} MiB ({what}): {timing.iters} copies in {timing.seconds:.2f}s",
        seconds=round(timing.seconds, 4),
    )


# --- disk ---------------------------------------------------------------------------------------
def disk_throughput(directory: Path, *, mib: int = 64, seconds: float = 2.0, chunk_mib: int = 4
                    ) -> tuple[Measurement, Measurement]:
    """(write, read) MB/s of a temporary file in ``directory``; see the module docstring."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chunk = os.urandom(chunk_mib * MiB)  # random: a compressing filesystem cannot shrink it
    fd, name = tempfile.mkstemp(prefix=".lhorch-disk-probe-", dir=directory)
    try:
        written, start = 0, time.perf_counter()
        while written < mib * MiB and (written == 0 or time.perf_counter() - start < seconds):
            written += os.write(fd, chunk)
        os.fsync(fd)
        write_s = time.perf_counter() - start
        evicted = hasattr(os, "posix_fadvise")
        if evicted:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        fd = -1
        read, start = 0, time.perf_counter()
        with open(name, "rb", buffering=0) as f:
            while time.perf_counter() - start < seconds or read == 0:
                data = f.read(chunk_mib * MiB)
                if not data:
                    break
                read += len(data)
        read_s = time.perf_counter() - start
    finally:
        if fd >= 0:
            os.close(fd)
        os.unlink(name)
    cache = ("page cache dropped for the file with posix_fadvise(DONTNEED) after fsync" if evicted
             else "no fadvise on this OS: may be cached, an upper bound")
    return (
        Measurement(value=round(written / MB / write_s, 1), unit="MB/s", seconds=round(write_s, 4),
                    method=f"sequential write of {written // MiB} MiB in {chunk_mib} MiB chunks to {directory}, "
                           f"fsync included"),
        Measurement(value=round(read / MB / read_s, 1), unit="MB/s", seconds=round(read_s, 4),
                    method=f"sequential read of {read // MiB} MiB back from {directory}; {cache}"),
    )


# --- upload -------------------------------------------------------------------------------------
class Uploader(Protocol):
    """Where upload bandwidth is measured: an object store bucket, a remote cluster. ``put`` stores
    ``data`` under ``key``; ``delete`` removes it (deleting a missing key is not an error)."""

    name: str

    def put(self, key: str, data: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


class ObjectStoreUploader:
    """An Uploader over any client with the S3 API shape (``put_object``/``delete_object``), e.g. a
    boto3 S3 client that the caller creates and injects; this module never imports boto3."""

    def __init__(self, client, bucket: str, prefix: str = "lhorch/probe/"):
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.name = f"s3://{bucket}/{prefix}"

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)


def upload_bandwidth(uploader: Uploader, *, mb: int = 4, clock: Callable[[], float] = time.perf_counter
                     ) -> Measurement:
    """MB/s of one timed put of ``mb`` MB of random bytes, after an untimed 1 KB put that opens the
    connection. Both objects are deleted afterwards."""
    key = f"lhorch-upload-probe-{os.getpid()}-{int(time.time())}"
    try:
        uploader.put(key + "-warm", b"x" * 1024)
        data = os.urandom(mb * MB)
        start = clock()
        uploader.put(key, data)
        elapsed = max(clock() - start, 1e-9)
    finally:
        for k in (key + "-warm", key):
            uploader.delete(k)
    return Measurement(value=round(len(data) / MB / elapsed, 2), unit="MB/s", seconds=round(elapsed, 6),
                       method=f"one put of {mb} MB to {uploader.name} after a 1 KB warm-up put")


def try_upload_bandwidth(uploader: Uploader, *, mb: int) -> tuple[Measurement | None, str]:
    """``upload_bandwidth``, or (None, a note) when the endpoint fails: an unreachable bucket or
    missing credentials must not stop the machine from being profiled."""
    try:
        return upload_bandwidth(uploader, mb=mb), ""
    except Exception as exc:  # any client's errors (botocore, OSError, ...): reported, not raised
        return None, f"upload not measured: {uploader.name}: {type(exc).__name__}: {str(exc)[:160]}"


def _release_device_memory(gpu: GpuInfo) -> None:
    """Give the benchmark tensors back to the driver: the caching allocator would otherwise keep
    them reserved in this (planner) process while stages need the GPU."""
    import torch  # deferred: ~1.5 s to import, paid only when something is measured

    if gpu.backend == "mps":
        torch.mps.empty_cache()
    else:
        torch.cuda.empty_cache()


# --- everything ---------------------------------------------------------------------------------
def measure_all(gpus: list[GpuInfo] | tuple[GpuInfo, ...], *, disk_dir: Path, settings: BenchSettings = QUICK,
                uploader: Uploader | None = None) -> tuple[dict[str, Measurement], list[str]]:
    """Every figure this machine supports, keyed as ``Profile.measured`` documents, plus notes on
    decisions (a precision left out, a device skipped)."""
    s = settings
    figures: dict[str, Measurement] = {}
    notes: list[str] = []
    matmul = partial(matmul_gflops, seconds=s.matmul_seconds, max_iters=s.matmul_max_iters, warmup=s.warmup,
                     windows=s.matmul_windows)

    fp32 = figures["matmul_cpu_fp32"] = matmul("cpu", "fp32", n=s.matmul_n_cpu)
    probe = matmul_gflops("cpu", "bf16", n=s.probe_n, seconds=s.probe_seconds, max_iters=s.matmul_max_iters)
    if probe.value >= CPU_BF16_MIN_RATIO * fp32.value:
        figures["matmul_cpu_bf16"] = matmul("cpu", "bf16", n=s.matmul_n_cpu)
    else:
        notes.append(f"cpu bf16 matmul left out: {probe.value:g} GFLOP/s on a {s.probe_n}^2 probe is below "
                     f"{CPU_BF16_MIN_RATIO:g}x fp32 ({fp32.value:g}); use fp32 on this CPU")
    figures["mem_bandwidth"] = copy_bandwidth("cpu", mib=s.copy_mib, seconds=s.copy_seconds,
                                              max_iters=s.copy_max_iters, warmup=s.warmup)

    for gpu in gpus:
        key = device_key(gpu)
        if not gpu.usable:
            notes.append(f"{key} ({gpu.name}) not measured: torch here cannot use it")
            continue
        device = _torch_device(gpu)
        for precision in ["fp32", *precisions(gpu)]:
            try:
                figures[f"matmul_{key}_{precision}"] = matmul(device, precision, n=s.matmul_n_gpu)
            except (RuntimeError, TypeError) as exc:  # e.g. bf16 on an MPS without macOS 14
                notes.append(f"{key} {precision} matmul not measured: {str(exc).splitlines()[0][:120]}")
        copy = partial(copy_bandwidth, mib=s.copy_mib * 4, seconds=s.copy_seconds, max_iters=s.copy_max_iters,
                       warmup=s.warmup)
        figures[f"mem_bandwidth_{key}"] = copy(device)
        if gpu.backend != "mps":  # unified memory: there is no host-to-device link to measure
            figures[f"h2d_{key}"] = copy(device, source="cpu")
        _release_device_memory(gpu)

    figures["disk_write"], figures["disk_read"] = disk_throughput(disk_dir, mib=s.disk_mib, seconds=s.disk_seconds)
    if uploader is not None:
        upload, note = try_upload_bandwidth(uploader, mb=s.upload_mb)
        if upload is not None:
            figures["upload"] = upload
        else:
            notes.append(note)
    for m in figures.values():
        if not math.isfinite(m.value) or m.value <= 0:
            raise RuntimeError(f"benchmark produced an impossible figure: {m}")
    return figures, notes
