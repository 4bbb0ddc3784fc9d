"""The run report (`lhorch report`), and `lhorch status` / `lhorch runs` with durations and costs.

An example-like finished run is written into the store (tests/report_fixture.py); a failed and a
resumed run are real runs of small `run:` pipelines on the session's Ray node.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import time
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from report_fixture import ACTUAL, ATTEMPTS, ESTIMATES, T0, finished_run
from test_cli_imports import probe

from lhorch.orchestrator.cli import main
from lhorch.orchestrator.execution.runner import Runner, RunOptions
from lhorch.orchestrator.pipeline.loader import load_pipeline
from lhorch.orchestrator.report import background, figures
from lhorch.orchestrator.report import html as report_html
from lhorch.orchestrator.report.background import DRAWING_NOTE, draw_in_background
from lhorch.orchestrator.report.build import find_series, write_report
from lhorch.orchestrator.report.view import critical_path, run_view
from lhorch.orchestrator.state import ledger

# The module, not the `lhorch.orchestrator.cli.run` entry function that shadows its name in the package.
cli_run = importlib.import_module("lhorch.orchestrator.cli.run")


class _Page(HTMLParser):
    """What a user sees of the page: image sources, links, table cells by table id, and the text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.csp: str | None = None
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a.get("content")
        elif tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag == "td" and self._table and self.tables[self._table]:
            self.tables[self._table][-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td" and self._table and self.tables[self._table]:
            row = self.tables[self._table][-1]
            row[-1] = " ".join(row[-1].split())  # the text of the cell's elements, as a browser shows it

    def handle_data(self, data):
        self.text.append(data)
        if self._table and self.tables[self._table] and self.tables[self._table][-1]:
            self.tables[self._table][-1][-1] += data + " "


def page_of(path) -> _Page:
    page = _Page()
    page.feed(path.read_text())
    return page


def stage_rows(page: _Page) -> dict[str, list[str]]:
    """The stages table's rows by stage name (the first cell starts with the name, after a ★)."""
    return {row[0].lstrip("★ ").split()[0]: row for row in page.tables["stages"] if row}


def test_report_of_a_finished_example_like_run(store):
    run_id = finished_run(store)
    path = write_report(store, run_id, now=T0 + timedelta(hours=1))
    assert path == store.runs_dir(run_id) / "report.html"
    page = page_of(path)
    # Self-contained: every image inline, a CSP that forbids outside requests, no http(s) link or source.
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.csp and "default-src 'none'" in page.csp
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", path.read_text())
    # The same figures as PNG files beside it: timeline, curves of distill (finetune's are in evaluate's
    # report.png, which is reused rather than redrawn), the user's series.
    pngs = sorted(p.name for p in (path.parent / "report").glob("*.png"))
    assert pngs == ["curves-distill.png", "evaluate-evaluate.png", "series-score-0.png", "timeline.png"]
    evaluate_png = store.runs_dir(run_id) / "stages" / "evaluate" / "outputs" / "metrics" / "report.png"
    assert (path.parent / "report" / "evaluate-evaluate.png").read_bytes() == evaluate_png.read_bytes()
    assert len(page.images) == len(pngs)  # no history figure: this is the pipeline's only run

    rows = stage_rows(page)
    assert set(rows) == set(ATTEMPTS)
    for stage, tries in ATTEMPTS.items():
        row = rows[stage]
        status, target, _cluster, start, end, code, rss, gpu = tries[-1]
        assert row[1].startswith(status)
        assert row[5] == report_html.duration(end - start)  # actual time of the last attempt
        assert row[6] == f"${ESTIMATES[stage]:,.4f}" and row[7] == f"${ACTUAL.get(stage, 0.0):,.4f}"
        assert row[8] == f"{rss:,.0f} MB" and row[9] == ("—" if gpu is None else f"{gpu:,.0f} MB")
        assert row[10] == str(code) and row[11] == f"reason for {stage}"
        assert [f"#{n}" for n in range(1, len(tries) + 1)] == re.findall(r"#\d+", row[3])
    assert rows["finetune"][2] == "cloud (g5.xlarge, spot)" and "exit code 137" not in rows["finetune"][1]
    assert "stages/finetune/attempt-1.log" in page.links and "stages/finetune/attempt-2.log" in page.links
    # Critical path: preprocess → finetune → distill → evaluate (score ran beside it and finished early).
    view = run_view(store, run_id, now=T0 + timedelta(hours=1))
    assert critical_path(view.stages) == ["preprocess", "finetune", "distill", "evaluate"]
    assert [r[0].startswith("★") for r in page.tables["stages"][1:]] == [s.critical for s in view.stages]
    # Money against the store, and the model's metrics.
    text = " ".join(page.text)
    assert f"${ledger.run_total(store, run_id):,.4f}" in text and "$0.4000" in text  # actual, estimate
    assert "$5.00" in text and "$0.3125 of $60.00" in text  # cap, month to date of the monthly cap
    assert view.money.month_to_date_usd == pytest.approx(0.3125)
    assert page.tables["metrics"] == [["score", "score 0.7000"], [
        "evaluate", "accuracy 0.9528", "precision_macro 0.9552", "recall_macro 0.9524", "f1_macro 0.9527", "n_test 360"]]
    assert "http://127.0.0.1:18265" in text  # where the cluster's Ray dashboard was


def test_status_and_runs_show_durations_costs_and_metric(store, home):
    run_id = finished_run(store)
    cli = CliRunner()
    out = cli.invoke(main, ["status", run_id, "--json"], obj={})
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["seconds"] == 125 and data["actual_usd"] == pytest.approx(0.3125)
    by_stage = {s["stage"]: s for s in data["stages"]}
    finetune = by_stage["finetune"]
    assert finetune["seconds"] == 64 and finetune["attempt"] == 2 and finetune["instance_type"] == "g5.xlarge"
    assert finetune["estimate_usd"] == pytest.approx(0.40) and finetune["actual_usd"] == pytest.approx(0.3125)
    assert finetune["peak_rss_mb"] == 2048.0 and finetune["peak_gpu_mb"] == 3900.0 and finetune["critical_path"]
    out = cli.invoke(main, ["status", run_id], obj={})
    assert "1 min 04 s" in out.output and "2,048 MB (GPU 3,900 MB)" in out.output and "0.3125" in out.output
    out = cli.invoke(main, ["runs", "--json"], obj={})
    (row,) = json.loads(out.output)
    assert row["seconds"] == 125 and row["cost_usd"] == pytest.approx(0.3125)
    assert (row["metric"], row["metric_value"]) == ("f1_macro", 0.9527)  # evaluate's, not the user's score
    out = cli.invoke(main, ["runs"], obj={})
    assert "2 min 05 s" in out.output and "f1_macro 0.9527" in out.output and "$0.3125" in out.output
    out = cli.invoke(main, ["report", run_id[:8]], obj={})
    assert out.exit_code == 0 and out.output.strip() == str(store.runs_dir(run_id) / "report.html")


def test_history_compares_the_pipelines_last_runs(store):
    for n in range(3):
        finished_run(store, f"digits-like-{n}", t0=T0 + timedelta(days=n))
    path = write_report(store, "digits-like-1")
    rows = page_of(path).tables["history"][1:]
    assert [r[0] for r in rows] == ["digits-like-1", "digits-like-0"]  # as of run 1: later runs are not shown
    assert (path.parent / "report" / "history.png").exists()


def test_series_are_found_in_a_users_metrics_json():
    assert find_series({"loss": [1, 0.5], "acc": 0.9, "name": "x"}) == {"loss": [1.0, 0.5]}
    assert find_series([{"step": 1, "loss": 2, "tag": "a"}, {"step": 2, "loss": 1, "tag": "b"}]) == {"loss": [2.0, 1.0]}
    assert find_series({"history": [{"epoch": 1, "f1": 0.5}, {"epoch": 2, "f1": 0.7}]}) == {"history.f1": [0.5, 0.7]}
    assert find_series({"accuracy": 0.9}) == {} and find_series(None) == {}


def test_a_report_that_fails_never_fails_the_run(store, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cli_run, "write_report", broken)
    assert cli_run._write_report(store, "any-run") is None
    assert "could not write the report: disk full" in capsys.readouterr().err


def test_the_page_comes_at_once_and_a_background_writer_draws_its_figures(store):
    run_id = finished_run(store)
    page = write_report(store, run_id, draw=False, note=DRAWING_NOTE)
    assert DRAWING_NOTE in page.read_text() and page_of(page).images == []
    assert stage_rows(page_of(page)).keys() == ATTEMPTS.keys()  # the tables are all there already
    assert not (page.parent / "report").exists()
    assert draw_in_background(store, run_id).wait(timeout=120) == 0
    drawn = page_of(page)
    assert DRAWING_NOTE not in page.read_text() and len(drawn.images) == 4
    assert len(list((page.parent / "report").glob("*.png"))) == 4


def test_figures_that_cannot_be_drawn_say_so_on_the_page(store, monkeypatch):
    run_id = finished_run(store)

    def broken(*args, **kwargs):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(figures, "timeline", broken)
    assert background.main([run_id, "--home", str(store.home)]) == 1
    text = (store.runs_dir(run_id) / "report.html").read_text()
    assert "could not be drawn (no fonts)" in text and f"lhorch report {run_id}" in text
    assert "RuntimeError: no fonts" in (store.runs_dir(run_id) / "report.log").read_text()


def _writers(home: Path) -> list[str]:
    """Report writers of this home still running."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if background.MODULE in cmd and str(home) in cmd and state != "Z":
            found.append(cmd)
    return found




def test_lhorch_run_leaves_the_drawing_to_a_process_that_ends_with_it(write_pipeline, home, tmp_path):
    path = write_pipeline("""\
        name: quick
        stages:
          a:
            run: echo a
        """)
    env = dict(os.environ, LHORCH_HOME=str(home),
               LHORCH_PROFILE=str(Path(__file__).parent / "fixtures" / "profiles" / "cpu_4core.json"))
    modules, out = probe(["run", str(path), "--json"], env)
    # The run drew nothing itself (matplotlib and numpy are the report's), and it imported no SDK it did not use.
    assert not [m for m in modules if m.split(".")[0] in ("matplotlib", "numpy", "ray", "requests")]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    page = Path(result["report"])
    assert page.exists()  # the page was there when the run returned, its figures following
    deadline = time.monotonic() + 60
    while (_writers(home) or DRAWING_NOTE in page.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert DRAWING_NOTE not in page.read_text() and len(page_of(page).images) == 1  # the timeline
    assert _writers(home) == []  # and its writer ended with the drawing


# --- real runs on the session's Ray node ---------------------------------------------------------

def _run(store, path, ray_node):
    pipeline = load_pipeline(path)
    return Runner(store, pipeline, path, providers={"local": ray_node}, options=RunOptions()).run()


@pytest.mark.ray
def test_report_of_a_failed_then_resumed_run(store, write_pipeline, ray_node, tmp_path):
    text = """\
        name: fails-then-resumes
        stages:
          first:
            run: >-
              echo '{{"loss": [3, 2, 1]}}' > $LHORCH_OUTPUT_DIR/metrics
            outputs: [metrics]
          second:
            needs: [first]
            run: echo trying; exit {code}
          third:
            needs: [second]
            run: "true"
        """
    path = write_pipeline(text.format(code=4))
    failed = _run(store, path, ray_node)
    assert failed.status == "failed"
    page = page_of(write_report(store, failed.run_id))
    rows = stage_rows(page)
    assert rows["second"][1].startswith("failed") and rows["second"][10] == "4"
    assert rows["third"][1].startswith("waiting") and rows["third"][3] == "—"
    assert "failed" in " ".join(page.text).split("—")[1]  # the heading: pipeline — status
    log = store.runs_dir(failed.run_id) / "stages" / "second" / "attempt-1.log"
    assert "stages/second/attempt-1.log" in page.links and "trying" in log.read_text()
    attempt = store.attempts(failed.run_id, "second")[-1]
    assert rows["second"][5] == report_html.duration(
        (run_view(store, failed.run_id).stage("second").last.finished_at
         - run_view(store, failed.run_id).stage("second").last.started_at).total_seconds())
    assert attempt["exit_code"] == 4

    path = write_pipeline(text.format(code=0))
    resumed = _run(store, path, ray_node)
    assert resumed.run_id == failed.run_id and resumed.status == "succeeded"
    report = write_report(store, resumed.run_id)
    page = page_of(report)
    rows = stage_rows(page)
    assert rows["first"][1].startswith("cached") and "#2 cached" in rows["first"][3]
    assert re.findall(r"#\d \w+", rows["second"][3]) == ["#1 failed", "#2 succeeded"]
    assert rows["third"][1].startswith("succeeded")
    cards = " ".join(page.text)
    assert "1 stages kept (cache)" in re.sub(r"\s+", " ", cards)
    # The user stage's metrics JSON is drawn (from its first, kept attempt's output).
    assert (report.parent / "report" / "series-first-0.png").exists()
    assert (report.parent / "report" / "timeline.png").exists()
