"""The server side of rollouts with fake runners and a fake deployments store: request keys,
shadow agreement, retry on stable, shadow drops, analysis decisions and conflicts, published
windows, the leader that analyses them merged, and the declared metric from fed-back labels."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.errors import AdapterError, ConflictError, InputError, QueueFullError, StorageError
from modelyard.predictor import Prediction
from modelyard.rollout.deployments import DeploymentWindow
from modelyard.rollout.stats import WindowStats
from modelyard.rollout.windows import gather_windows, leader, merge_windows, window_details
from modelyard.serving.calls import Call
from modelyard.serving.dataplane import DataPlane, InferenceRequest
from modelyard.serving.grpc_server import answer_metadata, metadata_scope
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.pools import Selection
from modelyard.serving.rollouts import ActiveRollout, Rollouts, agrees, request_key

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Dep:
    strategy: str = "canary"
    steps: tuple[int, ...] = (50, 100)
    state: str = "progressing"
    step: int = 0
    id: int = 7
    model: str = "m"
    revision: int = 1
    every_s: float = 1.0
    step_started_at: Any = None
    rules: dict[str, Any] = field(default_factory=lambda: {"min_requests": 5})
    key: str | None = None
    stable_version: int = 1
    candidate_version: int = 2
    created_at: Any = None

    @property
    def active(self) -> bool:
        return self.state in ("pending", "progressing", "paused")

    def version_of(self, variant: str) -> int:
        return self.candidate_version if variant == "candidate" else self.stable_version


class FakeRunner:
    def __init__(self, version: int, answer: Any = 1, fail: Exception | None = None) -> None:
        self.name, self.version, self.version_str = "m", version, str(version)
        self.predictor = SimpleNamespace(signature="same")
        self.answer, self.fail, self.closed, self.submitted = answer, fail, False, 0
        self.log_policy: Any = None

    def prepare(self, payload: Any) -> tuple[Any, int]:
        return payload, 1

    def submit(self, batch: Any, n: int, scores: bool = False) -> asyncio.Future[Any]:
        self.submitted += 1
        if isinstance(self.fail, QueueFullError):
            raise self.fail
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail is not None:
            future.set_exception(self.fail)
        else:
            future.set_result(Prediction(np.array([self.answer])))
        return future


def rollouts() -> Rollouts:
    catalog = SimpleNamespace(metrics=ServerMetrics(), predlog=None, selection=Selection(),
                              options=SimpleNamespace(alias="production", poll_interval_s=1.0,
                                                      idle_unload_s=None))
    return Rollouts(catalog)  # type: ignore[arg-type]


def no_fallback(*_: Any) -> Prediction:
    raise AssertionError("the alias route is not used while both runners are loaded")


def routed(r: Rollouts, held: ActiveRollout) -> DataPlane:
    """The data plane of ``r``'s catalog with model ``m`` under ``held``'s rollout."""
    r.catalog.runner_now = no_fallback  # type: ignore[attr-defined]
    plane = DataPlane(r.catalog)  # type: ignore[arg-type]
    plane.rollouts = r
    r.active["m"] = held
    return plane


def predict(plane: DataPlane, call: Call, payload: Any) -> Any:
    """An unversioned request for ``m`` through the data plane."""
    return plane.infer(call, InferenceRequest("m", None, payload))


def test_request_key_prefers_the_header_then_the_named_header_or_field() -> None:
    scope = {"headers": [(b"x-user", b"ann"), (b"x-request-key", b"k1")]}
    assert request_key(scope, "X-User", None) == "k1"
    assert request_key({"headers": [(b"x-user", b"ann")]}, "X-User", None) == "ann"
    assert request_key(None, "user", [{"user": 42, "f0": 1.0}]) == "42"
    assert request_key(None, "user", {"user": ["bob", "eve"]}) == "bob"
    assert request_key(None, "user", {"user": np.array([b"zed"], dtype=object)}) == "zed"
    assert request_key({"headers": []}, None, [{"user": 1}]) is None


def test_agreement_is_equal_labels_or_close_numbers() -> None:
    assert agrees(Prediction(np.array(["a", "b"])), Prediction(np.array(["a", "b"])))
    assert not agrees(Prediction(np.array(["a", "b"])), Prediction(np.array(["a", "c"])))
    assert agrees(Prediction(np.array([1.0, 2.0])), Prediction(np.array([1.0, 2.0000001])))
    assert not agrees(Prediction(np.array([1.0])), Prediction(np.array([1.1])))
    assert not agrees(Prediction(np.array([1, 2])), Prediction(np.array([1])))


async def test_a_failing_candidate_is_answered_by_stable_and_counted() -> None:
    r = rollouts()
    held = ActiveRollout(Dep(steps=(100,)), FakeRunner(1), FakeRunner(2, fail=RuntimeError("x")))
    call = Call()
    result = await predict(routed(r, held), call, [[1.0]])
    assert result.predictions.tolist() == [1] and call.variant == "stable"
    assert held.stats["candidate"].errors == 1 and held.stats["stable"].requests == 1


async def test_a_candidate_input_error_reaches_the_client() -> None:
    held = ActiveRollout(Dep(steps=(100,)), FakeRunner(1),
                         FakeRunner(2, fail=InputError("bad", [])))
    with pytest.raises(InputError):
        await predict(routed(rollouts(), held), Call(), 1)


async def test_shadow_answers_from_stable_and_records_agreement_and_drops() -> None:
    r = rollouts()
    held = ActiveRollout(Dep(strategy="shadow", steps=(100,)), FakeRunner(1), FakeRunner(2, 3))
    call = Call()
    plane = routed(r, held)
    for _ in range(3):
        result = await predict(plane, call, 1)
        assert result.predictions.tolist() == [1] and call.variant == "stable"
    await asyncio.sleep(0)  # the shadow futures' callbacks run
    cand = held.stats["candidate"]
    assert (cand.requests, cand.compared, cand.agreed) == (3, 3, 0)
    held.candidate.fail = QueueFullError("full", retry_after=1)  # type: ignore[attr-defined]
    await predict(plane, call, 1)
    assert held.dropped == 1
    assert 'modelyard_shadow_dropped_total{model="m",version="2"} 1.0' in \
        r.catalog.metrics.render().decode()


class FakeDeployments:
    """Deployments in memory: transitions, and the windows processes publish (by revision)."""

    def __init__(self, conflict: bool = False, revision: int = 1) -> None:
        self.conflict, self.calls, self.decisions = conflict, [], []
        self.revision = revision
        self.published: dict[str, tuple[int, dict[str, Any]]] = {}

    def transition(self, model: str, decision: Any, **kw: Any) -> Dep:
        self.calls.append((decision.action, kw["expected_revision"], kw["actor"]))
        self.decisions.append(decision)
        if self.conflict:
            raise ConflictError("someone else decided")
        return replace(Dep(), state="rolled_back", revision=kw["expected_revision"] + 1)

    def publish_window(self, deployment_id: int, revision: int, process: str,
                       stats: dict[str, Any]) -> bool:
        if revision != self.revision:
            return False
        self.published[process] = (revision, stats)
        return True

    def windows(self, deployment_id: int, revision: int, *, fresh_s: float) -> list[Any]:
        at = datetime.now(UTC)
        return [DeploymentWindow(p, stats, at) for p, (rev, stats) in sorted(
            self.published.items()) if rev == revision]


async def test_analysis_writes_its_decision_and_treats_a_conflict_as_a_reload(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for conflict in (False, True):
        r = rollouts()
        r.catalog.io_pool = None  # the default executor
        r.catalog.models, r.catalog.routes = {}, {"m": 1}
        r.catalog.cache = SimpleNamespace(evict=lambda key: None)
        r.deployments = FakeDeployments(conflict)  # type: ignore[assignment]
        held = ActiveRollout(Dep(), FakeRunner(1), FakeRunner(2))
        for _ in range(20):
            held.stats["candidate"].observe(0.001, error=True)
            held.stats["stable"].observe(0.001)
        held.next_analysis = 0.0
        r.active["m"], r._seen["m"] = held, held.ident
        await r.analyze_due()
        assert r.deployments.calls == [("rollback", 1, "analysis")]
        if conflict:
            assert "m" in r.active and "m" not in r._seen  # the next poll reloads
        else:
            assert "m" not in r.active  # routing is back on the alias at once


def window(requests: int, errors: int = 0) -> WindowStats:
    w = WindowStats()
    for i in range(requests):
        w.observe(0.001, error=i < errors)
    return w


def published(process: str, stable: int, candidate: int, **extra: Any) -> DeploymentWindow:
    stats = {"stable": window(stable).to_dict(), "candidate": window(candidate).to_dict(),
             **extra}
    return DeploymentWindow(process, stats, datetime.now(UTC))


def test_the_leader_is_the_smallest_process_name_counting_this_one() -> None:
    own = {"stable": window(1), "candidate": window(1)}
    assert leader(gather_windows("server:b", own, [published("server:a", 1, 1)])) == "server:a"
    assert leader(gather_windows("server:a", own, [published("server:b", 1, 1)])) == "server:a"
    assert leader(gather_windows("server:b", own, [])) == "server:b"  # has not published yet


def test_windows_of_every_process_merge_with_the_live_one_in_place_of_its_copy() -> None:
    own = {"stable": window(3), "candidate": window(4, errors=1)}
    rows = [published("server:a", 10, 20), published("server:b", 1, 1),  # b's stale copy
            published("server:c", 5, 7)]
    windows = gather_windows("server:b", own, rows)
    assert sorted(windows) == ["server:a", "server:b", "server:c"]
    assert windows["server:b"]["candidate"] is own["candidate"]
    merged = merge_windows(windows)
    assert (merged["stable"].requests, merged["candidate"].requests) == (18, 31)
    assert merged["candidate"].errors == 1
    assert sum(merged["candidate"].latency_buckets.values()) == 31
    assert own["candidate"].requests == 4  # the inputs are left alone
    assert window_details(windows, merged) == {
        "stable_requests": 18, "candidate_requests": 31,
        "processes": {"server:a": {"stable": 10, "candidate": 20},
                      "server:b": {"stable": 3, "candidate": 4},
                      "server:c": {"stable": 5, "candidate": 7}}}


def analysing(store: FakeDeployments, actor: str, dep: Dep | None = None) -> tuple[
        Rollouts, ActiveRollout]:
    r = rollouts()
    r.actor = actor
    r.catalog.io_pool = None
    r.catalog.registry = "the registry"
    r.catalog.models, r.catalog.routes = {}, {"m": 1}
    r.catalog.cache = SimpleNamespace(evict=lambda key: None)
    r.deployments = store  # type: ignore[assignment]
    held = ActiveRollout(dep or Dep(), FakeRunner(1), FakeRunner(2))
    r.active["m"], r._seen["m"] = held, held.ident
    return r, held


async def test_only_the_leader_analyses_on_every_process_traffic() -> None:
    store = FakeDeployments()
    a, held_a = analysing(store, "server:a")
    b, held_b = analysing(store, "server:b")
    for held in (held_a, held_b):  # 3 candidate requests each: 5 needed, so only merged
        held.stats["candidate"] = window(3, errors=3)
        held.stats["stable"] = window(3)
    await a.publish()
    await b.publish()
    assert set(store.published) == {"server:a", "server:b"}
    held_a.next_analysis = held_b.next_analysis = 0.0
    await b.analyze_due()
    assert store.calls == []  # b is not the leader
    await a.analyze_due()
    assert store.calls == [("rollback", 1, "analysis")]
    details = store.decisions[0].details
    assert details["candidate_requests"] == 6 and details["stable_requests"] == 6
    assert details["processes"] == {"server:a": {"stable": 3, "candidate": 3},
                                    "server:b": {"stable": 3, "candidate": 3}}


async def test_a_process_whose_revision_is_stale_stops_analysing_until_it_reloads() -> None:
    store = FakeDeployments(revision=2)
    r, held = analysing(store, "server:a")
    held.stats["candidate"] = window(20, errors=20)
    await r.publish()
    assert held.outdated and store.published == {}
    held.next_analysis = 0.0
    await r.analyze_due()
    assert store.calls == []
    held.update(replace(held.deployment, revision=2))
    assert not held.outdated and held.stats["candidate"].requests == 0


def test_the_first_analysis_of_a_revision_waits_for_the_others_to_publish() -> None:
    before = time.monotonic()
    held = ActiveRollout(Dep(every_s=1.0), FakeRunner(1), FakeRunner(2), settle_s=2.0)
    assert held.interval_s == 1.0 and held.next_analysis >= before + 2.0
    held.update(replace(held.deployment, revision=2, every_s=30.0))
    assert held.next_analysis >= before + 30.0
    assert rollouts().fresh_s == 5.0  # MIN_FRESH_S over three 1 s polls


async def test_poll_applies_a_new_revision_of_a_loaded_rollout_at_once() -> None:
    r, held = analysing(FakeDeployments(), "server:a")
    held.stats["candidate"] = window(7)
    newer = replace(held.deployment, revision=2, step=1)
    r.deployments.changed_since = lambda cursor: SimpleNamespace(  # type: ignore[attr-defined]
        deployments=[newer], cursor="c1")
    await r.poll()
    assert r.active["m"].deployment is newer and r._seen["m"] == (7, 2)
    assert held.stats["candidate"].requests == 0 and not r.spawned  # nothing spawned


def labeled_store(monkeypatch: pytest.MonkeyPatch, metric: Any) -> tuple[Rollouts, Any]:
    """One process with 20 clean requests per variant and rules on accuracy; ``metric``
    replaces ``modelyard.monitoring.monitor.rollout_metric`` (None: the module is missing)."""
    if metric is None:
        monkeypatch.setitem(sys.modules, "modelyard.monitoring.monitor", None)
    else:
        import modelyard.monitoring.monitor as monitor

        monkeypatch.setattr(monitor, "rollout_metric", metric, raising=False)
    store = FakeDeployments()
    started = datetime(2026, 3, 1, tzinfo=UTC)
    dep = Dep(rules={"min_requests": 5, "metric": "accuracy", "min_labels": 10},
              step_started_at=started)
    r, held = analysing(store, "server:a", dep)
    held.stats = {"stable": window(20), "candidate": window(20)}
    held.next_analysis = 0.0
    return r, store


async def test_the_declared_metric_comes_from_fed_back_labels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []

    def rollout_metric(registry: Any, model: str, metric: str, versions: dict[str, int],
                       since: datetime) -> dict[str, tuple[int, float | None]]:
        asked.append((registry, model, metric, versions, since))
        return {"stable": (50, 0.9, 0.03), "candidate": (40, 0.6, 0.05)}

    r, store = labeled_store(monkeypatch, rollout_metric)
    await r.analyze_due()
    assert asked == [("the registry", "m", "accuracy", {"stable": 1, "candidate": 2},
                      datetime(2026, 3, 1, tzinfo=UTC))]
    [decision] = store.decisions
    assert decision.action == "rollback" and "accuracy" in decision.reason
    assert decision.details["candidate_metric"] == 0.6


@pytest.mark.parametrize("broken", ["missing", "raises"])
async def test_without_label_metrics_analysis_goes_on_and_warns_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, broken: str) -> None:
    def rollout_metric(*_: Any) -> Any:
        raise RuntimeError("no predictions table")

    r, store = labeled_store(monkeypatch, None if broken == "missing" else rollout_metric)
    held = r.active["m"]
    with caplog.at_level(logging.WARNING, logger="modelyard.serving.rollouts"):
        await r.analyze_due()
        r.active["m"], held.next_analysis = held, 0.0  # the fake store ended it: analyse again
        await r.analyze_due()
    assert [d.action for d in store.decisions] == ["advance", "advance"]
    warnings = [rec.message for rec in caplog.records if "fed-back labels" in rec.message]
    assert len(warnings) == 1, caplog.text


def test_grpc_metadata_names_the_answer_and_carries_the_routing_key() -> None:
    call = Call()
    call.runner, call.variant = FakeRunner(2), "candidate"  # type: ignore[assignment]
    assert answer_metadata(call) == (("x-model-version", "2"), ("x-model-variant", "candidate"))
    scope = metadata_scope((("x-request-key", "user-1"), ("trace-bin", b"\x00")))
    assert scope == {"headers": [(b"x-request-key", b"user-1")]}
    assert request_key(scope, None, None) == "user-1"

    metrics = ServerMetrics()
    vm = metrics.for_version("m", "1")
    vm.observe_duration(0.01)
    vm.observe_duration(0.01, "candidate")
    text = metrics.render().decode()
    assert 'modelyard_request_duration_seconds_count{model="m",variant="production",version="1"}' \
        in text
    assert 'variant="candidate"' in text


async def test_shadow_answers_are_logged_as_their_own_variant_under_the_request_id() -> None:
    logged: list[tuple[Any, ...]] = []
    r = rollouts()
    candidate = FakeRunner(2, 3)
    candidate.log_policy = SimpleNamespace(sampled=lambda: True)
    held = ActiveRollout(Dep(strategy="shadow", steps=(100,)), FakeRunner(1), candidate)
    plane = routed(r, held)
    plane.predlog = SimpleNamespace(record=lambda *entry: logged.append(entry))
    await predict(plane, Call(request_id="req-9"), [[1.0]])
    await asyncio.sleep(0)  # the shadow future's callback runs
    ((policy, request_id, variant, _latency, _batch, rows, answer),) = logged
    assert (request_id, variant, rows) == ("req-9", "shadow", 1)
    assert answer.predictions.tolist() == [3] and policy is candidate.log_policy


class FakeCache:
    """Versions that load (``runners``) and versions whose load raises (``broken``)."""

    def __init__(self, runners: dict[int, Any], broken: dict[int, Exception]) -> None:
        self.runners, self.broken, self.evicted = runners, broken, []

    async def get(self, key: tuple[str, int]) -> Any:
        if key[1] in self.broken:
            raise self.broken[key[1]]
        return self.runners[key[1]]

    def evict(self, key: tuple[str, int]) -> None:
        self.evicted.append(key)


def applying(cache: FakeCache) -> tuple[Rollouts, FakeDeployments]:
    r = rollouts()
    r.actor = "server:a"
    r.catalog.io_pool = None
    r.catalog.models, r.catalog.routes = {}, {"m": 1}
    r.catalog.cache = cache
    store = FakeDeployments()
    r.deployments = store  # type: ignore[assignment]
    return r, store


@pytest.mark.parametrize("strategy", ["canary", "blue-green"])
async def test_a_candidate_that_cannot_load_ends_the_rollout_with_the_reason(
        strategy: str) -> None:
    """It used to be retried every 10 s for ever, the rollout 'progressing' at its step."""
    r, store = applying(FakeCache({1: FakeRunner(1)}, {2: AdapterError("m:2: corrupt weights")}))
    state = "pending" if strategy == "blue-green" else "progressing"
    await r.apply(Dep(strategy=strategy, state=state,
                      steps=(100,) if strategy == "blue-green" else (50, 100)))
    assert store.calls == [("rollback", 1, "server:a")]
    [decision] = store.decisions
    assert decision.automatic and decision.details["error"] == "AdapterError"
    assert decision.reason == ("candidate m:2 cannot be loaded on server:a: "
                               "m:2: corrupt weights")
    assert "m" not in r.active  # traffic never left the alias route
    # production itself failing to load here is retried, not blamed on the candidate
    r, store = applying(FakeCache({2: FakeRunner(2)}, {1: StorageError("store unreachable")}))
    await r.apply(Dep())
    assert store.calls == [] and "m" not in r.active and (7, 1) in r._failed


async def test_a_candidate_that_stops_serving_is_loaded_again_or_rolled_back() -> None:
    fresh = FakeRunner(2)
    r, store = applying(FakeCache({1: FakeRunner(1), 2: fresh}, {}))
    await r.apply(Dep())
    held = r.active["m"]
    assert held.snapshot()["candidate_serving"] is True
    held.candidate.closed = True  # evicted, or its device worker gave up
    assert held.snapshot()["candidate_serving"] is False
    r.check_runners()
    await asyncio.gather(*r.spawned)
    assert held.candidate is fresh and store.calls == []

    fresh.closed = True
    r.catalog.cache.broken[2] = AdapterError("the device worker exited with code 1")
    r.check_runners()
    await asyncio.gather(*r.spawned)
    assert store.calls == [("rollback", 1, "server:a")]
    assert "stopped serving and cannot be loaded again" in store.decisions[0].reason
    assert "m" not in r.active


async def test_the_leader_publishes_its_last_analysis_for_status() -> None:
    r, held = analysing(FakeDeployments(), "server:a")
    held.stats = {"stable": window(2), "candidate": window(2)}  # 5 needed: hold
    held.next_analysis = 0.0
    await r.analyze_due()
    await r.publish()
    published = r.deployments.published["server:a"][1]
    assert published["analysis"] == "hold: candidate has 2 of the 5 requests analysis needs"
