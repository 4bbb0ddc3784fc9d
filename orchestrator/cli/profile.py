"""`lhorch profile`: what this machine has, how fast it measured, how busy it is now."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from lhorch.orchestrator.cli.output import console
from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.machine.microbench import ObjectStoreUploader
from lhorch.orchestrator.machine.profiler import dump_profile_json, get_profile
from lhorch.orchestrator.state.store import Store
from lhorch.providers.transfer import s3_client


def _s3_uploader(bucket: str) -> ObjectStoreUploader:
    # The S3 client comes from the provider layer (which imports boto3 only when asked for one).
    return ObjectStoreUploader(s3_client(), bucket)


@click.command("profile")
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON (keys: docs/profile.md).")
@click.option("--refresh", is_flag=True, help="Measure again even if cached figures are still valid.")
@click.option("--thorough", is_flag=True, help="Longer, steadier benchmarks (tens of seconds).")
@click.option("--file", "profile_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Show a profile saved as JSON instead of this machine (as LHORCH_PROFILE does).")
@click.option("--upload-bucket", metavar="BUCKET",
              help="Also measure upload bandwidth with a few MB PUT to this S3 bucket (AWS credentials needed).")
def profile(as_json: bool, refresh: bool, thorough: bool, profile_file: Path | None,
            upload_bucket: str | None) -> None:
    """Show this machine's resources and measured speed, as the planner sees them.

    Measurements take a few seconds and are cached for 7 days per hardware fingerprint; the
    inventory and current load are always read live."""
    uploader = _s3_uploader(upload_bucket) if upload_bucket else None
    store = Store()
    try:
        result = get_profile(store, refresh=refresh, thorough=thorough, profile_file=profile_file,
                             uploader=uploader)
    finally:
        store.close()
    if as_json:
        click.echo(dump_profile_json(result))
    else:
        render(result, console())


def render(p: Profile, console: Console) -> None:
    """The human view: inventory, measured figures with their method, load now."""
    inv = Table(title=f"{p.hostname}  ({p.source})", show_header=False, title_justify="left")
    inv.add_column(style="bold")
    inv.add_column()
    inv.add_row("OS", p.os)
    inv.add_row("CPU", f"{p.cpu_model} — {p.physical_cores} physical / {p.logical_cores} logical cores")
    inv.add_row("RAM", f"{p.ram_total_gb:.1f} GB total, {p.ram_available_gb:.1f} GB available, "
                       f"swap {p.swap_total_gb:.1f} GB")
    inv.add_row("Disk free", f"{p.disk_free_gb:.1f} GB (at LHORCH_HOME)")
    if not p.gpus:
        inv.add_row("GPUs", "none")
    for g in p.gpus:
        extra = ", ".join(x for x in (
            f"compute {g.compute_capability}" if g.compute_capability else "",
            f"driver {g.driver_version}" if g.driver_version else "",
            f"{g.backend.upper()} {g.cuda_version}" if g.cuda_version else "",
            "" if g.usable else "NOT usable by this torch",
        ) if x)
        free = f", {g.memory_free_gb:.1f} GB free" if g.memory_free_gb is not None else ""
        inv.add_row(f"GPU {g.index} ({g.backend})", f"{g.name}: {g.memory_total_gb:.1f} GB{free}"
                                                    + (f" [{extra}]" if extra else ""))
    if p.on_battery is not None:
        inv.add_row("Power", ("on battery" if p.on_battery else "plugged in")
                    + (f", {p.battery_percent:.0f}%" if p.battery_percent is not None else ""))
    inv.add_row("torch", p.torch_version or "not installed")
    inv.add_row("Fingerprint", p.fingerprint)
    console.print(inv)

    when = p.measured_at.strftime("%Y-%m-%d %H:%M UTC") if p.measured_at else "unknown"
    figures = Table(title=f"Measured ({'thorough' if p.thorough else 'quick'}, {when})", title_justify="left")
    figures.add_column("figure", style="bold")
    figures.add_column("value", justify="right")
    figures.add_column("method", overflow="fold")
    for key, m in p.measured.items():
        figures.add_row(key, f"{m.value:,.1f} {m.unit}", m.method)
    if "upload" not in p.measured:
        figures.add_row("upload", "—", "not measured: pass --upload-bucket")
    console.print(figures)

    load = p.load
    gpu_free = ", ".join(f"{x:.1f}" for x in load.gpu_memory_free_gb)
    console.print(f"[bold]Load now:[/bold] CPU {load.cpu_percent:.0f}%"
                  + (f", load avg {load.load_avg_1m:.2f}" if load.load_avg_1m is not None else "")
                  + f", RAM available {load.ram_available_gb:.1f} GB"
                  + (f", GPU free [{gpu_free}] GB" if gpu_free else ""))
    colour = {"high": "green", "medium": "yellow", "low": "red"}.get(p.confidence, "white")
    console.print(f"[bold]Confidence: [{colour}]{p.confidence}[/{colour}][/bold]"
                  + (f" — {p.confidence_reason}" if p.confidence_reason else ""))
    for note in p.notes:
        console.print(f"[yellow]note:[/yellow] {note}")

