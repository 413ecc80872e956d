"""The multi-process window logic of rollouts, without processes, sockets or sleeps: freshness,
the first analysis's wait, when analysis is due, the leader, merging, published snapshots and
the leader's decision over every process's traffic."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from modelyard.rollout.deployments import DeploymentWindow
from modelyard.rollout.stats import WindowStats
from modelyard.rollout.windows import (
    MIN_ANALYSIS_S,
    ProcessWindow,
    fresh_seconds,
    gather_windows,
    judge,
    leader,
    merge_windows,
    settle_seconds,
    shadow_dropped,
)


@dataclass(frozen=True)
class Dep:
    strategy: str = "canary"
    steps: tuple[int, ...] = (50, 100)
    state: str = "progressing"
    step: int = 0
    id: int = 7
    model: str = "m"
    revision: int = 1
    every_s: float = 10.0
    key: str | None = None
    rules: dict[str, Any] = field(default_factory=lambda: {"min_requests": 5})


def window(requests: int, errors: int = 0) -> WindowStats:
    w = WindowStats()
    for i in range(requests):
        w.observe(0.001, error=i < errors)
    return w


def published(process: str, stable: int, candidate: int, **extra: Any) -> DeploymentWindow:
    stats = {"stable": window(stable).to_dict(), "candidate": window(candidate).to_dict(),
             **extra}
    return DeploymentWindow(process, stats, datetime.now(UTC))


@pytest.mark.parametrize(("poll_s", "fresh", "settle"), [
    (0.1, 5.0, 0.2),     # fast polls: the freshness floor holds
    (1.0, 5.0, 2.0),
    (2.0, 6.0, 4.0),     # three polls
    (30.0, 90.0, 60.0),
])
def test_freshness_and_the_first_wait_follow_the_poll_interval(
        poll_s: float, fresh: float, settle: float) -> None:
    assert fresh_seconds(poll_s) == fresh
    assert settle_seconds(poll_s) == settle


@pytest.mark.parametrize(("every_s", "settle_s", "first"), [
    (10.0, 0.0, 10.0),   # the interval
    (10.0, 30.0, 30.0),  # the others have not published yet: wait for them
    (0.1, 0.0, MIN_ANALYSIS_S),  # clamped up to the floor
])
def test_the_first_analysis_of_a_revision_waits(every_s: float, settle_s: float,
                                                 first: float) -> None:
    w = ProcessWindow(Dep(every_s=every_s), settle_s=settle_s, now=100.0)
    assert w.next_analysis == 100.0 + first
    assert not w.due(100.0 + first - 0.001)
    assert w.due(100.0 + first)
    assert w.next_analysis == 100.0 + first + max(MIN_ANALYSIS_S, every_s)  # the next look


@pytest.mark.parametrize(("state", "outdated", "due"), [
    ("progressing", False, True),
    ("paused", False, False),
    ("pending", False, False),
    ("progressing", True, False),  # the registry refused our window: wait for the next poll
])
def test_analysis_is_due_only_for_a_current_progressing_revision(
        state: str, outdated: bool, due: bool) -> None:
    w = ProcessWindow(Dep(state=state), now=0.0)
    w.outdated = outdated
    assert w.due(1000.0) is due
    assert (w.next_analysis == 1010.0) is due  # only a look that happens schedules the next


def test_a_new_revision_restarts_the_window_but_keeps_the_drops() -> None:
    w = ProcessWindow(Dep(), now=0.0)
    w.stats["candidate"].observe(0.01)
    w.outdated, w.analysis, w.dropped = True, "hold: too few", 3
    w.update(replace(w.deployment, revision=2, every_s=30.0), now=50.0)
    assert w.ident == (7, 2) and w.stats["candidate"].requests == 0
    assert (w.outdated, w.analysis, w.dropped, w.next_analysis) == (False, "", 3, 80.0)


@pytest.mark.parametrize(("analysis", "dropped", "extra"), [
    ("", 0, {}),
    ("hold: too few", 0, {"analysis": "hold: too few"}),
    ("", 4, {"shadow_dropped": 4}),
])
def test_the_published_snapshot(analysis: str, dropped: int, extra: dict[str, Any]) -> None:
    w = ProcessWindow(Dep(), now=0.0)
    w.stats["stable"].observe(0.002)
    w.analysis, w.dropped = analysis, dropped
    snap = w.snapshot()
    assert snap == {"stable": w.stats["stable"].to_dict(),
                    "candidate": WindowStats().to_dict(), "candidate_serving": True, **extra}
    assert WindowStats.from_dict(snap["stable"]).requests == 1


@pytest.mark.parametrize(("me", "others", "lead"), [
    ("server:b", ["server:a"], "server:a"),
    ("server:a", ["server:b"], "server:a"),
    ("server:b", [], "server:b"),           # leads before it ever published
    ("server:b", ["server:b"], "server:b"),  # its own stale copy is replaced, not doubled
    ("server:c", ["server:b", "server:a"], "server:a"),
])
def test_the_leader_is_the_smallest_name_counting_this_process(
        me: str, others: list[str], lead: str) -> None:
    own = {"stable": window(1), "candidate": window(1)}
    windows = gather_windows(me, own, [published(p, 1, 1) for p in others])
    assert leader(windows) == lead
    assert sorted(windows) == sorted({me, *others})
    assert windows[me]["stable"] is own["stable"]


def test_merging_adds_every_process_and_leaves_the_inputs_alone() -> None:
    own = {"stable": window(3), "candidate": window(4, errors=1)}
    windows = gather_windows("server:b", own, [published("server:a", 10, 20),
                                               published("server:b", 99, 99)])
    merged = merge_windows(windows)
    assert (merged["stable"].requests, merged["candidate"].requests) == (13, 24)
    assert merged["candidate"].errors == 1 and own["candidate"].requests == 4


@pytest.mark.parametrize(("own", "others", "total"), [
    (0, [], 0),
    (2, [], 2),
    (2, [("server:a", 5)], 7),
    (2, [("server:me", 9), ("server:a", 1)], 3),  # its own published count is not added twice
])
def test_shadow_drops_add_over_processes(own: int, others: list[tuple[str, int]],
                                         total: int) -> None:
    rows = [published(p, 0, 0, shadow_dropped=n) for p, n in others]
    assert shadow_dropped("server:me", own, rows) == total


@pytest.mark.parametrize(("dep", "stable", "candidate", "errors", "action"), [
    (Dep(steps=(50, 100)), 20, 20, 0, "advance"),
    (Dep(steps=(50, 100), step=1), 0, 20, 0, "promote"),       # 100 %: no stable baseline
    (Dep(steps=(50, 100)), 2, 20, 0, "hold"),                  # too little stable to compare
    (Dep(steps=(50, 100)), 20, 20, 20, "rollback"),
    (Dep(strategy="shadow", steps=(100,)), 2, 20, 0, "hold"),  # shadow compares with stable
])
def test_the_leader_judges_the_merged_traffic(dep: Dep, stable: int, candidate: int,
                                              errors: int, action: str) -> None:
    w = ProcessWindow(dep, now=0.0)
    windows = gather_windows("server:a", {"stable": window(stable),
                                          "candidate": window(candidate, errors)}, [])
    decision = judge(dep, w.rules, windows, merge_windows(windows), dropped=0)
    assert decision.action == action, decision.reason
    assert decision.details["candidate_requests"] == candidate
    assert decision.details["processes"] == {"server:a": {"stable": stable,
                                                          "candidate": candidate}}
    assert "shadow_dropped" not in decision.details
    with_drops = judge(dep, w.rules, windows, merge_windows(windows), dropped=3)
    assert with_drops.details["shadow_dropped"] == 3
