"""Issue 21: the profile stands for the machine's capacity, not for how busy it was when measured.

Measurements are injected (a fake benchmark whose CPU figure drops with the load, as a real one does)
and so is the load average; nothing here depends on how busy the test machine is.
"""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone

import pytest
from click.testing import CliRunner

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.profile import Measurement
from lhorch.orchestrator.machine.inventory import Inventory
from lhorch.orchestrator.machine.profiler import PROFILE_ENV, get_profile
from lhorch.orchestrator.pipeline.loader import parse_pipeline
from lhorch.orchestrator.planning.planner import make_plan
from lhorch.orchestrator.state.history import record_stage
from lhorch.orchestrator.state.store import Store

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=timezone.utc)
BOX = Inventory(hostname="laptop", os="Linux", cpu_model="Laptop CPU", physical_cores=4, logical_cores=8,
                ram_total_gb=16.0, ram_available_gb=12.0, swap_total_gb=0.0, disk_free_gb=100.0,
                torch_version="2.5.0")
QUIET_GFLOPS = 184.0  # the quiet figure
BUSY_GFLOPS = 48.0    # ... and what the same machine measured while busy


class Machine:
    """A fake benchmark and load average: the CPU figure is what the machine measured at that load."""

    def __init__(self) -> None:
        self.load = 0.0
        self.calls = 0

    def load_avg(self) -> float:
        return self.load

    def measure(self, gpus, *, disk_dir, settings, uploader):
        self.calls += 1
        value = BUSY_GFLOPS if self.load >= 4 else QUIET_GFLOPS
        share = round(value / QUIET_GFLOPS, 3)  # the CPU time its threads got, as os.times() tells
        return {"matmul_cpu_fp32": Measurement(value=value, unit="GFLOP/s", method="fake", spread=0.05,
                                               cpu_share=share),
                "disk_write": Measurement(value=900.0, unit="MB/s", method="fake")}, []


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    s = Store()
    yield s
    s.close()


def profile(store, machine, now=T0, **kw):
    return get_profile(store, clock=lambda: now, measure=machine.measure, inventory=lambda home: BOX,
                       load_avg=machine.load_avg, cpu_interval=0, **kw)


# The pipeline: a small language model, four stages, balanced, cloud allowed.
SMALL_LM = textwrap.dedent("""
    name: small-lm
    cloud: {provider: aws}
    policy: {name: balanced}
    stages:
      download: {run: "true", hints: {minutes: 1}}
      tokenize: {run: "true", needs: [download], resources: {cpus: 2}, hints: {minutes: 4}}
      train: {run: "true", needs: [tokenize], resources: {cpus: 8, memory_gb: 6}, hints: {gflops: 50000}}
      evaluate: {run: "true", needs: [train], hints: {gflops: 4000}}
""")


def placements(plan):
    return {name: (p.target, p.instance_type, p.market) for name, p in plan.placements.items()}


def test_same_placement_whether_first_profiled_busy_or_quiet(tmp_path, monkeypatch):
    busy_machine, quiet_machine = Machine(), Machine()
    busy_machine.load = 6.0
    profiles = []
    for name, machine in (("busy", busy_machine), ("quiet", quiet_machine)):
        monkeypatch.setenv("LHORCH_HOME", str(tmp_path / name))
        s = Store()
        try:
            profiles.append(profile(s, machine))
        finally:
            s.close()
    busy, quiet = profiles
    assert busy.provisional and busy.confidence == "low" and not quiet.provisional
    # The busy figure is scaled by the share of the CPU the benchmark got, and says so.
    assert busy.gflops() == pytest.approx(QUIET_GFLOPS, rel=0.01)
    assert "while busy" in busy.measured["matmul_cpu_fp32"].method
    pipeline = parse_pipeline(SMALL_LM)
    assert placements(make_plan(pipeline, busy)) == placements(make_plan(pipeline, quiet))
    # ... where the raw busy figure would have decided otherwise (the week in the cloud).
    raw = quiet.model_copy(update={"measured": {"matmul_cpu_fp32": Measurement(
        value=BUSY_GFLOPS, unit="GFLOP/s", method="busy, taken at face value")}})
    assert placements(make_plan(pipeline, raw)) != placements(make_plan(pipeline, quiet))


def test_without_a_cpu_share_the_load_average_scales_a_busy_figure(store):
    machine = Machine()
    machine.load = 6.0
    machine.measure = lambda gpus, **kw: ({"matmul_cpu_fp32": Measurement(value=BUSY_GFLOPS, unit="GFLOP/s",
                                                                            method="fake")}, [])
    busy = profile(store, machine)
    assert busy.gflops() == pytest.approx(BUSY_GFLOPS * (8 + 6) / 8) and busy.provisional


def test_a_busy_measurement_is_retaken_at_the_next_quiet_moment_and_never_replaces_a_quiet_one(store):
    machine = Machine()
    machine.load = 6.0
    first = profile(store, machine)
    assert first.provisional and machine.calls == 1
    assert profile(store, machine).source == "cache" and machine.calls == 1  # still busy: no point measuring

    machine.load = 0.5
    quiet = profile(store, machine, now=T0 + timedelta(minutes=5))
    assert machine.calls == 2 and quiet.source == "live" and not quiet.provisional
    assert quiet.gflops() == QUIET_GFLOPS  # the busy estimate is not kept as "best"

    machine.load = 7.0
    again = profile(store, machine, now=T0 + timedelta(hours=1), refresh=True)
    assert machine.calls == 3 and not again.provisional
    assert again.gflops() == QUIET_GFLOPS and again.measured_at == T0 + timedelta(minutes=5)
    assert any("kept the earlier figure" in n for n in again.notes)


def test_several_quiet_measurements_keep_the_best(store):
    machine = Machine()
    profile(store, machine)
    worse = Machine()
    worse.measure = lambda gpus, **kw: ({"matmul_cpu_fp32": Measurement(value=150.0, unit="GFLOP/s",
                                                                         method="fake")}, [])
    later = get_profile(store, clock=lambda: T0 + timedelta(hours=2), measure=worse.measure,
                        inventory=lambda home: BOX, load_avg=lambda: 0.0, cpu_interval=0, refresh=True)
    assert later.gflops() == QUIET_GFLOPS and "disk_write" in later.measured


def test_profile_says_how_sure_it_is_and_history_outweighs_benchmarks(store):
    machine = Machine()
    quiet = profile(store, machine)
    assert quiet.confidence == "high" and "steady" in quiet.confidence_reason
    record_stage(store, pipeline="p", stage="s", spec_hash="h", machine=quiet.fingerprint, target="local",
                 wall_seconds=12.0, finished_at=T0)
    later = profile(store, machine)
    assert later.confidence == "high" and "1 recorded stage run" in later.confidence_reason


def test_cli_profile_prints_the_confidence(store):
    path = store.home / "p.json"
    machine = Machine()
    machine.load = 6.0
    path.write_text(profile(store, machine).model_dump_json())
    result = CliRunner().invoke(main, ["profile", "--file", str(path)])
    assert result.exit_code == 0, result.output
    assert "Confidence: low" in result.output and "busy" in result.output
