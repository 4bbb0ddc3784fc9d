"""`lhorch cost [RUN]`: estimate vs actual per stage and per run, and the pipeline's month to date."""

from __future__ import annotations

import json

import click
from rich.table import Table

from lhorch.orchestrator.cli.output import console
from lhorch.orchestrator.core.errors import NotFoundError
from lhorch.orchestrator.state import ledger
from lhorch.orchestrator.state.store import Store, utcnow


def _caps(spec_json: str | None) -> dict[str, float | None]:
    try:
        budget = (json.loads(spec_json or "{}") or {}).get("budget") or {}
    except (ValueError, AttributeError):
        budget = {}
    return {"max_usd": budget.get("max_usd"), "monthly_max_usd": budget.get("monthly_max_usd")}


def cost_report(store: Store, run: str | None, pipeline: str | None) -> dict:
    """The data `lhorch cost --json` prints; stable keys."""
    row = None
    if run:
        row = store.get_run(run)
        if row is None and not ledger.has_run(store, run):
            raise NotFoundError(f"no run {run!r}", hint="`lhorch runs` lists the runs.")
    else:
        runs = store.list_runs(pipeline, limit=1)
        row = runs[0] if runs else None
        if row is None and not pipeline:
            raise NotFoundError("no runs yet", hint="`lhorch run FILE` starts one.")
    run_id = row["id"] if row is not None else run
    if pipeline is None:
        pipeline = row["pipeline"] if row is not None else ledger.pipeline_of(store, run_id)
    caps = _caps(row["spec_json"] if row is not None else None)
    report: dict = {"pipeline": pipeline, "run": None,
                    "month_to_date_usd": round(ledger.month_to_date(store, pipeline, utcnow()), 6),
                    "monthly_max_usd": caps["monthly_max_usd"]}
    if run_id:
        stages = ledger.per_stage(store, run_id)
        report["run"] = {
            "run_id": run_id,
            "status": row["status"] if row is not None else None,
            "max_usd": caps["max_usd"],
            "estimate_usd": round(ledger.run_estimate(store, run_id), 6),
            "actual_usd": round(ledger.run_total(store, run_id), 6),
            "stages": [{"stage": s.stage, "estimate_usd": round(s.estimate_usd, 6),
                        "actual_usd": round(s.actual_usd, 6)} for s in stages.values()],
            # Rows still open count at their worst case (billed up to their hard stop) until closed.
            "open_usd": round(sum(r["usd"] for r in ledger.open_items(store, run_id)), 6),
            "items": [_item(r) for r in ledger.rows(store, run_id, actual_only=True)],
        }
    return report


def _item(r: dict) -> dict:
    """One actual ledger row as `lhorch cost --json` prints it."""
    return {"kind": r["kind"], "item": r["item"], "stage": r["stage"], "resource_id": r.get("resource_id"),
            "usd_per_hour": round(float(r["unit_price"]) * 3600.0, 6) if r["unit"] == "second" else None,
            "unit_price": r["unit_price"], "quantity": r["quantity"], "unit": r["unit"], "usd": round(r["usd"], 6),
            "state": r.get("state") or ledger.CLOSED, "started_at": r.get("started_at"), "ends_by": r.get("ends_by"),
            "source": r["source"]}


def _usd(value: float | None) -> str:
    return "—" if value is None else f"${value:,.2f}"


@click.command()
@click.argument("run", required=False)
@click.option("--pipeline", "-p", help="Pipeline whose latest run and month to date to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON line.")
def cost(run: str | None, pipeline: str | None, as_json: bool) -> None:
    """What a run cost (estimate vs actual, per stage) and the pipeline's spend this month."""
    store = Store()
    report = cost_report(store, run, pipeline)
    if as_json:
        click.echo(json.dumps(report, sort_keys=True))
        return
    out = console()
    r = report["run"]
    if r is not None:
        table = Table(title=f"run {r['run_id']}" + (f" ({r['status']})" if r["status"] else ""))
        table.add_column("stage")
        table.add_column("estimate", justify="right")
        table.add_column("actual", justify="right")
        for s in r["stages"]:
            table.add_row(s["stage"], _usd(s["estimate_usd"]), _usd(s["actual_usd"]))
        table.add_row("[bold]total[/]", _usd(r["estimate_usd"]), f"[bold]{_usd(r['actual_usd'])}[/]")
        out.print(table)
        if r["open_usd"]:
            out.print(f"[yellow]{_usd(r['open_usd'])} of it is still open: counted at its worst case (billed to its "
                      "hard stop) until `lhorch gc` or the next run closes it[/]")
        if r["max_usd"] is not None:
            out.print(f"run cap (budget.max_usd): {_usd(r['max_usd'])}")
    cap = report["monthly_max_usd"]
    out.print(f"{report['pipeline']} this month: {_usd(report['month_to_date_usd'])}"
              + (f" of {_usd(cap)} (budget.monthly_max_usd)" if cap is not None else ""))

