"""Rollouts from the command line: ``modelyard deploy`` starts one, ``modelyard rollout`` steers it.

The servers sharing the registry pick a change up within about a second: they route traffic by
the deployment, analyse it, and promote or roll back by themselves. ``deploy`` takes every
setting it is not given from the rollout section of the spec registered with the version.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from modelyard.cli.output import console, print_json, print_table
from modelyard.cli.params import COUNT, VERSION
from modelyard.cli.state import State, pass_state
from modelyard.config import parse_duration
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.cli.remote import RemoteDeployments
    from modelyard.rollout.deployments import Deployment, Deployments

_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
_REASON = click.option("--reason", default="", help="Why (kept in the rollout's history).")


def parse_steps(text: str) -> list[int]:
    """``5,25,50,100`` as a list of percentages."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"steps {text!r} must be percentages like 5,25,50,100") from None


def _deployments(state: State) -> Deployments | RemoteDeployments:
    return state.deployments()


def _actor(state: State) -> str:
    return f"user:{state.settings().actor}"


def _strategy(canary: str | None, blue_green: bool, shadow: int | None, ab: int | None,
              direct: bool) -> tuple[str | None, list[int] | None]:
    """The strategy and steps the flags ask for; ``(None, None)``: the version's spec decides."""
    chosen = [name for name, on in (("canary", canary is not None), ("blue-green", blue_green),
                                    ("shadow", shadow is not None), ("ab", ab is not None),
                                    ("direct", direct)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one strategy, not {' and '.join(chosen)}")
    if not chosen:
        return None, None
    strategy = chosen[0]
    steps = {"canary": parse_steps(canary) if canary else None,
             "shadow": [shadow] if shadow is not None else None,
             "ab": [ab] if ab is not None else None}.get(strategy)
    return strategy, steps


@click.command(short_help="Roll a version out: canary, blue-green, shadow, A/B or direct.")
@click.argument("model")
@click.argument("version", type=VERSION)
@click.option("--canary", metavar="STEPS", help="Canary steps in percent, e.g. 5,25,50,100.")
@click.option("--blue-green", is_flag=True, help="Warm the candidate, then switch all at once.")
@click.option("--shadow", type=click.IntRange(1, 100), metavar="PERCENT", is_flag=False,
              flag_value=100, help="Copy PERCENT of traffic (default 100) to the candidate; "
              "answers still come from stable.")
@click.option("--ab", type=click.IntRange(1, 99), metavar="PERCENT",
              help="A/B test: PERCENT of keys see the candidate, each key always the same side.")
@click.option("--key", metavar="FIELD", help="For --ab: the header or input field that keys a "
              "user (default: the X-Request-Key header).")
@click.option("--direct", is_flag=True, help="Move production now (servers swap without "
              "failed requests).")
@click.option("--every", "every", metavar="DURATION",
              help="Dwell time of each step, and the analysis interval (default: the spec's "
                   "rollout.every_s, 60s).")
@click.option("--max-error-rate", type=click.FloatRange(0, 1),
              help="Roll back above this candidate error rate.")
@click.option("--max-latency-ratio", type=float, help="Roll back when the candidate is "
              "confidently more than this many times slower than stable, typically.")
@click.option("--max-p99-ratio", type=float, help="Roll back when the candidate's latency tail "
              "is confidently more than this many times heavier than stable's.")
@click.option("--min-requests", type=COUNT, help="Requests per side before analysis decides.")
@click.option("--metric", help="The metric to compare on fed-back labels (default: the spec's "
              "rollout.metric, else its first metric).")
@_REASON
@_JSON
@pass_state
def deploy(state: State, model: str, version: int, canary: str | None, blue_green: bool,
           shadow: int | None, ab: int | None, key: str | None, direct: bool,
           every: str | None, max_error_rate: float | None, max_latency_ratio: float | None,
           max_p99_ratio: float | None, min_requests: int | None, metric: str | None,
           reason: str, as_json: bool) -> None:
    """Roll VERSION of MODEL out against its production version.

    Settings not given come from the rollout section of the spec VERSION was trained with
    (strategy, steps, dwell time, analysis rules, metric); without one, a canary of
    5,25,50,100 % every 60 s. Servers route traffic by the rollout within a second, analyse
    candidate against stable at each step (error rate, latency, the model's metric once labels
    arrive) and promote or roll back by themselves. Steer it with 'modelyard rollout
    status|promote|abort MODEL'.
    """
    strategy, steps = _strategy(canary, blue_green, shadow, ab, direct)
    if key is not None and strategy not in (None, "ab"):
        raise click.UsageError("--key applies to --ab rollouts")
    rules: dict[str, Any] = {name: value for name, value in (
        ("max_error_rate", max_error_rate), ("max_latency_ratio", max_latency_ratio),
        ("max_p99_ratio", max_p99_ratio), ("min_requests", min_requests),
        ("metric", metric)) if value is not None}
    deployments = _deployments(state)
    deployment = deployments.start_declared(
        model, version, strategy=strategy, steps=steps,
        every_s=None if every is None else parse_duration(every), rules=rules, key=key,
        actor=_actor(state), reason=reason or "modelyard deploy",
    )
    described = deployments.describe(deployment)
    if as_json:
        print_json(described)
        return
    _describe(deployment)
    _explain(described)


@click.group(short_help="Show, promote, abort, pause or resume a model's rollout.")
def rollout() -> None:
    """Show or steer the rollout of a model started with 'modelyard deploy'."""


@rollout.command("status", short_help="The current rollout and its recent transitions.")
@click.argument("model")
@_JSON
@pass_state
def status(state: State, model: str, as_json: bool) -> None:
    """Show MODEL's current (or last) rollout and its transitions, newest first."""
    deployments = _deployments(state)
    deployment = deployments.get(model)
    described = deployments.describe(deployment)
    events = deployments.history(model, limit=20)
    if as_json:
        print_json({"deployment": described, "history": [e.to_dict() for e in events]})
        return
    _describe(deployment)
    _explain(described)
    print_table(["at", "action", "from", "to", "step", "by", "reason"],
                [[e.at, e.action, e.from_state or "-", e.to_state, e.step, e.actor, e.reason]
                 for e in events], title="transitions")


def _steer(action: str, short: str) -> click.Command:
    @rollout.command(action, short_help=short)
    @click.argument("model")
    @_REASON
    @_JSON
    @pass_state
    def command(state: State, model: str, reason: str, as_json: bool) -> None:
        deployment = getattr(_deployments(state), action)(
            model, actor=_actor(state), reason=reason or f"modelyard rollout {action}")
        if as_json:
            print_json(deployment.to_dict())
            return
        _describe(deployment)

    command.__doc__ = f"{short} (MODEL's active rollout)."
    return command


_steer("promote", "End the rollout with the candidate in production")
_steer("abort", "Cancel the rollout; all traffic back to stable")
_steer("pause", "Freeze the traffic split (analysis may still roll back)")
_steer("resume", "Resume a paused rollout")


def end_active_rollout(state: State, model: str, reason: str) -> Deployment | None:
    """Roll back ``model``'s active rollout, if it has one (``modelyard rollback`` does this)."""
    from modelyard.errors import NotFoundError

    deployments = _deployments(state)
    try:
        current = deployments.get(model)
    except NotFoundError:
        return None
    if not current.active:
        return None
    return deployments.rollback(model, actor=_actor(state), reason=reason or "modelyard rollback")


def _describe(d: Deployment) -> None:
    out = console()
    split = (f"step {d.step + 1}/{len(d.steps)}" if d.strategy == "canary" and d.active else "")
    out.print(f"[bold]{d.model}[/bold] {d.strategy} rollout: v{d.stable_version or '-'} (stable) "
              f"-> v{d.candidate_version} (candidate), {d.state}"
              + (f", {split}" if split else ""), highlight=False)


def _explain(described: dict[str, Any]) -> None:
    """What the rollout does and how it ends, then the traffic servers really report."""
    out = console()
    out.print(described["explain"], highlight=False, markup=False)
    seen = described["traffic"]
    if described["active"]:
        requests = seen["requests"]
        servers = len(seen["servers"])
        out.print(f"traffic: {seen['candidate_percent']:g}% to the candidate now"
                  + (f" ({seen['note']})" if seen["note"] else
                     f", on {servers} server{'s' if servers != 1 else ''}: "
                     f"{requests['stable']} stable and {requests['candidate']} candidate "
                     "requests this step"), highlight=False, markup=False)
    if seen.get("analysis"):
        out.print(f"last analysis: {seen['analysis']}", highlight=False, markup=False)


__all__ = ["deploy", "end_active_rollout", "parse_duration", "rollout"]
