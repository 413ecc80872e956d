"""``modelyard cost``: what each model costs to serve, train and score, and how to spend less."""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime

import click

from modelyard.cli.output import console, fmt_time, print_json, print_table
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError
from modelyard.monitoring.cost import CostReport, Prices, ServingUsage


def _price(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise click.BadParameter("give a price of 0 or more")
    return value


@click.command(short_help="What each model costs (serving, training, batch) and how to save.")
@click.option("--since", default="30d", show_default=True, metavar="AGO|TIME",
              help="Window start: a duration ago (12h, 30d) or an ISO time.")
@click.option("--price-cpu-hour", type=float, default=0.0, callback=_price, metavar="X",
              help="What one CPU-hour costs (default 0: CPU not priced).")
@click.option("--price-gb-hour", type=float, default=0.0, callback=_price, metavar="Y",
              help="What one GiB of memory held for an hour costs (default 0: not priced).")
@click.option("--server", "server_url", default=None, metavar="URL",
              help="Read serving figures from this server's /metrics (default: the global "
                   "--server / MODELYARD_URL; without one, only runs are counted).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@pass_state
def cost(state: State, since: str, price_cpu_hour: float, price_gb_hour: float,
         server_url: str | None, as_json: bool) -> None:
    """Show per model the serving CPU, GPU and memory (GiB-hours), the CPU of its training and
    batch runs, and their cost at the given prices over the window; then the cheapest ways to
    save: idle versions, rarely used versions kept loaded, oversized batches, idle GPUs.

    Serving figures come from the running server's /metrics (totals since it started, prorated
    when it started before the window); runs from the registry (or the server's API).
    """
    from modelyard.config import parse_since
    from modelyard.monitoring.cost import build_report
    from modelyard.monitoring.cost_sources import run_usage, serving_usage

    start = parse_since(since)
    now = datetime.now(UTC)
    if start >= now:
        raise ConfigError(f"--since {since[:40]!r} is not in the past; give e.g. 30d")
    url = server_url or state.server
    serving: list[ServingUsage] = []
    started: float | None = None
    if url:
        serving, started = serving_usage(_scrape(url))
    runs = run_usage(state.registry(), start)
    report = build_report(serving, runs, Prices(price_cpu_hour, price_gb_hour), since=start,
                          until=now, server_started=started)
    if as_json:
        print_json(report.to_dict())
        return
    _show(report)


def _scrape(url: str) -> str:
    """The server's ``/metrics`` text (with ``MODELYARD_API_KEY`` when set)."""
    from modelyard.cli.remote import KEY_ENV, Remote

    remote = Remote(url, os.environ.get(KEY_ENV), timeout_s=30.0)
    try:
        return remote.text("/metrics")
    finally:
        remote.close()


def _show(report: CostReport) -> None:
    out = console()
    out.print(f"[bold]Cost per model[/bold] from {fmt_time(report.since)} to "
              f"{fmt_time(report.until)}")
    priced = report.prices.priced
    headers = ["model", "requests", "serving CPU h", "GPU h", "memory GiB·h", "train CPU h",
               "batch CPU h"] + (["cost"] if priced else [])
    print_table(headers, [
        [m.model, f"{m.requests:.0f}", _h(m.serving_cpu_s), _h(m.gpu_s),
         f"{m.memory_gib_hours:.3f}", _h(m.train_cpu_s), _h(m.batch_cpu_s)]
        + ([f"{m.cost:.2f}"] if priced else []) for m in report.models],
        empty="nothing served or run in the window")
    for note in report.notes:
        out.print(f"note: {note}")
    if not priced:
        out.print("give --price-cpu-hour and --price-gb-hour to see costs")
    out.print("[bold]Ways to save[/bold], cheapest first")
    print_table(["model", "version", "kind", "saves", "advice"], [
        [s.model, s.version, s.kind,
         f"{s.saves:.2f}" if s.saves is not None else
         (f"{s.saves_gib_hours:.2f} GiB·h" if s.saves_gib_hours else "-"), s.advice]
        for s in report.savings], empty="nothing to save found")


def _h(seconds: float) -> str:
    return f"{seconds / 3600:.4f}"


__all__ = ["cost"]
