"""The resource profiler: inventory, measurements and their cache, profile files, history, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.core.profile import GpuInfo, Measurement, Profile
from lhorch.orchestrator.machine import microbench as benchmarks
from lhorch.orchestrator.machine import profiler as profiler_module
from lhorch.orchestrator.machine.inventory import Inventory, parse_nvidia_smi, take_inventory
from lhorch.orchestrator.machine.microbench import BenchSettings, ObjectStoreUploader, measure_all, timed_loop
from lhorch.orchestrator.machine.profiler import PROFILE_ENV, cached_profiles, get_profile, load_profile_file
from lhorch.orchestrator.state import history
from lhorch.orchestrator.state.store import Store

FIXTURES = Path(__file__).parent / "fixtures" / "profiles"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)
TINY = BenchSettings(matmul_n_cpu=128, matmul_n_gpu=256, matmul_seconds=0.05, matmul_max_iters=50, probe_n=64,
                     probe_seconds=0.02, copy_mib=4, copy_seconds=0.03, disk_mib=4, disk_seconds=0.5, upload_mb=1)


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("LHORCH_HOME", str(tmp_path / "home"))
    # These tests count measurements on a quiet machine; busy machines have their own tests
    # (tests/test_profile_capacity.py) with an injected load, so the CI box's own load must not leak in.
    monkeypatch.setattr(profiler_module, "_load_avg", lambda: 0.0)
    monkeypatch.delenv(PROFILE_ENV, raising=False)
    s = Store()
    yield s
    s.close()


class Clock:
    def __init__(self, now: datetime = T0):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class CountingMeasure:
    """Stands in for the benchmarks: returns fixed figures and counts how often it was asked."""

    def __init__(self):
        self.calls: list[BenchSettings] = []

    def __call__(self, gpus, *, disk_dir, settings, uploader):
        self.calls.append(settings)
        figures = {"matmul_cpu_fp32": Measurement(value=100.0 + len(self.calls), unit="GFLOP/s", method="fake")}
        notes = [f"measured {len(self.calls)}"]
        if uploader is not None:
            upload, note = benchmarks.try_upload_bandwidth(uploader, mb=1)
            figures.update({"upload": upload} if upload else {})
            notes += [] if upload else [note]
        return figures, notes


class MemoryUploader:
    """An in-process object store: what an Uploader must do, and what is left behind."""

    name = "memory://test"

    def __init__(self, fail: bool = False):
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self.fail = fail

    def put(self, key, data):
        if self.fail:
            raise ConnectionError("endpoint unreachable")
        self.puts += 1
        self.objects[key] = data

    def delete(self, key):
        self.objects.pop(key, None)


BOX = Inventory(hostname="box", os="Linux", cpu_model="Test CPU 9000", physical_cores=4, logical_cores=8,
                ram_total_gb=31.4, ram_available_gb=20.0, swap_total_gb=0.0, disk_free_gb=100.0,
                torch_version="2.13.0+cpu")


def fixed(inv: Inventory):
    return lambda home: inv


# --- inventory ----------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux /proc only")
def test_inventory_agrees_with_proc_and_os(tmp_path):
    def meminfo():
        return {line.split(":")[0]: int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()}

    before = meminfo()
    inv = take_inventory(tmp_path)
    after = meminfo()
    cpuinfo = Path("/proc/cpuinfo").read_text()

    assert inv.logical_cores == os.cpu_count() == cpuinfo.count("processor\t:")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    if names:
        assert inv.cpu_model == names[0].strip()
    cores = set(re.findall(r"physical id\s*:\s*(\d+)\s*\n(?:.*\n)*?core id\s*:\s*(\d+)", cpuinfo))
    if cores:
        assert inv.physical_cores == len(cores)
    assert 1 <= inv.physical_cores <= inv.logical_cores
    assert inv.ram_total_gb == pytest.approx(after["MemTotal"] / 1024**2, abs=0.01)
    assert inv.swap_total_gb == pytest.approx(after["SwapTotal"] / 1024**2, abs=0.01)
    # Other processes allocate meanwhile: the figure must lie between the readings around it.
    low, high = sorted(m["MemAvailable"] / 1024**2 for m in (before, after))
    assert low - 0.2 <= inv.ram_available_gb <= high + 0.2
    assert inv.disk_free_gb == pytest.approx(shutil.disk_usage(tmp_path).free / 1024**3, abs=1.0)
    assert inv.on_battery is None or isinstance(inv.on_battery, bool)
    # This session has a CPU-only torch and no driver: no GPU may be invented.
    if not shutil.which("nvidia-smi"):
        assert [g for g in inv.gpus if g.backend == "cuda"] == []


def test_nvidia_smi_csv_is_read_as_unusable_gpus():
    csv = ("0, NVIDIA GeForce RTX 3060 Laptop GPU, 6144, 5821, 535.183.01, 8.6\n"
           "1, Tesla T4, 15360, 15101, 535.183.01, [N/A]\n")
    gpus = parse_nvidia_smi(csv)
    assert [(g.index, g.name, g.memory_total_gb, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA GeForce RTX 3060 Laptop GPU", 6.0, "8.6"), (1, "Tesla T4", 15.0, None)]
    assert gpus[0].memory_free_gb == pytest.approx(5.68, abs=0.01)
    assert all(not g.usable and g.driver_version == "535.183.01" for g in gpus)


# --- benchmarks ---------------------------------------------------------------------------------
def test_timed_loop_is_bounded_by_time_and_by_count():
    t = [0.0]

    def tick():
        t[0] += 0.125  # exact in binary: no float drift in the count

    by_time = timed_loop(tick, seconds=1.0, max_iters=1000, warmup=0, clock=lambda: t[0])
    assert by_time.iters == 8 and by_time.seconds == 1.0
    by_count = timed_loop(tick, seconds=1000.0, max_iters=3, warmup=2, clock=lambda: t[0])
    assert by_count.iters == 3


def test_real_benchmarks_give_plausible_figures(tmp_path):
    figures, notes = measure_all([], disk_dir=tmp_path, settings=TINY, uploader=MemoryUploader())
    assert {"matmul_cpu_fp32", "mem_bandwidth", "disk_write", "disk_read", "upload"} <= figures.keys()
    units = {k: m.unit for k, m in figures.items()}
    assert units["matmul_cpu_fp32"] == "GFLOP/s" and units["mem_bandwidth"] == "GB/s"
    assert units["disk_write"] == units["disk_read"] == units["upload"] == "MB/s"
    # Units, not speed: a scale error (FLOP/s for GFLOP/s) lands far outside; a saturated shared CPU does not.
    assert 1e-3 < figures["matmul_cpu_fp32"].value < 1e5
    assert all(m.value > 0 and m.method for m in figures.values())
    assert all(m.seconds > 0 for k, m in figures.items() if k != "upload")  # an in-memory put can round to 0
    assert "fsync" in figures["disk_write"].method
    # CPU bf16 is either measured or explicitly left out, never silently missing.
    assert ("matmul_cpu_bf16" in figures) != any("cpu bf16" in n for n in notes)
    assert list(tmp_path.iterdir()) == []  # the disk probe file is gone


def test_upload_bandwidth_through_s3_api_on_loopback():
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        client.create_bucket(Bucket="probe-bucket")
        m = benchmarks.upload_bandwidth(ObjectStoreUploader(client, "probe-bucket"), mb=2)
        assert m.unit == "MB/s" and m.value > 0 and "s3://probe-bucket/" in m.method
        assert client.list_objects_v2(Bucket="probe-bucket").get("KeyCount", 0) == 0  # probes deleted
    finally:
        server.stop()


# --- profile files ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["laptop_8gb_gpu", "cpu_4core", "mac_mps"])
def test_fixture_profiles_round_trip(name):
    path = FIXTURES / f"{name}.json"
    p = load_profile_file(path)
    assert p.source == f"file:{path}"
    again = Profile.model_validate_json(p.model_dump_json())
    assert again == p
    original = json.loads(path.read_text())
    assert json.loads(p.model_dump_json()) == {**original, "source": f"file:{path}"}
    assert p.gflops("cpu", "fp32") > 0 and p.measured["disk_write"].unit == "MB/s"


def test_fixture_profiles_describe_the_machines_they_claim():
    laptop = load_profile_file(FIXTURES / "laptop_8gb_gpu.json")
    assert [(g.backend, g.memory_total_gb) for g in laptop.gpus] == [("cuda", 8.0)]
    assert laptop.gflops("cuda0", "bf16") > laptop.gflops("cuda0", "fp32") > 10 * laptop.gflops("cpu")
    assert laptop.measured["upload"].unit == "MB/s"
    box = load_profile_file(FIXTURES / "cpu_4core.json")
    assert box.physical_cores == 4 and box.gpus == [] and box.gflops("cuda0") is None
    mac = load_profile_file(FIXTURES / "mac_mps.json")
    assert mac.mps and mac.gpus[0].backend == "mps" and mac.gflops("mps", "fp16") > 0
    assert not mac.gpus[0].compute_capability
    assert len({laptop.fingerprint, box.fingerprint, mac.fingerprint}) == 3


def test_get_profile_returns_a_profile_file_instead_of_the_live_machine(store, monkeypatch):
    measure = CountingMeasure()

    def no_inventory(home):
        raise AssertionError("the live machine must not be read when a profile file is given")

    path = FIXTURES / "laptop_8gb_gpu.json"
    by_arg = get_profile(store, profile_file=path, measure=measure, inventory=no_inventory)
    monkeypatch.setenv(PROFILE_ENV, str(path))
    by_env = get_profile(store, measure=measure, inventory=no_inventory)
    assert by_arg == by_env == load_profile_file(path)
    assert by_env.gpus[0].name == "NVIDIA GeForce RTX 4070 Laptop GPU"
    assert measure.calls == [] and cached_profiles(store) == []


def test_a_broken_profile_file_is_a_user_error_with_a_hint(tmp_path):
    with pytest.raises(UsageError) as missing:
        load_profile_file(tmp_path / "nope.json")
    assert "nope.json" in missing.value.message and "lhorch profile --json" in missing.value.hint
    typo = json.loads((FIXTURES / "cpu_4core.json").read_text())
    typo["ram_totl_gb"] = typo.pop("ram_total_gb")
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps(typo))
    with pytest.raises(UsageError, match="ram_t"):
        load_profile_file(bad)


# --- cache --------------------------------------------------------------------------------------
def test_measurements_are_cached_and_reused(store):
    measure, clock = CountingMeasure(), Clock()
    first = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0)
    clock.now = T0 + timedelta(hours=5)
    second = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0)

    assert len(measure.calls) == 1
    assert (first.source, second.source) == ("live", "cache")
    assert second.measured == first.measured and second.measured_at == first.measured_at == T0
    assert "measured 1" in second.notes
    assert second.load.at == T0 + timedelta(hours=5)  # load is always live
    assert cached_profiles(store) == [(BOX.fingerprint, T0)]


def test_hardware_change_measures_again_and_keeps_each_machines_figures(store):
    measure = CountingMeasure()
    egpu = dataclasses.replace(BOX, gpus=(GpuInfo(name="NVIDIA RTX A4000", memory_total_gb=16.0, usable=False),))
    more_ram = dataclasses.replace(BOX, ram_total_gb=63.9)
    same_but_noisy = dataclasses.replace(BOX, ram_total_gb=31.2, ram_available_gb=3.0, disk_free_gb=1.0)

    for inv in (BOX, egpu, more_ram, BOX, same_but_noisy):
        get_profile(store, clock=Clock(), measure=measure, inventory=fixed(inv), cpu_interval=0)
    assert len(measure.calls) == 3  # BOX again and a few MB less RAM reported are the same machine
    assert len({BOX.fingerprint, egpu.fingerprint, more_ram.fingerprint}) == 3
    assert BOX.fingerprint == same_but_noisy.fingerprint
    assert len(cached_profiles(store)) == 3


def test_ttl_expiry_refresh_thorough_and_torch_upgrade_measure_again(store):
    measure, clock = CountingMeasure(), Clock()

    def profile(inv=BOX, **kw):
        return get_profile(store, clock=clock, measure=measure, inventory=fixed(inv), cpu_interval=0, **kw)

    profile()
    clock.now = T0 + timedelta(days=7) - timedelta(seconds=1)
    assert profile().source == "cache" and len(measure.calls) == 1
    clock.now = T0 + timedelta(days=7)
    expired = profile()
    assert expired.source == "live" and expired.measured_at == clock.now and len(measure.calls) == 2

    assert profile(refresh=True).source == "live" and len(measure.calls) == 3
    assert profile(ttl=timedelta(seconds=0)).source == "live" and len(measure.calls) == 4

    thorough = profile(thorough=True)
    assert thorough.thorough and measure.calls[-1] == benchmarks.THOROUGH and len(measure.calls) == 5
    assert profile().thorough and len(measure.calls) == 5  # thorough figures serve a quick request

    upgraded = dataclasses.replace(BOX, torch_version="2.14.0+cpu")
    assert profile(upgraded).source == "live" and len(measure.calls) == 6
    assert measure.calls[-1] == benchmarks.QUICK


def test_upload_is_measured_once_when_an_endpoint_appears_and_then_cached(store):
    measure, clock, uploader = CountingMeasure(), Clock(), MemoryUploader()
    get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0)
    with_upload = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0,
                              uploader=uploader)
    assert len(measure.calls) == 1 and uploader.puts == 2  # warm-up put + timed put, nothing else re-measured
    assert with_upload.measured["upload"].unit == "MB/s" and uploader.objects == {}
    later = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0)
    assert later.measured["upload"] == with_upload.measured["upload"] and uploader.puts == 2


# --- history ------------------------------------------------------------------------------------
def test_history_records_and_summarizes_stage_runs(store):
    common = {"pipeline": "churn", "stage": "train", "target": "local"}
    runs = [("m1", "s1", 100.0, 900.0, None, 10**9), ("m1", "s1", 140.0, 1200.0, 300.0, 10**9),
            ("m1", "s2", 90.0, 800.0, None, 2 * 10**9), ("m2", "s1", 30.0, 950.0, 2048.0, 10**9)]
    for i, (machine, spec, wall, rss, gpu, inp) in enumerate(runs):
        history.record_stage(store, **common, spec_hash=spec, machine=machine, wall_seconds=wall, peak_rss_mb=rss,
                             peak_gpu_mb=gpu, input_bytes=inp, output_bytes=1000, finished_at=T0 + timedelta(hours=i))
    history.record_stage(store, pipeline="churn", stage="eval", spec_hash="s1", machine="m1", target="local",
                         wall_seconds=5, finished_at=T0)

    on_m1 = history.observed(store, "churn", "train", machine="m1")
    assert [o.wall_seconds for o in on_m1] == [90.0, 140.0, 100.0]  # newest first
    assert on_m1[0].finished_at == T0 + timedelta(hours=2) and on_m1[0].peak_gpu_mb is None
    assert [o.wall_seconds for o in history.observed(store, "churn", "train", "m1", "s1")] == [140.0, 100.0]
    assert len(history.observed(store, "churn", "train")) == 4

    s = history.summarize(store, "churn", "train", machine="m1")
    assert (s.count, s.median_wall_seconds, s.min_wall_seconds, s.max_wall_seconds) == (3, 100.0, 90.0, 140.0)
    assert (s.max_peak_rss_mb, s.max_peak_gpu_mb, s.median_input_bytes) == (1200.0, 300.0, 10**9)
    assert s.seconds_per_input_gb == pytest.approx(100.0)
    assert s.last_finished_at == T0 + timedelta(hours=2)
    assert history.summarize(store, "churn", "train", machine="nowhere") is None
    with pytest.raises(ValueError):
        history.record_stage(store, **common, spec_hash="s", machine="m", wall_seconds=-1, finished_at=T0)


# --- CLI ----------------------------------------------------------------------------------------
@pytest.fixture
def cli(store):
    from click.testing import CliRunner

    try:
        from lhorch.orchestrator.cli import main
    except ModuleNotFoundError as exc:  # the CLI package imports command modules other engineers own
        pytest.skip(f"lhorch CLI not importable yet: {exc}")

    def invoke(*args):
        return CliRunner().invoke(main, list(args), obj={}, catch_exceptions=False)

    return invoke


def test_cli_profile_json_measures_once_then_reads_the_cache(cli, store):
    first = cli("profile", "--json")
    assert first.exit_code == 0, first.output
    data = json.loads(first.output)
    assert data["source"] == "live" and data["physical_cores"] >= 1 and data["logical_cores"] == os.cpu_count()
    assert {"matmul_cpu_fp32", "mem_bandwidth", "disk_write", "disk_read"} <= data["measured"].keys()
    assert data["measured"]["matmul_cpu_fp32"]["unit"] == "GFLOP/s" and "upload" not in data["measured"]
    assert set(data) >= {"format_version", "cpu_model", "ram_total_gb", "ram_available_gb", "gpus", "load",
                         "fingerprint", "measured_at", "notes"}
    second = json.loads(cli("profile", "--json").output)
    assert second["source"] == "cache" and second["measured"] == data["measured"]
    assert (store.home / "state.db").exists()


def test_cli_profile_shows_a_profile_file_as_a_table(cli):
    result = cli("profile", "--file", str(FIXTURES / "laptop_8gb_gpu.json"))
    assert result.exit_code == 0, result.output
    for text in ("NVIDIA GeForce RTX 4070 Laptop GPU", "matmul_cuda0_bf16", "GFLOP/s", "fsync", "i7-12700H"):
        assert text in result.output


def test_cli_profile_reports_a_bad_file_in_one_line_with_a_hint(cli, tmp_path):
    result = cli("profile", "--file", str(tmp_path / "missing.json"))
    assert result.exit_code == 2
    assert "error: cannot read profile file" in result.output and "hint:" in result.output


def test_an_unreachable_upload_endpoint_is_a_note_not_a_failure(store):
    measure, clock = CountingMeasure(), Clock()
    first = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0,
                        uploader=MemoryUploader(fail=True))
    assert "upload" not in first.measured and any("upload not measured" in n for n in first.notes)
    broken = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0,
                         uploader=MemoryUploader(fail=True))
    assert "upload" not in broken.measured
    assert any("upload not measured" in n and "endpoint unreachable" in n for n in broken.notes)
    healed = get_profile(store, clock=clock, measure=measure, inventory=fixed(BOX), cpu_interval=0,
                         uploader=MemoryUploader())
    assert "upload" in healed.measured and not any("upload not measured" in n for n in healed.notes)
    assert len(measure.calls) == 1
