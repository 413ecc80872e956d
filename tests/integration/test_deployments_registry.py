"""Deployments in the registry, on SQLite and PostgreSQL: start, transitions, history, audit,
alias moves on promotion and rollback, polling, and processes racing to apply one decision."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelyard.errors import ConfigError, ConflictError, NotFoundError
from modelyard.registry import Registry
from modelyard.rollout import Decision, Rules, choose_variant
from modelyard.rollout.deployments import OVERLAP_S, Deployment, Deployments

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def reg(any_registry: Registry, artifact_dir: Any) -> Registry:
    """``iris`` with versions 1 to 3, version 1 in production."""
    for i in range(3):
        any_registry.register("iris", artifact_dir(f"w{i}"), flavor="sklearn")
    any_registry.set_alias("iris", "production", 1, actor="ana")
    return any_registry


@pytest.fixture()
def deps(reg: Registry, clock: Clock) -> Deployments:
    return Deployments(reg, clock=clock)


def _ok(action: str = "advance") -> Decision:
    return Decision(action, ("all checks passed",), details={"p99_ratio": 1.01})  # type: ignore


def test_start_records_the_rollout_with_history_and_audit(deps, reg):
    d = deps.start("iris", 2, "canary", every_s=60, rules={"metric": "accuracy"}, actor="ana",
                   reason="new features")
    assert (d.model, d.stable_version, d.candidate_version) == ("iris", 1, 2)
    assert (d.strategy, d.steps, d.step, d.state, d.revision) == (
        "canary", (5, 25, 50, 100), 0, "progressing", 1)
    assert d.rules == Rules(metric="accuracy").to_dict() and d.step_started_at == T0
    assert d.created_by == "user:ana" and d.candidate_percent == 5.0 and d.active
    assert deps.get("iris") == d
    [event] = deps.history("iris")
    assert (event.action, event.from_state, event.to_state, event.actor, event.reason) == (
        "start", None, "progressing", "user:ana", "new features")
    audit = reg.audit_events("iris", limit=1)[0]
    assert (audit.action, audit.actor, audit.details["deployment"]) == (
        "deployment.start", "user:ana", d.id)
    assert json.loads(json.dumps(d.to_dict()))["steps"] == [5, 25, 50, 100]
    assert d.version_of("stable") == 1 and d.version_of("candidate") == 2


def test_start_refusals(deps, reg, artifact_dir):
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        deps.start("nope", 1)
    with pytest.raises(NotFoundError, match="no version 9"):
        deps.start("iris", 9)
    with pytest.raises(ConflictError, match="already is production"):
        deps.start("iris", 1)
    with pytest.raises(ConfigError, match="unknown rollout strategy"):
        deps.start("iris", 2, "rainbow")
    with pytest.raises(ConfigError, match="unknown rollout rule"):
        deps.start("iris", 2, rules={"max_eror_rate": 0.1})
    with pytest.raises(ConfigError, match="every_s"):
        deps.start("iris", 2, every_s=0)
    reg.register("fresh", artifact_dir("f"), flavor="sklearn")
    with pytest.raises(ConflictError, match="no production version"):
        deps.start("fresh", 1, "canary")
    deps.start("iris", 2)
    with pytest.raises(ConflictError, match="already has a progressing canary rollout"):
        deps.start("iris", 3)
    assert len(deps.history("iris")) == 1


def test_direct_rollout_of_a_first_version_promotes_at_once(deps, reg, artifact_dir):
    reg.register("fresh", artifact_dir("f"), flavor="sklearn")
    d = deps.start("fresh", 1, "direct", actor="ana")
    assert (d.state, d.stable_version, d.revision) == ("promoted", None, 2)
    assert reg.resolve("fresh").version == 1
    assert [e.action for e in deps.history("fresh")] == ["promote", "start"]


def test_canary_steps_through_analysis_and_promotes_atomically(deps, reg, clock):
    d = deps.start("iris", 2, "canary", every_s=60)
    same = deps.transition("iris", _ok(), expected_revision=d.revision)
    assert same == d  # dwell not over: nothing written
    for step in (1, 2, 3):
        clock.tick(60)
        d = deps.transition("iris", _ok(), expected_revision=d.revision)
        assert (d.state, d.step, d.step_started_at, d.revision) == (
            "progressing", step, clock.now, step + 1)
        assert reg.resolve("iris").version == 1  # production moves only on promotion
    clock.tick(60)
    d = deps.transition("iris", _ok("promote"), expected_revision=d.revision)
    assert (d.state, d.revision) == ("promoted", 5) and not d.active
    assert reg.resolve("iris").version == 2
    move = reg.alias_history("iris", "production")[0]
    assert (move.version, move.previous_version, move.actor) == (2, 1, "analysis")
    events = deps.history("iris")
    assert [(e.action, e.to_state, e.step) for e in events] == [
        ("promote", "promoted", 3), ("advance", "progressing", 3),
        ("advance", "progressing", 2), ("advance", "progressing", 1),
        ("start", "progressing", 0)]
    assert events[0].actor == "analysis" and events[0].details["p99_ratio"] == 1.01
    actions = [a.action for a in reg.audit_events("iris", limit=3)]
    assert actions[:2] == ["alias.set", "deployment.promote"]


def test_a_stale_revision_is_refused_and_changes_nothing(deps, clock):
    d = deps.start("iris", 2)
    clock.tick(60)
    deps.transition("iris", _ok(), expected_revision=d.revision)
    with pytest.raises(ConflictError, match="revision 2, the decision was made on 1"):
        deps.transition("iris", Decision("rollback"), expected_revision=d.revision)
    assert deps.get("iris").state == "progressing"


def test_rollback_sends_traffic_to_stable_and_keeps_production(deps, reg, clock):
    deps.start("iris", 2)
    d = deps.transition("iris", Decision("rollback", ("error rate 5%",)),
                        expected_revision=1)
    assert (d.state, d.candidate_percent) == ("rolled_back", 0.0)
    assert choose_variant(d, "k", 0.0).primary == "stable"
    assert reg.resolve("iris").version == 1
    assert [a.action for a in reg.alias_history("iris")] == ["set"]
    assert deps.history("iris")[0].reason == "error rate 5%"


def test_rollback_restores_production_moved_during_the_rollout(deps, reg):
    deps.start("iris", 2)
    reg.set_alias("iris", "production", 2, actor="bob")  # someone promoted by hand
    d = deps.rollback("iris", actor="ana", reason="bad canary")
    assert d.state == "rolled_back" and reg.resolve("iris").version == 1
    move = reg.alias_history("iris", "production")[0]
    assert (move.action, move.version, move.actor, move.reason) == (
        "rollback", 1, "user:ana", "bad canary")


def test_abort_then_a_new_rollout(deps, reg):
    first = deps.start("iris", 2)
    assert deps.abort("iris", reason="wrong version").state == "aborted"
    with pytest.raises(ConflictError, match="already aborted"):
        deps.promote("iris")
    second = deps.start("iris", 3, "ab", steps=[20], key="user_id")
    assert second.id != first.id and deps.get("iris") == second
    assert (second.key, second.candidate_percent) == ("user_id", 20.0)
    assert [e.deployment_id for e in deps.history("iris")] == [second.id, first.id, first.id]


def test_blue_green_waits_for_activation(deps, reg, clock):
    d = deps.start("iris", 2, "blue-green", every_s=30)
    assert (d.state, d.step_started_at, d.candidate_percent) == ("pending", None, 0.0)
    assert deps.transition("iris", _ok(), expected_revision=1) == d  # warming up
    clock.tick(5)
    d = deps.activate("iris", actor="server:a", reason="healthy", expected_revision=1)
    assert (d.state, d.step_started_at, d.candidate_percent) == ("progressing", clock.now, 100)
    with pytest.raises(ConflictError, match="cannot activate a rollout that is progressing"):
        deps.activate("iris")
    clock.tick(30)
    d = deps.transition("iris", _ok(), expected_revision=d.revision)
    assert d.state == "promoted" and reg.resolve("iris").version == 2


def test_pause_resume_and_manual_promote_of_a_shadow(deps, reg, clock):
    d = deps.start("iris", 2, "shadow")
    assert choose_variant(d, None, 0.5).shadow
    d = deps.pause("iris")
    clock.tick(3600)
    assert deps.transition("iris", _ok("promote"), expected_revision=d.revision) == d
    d = deps.resume("iris")
    assert (d.state, d.step_started_at) == ("progressing", clock.now)
    clock.tick(3600)
    assert deps.transition("iris", _ok("promote"), expected_revision=d.revision).state == (
        "progressing")  # shadow waits for a person
    assert deps.promote("iris", actor="ana").state == "promoted"
    assert reg.resolve("iris").version == 2


def test_list_active_and_changed_since(deps, reg, clock, artifact_dir):
    reg.register("wine", artifact_dir("w"), flavor="sklearn")
    reg.register("wine", artifact_dir("w2"), flavor="sklearn")
    reg.set_alias("wine", "production", 1)
    first = deps.changed_since(None)
    assert first.deployments == [] and first.cursor == T0
    deps.start("iris", 2)
    deps.start("wine", 2, "blue-green")
    assert [d.model for d in deps.list_active()] == ["iris", "wine"]
    seen = deps.changed_since(first.cursor)
    assert [d.model for d in seen.deployments] == ["iris", "wine"]
    clock.tick(1)
    again = deps.changed_since(seen.cursor)  # within the overlap: reported again
    assert [(d.id, d.revision) for d in again.deployments] == [
        (d.id, d.revision) for d in seen.deployments]
    clock.tick(OVERLAP_S + 1)
    quiet = deps.changed_since(deps.changed_since(again.cursor).cursor)
    assert quiet.deployments == [] and quiet.cursor == clock.now
    deps.abort("wine")
    changed = deps.changed_since(quiet.cursor)
    assert [(d.model, d.state, d.revision) for d in changed.deployments] == [
        ("wine", "aborted", 2)]
    assert [d.model for d in deps.changed_since(None).deployments] == ["iris", "wine"]
    assert [d.model for d in deps.list_active()] == ["iris"]


def test_get_and_history_without_a_rollout(deps):
    with pytest.raises(NotFoundError, match="no rollout yet"):
        deps.get("iris")
    assert deps.history("iris") == []
    with pytest.raises(NotFoundError, match="no rollout to promote"):
        deps.promote("iris")


def _race(reg: Registry, clock: Clock, n: int, decide: Any) -> list[Any]:
    """``n`` threads, each with its own Registry (own connections), apply one decision at once."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    others = [Registry.open(reg.settings) for _ in range(n)]

    def worker(i: int) -> None:
        deps = Deployments(others[i], clock=clock)
        revision = deps.get("iris").revision
        barrier.wait()
        try:
            results[i] = decide(deps, revision)
        except ConflictError as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for other in others:
        other.close()
    return results


