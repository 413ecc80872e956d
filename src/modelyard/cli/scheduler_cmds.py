"""``modelyard scheduler``: alert, retrain on a schedule or trigger, and roll out, in a loop."""

from __future__ import annotations

import signal
import threading
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING

import click

from modelyard.cli.rollout_cmds import parse_duration
from modelyard.cli.state import State, pass_state
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.scheduler import Action
    from modelyard.spec import Spec


@click.command(short_help="Watch models: alert, retrain on schedule or triggers, roll out.")
@click.option("--project", "-p", default="modelyard.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="The project file declaring the models.")
@click.option("--interval", default="30s", show_default=True, metavar="DURATION",
              help="Time between passes, e.g. 30s, 5m.")
@click.option("--once", is_flag=True, help="Run one pass and exit (for cron jobs and tests).")
@click.option("--model", "models", multiple=True, metavar="NAME",
              help="Watch only this model (repeat for more).")
@pass_state
def scheduler(state: State, project: str, interval: str, once: bool,
              models: tuple[str, ...]) -> None:
    """Watch the models whose spec has a retrain: policy or monitoring alerts.

    Each pass announces alert rules that start or stop firing, retrains a model when its cron
    schedule comes due or a trigger holds (drift_share, metric_below, new_labels) and, with
    retrain.auto_rollout, starts a rollout of the new version. Prints one line per action;
    with --once also, for each model it did not retrain, why not (schedule not due, drift or
    metric within bounds, too few labels, a rollout active, another scheduler's lease, ...).
    Several schedulers may share a registry: a lease lets one retrain a model at a time.
    Ctrl-C (or SIGTERM) stops after the current step.
    """
    from modelyard.scheduler import Scheduler
    from modelyard.spec import load_project

    state.require_local()
    every = parse_duration(interval)
    specs = _chosen(load_project(project), models, project)
    # with --once, every model gets a line: what was done, or why nothing was
    from modelyard.executors import ExecutorOptions

    registry = state.local_registry()
    options = ExecutorOptions.from_env(artifacts=registry.settings.artifacts)
    runner = Scheduler(registry, specs, interval_s=every, on_action=_print,
                       explain=once, executor_options=options)
    if once:
        runner.tick()
        return
    click.echo(f"watching {', '.join(specs)} every {interval} as {runner.holder}; "
               "Ctrl-C stops")
    stop = threading.Event()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()
        # a second Ctrl-C interrupts whatever runs now (exit 130)
        signal.signal(signal.SIGINT, previous[signal.SIGINT])

    for sig in previous:
        signal.signal(sig, request_stop)
    try:
        runner.run(stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("scheduler stopped")


def _chosen(specs: dict[str, Spec], names: tuple[str, ...], project: str) -> dict[str, Spec]:
    from modelyard.scheduler import watches

    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ConfigError(f"{', '.join(unknown)} not declared in {project}; "
                          f"declared: {', '.join(specs) or 'none'}")
    chosen = {n: specs[n] for n in names} if names else specs
    watched = {n: s for n, s in chosen.items() if watches(s)}
    if not watched:
        raise ConfigError(f"nothing to watch: no model{' named' if names else ''} in {project} "
                          "has a retrain: policy, monitoring.alerts or precompute:; add e.g. "
                          "retrain: {schedule: '0 3 * * *'}")
    return watched


def _print(action: Action) -> None:
    at = datetime.now(UTC).strftime("%H:%M:%S")
    click.echo(f"{at} {action.model} {action.kind}: {action.message}")


__all__ = ["scheduler"]
