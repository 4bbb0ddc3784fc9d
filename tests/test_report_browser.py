"""The run report opened in a real headless browser: it renders (a non-blank screenshot of the expected
size) and the page makes no network request (Chromium's own network log, checked against a control
page that does make one, so the check is known to see page requests).

Chromium comes from the system's packages (`.ci/run` installs Debian's when missing); where no
browser can be found the test is skipped with a message.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from PIL import Image
from report_fixture import T0, finished_run

from lhorch.orchestrator.report.build import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH, HEIGHT = 1200, 1600
# Flags for a quiet, sandbox-less headless Chromium in a container; background networking off so
# that the browser's own requests stay few (they are told apart from the page's by their initiator).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
BROWSER_TIMEOUT_S = 30


def _browser() -> str:
    found = os.environ.get("LHORCH_TEST_BROWSER") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if not found:
        pytest.skip("no Chromium found (`apt-get install chromium`, or set LHORCH_TEST_BROWSER); "
                    ".ci/run installs it when it can")
    return found


def _open(browser: str, page: Path, tmp: Path) -> tuple[Image.Image, list[str]]:
    """Screenshot ``page`` and return it with the URLs the page itself requested."""
    shot, netlog = tmp / f"{page.stem}.png", tmp / f"{page.stem}-net.json"
    subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
                    f"--log-net-log={netlog}", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=BROWSER_TIMEOUT_S, check=False)
    assert shot.exists(), f"{browser} wrote no screenshot of {page}"
    log = json.loads(netlog.read_text())
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    # The browser's own background requests have no origin; a page's carry it (a file page's is "null").
    requested = [e["params"]["url"] for e in log["events"]
                 if e["type"] == start_job and "url" in e.get("params", {})
                 and e["params"].get("initiator") != "not an origin"]
    return Image.open(shot).convert("RGB"), requested


def test_report_renders_in_a_browser_and_requests_nothing(store, tmp_path):
    browser = _browser()
    report = write_report(store, finished_run(store), now=T0 + timedelta(hours=1))

    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    _, control_requests = _open(browser, control, tmp_path / "control")
    assert control_requests == ["http://127.0.0.1:9/x.png"], "the network log check does not see page requests"

    image, requests = _open(browser, report, tmp_path / "report")
    assert requests == []
    assert image.size == (WIDTH, HEIGHT)
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 200, "the screenshot is (nearly) blank"
    # Content all the way down: the figures and tables fill the page's first screen, not just a header.
    lower = image.crop((0, HEIGHT // 2, WIDTH, HEIGHT))
    assert len(lower.getcolors(maxcolors=1 << 20) or []) > 50