def test_racing_processes_apply_one_analysis_decision_exactly_once(deps, reg, clock):
    deps.start("iris", 2)
    for round_ in range(3):
        clock.tick(60)
        results = _race(reg, clock, 4,
                        lambda d, rev: d.transition("iris", _ok(), expected_revision=rev))
        winners = [r for r in results if isinstance(r, Deployment)]
        assert len(winners) == 1, results
        assert all(isinstance(r, ConflictError) for r in results if r is not winners[0])
        assert winners[0].step == round_ + 1
    assert [e.action for e in deps.history("iris")].count("advance") == 3


def test_racing_promotions_move_production_once(deps, reg, clock):
    deps.start("iris", 2)
    results = _race(reg, clock, 4, lambda d, rev: d.transition(
        "iris", Decision.manual("promote"), expected_revision=rev, actor="analysis"))
    assert sum(isinstance(r, Deployment) for r in results) == 1
    assert reg.resolve("iris").version == 2
    assert [e.version for e in reg.alias_history("iris", "production")] == [2, 1]
    assert deps.history("iris")[0].actor == "analysis"


WORKER = r"""
import json, sys
from modelyard.config import Settings
from modelyard.errors import ConflictError
from modelyard.registry import Registry
from modelyard.rollout.deployments import Deployments
from modelyard.rollout import Decision

args = json.loads(sys.argv[1])
reg = Registry.open(Settings.from_env(home=args["home"], db_url=args["db_url"],
                                      artifacts=args["artifacts"], actor="server"))
deps = Deployments(reg)
revision = deps.get("iris").revision
print("ready", flush=True)
sys.stdin.readline()
try:
    d = deps.transition("iris", Decision("rollback", ("error rate",)), expected_revision=revision)
    print(json.dumps({"won": d.revision}), flush=True)
except ConflictError as exc:
    print(json.dumps({"lost": str(exc)}), flush=True)
reg.close()
"""


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_server_processes_racing_on_one_decision_apply_it_once(deps, reg):
    import subprocess
    import sys

    deps.start("iris", 2)
    payload = json.dumps({"home": str(reg.settings.home), "db_url": reg.settings.db_url,
                          "artifacts": str(reg.settings.artifacts)})
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, payload], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=60)[0].strip().splitlines()[-1]) for p in procs]
    assert sorted("won" in r for r in results) == [False, False, True], results
    assert deps.get("iris").state == "rolled_back"
    assert [e.action for e in deps.history("iris")] == ["rollback", "start"]


