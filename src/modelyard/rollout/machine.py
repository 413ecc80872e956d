"""The rollout state machine: which actions each state allows and where they lead. Pure.

::

    pending ──activate──> progressing ──advance (last step)──> promoted
       │                   │  ↑  └──advance──> progressing (next step)
       │                 pause resume
       │                   ↓  │
       │                  paused
       └── any active state ──promote──> promoted
                            ──rollback─> rolled_back
                            ──abort────> aborted

Blue-green starts ``pending`` (the candidate is loaded, warmed and health-checked while all traffic
stays on stable) and ``activate`` is the one atomic switch; every other strategy starts
``progressing``. ``promoted``, ``rolled_back`` and ``aborted`` are final: a new rollout is a new
deployment.

Analysis decisions (``Decision.automatic``) are gentler than a person's: a step forward waits
until the current step has lasted ``every_s`` (the dwell time), is ignored while ``pending`` or
``paused``, and at the last step promotes only strategies that promote by themselves (canary,
direct, blue-green; A/B and shadow wait for a person unless the rules say ``auto_promote``). A
rollback is never delayed. A person's ``advance`` moves on at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import pairwise
from typing import Any, Protocol

from modelyard.errors import ConfigError, ConflictError
from modelyard.rollout.decision import Decision

STRATEGIES = ("direct", "blue-green", "canary", "shadow", "ab")
ACTIVE_STATES = ("pending", "progressing", "paused")
FINAL_STATES = ("promoted", "rolled_back", "aborted")
STATES = ACTIVE_STATES + FINAL_STATES
#: state -> action -> the state it leads to (``advance`` at the last step leads to ``promoted``).
TRANSITIONS: dict[str, dict[str, str]] = {
    "pending": {"activate": "progressing", "hold": "pending", "promote": "promoted",
                "rollback": "rolled_back", "abort": "aborted"},
    "progressing": {"advance": "progressing", "hold": "progressing", "pause": "paused",
                    "promote": "promoted", "rollback": "rolled_back", "abort": "aborted"},
    "paused": {"resume": "progressing", "hold": "paused", "promote": "promoted",
               "rollback": "rolled_back", "abort": "aborted"},
    "promoted": {}, "rolled_back": {}, "aborted": {},
}
DEFAULT_STEPS = {"canary": (5, 25, 50, 100), "ab": (50,), "shadow": (100,), "direct": (100,),
                 "blue-green": (100,)}
#: strategies whose analysis may promote without a person.
AUTO_PROMOTE = {"direct": True, "blue-green": True, "canary": True, "ab": False, "shadow": False}
_FORWARD = ("advance", "promote")


class DeploymentView(Protocol):
    """What the machine reads of a deployment (the registry's ``Deployment`` record has it)."""

    @property
    def strategy(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def steps(self) -> Sequence[int]: ...
    @property
    def every_s(self) -> float: ...
    @property
    def step_started_at(self) -> datetime | None: ...
    @property
    def rules(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Outcome:
    """Where a decision leads: the new state, step and step start; ``changed`` False: a no-op."""

    state: str
    step: int
    step_started_at: datetime | None
    changed: bool
    note: str = ""


def next_state(deployment: DeploymentView, decision: Decision, now: datetime) -> Outcome:
    """Apply ``decision`` to ``deployment`` at time ``now``.

    Raises :class:`ConflictError` when the state does not allow the action (every final state, a
    person's ``activate`` of a running rollout, ...); returns an unchanged :class:`Outcome` for a
    hold, or for an automatic step forward that must wait.
    """
    state, action = deployment.state, decision.action
    allowed = TRANSITIONS.get(state, {})
    if decision.automatic and action in _FORWARD and state in ACTIVE_STATES:
        return _automatic_forward(deployment, now)
    if action not in allowed:
        raise ConflictError(_refusal(state, action, allowed))
    if action == "hold":
        return _same(deployment, decision.reason or "hold")
    if action == "advance":
        return _advance(deployment, now, "advanced by a person")
    target = allowed[action]
    started = now if target == "progressing" else deployment.step_started_at
    return Outcome(target, deployment.step, started, True, action)


def auto_promotes(deployment: DeploymentView) -> bool:
    """Whether analysis may promote this deployment without a person."""
    explicit = deployment.rules.get("auto_promote")
    return AUTO_PROMOTE.get(deployment.strategy, False) if explicit is None else bool(explicit)


def dwell_left_s(deployment: DeploymentView, now: datetime) -> float:
    """Seconds until the current step has lasted its dwell time (0: it has)."""
    if deployment.step_started_at is None:
        return 0.0
    elapsed = (now - deployment.step_started_at).total_seconds()
    return max(0.0, deployment.every_s - elapsed)


def _automatic_forward(deployment: DeploymentView, now: datetime) -> Outcome:
    if deployment.state != "progressing":
        return _same(deployment, f"analysis is ok; the rollout is {deployment.state}")
    left = dwell_left_s(deployment, now)
    if left > 0:
        return _same(deployment, f"analysis is ok; step {deployment.step + 1} dwells "
                                 f"{left:.0f} s more")
    if _at_last_step(deployment) and not auto_promotes(deployment):
        return _same(deployment, f"analysis is ok; a {deployment.strategy} rollout is "
                                 "promoted by a person")
    return _advance(deployment, now, "analysis is ok after the dwell time")


def _advance(deployment: DeploymentView, now: datetime, note: str) -> Outcome:
    if _at_last_step(deployment):
        return Outcome("promoted", deployment.step, deployment.step_started_at, True,
                       f"{note}; last step passed")
    return Outcome("progressing", deployment.step + 1, now, True, note)


def plan_steps(strategy: str, steps: Sequence[int] | None) -> tuple[int, ...]:
    """Validate a rollout's steps (candidate percentages) for ``strategy``, or give defaults.

    Canary: increasing percentages (default 5, 25, 50, 100); A/B: one weight from 1 to 99
    (default 50); shadow: the percent of traffic copied (default 100); direct and blue-green: 100.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown rollout strategy {strategy!r}; use one of "
                          f"{', '.join(STRATEGIES)}")
    if steps is None:
        return DEFAULT_STEPS[strategy]
    planned = tuple(steps)
    if (not planned or any(not isinstance(p, int) or not 0 < p <= 100 for p in planned)
            or any(b <= a for a, b in pairwise(planned))):
        raise ConfigError(f"steps {list(planned)} must be increasing percentages from 1 to 100")
    if strategy in ("direct", "blue-green") and planned != (100,):
        raise ConfigError(f"a {strategy} rollout switches all traffic at once; steps apply to "
                          "canary, ab and shadow rollouts")
    if strategy in ("ab", "shadow") and len(planned) != 1:
        raise ConfigError(f"a {strategy} rollout takes one percentage, e.g. steps=[50]")
    if strategy == "ab" and planned[0] == 100:
        raise ConfigError("an A/B rollout needs both groups: give the candidate 1 to 99 percent")
    return planned


def _at_last_step(deployment: DeploymentView) -> bool:
    return deployment.step >= len(deployment.steps) - 1


def _same(deployment: DeploymentView, note: str) -> Outcome:
    return Outcome(deployment.state, deployment.step, deployment.step_started_at, False, note)


def _refusal(state: str, action: str, allowed: Mapping[str, str]) -> str:
    if state in FINAL_STATES:
        return (f"cannot {action} a rollout that is already {state.replace('_', ' ')}; "
                "start a new rollout instead")
    if state not in TRANSITIONS:
        return f"unknown rollout state {state!r}"
    return (f"cannot {action} a rollout that is {state}; "
            f"a {state} rollout allows: {', '.join(sorted(allowed))}")


__all__ = [
    "ACTIVE_STATES", "AUTO_PROMOTE", "DEFAULT_STEPS", "FINAL_STATES", "STATES", "STRATEGIES",
    "TRANSITIONS", "DeploymentView", "Outcome", "auto_promotes", "dwell_left_s", "next_state",
    "plan_steps",
]
