"""Telling someone that a scheduled run failed, hit its budget or produced a model that was not promoted.

Two channels, both best effort (a notice that cannot be delivered is logged, never raised):
- the desktop: notify-send on Linux when it is on PATH and a session bus or display is set, osascript
  on macOS; elsewhere it is unavailable and the log says so;
- a Slack-compatible webhook: POST {"text": ...} with urllib (5 s timeout, 2 retries). The URL is read
  from the environment variable that `notify.webhook_env` names, never from the pipeline file, and is
  never logged or shown.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lhorch.orchestrator.core.spec import Notify
from lhorch.orchestrator.core.status import FireStatus

log = logging.getLogger("lhorch.notify")

# What a schedule_run ended as → the `notify.on` name that covers it.
OUTCOME_EVENT = {
    FireStatus.FAILED: "failed", FireStatus.INVALID: "failed", FireStatus.INFEASIBLE: "failed",
    FireStatus.CLOUD_ERROR: "failed", FireStatus.LOST: "failed",
    FireStatus.BUDGET_EXCEEDED: "budget_exceeded", FireStatus.REFUSED: "budget_exceeded",
    FireStatus.NOT_PROMOTED: "not_promoted", FireStatus.SUCCEEDED: "succeeded", FireStatus.PROMOTED: "succeeded",
    FireStatus.SKIPPED: "skipped",
}


@dataclass(frozen=True)
class Notice:
    title: str
    text: str
    event: str  # one of Notify.on's values


def should_notify(config: Notify, outcome: FireStatus | str) -> str | None:
    """The notify.on event for ``outcome`` if the configuration asks for it."""
    event = OUTCOME_EVENT.get(outcome)
    return event if event in config.on else None


def send(notice: Notice, config: Notify, env: Mapping[str, str] | None = None,
         sleep: Callable[[float], None] = time.sleep, platform: str = sys.platform) -> list[str]:
    """Deliver ``notice`` on every configured channel; returns the channels that took it."""
    env = os.environ if env is None else env
    delivered: list[str] = []
    if config.desktop:
        if _desktop(notice, env, platform):
            delivered.append("desktop")
    if config.webhook_env:
        url = env.get(config.webhook_env)
        if not url:
            log.warning("notify: webhook skipped, environment variable %s is not set", config.webhook_env)
        elif post_webhook(url, notice.text, sleep=sleep):
            delivered.append("webhook")
    return delivered


def post_webhook(url: str, text: str, timeout: float = 5.0, retries: int = 2,
                 sleep: Callable[[float], None] = time.sleep) -> bool:
    body = json.dumps({"text": text}).encode()
    for attempt in range(retries + 1):
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if 200 <= response.status < 300:
                    return True
                why = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            why = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            # Only the exception type: some carry the URL, which may hold a secret token.
            why = type(getattr(exc, "reason", exc)).__name__
        log.warning("notify: webhook attempt %d/%d failed (%s)", attempt + 1, retries + 1, why)
        if attempt < retries:
            sleep(1.0 * (attempt + 1))
    return False


def _desktop(notice: Notice, env: Mapping[str, str], platform: str) -> bool:
    if platform == "darwin" and shutil.which("osascript"):
        script = f"display notification {json.dumps(notice.text)} with title {json.dumps(notice.title)}"
        cmd = ["osascript", "-e", script]
    elif platform.startswith("linux") and shutil.which("notify-send") and (
            env.get("DBUS_SESSION_BUS_ADDRESS") or env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")):
        cmd = ["notify-send", "--app-name=lhorch", notice.title, notice.text]
    else:
        log.info("notify: no desktop notifications on this system (%s)", notice.title)
        return False
    try:
        subprocess.run(cmd, timeout=5, check=True, capture_output=True)
        return True
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("notify: desktop notification failed: %s", type(exc).__name__)
        return False
