"""How long a stage takes on an offer, whether it fits there, and how long data takes to move.

Pure: everything comes in through the constructor (the profile, recorded observations, sizes);
nothing here reads a file, a clock or the store. The planner builds one Estimator per plan.

Run time on an offer, in order of trust:
1. recorded history of this stage on that machine (median of the observed seconds);
2. history of this stage on another machine, scaled by the throughput ratio of the two;
3. ``hints.minutes_on`` for that GPU model (or ``cpu``), else the same scaled from a named one;
4. ``hints.minutes`` (on the local machine), scaled;
5. ``hints.gflops`` (total work) over the offer's sustained throughput x ``UTILISATION``;
6. ``hints.samples`` x ``hints.epochs`` x ``GFLOP_PER_SAMPLE``, the same way;
7. ``DEFAULT_LOCAL_SECONDS`` on the local machine, scaled.

"Throughput" is the device the stage uses: a stage with ``resources.gpus > 0`` runs on GPUs
(per-GPU sustained matmul x GPUs), any other stage on CPU cores (node fp32 matmul / vCPUs x the
cores it asks for). For spot offers the expected re-run after interruptions is added (rate per
hour x run hours x (half a checkpoint interval + a replacement node's start-up)).

A stage that spans N nodes (``resources.nodes``, per-node resources) runs its one-node time divided
by the data-parallel speed-up N x e^log2(N); e is 0.9, or what this stage's history on one and on N
nodes shows (lhorch.orchestrator.core.nodes). History of the stage on exactly N nodes of the type
wins, as rule 1 says; spot interruptions hit any of the N nodes. The local machine is one node.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from lhorch.orchestrator.core.nodes import (
    DEFAULT_EFFICIENCY,
    cluster_startup_seconds,
    data_parallel_speedup,
    learnt_efficiency,
    machine_key,
    split_machine_key,
)
from lhorch.orchestrator.core.plan import Offer
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.core.spec import Stage

DEFAULT_LOCAL_SECONDS = 60.0  # a stage with no hint and no history: a small constant
UTILISATION = 0.4  # share of sustained matmul throughput real training code reaches
GFLOP_PER_SAMPLE = 1.0  # forward+backward of a small CNN on one sample (~3 x 0.3 GFLOP)
DEFAULT_CPU_GFLOPS = 200.0  # an unmeasured laptop CPU, whole node
DEFAULT_GPU_GFLOPS = 20000.0  # an unmeasured, unknown GPU
DEFAULT_UPLOAD_MBPS = 10.0  # home/office uplink when the profiler has not measured one
DOWNLOAD_OVER_UPLOAD = 4.0  # downlinks are usually this much faster than uplinks
CLOUD_COPY_MBPS = 200.0  # cluster -> S3 -> cluster in one region
CLOUD_MEMORY_USABLE = 0.9  # OS, Ray and the object store take the rest of an instance's RAM
# A CPU stage is mostly Python, pandas, tokenizers: scalar code that gains nothing from the server
# vector units the matmul figures measure, and a laptop or desktop core turbos higher than a cloud
# vCPU's. So a cloud core counts as no faster than a local one: what the cloud sells a CPU stage is
# more cores (issue 21: a laptop's 1-CPU preprocessing went to the cloud as "3.9x faster").
SCALAR_SPEEDUP_CAP = 1.0
LOCAL = "local"

# Sustained best-precision matmul GFLOP/s per GPU for names that hints and profiles use; the
# same basis as providers/aws/catalogue.json (about 50-75% of the dense datasheet peak).
GPU_REFERENCE_GFLOPS: dict[str, float] = {
    "t4": 25000, "a10g": 50000, "a10": 60000, "l4": 60000, "v100": 90000, "a100": 220000,
    "h100": 500000, "l40s": 180000, "rtx 3060": 25000, "rtx 3080": 45000, "rtx 3090": 60000,
    "rtx 4070": 50000, "rtx 4080": 90000, "rtx 4090": 150000, "rtx a6000": 90000, "mps": 8000,
}

# stage -> machine -> observed seconds; or a callable giving one stage's machine -> seconds.
# Machine names: "local" for this machine, otherwise an instance type such as "g5.xlarge".
ObservationMap = Mapping[str, Mapping[str, Sequence[float]]]
ObservationFn = Callable[[str], Mapping[str, Sequence[float]]]
Observations = ObservationMap | ObservationFn | None


def _norm(name: str) -> str:
    text = name.lower().replace("nvidia", "").replace("geforce", "").replace("tesla", "")
    return " ".join(text.split())


def gpu_reference_gflops(name: str | None) -> float | None:
    if not name:
        return None
    text = _norm(name)
    best: tuple[int, float] | None = None
    for key, value in GPU_REFERENCE_GFLOPS.items():
        if key in text and (best is None or len(key) > best[0]):
            best = (len(key), value)  # longest match: "a10g" before "a10"
    return best[1] if best else None


def local_offer(profile: Profile, electricity_usd_per_hour: float = 0.0) -> Offer:
    """The local machine as an Offer: what it has free now, how fast it measured, what it costs."""
    gpus = [g for g in profile.gpus if g.backend != "mps"]
    gpu_count, gpu_memory, gpu_model = len(gpus), 0.0, None
    if gpus:
        gpu_memory = min(g.memory_free_gb or g.memory_total_gb for g in gpus)
        gpu_model = gpus[0].name
    elif profile.mps or any(g.backend == "mps" for g in profile.gpus):
        gpu_count, gpu_model = 1, "mps"
        gpu_memory = 0.75 * profile.ram_total_gb  # unified memory; macOS caps GPU use near this
    measured_gpu = [m.value for k, m in profile.measured.items()
                    if k.startswith(("matmul_cuda", "matmul_mps", "matmul_rocm", "matmul_gpu"))]
    if measured_gpu:
        gpu_gflops: float | None = max(measured_gpu)
    else:
        gpu_gflops = (gpu_reference_gflops(gpu_model) or DEFAULT_GPU_GFLOPS) if gpu_count else None
    upload = profile.measured.get("upload")
    download = profile.measured.get("download")
    up = upload.value if upload else DEFAULT_UPLOAD_MBPS
    return Offer(
        provider="local", instance_type="local", market="local",
        vcpus=profile.logical_cores, cores=profile.physical_cores, memory_gb=profile.ram_available_gb,
        gpus=gpu_count, gpu_model=gpu_model, gpu_memory_gb=gpu_memory,
        price_per_hour=electricity_usd_per_hour,
        gflops_fp32=profile.gflops("cpu", "fp32") or DEFAULT_CPU_GFLOPS,
        gpu_gflops=gpu_gflops,
        upload_mbps=up, download_mbps=download.value if download else up * DOWNLOAD_OVER_UPLOAD,
        price_source="fixed",
    )


def _cores(offer: Offer) -> float:
    return max(offer.cores or offer.vcpus, 1.0)


def _per_core(offer: Offer) -> float:
    return (offer.gflops_fp32 or DEFAULT_CPU_GFLOPS) / _cores(offer)


def _machine(offer: Offer) -> str:
    return LOCAL if offer.is_local else offer.instance_type


@dataclass
class Estimator:
    """Estimates for one plan. ``offers`` names the machines that observations may refer to."""

    profile: Profile
    offers: Sequence[Offer] = ()
    observations: Observations = None
    observed_output_gb: Mapping[str, float] = field(default_factory=dict)
    disk_free_gb: float | None = None
    _local: Offer = field(init=False)
    _work: dict[str, tuple[float | None, dict[str, float], str]] = field(init=False, default_factory=dict)
    _throughput: dict[tuple, float | None] = field(init=False, default_factory=dict)
    _efficiency: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        local = [o for o in self.offers if o.is_local]
        self._local = local[0] if local else local_offer(self.profile)
        self._by_machine = {_machine(o): o for o in self.offers}
        self._by_machine.setdefault(LOCAL, self._local)
        self._local_per_core = _per_core(self._local)
        if self.disk_free_gb is None:
            self.disk_free_gb = self.profile.disk_free_gb
        up = self._local.upload_mbps or DEFAULT_UPLOAD_MBPS
        self._up = up
        self._down = self._local.download_mbps or up * DOWNLOAD_OVER_UPLOAD

    # --- fit ----------------------------------------------------------------------------------
    def fit_problem(self, name: str, stage: Stage, offer: Offer) -> str | None:
        """Why ``stage`` cannot run on ``offer``, or None when it fits."""
        r = stage.resources
        if r.nodes > 1 and offer.is_local:
            return f"spans {r.nodes} nodes, this machine is one"
        where = "this machine" if offer.is_local else offer.instance_type
        memory = offer.memory_gb if offer.is_local else offer.memory_gb * CLOUD_MEMORY_USABLE
        if r.memory_gb > memory + 1e-9:
            what = "available" if offer.is_local else "usable"
            return f"needs {r.memory_gb:g} GiB RAM, {where} has {memory:.1f} GiB {what}"
        if r.gpus > offer.gpus:
            return f"needs {r.gpus} GPU(s), {where} has {offer.gpus}"
        if r.gpus and r.gpu_memory_gb and r.gpu_memory_gb > offer.gpu_memory_gb + 1e-9:
            return f"needs {r.gpu_memory_gb:g} GiB per GPU, {where} has {offer.gpu_memory_gb:g} GiB"
        if r.cpus > offer.vcpus + 1e-9:
            return f"needs {r.cpus:g} CPUs, {where} has {offer.vcpus:g}"
        if offer.is_local and self.disk_free_gb is not None and r.disk_gb > self.disk_free_gb:
            return f"needs {r.disk_gb:g} GB disk, {where} has {self.disk_free_gb:.0f} GB free"
        return None

    # --- time ---------------------------------------------------------------------------------
    def throughput(self, stage: Stage, offer: Offer) -> float | None:
        """Effective GFLOP/s of ``offer`` for ``stage``'s device kind; None if it has no such device."""
        r = stage.resources
        memo = (r.gpus, r.cpus, offer.key, offer.gpu_gflops, offer.gflops_fp32)  # planning asks ~10^5 times
        if memo in self._throughput:
            return self._throughput[memo]
        self._throughput[memo] = value = self._throughput_of(stage, offer)
        return value

    def _throughput_of(self, stage: Stage, offer: Offer) -> float | None:
        r = stage.resources
        if r.gpus > 0:
            if not offer.gpus:
                return None
            per_gpu = offer.gpu_gflops or gpu_reference_gflops(offer.gpu_model) or DEFAULT_GPU_GFLOPS
            return per_gpu * min(r.gpus, offer.gpus)
        per_core = _per_core(offer)
        if not offer.is_local:
            per_core = min(per_core, SCALAR_SPEEDUP_CAP * self._local_per_core)
        # Threads beyond the physical cores (hyperthreads) add little to a stage's speed.
        return per_core * min(r.cpus, _cores(offer))

    def _observed(self, name: str) -> Mapping[str, Sequence[float]]:
        obs = self.observations
        if obs is None:
            return {}
        if callable(obs) and not isinstance(obs, Mapping):
            return obs(name) or {}
        return obs.get(name, {}) or {}

    def _stage_work(self, name: str, stage: Stage) -> tuple[float | None, dict[str, float], str]:
        """(work in GFLOP-equivalents or None, exact seconds per machine, how it was estimated)."""
        cached = self._work.get(name)
        if cached is not None:
            return cached
        exact: dict[str, float] = {}
        work: float | None = None
        basis = ""
        for machine, seconds in self._observed(name).items():
            values = [float(s) for s in seconds if s and s > 0]
            if values:
                exact[machine] = statistics.median(values)
        efficiency = self._learn_efficiency(name, exact)
        # Scale the best-trusted observation (local first, one node before several) to machines not observed.
        for key in sorted(exact, key=lambda m: (split_machine_key(m)[1] > 1, m != LOCAL, m)):
            machine, nodes = split_machine_key(key)
            offer = self._by_machine.get(machine)
            thr = self.throughput(stage, offer) if offer else None
            if thr:
                work, basis = exact[key] * data_parallel_speedup(nodes, efficiency) * thr, f"history on {key}"
                break
        h = stage.hints
        if work is None and h.minutes_on:
            for key, minutes in h.minutes_on.items():
                thr = self._named_throughput(stage, key)
                if thr:
                    work, basis = minutes * 60.0 * thr, f"hint minutes_on.{key}"
                    break
        if work is None and h.minutes:
            thr = self.throughput(stage, self._local)
            if thr:
                work, basis = h.minutes * 60.0 * thr, "hint minutes (local)"
        if work is None and h.gflops:
            work, basis = h.gflops / UTILISATION, "hint gflops"
        if work is None and h.samples and h.epochs:
            work, basis = h.samples * h.epochs * GFLOP_PER_SAMPLE / UTILISATION, "hint samples x epochs"
        if work is None:
            default = DEFAULT_GPU_GFLOPS if stage.resources.gpus else DEFAULT_CPU_GFLOPS
            thr = self.throughput(stage, self._local) or default
            work, basis = DEFAULT_LOCAL_SECONDS * thr, "default (no hints)"
        if exact and not basis.startswith("history"):
            basis = "history"
        result = (work, exact, basis)
        self._work[name] = result
        return result

    def _learn_efficiency(self, name: str, exact: Mapping[str, float]) -> float:
        """The stage's data-parallel efficiency per doubling: from its history on one and several nodes of
        one type (the median over types), else the default."""
        by_machine: dict[str, dict[int, list[float]]] = {}
        for key, seconds in exact.items():
            machine, nodes = split_machine_key(key)
            by_machine.setdefault(machine, {}).setdefault(nodes, []).append(seconds)
        found = [e for e in (learnt_efficiency(seen) for seen in by_machine.values()) if e is not None]
        self._efficiency[name] = value = statistics.median(found) if found else DEFAULT_EFFICIENCY
        return value

    def efficiency(self, name: str, stage: Stage) -> float:
        """Data-parallel efficiency per doubling of nodes for this stage (lhorch.orchestrator.core.nodes)."""
        self._stage_work(name, stage)
        return self._efficiency.get(name, DEFAULT_EFFICIENCY)

    def _named_throughput(self, stage: Stage, key: str) -> float | None:
        """Throughput of the hardware a ``minutes_on`` key names, for this stage's device kind."""
        k = _norm(key)
        if (k == "cpu") != (stage.resources.gpus == 0):
            return None  # a GPU time says nothing about a CPU stage, and the other way round
        if k == "cpu":
            return self.throughput(stage, self._local)
        per_gpu = gpu_reference_gflops(k)
        if per_gpu is None:
            return None
        return per_gpu * max(stage.resources.gpus, 1)

    def clean_run_seconds(self, name: str, stage: Stage, offer: Offer) -> float:
        """Run time without spot interruptions, on the stage's ``resources.nodes`` nodes of ``offer``."""
        nodes = stage.resources.nodes
        _, exact, _ = self._stage_work(name, stage)
        seen = exact.get(machine_key(_machine(offer), nodes))
        if seen is not None:
            return seen
        return self._one_node_seconds(name, stage, offer) / data_parallel_speedup(nodes, self.efficiency(name, stage))

    def _one_node_seconds(self, name: str, stage: Stage, offer: Offer) -> float:
        work, exact, _ = self._stage_work(name, stage)
        machine = _machine(offer)
        if machine in exact:
            return exact[machine]
        h = stage.hints
        if offer.gpu_model and stage.resources.gpus:
            for key, minutes in h.minutes_on.items():
                if _norm(key) == _norm(offer.gpu_model):
                    return minutes * 60.0
        if not stage.resources.gpus and "cpu" in h.minutes_on and offer.is_local:
            return h.minutes_on["cpu"] * 60.0
        thr = self.throughput(stage, offer)
        if not thr or work is None:
            return float("inf")
        return work / thr

    def interruption_seconds(self, stage: Stage, offer: Offer, clean: float) -> float:
        """Expected extra seconds from spot interruptions (re-run since the last checkpoint + a new node)."""
        # Losing any one of the stage's nodes loses the attempt: N nodes are interrupted N times as often.
        nodes = stage.resources.nodes
        rate = offer.interruption_rate_per_hour * nodes if offer.market == "spot" else 0.0
        if rate <= 0:
            return 0.0
        lost = (min(stage.hints.checkpoint_minutes * 60.0 / 2.0, clean / 2.0)
                + cluster_startup_seconds(offer.startup_seconds, nodes))
        return rate * clean / 3600.0 * lost

    def run_seconds(self, name: str, stage: Stage, offer: Offer) -> float:
        """Expected run time: clean time plus, for spot, the expected cost of interruptions."""
        clean = self.clean_run_seconds(name, stage, offer)
        return clean + self.interruption_seconds(stage, offer, clean)

    def signature(self, name: str, stage: Stage) -> str | None:
        """A key equal for stages whose every estimate is equal; None when the stage has history
        (or observed output sizes) of its own."""
        if self._observed(name) or name in self.observed_output_gb:
            return None
        return stage.model_dump_json(include={"resources", "hints", "placement", "budget_usd"})

    def basis(self, name: str, stage: Stage) -> str:
        return self._stage_work(name, stage)[2]

    # --- data ---------------------------------------------------------------------------------
    def input_gb(self, name: str, stage: Stage) -> float:
        return stage.hints.input_gb

    def output_gb(self, name: str, stage: Stage) -> float:
        return float(self.observed_output_gb.get(name, stage.hints.output_gb))

    def upload_seconds(self, gb: float) -> float:
        return gb * 1024.0 / self._up if gb > 0 else 0.0

    def download_seconds(self, gb: float) -> float:
        return gb * 1024.0 / self._down if gb > 0 else 0.0

    def cloud_copy_seconds(self, gb: float) -> float:
        return gb * 1024.0 / CLOUD_COPY_MBPS if gb > 0 else 0.0
