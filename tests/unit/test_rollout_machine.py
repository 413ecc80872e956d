"""The rollout state machine: every allowed and forbidden transition, dwell, auto-promotion."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelyard.errors import ConfigError, ConflictError
from modelyard.rollout.decision import ACTIONS, Decision
from modelyard.rollout.machine import (
    ACTIVE_STATES,
    FINAL_STATES,
    STATES,
    TRANSITIONS,
    next_state,
    plan_steps,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class View:
    strategy: str = "canary"
    state: str = "progressing"
    step: int = 0
    steps: tuple[int, ...] = (5, 25, 50, 100)
    every_s: float = 60.0
    step_started_at: datetime | None = T0
    rules: dict[str, Any] = field(default_factory=dict)


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def auto(action: str) -> Decision:
    return Decision(action)  # type: ignore[arg-type]


ALLOWED = [(s, a) for s in STATES for a in ACTIONS if a in TRANSITIONS[s]]
FORBIDDEN = [(s, a) for s in STATES for a in ACTIONS if a not in TRANSITIONS[s]]


def test_the_table_covers_every_state_and_final_states_allow_nothing():
    assert set(TRANSITIONS) == set(STATES)
    for state in FINAL_STATES:
        assert TRANSITIONS[state] == {}
    for state in ACTIVE_STATES:  # every running rollout can be ended three ways
        assert {"promote", "rollback", "abort"} <= set(TRANSITIONS[state])


@pytest.mark.parametrize("state,action", ALLOWED)
def test_allowed_manual_transitions(state, action):
    out = next_state(View(state=state), Decision.manual(action, "why"), later(1))
    assert out.state == TRANSITIONS[state][action]
    assert out.changed == (action != "hold")
    if action == "advance":
        assert (out.step, out.step_started_at) == (1, later(1))


@pytest.mark.parametrize("state,action", FORBIDDEN)
def test_forbidden_manual_transitions_raise_conflict(state, action):
    with pytest.raises(ConflictError) as err:
        next_state(View(state=state), Decision.manual(action), later(1))
    message = str(err.value)
    assert action in message and state.replace("_", " ") in message
    if state in FINAL_STATES:
        assert "start a new rollout" in message
    else:
        assert "allows:" in message


@pytest.mark.parametrize("state", FINAL_STATES)
@pytest.mark.parametrize("action", ["advance", "promote", "hold", "rollback"])
def test_analysis_cannot_touch_a_finished_rollout(state, action):
    with pytest.raises(ConflictError):
        next_state(View(state=state), auto(action), later(1000))


def test_activate_and_resume_restart_the_dwell_clock():
    for state, action in (("pending", "activate"), ("paused", "resume")):
        out = next_state(View(state=state, step_started_at=None), Decision.manual(action),
                         later(5))
        assert (out.state, out.step_started_at) == ("progressing", later(5))


def test_canary_waits_for_the_dwell_time_then_advances_step_by_step():
    view = View()
    held = next_state(view, auto("advance"), later(59))
    assert not held.changed and held.state == "progressing" and "dwells 1 s more" in held.note
    for step in range(3):
        at = later(60 * (step + 1))
        assert not next_state(view, auto("advance"), at - timedelta(seconds=1)).changed
        out = next_state(view, auto("advance"), at)
        assert (out.state, out.step, out.step_started_at) == ("progressing", step + 1, at)
        view = replace(view, step=out.step, step_started_at=out.step_started_at)
    assert not next_state(view, auto("promote"), later(200)).changed  # new step: dwell again
    final = next_state(view, auto("promote"), later(240))
    assert final.state == "promoted" and final.changed and "last step" in final.note


def test_automatic_promote_before_the_last_step_only_advances():
    out = next_state(View(step=1), auto("promote"), later(60))
    assert (out.state, out.step) == ("progressing", 2)


def test_a_person_advances_without_waiting_and_promotes_from_the_last_step():
    out = next_state(View(), Decision.manual("advance"), later(1))
    assert (out.state, out.step) == ("progressing", 1)
    out = next_state(View(step=3), Decision.manual("advance"), later(1))
    assert out.state == "promoted"


@pytest.mark.parametrize("state", ["pending", "paused"])
def test_analysis_does_not_move_a_pending_or_paused_rollout_forward(state):
    out = next_state(View(state=state), auto("advance"), later(1000))
    assert not out.changed and out.state == state and state in out.note


@pytest.mark.parametrize("state", ACTIVE_STATES)
def test_rollback_is_immediate_from_every_active_state(state):
    out = next_state(View(state=state, step=2), auto("rollback"), later(0))
    assert out.state == "rolled_back" and out.changed


def test_hold_changes_nothing():
    out = next_state(View(step=2), Decision("hold", ("need more requests",)), later(999))
    assert not out.changed and (out.state, out.step, out.step_started_at) == (
        "progressing", 2, T0)
    assert out.note == "need more requests"


@pytest.mark.parametrize("strategy", ["ab", "shadow"])
def test_ab_and_shadow_wait_for_a_person_to_promote(strategy):
    view = View(strategy=strategy, steps=(50,))
    out = next_state(view, auto("promote"), later(10_000))
    assert not out.changed and "promoted by a person" in out.note
    assert next_state(view, Decision.manual("promote"), later(1)).state == "promoted"
    assert next_state(view, Decision.manual("abort"), later(1)).state == "aborted"
    opted_in = replace(view, rules={"auto_promote": True})
    assert next_state(opted_in, auto("promote"), later(60)).state == "promoted"


def test_canary_can_opt_out_of_auto_promotion():
    view = View(step=3, rules={"auto_promote": False})
    assert not next_state(view, auto("advance"), later(60)).changed


def test_blue_green_switches_once_then_promotes_after_the_dwell():
    view = View(strategy="blue-green", state="pending", steps=(100,), step_started_at=None)
    assert not next_state(view, auto("advance"), later(1000)).changed  # still warming up
    switched = next_state(view, Decision.manual("activate", "health checks passed"), later(10))
    assert switched.state == "progressing"
    view = replace(view, state=switched.state, step_started_at=switched.step_started_at)
    assert not next_state(view, auto("promote"), later(30)).changed
    assert next_state(view, auto("promote"), later(70)).state == "promoted"


def test_direct_promotes_after_one_dwell():
    view = View(strategy="direct", steps=(100,))
    assert next_state(view, auto("advance"), later(60)).state == "promoted"


def test_unknown_state_and_action():
    with pytest.raises(ConflictError, match="unknown rollout state"):
        next_state(View(state="weird"), Decision.manual("hold"), T0)
    with pytest.raises(ConfigError, match="unknown rollout action"):
        Decision.manual("launch")


@pytest.mark.parametrize("strategy,steps,expected", [
    ("canary", None, (5, 25, 50, 100)), ("canary", [10, 50], (10, 50)),
    ("ab", None, (50,)), ("ab", [30], (30,)), ("shadow", None, (100,)), ("shadow", [10], (10,)),
    ("direct", None, (100,)), ("blue-green", [100], (100,)),
])
def test_plan_steps(strategy, steps, expected):
    assert plan_steps(strategy, steps) == expected


@pytest.mark.parametrize("strategy,steps,words", [
    ("rainbow", None, "unknown rollout strategy"),
    ("canary", [], "increasing"), ("canary", [50, 25], "increasing"),
    ("canary", [5, 5, 100], "increasing"), ("canary", [0, 100], "increasing"),
    ("canary", [5, 101], "increasing"), ("canary", [5.5, 100], "increasing"),
    ("direct", [50], "all traffic at once"), ("blue-green", [5, 100], "all traffic at once"),
    ("ab", [30, 60], "one percentage"), ("ab", [100], "both groups"),
])
def test_bad_steps_are_config_errors(strategy, steps, words):
    with pytest.raises(ConfigError, match=words):
        plan_steps(strategy, steps)
