"""Routing: a pure function of (deployment, request key, random draw)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import pytest

from modelyard.rollout.routing import Route, candidate_share, choose_variant, key_point

N = 100_000


@dataclass(frozen=True)
class View:
    strategy: str = "canary"
    state: str = "progressing"
    step: int = 0
    steps: tuple[int, ...] = (5, 25, 50, 100)
    model: str = "iris"
    id: int = 1


def _share(view: View, keys: list[str | None] | None = None, seed: int = 7) -> float:
    rng = random.Random(seed)
    hits = 0
    for i in range(N):
        key = keys[i] if keys is not None else None
        hits += choose_variant(view, key, rng.random()).primary == "candidate"
    return hits / N


def _tolerance(p: float) -> float:
    return 5 * math.sqrt(p * (1 - p) / N)  # five standard errors: deterministic seeds anyway


@pytest.mark.parametrize("step", [0, 1, 2])
def test_canary_share_matches_the_step_weight(step):
    view = View(step=step)
    p = view.steps[step] / 100
    assert abs(_share(view) - p) < _tolerance(p)
    assert candidate_share(view) == p


def test_canary_last_step_and_direct_and_blue_green_send_everything_to_candidate():
    for view in (View(step=3), View(strategy="direct", steps=(100,)),
                 View(strategy="blue-green", steps=(100,))):
        assert all(choose_variant(view, None, r / 10).primary == "candidate" for r in range(10))


@pytest.mark.parametrize("state,expected", [
    ("pending", "stable"), ("rolled_back", "stable"), ("aborted", "stable"),
    ("promoted", "candidate"),
])
def test_states_outside_the_rollout_route_to_one_side(state, expected):
    for strategy in ("canary", "ab", "shadow", "blue-green", "direct"):
        view = View(strategy=strategy, state=state)
        routes = {choose_variant(view, "k", r / 20) for r in range(20)}
        assert routes == {Route(expected)}, (strategy, state)


def test_paused_keeps_the_current_split():
    view = View(state="paused", step=1)
    assert abs(_share(view) - 0.25) < _tolerance(0.25)


def test_ab_is_sticky_by_key_whatever_the_draw():
    view = View(strategy="ab", steps=(30,))
    for key in ("user-1", "user-2", "user-3", "ünïcode", ""):
        routes = {choose_variant(view, key, r / 50).primary for r in range(50)}
        assert len(routes) == 1, key
        expected = "candidate" if key_point(view, key) < 0.3 else "stable"
        assert routes == {expected}


@pytest.mark.parametrize("weight", [10, 50, 90])
def test_ab_weights_over_many_keys(weight):
    view = View(strategy="ab", steps=(weight,))
    keys: list[str | None] = [f"user-{i}" for i in range(N)]
    p = weight / 100
    assert abs(_share(view, keys) - p) < _tolerance(p)


def test_ab_hash_is_deterministic_and_resplits_per_deployment():
    a, b = View(strategy="ab", id=1), View(strategy="ab", id=2)
    assert key_point(a, "u") == key_point(View(strategy="ab", id=1), "u")
    assert 0 <= key_point(a, "u") < 1
    keys = [f"user-{i}" for i in range(10_000)]
    same = sum((key_point(a, k) < 0.5) == (key_point(b, k) < 0.5) for k in keys) / len(keys)
    assert 0.45 < same < 0.55  # independent splits agree half the time


def test_ab_without_key_falls_back_to_the_draw():
    view = View(strategy="ab", steps=(40,))
    assert choose_variant(view, None, 0.39).primary == "candidate"
    assert choose_variant(view, None, 0.41).primary == "stable"
    assert abs(_share(view) - 0.4) < _tolerance(0.4)


def test_canary_ignores_the_key():
    view = View(step=1)
    assert choose_variant(view, "same", 0.1).primary == "candidate"
    assert choose_variant(view, "same", 0.9).primary == "stable"


@pytest.mark.parametrize("state", ["progressing", "paused"])
def test_shadow_never_answers_from_candidate(state):
    view = View(strategy="shadow", state=state, steps=(100,))
    rng = random.Random(3)
    routes = [choose_variant(view, f"k{i}", rng.random()) for i in range(N)]
    assert {r.primary for r in routes} == {"stable"}
    assert all(r.shadow for r in routes)


def test_shadow_copies_the_configured_share():
    view = View(strategy="shadow", steps=(20,))
    rng = random.Random(5)
    copied = sum(choose_variant(view, None, rng.random()).shadow for _ in range(N)) / N
    assert abs(copied - 0.2) < _tolerance(0.2)
    assert not choose_variant(replace(view, state="pending"), None, 0.0).shadow


def test_only_shadow_rollouts_send_shadow_copies():
    for strategy in ("canary", "ab", "direct", "blue-green"):
        view = View(strategy=strategy)
        assert not any(choose_variant(view, "k", r / 10).shadow for r in range(10))
