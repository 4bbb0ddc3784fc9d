"""Scheduled retraining: fire times (DST), catch-up, overlap, the one-scheduler lock, the promotion gate,
notifications, service install, and one real scheduler process firing real `lhorch run`s.

Logic tests drive the Scheduler with a FakeClock and a fake launcher, so a month passes in milliseconds;
the process test uses the real CLI and runner on a seconds-level schedule.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.core.clock import FakeClock
from lhorch.orchestrator.core.errors import LhorchError
from lhorch.orchestrator.core.spec import Notify, Promotion
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.scheduling import schedules as sch
from lhorch.orchestrator.scheduling.daemon import LaunchRequest, RunResult, Scheduler, acquire_lock, parse_result
from lhorch.orchestrator.scheduling.model_registry import Registry, decide
from lhorch.orchestrator.scheduling.notify import Notice, post_webhook, send
from lhorch.orchestrator.state.models import ModelVersion

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


def cli(*args: str):
    return CliRunner().invoke(main, list(args), obj={}, catch_exceptions=False)


# --- fire times --------------------------------------------------------------------------------------
def test_nightly_fire_times_across_berlin_dst_changes():
    # Spring forward 2024-03-31: 02:30 does not exist → fires once, when the clocks jump to 03:00.
    spring = [t.astimezone(BERLIN) for t in sch.next_fires("30 2 * * *", "Europe/Berlin", datetime(2024, 3, 29, tzinfo=UTC), 4)]
    assert [t.strftime("%m-%d %H:%M %Z") for t in spring] == [
        "03-29 02:30 CET", "03-30 02:30 CET", "03-31 03:00 CEST", "04-01 02:30 CEST"]
    # Fall back 2024-10-27: 02:30 happens twice → fires once, at the first one.
    fall = [t.astimezone(BERLIN) for t in sch.next_fires("30 2 * * *", "Europe/Berlin", datetime(2024, 10, 26, tzinfo=UTC), 3)]
    assert [t.strftime("%m-%d %H:%M %Z") for t in fall] == ["10-26 02:30 CEST", "10-27 02:30 CEST", "10-28 02:30 CET"]
    assert fall[2].astimezone(UTC) - fall[1].astimezone(UTC) == timedelta(hours=25)
    # An interval-like schedule keeps its rhythm through the repeated hour (both 02:00s fire).
    half = sch.fires_between("0 * * * *", "Europe/Berlin", datetime(2024, 10, 26, 23, 30, tzinfo=UTC),
                             datetime(2024, 10, 27, 3, 0, tzinfo=UTC))
    assert [t.hour for t in half] == [0, 1, 2, 3] and len(set(half)) == 4
    # Six fields: seconds first.
    secs = sch.next_fires("*/5 * * * * *", "UTC", datetime(2024, 1, 1, tzinfo=UTC), 3)
    assert [t.second for t in secs] == [5, 10, 15]


def test_schedule_cli_add_list_next_pause_resume_remove(home, write_pipeline):
    f = write_pipeline("""
        name: digits-nightly
        schedule: {cron: "30 2 * * *", timezone: Europe/Berlin}
        stages:
          train: {run: "echo hi"}
    """)
    assert "next run" in cli("schedule", "add", str(f)).output
    out = cli("schedule", "next", "digits-nightly", "-n", "3").output
    times = [datetime.fromisoformat(line.strip()) for line in out.splitlines()[1:]]
    assert len(times) == 3 and all(t.hour in (2, 3) and t.tzinfo is not None for t in times)
    assert all(t.utcoffset() in (timedelta(hours=1), timedelta(hours=2)) for t in times)
    listed = json.loads(cli("schedule", "list", "--json").output)
    assert listed[0]["name"] == "digits-nightly" and listed[0]["next_fire_at"] and not listed[0]["paused"]
    cli("schedule", "pause", "digits-nightly")
    assert json.loads(cli("schedule", "list", "--json").output)[0]["next_fire_at"] is None
    cli("schedule", "resume", "digits-nightly")
    assert cli("schedule", "add", str(f), "--cron", "61 * * * *").exit_code == 2
    cli("schedule", "remove", "digits-nightly")
    assert json.loads(cli("schedule", "list", "--json").output) == []
    r = CliRunner().invoke(main, ["schedule", "history", "nope"], obj={})
    assert r.exit_code == 2 and "no schedule named 'nope'" in r.output


# --- the scheduler with a fake clock and fake runs ----------------------------------------------------
class FakeRun:
    def __init__(self, clock: FakeClock, ends: datetime, result: RunResult):
        self.clock, self.ends, self.result, self.pid = clock, ends, result, None
        self.terminated = False

    def poll(self):
        return self.result if self.clock.now() >= self.ends or self.terminated else None

    def terminate(self):
        self.terminated = True

    def kill(self):
        self.terminated = True


class FakeLauncher:
    """Records launches; each run lasts ``minutes`` of fake time and ends as ``make_result`` says."""

    def __init__(self, clock: FakeClock, minutes: float = 10, make_result=None):
        self.clock, self.minutes = clock, minutes
        self.requests: list[LaunchRequest] = []
        self.make_result = make_result or (lambda req, n: RunResult(0, "succeeded", f"run-{n}"))

    def __call__(self, req: LaunchRequest) -> FakeRun:
        self.requests.append(req)
        result = self.make_result(req, len(self.requests))
        return FakeRun(self.clock, self.clock.now() + timedelta(minutes=self.minutes), result)


def _setup(store, write_pipeline, schedule_yaml: str, start: datetime, minutes: float = 10, make_result=None,
           notices: list | None = None):
    f = write_pipeline(f"""
        name: nightly
        schedule: {schedule_yaml}
        stages:
          train: {{run: "echo hi"}}
    """)
    p = load_pipeline(f)
    clock = FakeClock(start)
    sch.upsert_schedule(store, "nightly", f, p.schedule.cron, p.schedule.timezone, p.schedule.overlap,
                        p.schedule.catchup, clock.now())
    launcher = FakeLauncher(clock, minutes, make_result)
    sink = notices if notices is not None else []
    sched = Scheduler(store, clock=clock, launcher=launcher, notifier=lambda n, cfg: sink.append(n) or ["test"])
    return clock, launcher, sched


def _statuses(store) -> list[str]:
    return [r["status"] for r in reversed(sch.schedule_runs(store, "nightly", 1000))]


def test_a_month_of_nights_fires_once_per_night(store, write_pipeline):
    clock, launcher, sched = _setup(store, write_pipeline, '{cron: "30 2 * * *", timezone: Europe/Berlin}',
                                    datetime(2024, 3, 1, 12, tzinfo=UTC))
    sched.run(poll=3600, max_ticks=24 * 31 + 40)  # poll hourly through March (DST change included)
    fired = [r.fire_at.astimezone(BERLIN) for r in launcher.requests if r.fire_at.astimezone(BERLIN).month == 3]
    assert len(fired) == 30 and len({t.date() for t in fired}) == 30  # 2 to 31 March: one run a night
    assert fired[-1].strftime("%d %H:%M %Z") == "31 03:00 CEST"  # the night the clocks jump
    assert set(_statuses(store)) == {"succeeded"}
    assert "--only-if-changed" in launcher.requests[0].args and "schedule:nightly" in launcher.requests[0].args


def test_catch_up_once_after_three_days_asleep(store, write_pipeline):
    start = datetime(2024, 6, 1, 12, tzinfo=UTC)
    clock, launcher, sched = _setup(store, write_pipeline, '{cron: "0 2 * * *", timezone: Europe/Berlin, catchup: once}', start)
    sched.tick()
    clock.advance(days=3)  # the laptop slept through three nights
    sched.tick()
    sched.tick()
    assert len(launcher.requests) == 1
    row = sch.schedule_runs(store, "nightly")[0]
    assert "catch-up: one run for 3 missed" in row["detail"]
    assert launcher.requests[0].fire_at == datetime(2024, 6, 4, 0, 0, tzinfo=UTC)  # the latest missed night


def test_a_per_second_schedule_after_a_week_asleep_fires_once_quickly(store, write_pipeline):
    clock, launcher, sched = _setup(store, write_pipeline, '{cron: "*/5 * * * * *"}', datetime(2024, 6, 1, tzinfo=UTC))
    clock.advance(days=7)
    started = time.monotonic()
    sched.tick()
    assert len(launcher.requests) == 1 and time.monotonic() - started < 5


def test_catch_up_skip_runs_nothing(store, write_pipeline):
    clock, launcher, sched = _setup(store, write_pipeline, '{cron: "0 2 * * *", timezone: Europe/Berlin, catchup: skip}',
                                    datetime(2024, 6, 1, 12, tzinfo=UTC))
    clock.advance(days=3)
    sched.tick()
    assert launcher.requests == []
    assert _statuses(store) == ["missed"]
    # The next night on time fires normally.
    clock.set(datetime(2024, 6, 5, 0, 0, 30, tzinfo=UTC))
    sched.tick()
    assert len(launcher.requests) == 1


@pytest.mark.parametrize("overlap", ["skip", "queue"])
def test_a_run_still_going_is_not_started_twice(store, write_pipeline, overlap):
    # Hourly schedule, each run takes 90 minutes; tick every minute from 00:30 to 03:50.
    clock, launcher, sched = _setup(store, write_pipeline, f'{{cron: "0 * * * *", overlap: {overlap}}}',
                                    datetime(2024, 6, 1, 0, 30, tzinfo=UTC), minutes=90)
    for _ in range(200):
        sched.tick()
        assert len(sched.active) <= 1 and len(sched.queued) <= 1
        clock.advance(60)
    rows = [(r["fire_at"][11:16], r["status"], r["started_at"][11:16]) for r in reversed(sch.schedule_runs(store, "nightly"))]
    if overlap == "skip":  # 02:00 fell while the 01:00 run was going
        assert rows == [("01:00", "succeeded", "01:00"), ("02:00", "skipped", "02:00"), ("03:00", "running", "03:00")]
    else:  # 02:00 waited for the 01:00 run and started at 02:30; 03:00 waits behind it
        assert rows == [("01:00", "succeeded", "01:00"), ("02:00", "running", "02:30"), ("03:00", "queued", "03:00")]
    sched.request_stop()
    sched.drain()
    assert not store.query("SELECT * FROM schedule_runs WHERE status IN ('running','queued')")


def test_skipped_result_failures_and_notices(store, write_pipeline):
    outcomes = iter([RunResult(0, "skipped", "run-1"), RunResult(1, "failed", "run-2", "stage train exited 3"),
                     RunResult(3, "budget_exceeded", "run-3")])
    notices: list[Notice] = []
    clock, launcher, sched = _setup(store, write_pipeline, '{cron: "0 * * * *"}', datetime(2024, 6, 1, 0, 30, tzinfo=UTC),
                                    minutes=5, make_result=lambda req, n: next(outcomes), notices=notices)
    sched.run(poll=600, max_ticks=20)
    rows = list(reversed(sch.schedule_runs(store, "nightly")))
    assert [r["status"] for r in rows[:3]] == ["skipped", "failed", "budget_exceeded"]
    assert rows[0]["detail"] == "inputs unchanged since the last successful run"
    assert [n.event for n in notices] == ["failed", "budget_exceeded"]  # skipped is not in notify.on by default
    assert "stage train exited 3" in notices[0].text
    last, failures = sch.last_outcome(store, "nightly")
    assert last["status"] == "budget_exceeded" and failures == 2
    listed = json.loads(cli("schedule", "list", "--json").output)[0]
    assert listed["consecutive_failures"] == 2 and listed["last_status"] == "budget_exceeded"


def test_parse_result_reads_the_runners_json_line():
    line = json.dumps({"run_id": "r1", "status": "skipped", "message": "inputs unchanged"})
    assert parse_result(0, f"progress...\n{line}\n") == RunResult(0, "skipped", "r1", "inputs unchanged")
    assert parse_result(3, "", "error: over budget\n").status == "budget_exceeded"


def test_only_one_scheduler_holds_the_lock(home):
    first = acquire_lock(home)
    try:
        with pytest.raises(LhorchError, match="another scheduler is already running"):
            acquire_lock(home)
        r = CliRunner().invoke(main, ["scheduler", "--once"], obj={})
        assert r.exit_code == 2 and "another scheduler is already running" in r.output
    finally:
        first.close()
    acquire_lock(home).close()  # free again once the first is gone


# --- the model registry and the promotion gate ---------------------------------------------------------
def _fake_trained_run(store, tmp_path: Path, pipeline_file: Path, run_id: str, f1: float) -> None:
    """A succeeded run as the runner records it: finetune writes `model`, evaluate (needs it) writes `metrics`."""
    spec = load_pipeline(pipeline_file)
    store.create_run(run_id, spec.name, spec, str(pipeline_file))
    store.update_run(run_id, status="succeeded", started_at=datetime(2024, 6, 1, tzinfo=UTC),
                     finished_at=datetime(2024, 6, 1, 0, 2, tzinfo=UTC))
    model = tmp_path / run_id / "model"
    model.mkdir(parents=True)
    (model / "weights.bin").write_text(f"weights of {run_id}")
    metrics = tmp_path / run_id / "metrics"
    metrics.mkdir()
    (metrics / "metrics.json").write_text(json.dumps({"accuracy": f1 + 0.01, "f1_macro": f1}))
    store.record_artifact(run_id, "finetune", "model", model, "sha-" + run_id, 10)
    store.record_artifact(run_id, "evaluate", "metrics", metrics, "sha-m-" + run_id, 10)


TRAIN_PIPELINE = """
    name: digits
    schedule:
      cron: "0 * * * *"
      promote: {metric: f1_macro, mode: max, min_delta: 0.0}
    stages:
      finetune: {run: "echo train"}
      evaluate: {run: "echo eval", needs: [finetune]}
