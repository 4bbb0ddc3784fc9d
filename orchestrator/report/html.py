"""The report's HTML: one file, inline CSS, figures as base64 PNG, nothing fetched.

A Content-Security-Policy meta tag forbids every outside request (scripts, fonts, images other than
``data:``), so even a URL that slipped into a stage's error text cannot make the page call out.
"""

from __future__ import annotations

import base64
from datetime import datetime
from html import escape
from typing import Any

from lhorch.orchestrator.report.figures import Figure
from lhorch.orchestrator.report.view import RunRow, RunView, StageView

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_STATUS_COLOUR = {"succeeded": "#2e7d32", "cached": "#757575", "failed": "#c62828", "stopped": "#c62828",
                  "interrupted": "#ef6c00", "budget_exceeded": "#c62828", "running": "#1565c0"}
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;
background:#fff;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:14px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:130px}
.card b{display:block;font-size:18px}.card span{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px}th,td{border-bottom:1px solid #eee;padding:4px 6px;
text-align:left;vertical-align:top}th{background:#fafafa}td.n{text-align:right;font-variant-numeric:tabular-nums}
.status{font-weight:600}.swatch{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px}
img{max-width:100%;border:1px solid #eee;margin:6px 0}.reason{color:#555;font-size:12px;max-width:280px}
.err{color:#c62828}code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
"""


def _money(x: float | None) -> str:
    return "—" if x is None else f"${x:,.4f}" if abs(x) < 1 else f"${x:,.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _mb(x: float | None) -> str:
    return "—" if x is None else f"{x:,.0f} MB"


def _status(text: str) -> str:
    return f'<span class="status" style="color:{_STATUS_COLOUR.get(text, "#222")}">{escape(text)}</span>'


def _img(fig: Figure) -> str:
    data = base64.b64encode(fig.path.read_bytes()).decode()
    return (f'<figure><img alt="{escape(fig.title)}" src="data:image/png;base64,{data}">'
            f'<figcaption class="sub">{escape(fig.title)} — also <code>report/{escape(fig.path.name)}</code>'
            "</figcaption></figure>")


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{value}</b><span>{escape(label)}</span></div>'


def _stage_row(s: StageView, colours: dict[str, str]) -> str:
    last, p = s.last, s.placement
    place = last.place if last else ""
    swatch = f'<span class="swatch" style="background:{colours.get(place, "#fff")}"></span>' if place else ""
    tries = ", ".join(
        (f'<a href="{escape(a.log)}">#{a.number}</a>' if a.log else f"#{a.number}") + f" {escape(a.status)}"
        for a in s.attempts) or "—"
    exit_code = "—" if not last or last.exit_code is None else str(last.exit_code)
    error = f'<div class="err">{escape(last.error)}</div>' if last and last.error and last.status != "cached" else ""
    name = f"{'★ ' if s.critical else ''}<b>{escape(s.name)}</b><div class='sub'>{escape(s.uses or 'run:')}</div>"
    return (f"<tr><td>{name}</td>"
            f"<td>{_status(s.status)}{error}</td><td>{swatch}{escape(s.where)}</td><td>{tries}</td>"
            f"<td class='n'>{duration(p.est_seconds if p else None)}</td><td class='n'>{duration(s.seconds)}</td>"
            f"<td class='n'>{_money(s.estimate_usd)}</td><td class='n'>{_money(s.actual_usd)}</td>"
            f"<td class='n'>{_mb(last.peak_rss_mb if last else None)}</td>"
            f"<td class='n'>{_mb(last.peak_gpu_mb if last else None)}</td><td class='n'>{exit_code}</td>"
            f"<td class='reason'>{escape(p.reason) if p else '—'}</td></tr>")


def _stages_table(view: RunView, colours: dict[str, str]) -> str:
    head = ("stage", "status", "where", "attempts (log)", "planned", "actual", "est. cost", "cost", "peak mem",
            "peak GPU mem", "exit", "why here (plan)")
    return ("<table id='stages'><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join(_stage_row(s, colours) for s in view.stages) + "</table>")


def _metrics_table(view: RunView) -> str:
    keys = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "n_test")
    rows = []
    for stage, m in sorted(view.metrics.items(), key=lambda kv: [s.name for s in view.stages].index(kv[0])):
        shown = [(k, m[k]) for k in keys if k in m] or [(k, v) for k, v in m.items() if isinstance(v, (int, float))]
        cells = "".join(f"<td><span class='sub'>{escape(k)}</span> {v:.4f}</td>" if isinstance(v, float)
                        else f"<td><span class='sub'>{escape(k)}</span> {escape(str(v))}</td>" for k, v in shown)
        rows.append(f"<tr><td><b>{escape(stage)}</b></td>{cells}</tr>")
    return "<table id='metrics'>" + "".join(rows) + "</table>" if rows else ""


def _history_table(rows: list[RunRow], current: str) -> str:
    head = "<tr><th>run</th><th>created</th><th>status</th><th>duration</th><th>cost</th><th>metric</th></tr>"
    body = "".join(
        f"<tr><td>{'<b>' if r.id == current else ''}{escape(r.id)}{'</b>' if r.id == current else ''}</td>"
        f"<td>{escape(r.created_at[:19].replace('T', ' '))}</td><td>{_status(r.status)}</td>"
        f"<td class='n'>{duration(r.seconds)}</td><td class='n'>{_money(r.actual_usd)}</td>"
        f"<td>{escape(r.metric or '')} {'' if r.metric_value is None else f'{r.metric_value:.4f}'}</td></tr>"
        for r in rows)
    return f"<table id='history'>{head}{body}</table>"


def render(view: RunView, figs: list[Figure], history: list[RunRow], colours: dict[str, str], now: datetime, *,
           note: str | None = None) -> str:
    """The page; ``note`` stands where the figures go when there are none yet (being drawn, or could not be)."""
    by_kind: dict[str, list[Figure]] = {}
    for f in figs:
        by_kind.setdefault(f.kind, []).append(f)
    m = view.money
    cap = _money(m.cap_usd) if m.cap_usd is not None else "no cap"
    monthly = f" of {_money(m.monthly_cap_usd)}" if m.monthly_cap_usd is not None else ""
    retries = sum(max(len([a for a in s.attempts if a.status != "cached"]) - 1, 0) for s in view.stages)
    cached = sum(1 for s in view.stages if s.status == "cached")
    parts: list[Any] = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\">",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>lhorch report: {escape(view.id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(view.pipeline)} — {_status(view.status)}</h1>",
        f"<div class='sub'>run <code>{escape(view.id)}</code> · {escape(view.trigger)} · started "
        f"{escape(view.started_at.strftime('%Y-%m-%d %H:%M:%S UTC') if view.started_at else '—')} · "
        f"report written {escape(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}</div>",
    ]
    if view.error:
        parts.append(f"<p class='err'>{escape(view.error)}</p>")
    parts.append("<div class='cards' id='money'>" + "".join([
        _card(duration(view.seconds), "duration"),
        _card(_money(m.estimate_usd), "estimated cost"), _card(_money(m.actual_usd), "actual cost"),
        _card(cap, "cap per run"), _card(_money(m.month_to_date_usd) + escape(monthly), "month to date"),
        _card(str(retries), "retries"), _card(str(cached), "stages kept (cache)"),
    ]) + "</div>")
    if view.dashboards:
        parts.append("<p class='sub'>Ray dashboards while the run's clusters were up: " + ", ".join(
            f"{escape(k)} <code>{escape(v)}</code>" for k, v in view.dashboards.items()) + "</p>")
    parts.append("<h2>Timeline</h2>")
    if note:
        parts.append(f"<p class='sub' id='figures-note'>{escape(note)}</p>")
    no_timeline = [] if note else ["<p class='sub'>No stage started.</p>"]
    parts += [_img(f) for f in by_kind.get("timeline", [])] or no_timeline
    parts += ["<h2>Stages</h2>", _stages_table(view, colours),
              "<p class='sub'>★ critical path: the chain of stages that set the run's length.</p>"]
    model = _metrics_table(view)
    if model or by_kind.get("evaluate"):
        parts += ["<h2>Model</h2>", model] + [_img(f) for f in by_kind.get("evaluate", [])]
    if by_kind.get("curves") or by_kind.get("series"):
        parts.append("<h2>Training curves and metrics</h2>")
        parts += [_img(f) for f in by_kind.get("curves", []) + by_kind.get("series", [])]
    parts.append("<h2>History of this pipeline</h2>")
    parts += [_img(f) for f in by_kind.get("history", [])]
    parts += [_history_table(history, view.id), "</body></html>"]
    return "\n".join(parts)
