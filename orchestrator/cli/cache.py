"""`lhorch cache`: the stage cache that lets a run reuse stages of earlier runs — list it, prune it."""

from __future__ import annotations

import re
from datetime import timedelta

import click

from lhorch.orchestrator.cli.output import console, emit_json
from lhorch.orchestrator.core.durations import parse_duration
from lhorch.orchestrator.core.errors import UsageError
from lhorch.orchestrator.execution.stage_cache import StageCache
from lhorch.orchestrator.state import cache as db
from lhorch.orchestrator.state.store import Store, iso

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "M": 1 << 20, "MB": 1 << 20, "G": 1 << 30, "GB": 1 << 30,
          "T": 1 << 40, "TB": 1 << 40}


def parse_size(text: str) -> int:
    """`500MB`, `2G`, `1.5GB`, `0` → bytes (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise UsageError(f"not a size: {text!r}", hint="Write it as 500MB, 2GB or 1.5G.")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


@click.group()
def cache() -> None:
    """Stage outputs kept for reuse: a stage whose cache key (spec, inputs, code) matches an earlier
    successful attempt is not run again."""


@cache.command("ls")
@click.argument("pipeline", required=False)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per entry, as a list.")
def ls_cmd(pipeline: str | None, as_json: bool) -> None:
    """Cache entries (of PIPELINE), most recently used first: size, where they came from, last use."""
    store = Store()
    entries = db.entries(store, pipeline)
    if as_json:
        emit_json([{"key": e.key, "pipeline": e.pipeline, "stage": e.stage, "run_id": e.run_id,
                    "size_bytes": e.size_bytes, "outputs": [o.name for o in e.outputs], "uses": e.uses,
                    "created_at": iso(e.created_at), "last_used_at": iso(e.last_used_at)} for e in entries])
        return
    out = console()
    if not entries:
        out.print("The cache is empty: a successful stage is kept here for later runs.")
        return
    out.print(f"{'key':<12}  {'pipeline':<20} {'stage':<14} {'size':>9}  {'uses':>4}  {'last used':<16}  from run")
    for e in entries:
        out.print(f"{e.key[:12]}  {e.pipeline[:20]:<20} {e.stage[:14]:<14} {human(e.size_bytes):>9}  {e.uses:>4}  "
                  f"{iso(e.last_used_at)[:16].replace('T', ' '):<16}  {e.run_id}", highlight=False)
    total = sum(e.size_bytes for e in entries)
    own = sum(StageCache(store).own_bytes(e) for e in entries)
    out.print(f"{len(entries)} entries, {human(total)} of outputs; {human(own)} held only by the cache "
              "(the rest is shared with run folders through hard links).", highlight=False)


@cache.command("prune")
@click.option("--older-than", "older_than", metavar="AGE",
              help="Remove entries not used for this long (e.g. 30d, 12h).")
@click.option("--max-size", "max_size", metavar="SIZE",
              help="Then remove the least recently used until the cache's own disk use fits (e.g. 5GB).")
@click.option("--dry-run", is_flag=True, help="Say what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def prune_cmd(older_than: str | None, max_size: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove cache entries by age of last use or to fit a size. An entry a kept run still uses (its
    run folder links the files) is never removed; run folders themselves are never touched."""
    if older_than is None and max_size is None:
        raise UsageError("say what to prune", hint="Give --older-than AGE (e.g. 30d) and/or --max-size SIZE.")
    try:
        age = timedelta(seconds=parse_duration(older_than)) if older_than is not None else None
    except ValueError as exc:
        raise UsageError(f"--older-than: {exc}", hint="Write it as 30d, 12h or 90m.") from exc
    result = StageCache(Store()).prune(older_than=age, max_bytes=parse_size(max_size) if max_size else None,
                                       dry_run=dry_run)
    if as_json:
        emit_json({"removed": [e.key for e in result.removed], "freed_bytes": result.freed_bytes,
                   "kept_in_use": result.kept_in_use, "dry_run": dry_run})
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {len(result.removed)} entr{'y' if len(result.removed) == 1 else 'ies'}, "
               f"freeing {human(result.freed_bytes)}; kept {result.kept_in_use} that runs still use.")
    for e in result.removed:
        click.echo(f"  {e.key[:12]}  {e.pipeline}/{e.stage}  from run {e.run_id}")