"""


def test_regression_is_not_promoted_better_model_is_and_rollback(store, write_pipeline, tmp_path):
    f = write_pipeline(TRAIN_PIPELINE)
    reg = Registry(store)
    rule = Promotion()
    for run_id, f1 in [("r1", 0.90), ("r2", 0.85), ("r3", 0.93)]:
        _fake_trained_run(store, tmp_path, f, run_id, f1)
    d1 = reg.register_run("r1", rule)
    d2 = reg.register_run("r2", rule)
    assert d1.promoted and not d2.promoted
    assert d2.model.status == "rejected" and "regression" in d2.reason
    assert reg.current("digits").version == 1
    assert (reg.current_path("digits") / "weights.bin").read_text() == "weights of r1"
    out = cli("models", "register", "r3").output  # the manual path, with the pipeline's own rule
    assert "v3 promoted to current" in out
    assert (reg.current_path("digits") / "weights.bin").read_text() == "weights of r3"
    assert cli("models", "register", "r3").output == out  # registering again changes nothing

    assert "v1 is current again" in cli("models", "rollback", "digits").output
    assert (reg.current_path("digits") / "weights.bin").read_text() == "weights of r1"
    listed = {m["version"]: m["status"] for m in json.loads(cli("models", "list", "digits", "--json").output)}
    assert listed == {1: "current", 2: "rejected", 3: "rolled_back"}
    cli("models", "promote", "digits", "2")  # a person may override the gate
    assert reg.current("digits").version == 2


def test_gate_rules():
    cur = ModelVersion("p", 1, "r", "s", "/x", None, {"loss": 0.5, "f1_macro": 0.8}, "current", None, datetime.now(UTC))
    assert decide(Promotion(), {"f1_macro": 0.8}, cur)[0]  # at least as good
    assert not decide(Promotion(min_delta=0.01), {"f1_macro": 0.805}, cur)[0]
    assert decide(Promotion(metric="loss", mode="min"), {"loss": 0.4}, cur)[0]
    assert not decide(Promotion(metric="loss", mode="min"), {"loss": 0.6}, cur)[0]
    ok, why = decide(Promotion(), {"accuracy": 0.9}, cur)
    assert not ok and "no numeric 'f1_macro'" in why


def test_scheduled_runs_build_on_the_promoted_model_and_regressions_notify(store, write_pipeline, tmp_path):
    f = write_pipeline(TRAIN_PIPELINE, name="digits.yaml")
    p = load_pipeline(f)
    clock = FakeClock(datetime(2024, 6, 1, 0, 30, tzinfo=UTC))
    sch.upsert_schedule(store, "digits", f, p.schedule.cron, "UTC", "skip", "once", clock.now())
    scores = iter([0.90, 0.80, 0.95])

    def result(req: LaunchRequest, n: int) -> RunResult:
        _fake_trained_run(store, tmp_path, f, f"r{n}", next(scores))
        return RunResult(0, "succeeded", f"r{n}")

    launcher = FakeLauncher(clock, 5, result)
    notices: list[Notice] = []
    sched = Scheduler(store, clock=clock, launcher=launcher, notifier=lambda n, cfg: notices.append(n) or [])
    sched.run(poll=600, max_ticks=20)  # 01:00, 02:00, 03:00
    rows = list(reversed(sch.schedule_runs(store, "digits")))[:3]
    assert [r["status"] for r in rows] == ["promoted", "not_promoted", "promoted"]
    assert "regression" in rows[1]["detail"]
    assert [n.event for n in notices] == ["not_promoted"]
    assert "LHORCH_PROMOTED_MODEL" not in launcher.requests[0].env
    assert launcher.requests[1].env["LHORCH_PROMOTED_MODEL"].endswith("models/digits/v1")
    assert launcher.requests[2].env["LHORCH_PROMOTED_MODEL"].endswith("models/digits/v1")  # v2 was rejected
    hist = json.loads(cli("schedule", "history", "digits", "--json").output)
    assert hist[-1]["metrics"]["f1_macro"] == 0.90 and hist[-1]["duration_s"] == 120 and hist[-1]["cost_usd"] == 0
    assert "promoted" in cli("schedule", "history", "digits").output


# --- notifications ---------------------------------------------------------------------------------------
class _Hook(BaseHTTPRequestHandler):
    received: list = []
    fail_first = 0

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        if cls.fail_first > 0:
            cls.fail_first -= 1
            self.send_response(500)
        else:
            cls.received.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    handler = type("Hook", (_Hook,), {"received": [], "fail_first": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, f"http://127.0.0.1:{server.server_port}/hooks/SECRET-TOKEN"
    server.shutdown()
    server.server_close()


def test_webhook_retries_and_never_logs_its_url(webhook, caplog):
    handler, url = webhook
    handler.fail_first = 2
    caplog.set_level(logging.INFO)
    delivered = send(Notice("t", "run failed", "failed"), Notify(webhook_env="MY_HOOK", desktop=False),
                     env={"MY_HOOK": url}, sleep=lambda s: None)
    assert delivered == ["webhook"] and handler.received == [{"text": "run failed"}]
    assert "SECRET-TOKEN" not in caplog.text and "attempt 2/3 failed (HTTP 500)" in caplog.text
    assert not post_webhook("http://127.0.0.1:9/x", "t", timeout=0.5, sleep=lambda s: None)
    assert send(Notice("t", "x", "failed"), Notify(webhook_env="UNSET_HOOK_VAR", desktop=False), env={}) == []
    assert "UNSET_HOOK_VAR is not set" in caplog.text


# --- installing the scheduler as a service ----------------------------------------------------------------
def test_install_writes_the_service_files_in_home_and_uninstall_removes_them(tmp_path, home, monkeypatch):
    fake_home = tmp_path / "user"
    monkeypatch.setenv("HOME", str(fake_home))
    out = cli("schedule", "install", "--system", "systemd", "--dry-run").output
    assert "would run: systemctl --user enable --now lhorch-scheduler.service" in out
    assert not (fake_home / ".config").exists()  # a dry run writes nothing

    out = cli("schedule", "install", "--system", "systemd", "--no-activate").output
    unit = fake_home / ".config/systemd/user/lhorch-scheduler.service"
    text = unit.read_text()
    assert "scheduler" in text.split("ExecStart=")[1].splitlines()[0] and f"LHORCH_HOME={home}" in text
    assert "not run (--no-activate): systemctl --user enable --now" in out
    cli("schedule", "uninstall", "--system", "systemd", "--no-activate")
    assert not unit.exists()

    cli("schedule", "install", "--system", "launchd", "--no-activate")
    plist = fake_home / "Library/LaunchAgents/dev.lhorch.scheduler.plist"
    assert "<key>RunAtLoad</key><true/>" in plist.read_text()
    cli("schedule", "uninstall", "--system", "launchd", "--no-activate")
    assert not plist.exists()
    assert "@reboot" in cli("schedule", "install", "--system", "cron", "--dry-run").output


# --- a real scheduler process firing real runs -----------------------------------------------------------
def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.mark.slow
def test_real_scheduler_process_fires_runs_notifies_skips_and_stops_on_sigterm(home, store, write_pipeline, webhook):
    handler, url = webhook
    pipeline_text = """
        name: nightly
        schedule:
          cron: "*/2 * * * * *"   # every 2 s (6 fields: seconds first)
          only_if_changed: true
          notify: {{webhook_env: LHORCH_TEST_WEBHOOK, desktop: false}}
        stages:
          train: {{run: "{command}"}}
    """
    f = write_pipeline(pipeline_text.format(command="exit 3"))
    assert cli("schedule", "add", str(f)).exit_code == 0
    env = {**os.environ, "LHORCH_HOME": str(home), "LHORCH_TEST_WEBHOOK": url}
    log_path = home.parent / "scheduler.log"
    log_file = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "scheduler",
                             "--poll", "0.5", "--grace", "10"], env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        lock = home / "scheduler.lock"
        _wait_for(lambda: lock.exists() and lock.read_text().strip() == str(proc.pid), 20, "the scheduler's lock")
        second = subprocess.run([sys.executable, "-c", "from lhorch.orchestrator.cli import main; main()", "scheduler"],
                                env=env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 2 and "another scheduler is already running" in second.stderr

        # 1. The schedule fires the failing pipeline. Once the run has read its file, fix the file: the
        # next fire runs the fixed pipeline and keeps its stage in the cache, so every later fire finds
        # every stage cached, nothing changed (issue 20: --only-if-changed uses the cache keys).
        _wait_for(lambda: store.query("SELECT id FROM runs WHERE trigger='schedule:nightly'"), 60, "a scheduled run")
        f.write_text(textwrap.dedent(pipeline_text.format(command="echo trained")))

        # 2. The failure reaches the webhook; a later fire is skipped by the runner: inputs unchanged.
        # A Ray start takes ~20 s on an idle 2-core machine, minutes on a loaded one: generous but bounded.
        _wait_for(lambda: handler.received, 150, "the failure webhook")
        assert "nightly" in handler.received[0]["text"] and "failed" in handler.received[0]["text"]
        _wait_for(lambda: any(r["detail"] == "inputs unchanged since the last successful run"
                              for r in sch.schedule_runs(store, "nightly", 500)), 180, "a skipped unchanged run")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log_file.close()
    output = log_path.read_text()
    assert proc.returncode == 0, output
    assert "SIGTERM received, stopping" in output and "scheduler: stopped" in output
    assert url not in output and "SECRET-TOKEN" not in output
    runs = store.query("SELECT status, trigger FROM runs ORDER BY created_at")
    assert {r["trigger"] for r in runs} == {"schedule:nightly"}
    assert {"failed", "succeeded", "skipped"} <= {r["status"] for r in runs}
    assert {"failed", "skipped"} <= set(_statuses_for(store))  # overlapping fires were skipped too
    assert not store.query("SELECT * FROM schedule_runs WHERE status IN ('running','queued')")


def _statuses_for(store) -> list[str]:
    return [r["status"] for r in sch.schedule_runs(store, "nightly", 500)]
