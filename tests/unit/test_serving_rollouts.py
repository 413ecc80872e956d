"""The server side of rollouts with fake runners and a fake deployments store: request keys,
shadow agreement, retry on stable, shadow drops, analysis decisions and conflicts."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.errors import ConflictError, InputError
from modelyard.predictor import Prediction
from modelyard.serving.app import Call
from modelyard.serving.batching import QueueFullError
from modelyard.serving.metrics import ServerMetrics
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

    @property
    def active(self) -> bool:
        return self.state in ("pending", "progressing", "paused")


class FakeRunner:
    def __init__(self, version: int, answer: Any = 1, fail: Exception | None = None) -> None:
        self.name, self.version, self.version_str = "m", version, str(version)
        self.predictor = SimpleNamespace(signature="same")
        self.answer, self.fail, self.closed, self.submitted = answer, fail, False, 0

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
    catalog = SimpleNamespace(metrics=ServerMetrics(), options=SimpleNamespace(alias="production"))
    return Rollouts(catalog)  # type: ignore[arg-type]


async def no_fallback(*_: Any) -> Prediction:
    raise AssertionError("the alias route is not used while both runners are loaded")


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
    result = await r.predict(held, call, lambda _r: [[1.0]], False, None, None, no_fallback)
    assert result.predictions.tolist() == [1] and call.variant == "stable"
    assert held.stats["candidate"].errors == 1 and held.stats["stable"].requests == 1


async def test_a_candidate_input_error_reaches_the_client() -> None:
    held = ActiveRollout(Dep(steps=(100,)), FakeRunner(1),
                         FakeRunner(2, fail=InputError("bad", [])))
    with pytest.raises(InputError):
        await rollouts().predict(held, Call(), lambda _r: 1, False, None, None, no_fallback)


async def test_shadow_answers_from_stable_and_records_agreement_and_drops() -> None:
    r = rollouts()
    held = ActiveRollout(Dep(strategy="shadow", steps=(100,)), FakeRunner(1), FakeRunner(2, 3))
    call = Call()
    for _ in range(3):
        result = await r.predict(held, call, lambda _r: 1, False, None, None, no_fallback)
        assert result.predictions.tolist() == [1] and call.variant == "stable"
    await asyncio.sleep(0)  # the shadow futures' callbacks run
    cand = held.stats["candidate"]
    assert (cand.requests, cand.compared, cand.agreed) == (3, 3, 0)
    held.candidate.fail = QueueFullError("full", retry_after=1)  # type: ignore[attr-defined]
    await r.predict(held, call, lambda _r: 1, False, None, None, no_fallback)
    assert held.dropped == 1
    assert 'modelyard_shadow_dropped_total{model="m",version="2"} 1.0' in \
        r.catalog.metrics.render().decode()


class FakeDeployments:
    def __init__(self, conflict: bool = False) -> None:
        self.conflict, self.calls = conflict, []

    def transition(self, model: str, decision: Any, **kw: Any) -> Dep:
        self.calls.append((decision.action, kw["expected_revision"], kw["actor"]))
        if self.conflict:
            raise ConflictError("someone else decided")
        return replace(Dep(), state="rolled_back", revision=kw["expected_revision"] + 1)


async def test_analysis_writes_its_decision_and_treats_a_conflict_as_a_reload(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for conflict in (False, True):
        r = rollouts()
        r.catalog.io_pool = None  # the default executor
        r.catalog.models, r.catalog.routes = {}, {"m": 1}
        r.catalog.cache = SimpleNamespace(evict=lambda key: None)
        r.deployments = FakeDeployments(conflict)
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


def test_durations_carry_the_variant() -> None:
    metrics = ServerMetrics()
    vm = metrics.for_version("m", "1")
    vm.observe_duration(0.01)
    vm.observe_duration(0.01, "candidate")
    text = metrics.render().decode()
    assert 'modelyard_request_duration_seconds_count{model="m",variant="production",version="1"}' \
        in text
    assert 'variant="candidate"' in text