def _window_rows(reg: Registry) -> list[tuple[int, int, str]]:
    from sqlalchemy import select

    from modelyard.registry.tables import DeploymentWindowRow as W

    with reg.db.session() as s:
        return [tuple(r) for r in s.execute(  # type: ignore[misc]
            select(W.deployment_id, W.revision, W.process).order_by(W.process))]


def test_published_windows_are_one_row_per_process_and_revision(deps, reg, clock):
    d = deps.start("iris", 2, every_s=60)
    stats = {"stable": {"requests": 3}, "candidate": {"requests": 1}}
    assert deps.publish_window(d.id, d.revision, "server:b", stats)
    assert deps.publish_window(d.id, d.revision, "server:a", stats)
    clock.tick(2)
    newer = {"stable": {"requests": 9}, "candidate": {"requests": 4}}
    assert deps.publish_window(d.id, d.revision, "server:b", newer)  # replaces its row
    found = deps.windows(d.id, d.revision, fresh_s=5)
    assert [(w.process, w.stats, w.updated_at) for w in found] == [
        ("server:a", stats, T0), ("server:b", newer, clock.now)]
    assert json.loads(json.dumps(found[0].to_dict()))["process"] == "server:a"
    clock.tick(4)  # a's row is 6 s old, b's 4 s
    assert [w.process for w in deps.windows(d.id, d.revision, fresh_s=5)] == ["server:b"]
    assert deps.windows(d.id, d.revision + 1, fresh_s=60) == []
    assert len(_window_rows(reg)) == 2


