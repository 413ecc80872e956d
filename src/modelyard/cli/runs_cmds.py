"""Runs, training and batch: ``modelyard runs [MODEL]`` lists them, ``runs show RUN_ID`` shows
one, ``runs cancel RUN_ID`` stops one."""

from __future__ import annotations

import time

import click

from modelyard.cli.output import (
    console,
    fmt_duration,
    fmt_metrics,
    fmt_time,
    print_fields,
    print_json,
    print_table,
)
from modelyard.cli.state import State, pass_state
from modelyard.registry.records import Run


class _ListByDefault(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``list``.

    So ``runs``, ``runs fraud`` and ``runs --json`` list, while ``runs show ID`` shows.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        wants_help = bool(args) and args[0] in ctx.help_option_names
        if not wants_help and (not args or args[0] not in self.commands):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_ListByDefault, short_help="List training and batch runs, or show one.")
def runs() -> None:
    """Training and batch scoring runs: 'runs [MODEL]' lists recent ones, 'runs show RUN_ID'
    shows one (a training run with its logs)."""


@runs.command("list", short_help="List recent runs, of every model or of MODEL.")
@click.argument("model", required=False)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000),
              help="How many runs to show.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@pass_state
def list_runs(state: State, model: str | None, limit: int, as_json: bool) -> None:
    """List recent runs (training and batch), newest first, of every model or of MODEL."""
    found = state.registry().list_runs(model, limit=limit)
    if as_json:
        print_json([{k: v for k, v in r.to_dict().items() if k != "logs"} for r in found])
        return
    print_table(
        ["run", "model", "kind", "status", "trigger", "started", "took", "version", "note"],
        [[r.id[:8], r.model, r.kind, r.status, r.trigger, r.started_at,
          fmt_duration(r.duration_s),
          "" if r.version is None else f"v{r.version}" + (" (promoted)" if r.promoted else ""),
          _note(r)] for r in found],
        empty=f"no runs{f' of {model}' if model else ''} yet: "
              "start one with 'modelyard train NAME'",
    )


def _note(run: Run) -> str:
    """Why a run failed; for a batch run, what it scored and where it wrote."""
    details = run.details or {}
    if run.kind != "batch" or "rows" not in details:
        return run.failure_reason or ""
    done = f"{details['rows']:,} rows, {details['errors']:,} refused -> {details['output']}"
    return f"{run.failure_reason} ({done})" if run.failure_reason else done


@runs.command("show", short_help="Show one run with its gate and logs.")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (logs included).")
@pass_state
def show_run(state: State, run_id: str, as_json: bool) -> None:
    """Show one run (a unique prefix of its id is enough): outcome, metrics, gate and logs."""
    run = state.registry().get_run(run_id)
    if as_json:
        print_json(run.to_dict())
        return
    console().print(f"[bold]run {run.id}[/bold]  {run.model}  {run.kind}  {run.status}")
    if run.kind == "batch":
        _show_batch(run)
        return
    gate = run.gate or {}
    print_fields({
        "trigger": run.trigger,
        "by": run.created_by,
        "started": fmt_time(run.started_at),
        "ended": fmt_time(run.ended_at),
        "took": fmt_duration(run.duration_s),
        "version": None if run.version is None else
        f"v{run.version}" + (" (promoted)" if run.promoted else ""),
        "reason": run.failure_reason,
        "metrics": fmt_metrics(run.metrics),
        "gate": None if not gate else ("passed" if gate.get("passed") else
                                       "rejected: " + "; ".join(gate.get("reasons", []))),
    })
    if gate.get("fairness"):
        from modelyard.cli.fairness_view import print_fairness

        print_fairness(gate["fairness"], title="fairness on the holdout")
    out = console()
    out.print("[bold]logs[/bold]")
    out.print(run.logs.rstrip() or "(no logs)", markup=False, highlight=False)


@runs.command("cancel", short_help="Stop a running training run.")
@click.argument("run_id")
@click.option("--wait", "wait_s", default=0.0, show_default=True, type=click.FloatRange(0, 3600),
              help="Seconds to wait for the run to stop (0: ask and return).")
@pass_state
@click.pass_context
def cancel_run(ctx: click.Context, state: State, run_id: str, wait_s: float) -> None:
    """Ask the process running RUN_ID (a local 'modelyard train', the scheduler, or a client
    waiting on a Ray task) to stop it. It looks about once a second: it kills the training
    (the child process, or the Ray task), registers nothing and records the run as failed,
    "cancelled". With --wait, waits for that and exits 1 if the run is still running then.
    Exits 4 if the run is not running."""
    registry = state.registry()
    run = registry.request_cancel(run_id)
    out = console()
    out.print(f"asked run {run.id[:8]} ({run.model}) to stop")
    deadline = time.monotonic() + wait_s
    while wait_s and run.status == "running" and time.monotonic() < deadline:
        time.sleep(0.2)
        run = registry.get_run(run.id)
    if not wait_s:
        return
    if run.status == "running":
        out.print(f"run {run.id[:8]} is still running after {wait_s:g}s", markup=False)
        ctx.exit(1)
    out.print(f"run {run.id[:8]} {run.status}: {run.failure_reason or ''}".rstrip(": "),
              markup=False)


def _show_batch(run: Run) -> None:
    """A batch run's fields: the version, what it read and wrote, and how many rows."""
    details = run.details or {}
    print_fields({
        "trigger": run.trigger, "by": run.created_by, "started": fmt_time(run.started_at),
        "ended": fmt_time(run.ended_at), "took": fmt_duration(run.duration_s),
        "version": None if run.version is None else f"v{run.version}",
        "reason": run.failure_reason, "input": details.get("input"),
        "fingerprint": details.get("input_fingerprint"), "output": details.get("output"),
        "rows": details.get("rows"), "refused": details.get("errors"),
        "errors in": details.get("errors_location") if details.get("errors") else None,
        "resumed": details.get("resumed_chunks") or None, "rate":
        None if not details.get("rows_per_s") else f"{details['rows_per_s']:,.0f} rows/s",
    })


__all__ = ["runs"]
