"""What the local machine has and how fast it is: the profiler's output, the planner's input.

Plain data only; measuring lives in profiler.py. A Profile can be saved to and loaded from JSON so
that tests and simulations can pose as other machines.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GpuInfo(_Data):
    index: int = 0
    name: str
    backend: str = Field("cuda", description="cuda | mps | rocm")
    memory_total_gb: float
    memory_free_gb: float | None = None
    compute_capability: str | None = None
    driver_version: str | None = None
    cuda_version: str | None = None
    usable: bool = Field(True, description="Whether torch in this environment can run on it (False e.g. when "
                                           "nvidia-smi sees a GPU but torch is a CPU-only build).")


class Measurement(_Data):
    """One measured figure, with how it was measured so a user can judge it."""

    value: float
    unit: str
    method: str
    seconds: float = Field(0.0, description="How long the measurement took.")
    spread: float | None = Field(None, description="(best - worst) / best over the short windows measured; "
                                                   "small means steady. None for a single window.")
    cpu_share: float | None = Field(None, description="CPU seconds the benchmark's threads got / (wall seconds x "
                                                      "threads): below 1 when other work competed. CPU figures only.")


class Load(_Data):
    cpu_percent: float = 0.0
    ram_available_gb: float = 0.0
    gpu_memory_free_gb: list[float] = Field(default_factory=list)
    load_avg_1m: float | None = Field(None, description="1-minute load average (runnable threads); None where "
                                                       "the OS has none.")
    at: datetime | None = Field(None, description="When this load was read.")


class Profile(_Data):
    format_version: int = Field(1, description="Version of this JSON layout; bumped on incompatible changes.")
    hostname: str = "local"
    os: str = ""
    cpu_model: str = ""
    physical_cores: int
    logical_cores: int
    ram_total_gb: float
    ram_available_gb: float
    swap_total_gb: float = 0.0
    disk_free_gb: float
    gpus: list[GpuInfo] = Field(default_factory=list)
    mps: bool = False
    on_battery: bool | None = None
    battery_percent: float | None = Field(None, description="Charge left; None when there is no battery.")
    torch_version: str | None = Field(None, description="torch that measured the figures (they depend on it).")
    # Measured capability, keyed e.g. "matmul_cpu_fp32", "matmul_cuda0_bf16", "mem_bandwidth",
    # "disk_write", "disk_read", "upload".
    measured: dict[str, Measurement] = Field(default_factory=dict)
    load: Load = Field(default_factory=Load)
    fingerprint: str = Field("", description="Hash of the hardware inventory; cache key for measurements.")
    measured_at: datetime | None = None
    source: str = Field("live", description="live | cache | file:<path>")
    thorough: bool = Field(False, description="Measured with the longer --thorough benchmarks.")
    notes: list[str] = Field(default_factory=list,
                             description="Decisions the profiler made, e.g. a precision left out as too slow.")
    provisional: bool = Field(False, description="Measured while the machine was busy: CPU figures are estimated "
                                                 "from the share it got, and measured again at the next quiet moment.")
    measured_load: float | None = Field(None, description="1-minute load average just before measuring.")
    confidence: str = Field("unknown", description="high | medium | low: how far the figures can be trusted "
                                                   "as this machine's capacity (see confidence_reason).")
    confidence_reason: str = ""

    def gflops(self, device: str = "cpu", precision: str = "fp32") -> float | None:
        m = self.measured.get(f"matmul_{device}_{precision}")
        return m.value if m else None

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)