def test_a_transition_clears_the_windows_and_refuses_stale_publishers(deps, reg, clock):
    d = deps.start("iris", 2, every_s=60)
    deps.publish_window(d.id, d.revision, "server:a", {"stable": {}, "candidate": {}})
    clock.tick(60)
    moved = deps.transition("iris", _ok(), expected_revision=d.revision)
    assert moved.revision == d.revision + 1 and _window_rows(reg) == []
    assert not deps.publish_window(d.id, d.revision, "server:b", {"stable": {}})  # stale
    assert deps.publish_window(moved.id, moved.revision, "server:a", {"stable": {}})
    assert _window_rows(reg) == [(d.id, moved.revision, "server:a")]
    deps.rollback("iris", reason="bad")
    assert _window_rows(reg) == []  # ended: nothing left behind
    assert not deps.publish_window(moved.id, moved.revision + 1, "server:a", {"stable": {}})
    assert not deps.publish_window(999, 1, "server:a", {"stable": {}})
    assert _window_rows(reg) == []


def test_publishers_racing_a_transition_leave_no_stale_window(deps, reg):
    """Each publication either lands before the transition (and is deleted by it) or sees the
    new revision and is refused: no row of the old revision survives."""
    d = deps.start("iris", 2)
    n = 3
    barrier = threading.Barrier(n + 1)
    others = [Registry.open(reg.settings) for _ in range(n)]
    published, refused = [0] * n, [0] * n

    def publisher(i: int) -> None:
        mine = Deployments(others[i])
        barrier.wait()
        deadline = time.monotonic() + 30
        while not refused[i] and time.monotonic() < deadline:  # until it sees the rollback
            if mine.publish_window(d.id, d.revision, f"server:{i}", {"stable": {}}):
                published[i] += 1
            else:
                refused[i] += 1

    threads = [threading.Thread(target=publisher, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    deps.rollback("iris", reason="racing")
    for t in threads:
        t.join(60)
    for other in others:
        other.close()
    assert refused == [1] * n, (published, refused)
    assert _window_rows(reg) == [], (published, refused)
