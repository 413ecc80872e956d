"""The data plane without any protocol: a request resolved, prepared, batched, predicted and
recorded (metrics and prediction log) over real registered models; versions and 404s before the
body is judged; payload builders; request ids; readiness; versioned requests bypassing a rollout."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.errors import InputError, NotFoundError
from modelyard.registry import Registry
from modelyard.serving.calls import Call
from modelyard.serving.catalog import Catalog
from modelyard.serving.dataplane import DataPlane, InferenceRequest
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.options import ServeOptions
from modelyard.serving.runner import Runner
from modelyard.testing.models import register_constant

pytestmark = pytest.mark.anyio

ROW = {"f0": 0.0, "f1": 1.0, "f2": 2.0}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("dataplane") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_constant(reg, "const", 1)
        register_constant(reg, "const", 2, promote=False)
        register_constant(reg, "draft", 5, promote=False)  # no alias
        yield reg


def plane_over(registry: Registry, **options: Any) -> DataPlane:
    opts = ServeOptions(poll_interval_s=3600, prediction_log="off", **options)
    return DataPlane(Catalog(registry, opts, ServerMetrics()))


@pytest.fixture()
async def plane(registry: Registry) -> AsyncIterator[DataPlane]:
    plane = plane_over(registry)
    await plane.start()
    await plane.wait_ready()
    yield plane
    await plane.stop()


def counted(plane: DataPlane) -> str:
    return plane.metrics.render().decode()


async def test_one_request_through_the_data_plane(plane: DataPlane) -> None:
    call = Call("test", "const")
    result = await plane.infer(call, InferenceRequest("const", plane.version("const", None),
                                                      [ROW], scores=True))
    assert result.predictions.tolist() == [1] and result.scores is not None
    runner = call.runner
    assert runner is not None and runner.version == 1 and call.variant == "production"
    assert call.result is result and call.rows == 1 and call.batch is not None
    plane.record(call, 200)
    text = counted(plane)
    assert ('modelyard_requests_total{model="const",protocol="test",status="200",'
            'variant="production",version="1"} 1.0') in text
    assert ('modelyard_request_duration_seconds_count{model="const",variant="production",'
            'version="1"} 1.0') in text


async def test_a_version_is_checked_before_the_body_is_judged(plane: DataPlane) -> None:
    assert plane.version("const", None) is None
    assert plane.version("const", "2") == 2
    for name, version in [("ghost", None), ("const", "3"), ("const", "\u00b2"), ("const", "0"),
                          ("draft", None)]:  # draft has no production alias
        with pytest.raises(NotFoundError):
            plane.version(name, version)
    call = Call("test", "const")
    result = await plane.infer(call, InferenceRequest("const", 2, [ROW]))
    assert result.predictions.tolist() == [2] and call.runner is not None
    assert call.runner.version == 2


async def test_failures_are_counted_under_what_answered_or_the_model(plane: DataPlane) -> None:
    call = Call("test", "const")
    with pytest.raises(InputError):  # the signature refuses the row: 422 under version 1
        await plane.infer(call, InferenceRequest("const", None, [{"f0": "x"}]))
    assert call.runner is not None and call.result is None
    plane.record(call, 422)
    unknown, known = Call("test", "ghost"), Call("test", "draft")
    plane.record(unknown, 404)
    plane.record(known, 404)  # a registered model: named, though no version answered
    text = counted(plane)
    assert ('modelyard_requests_total{model="const",protocol="test",status="422",'
            'variant="production",version="1"} 1.0') in text
    assert 'modelyard_requests_total{model="",protocol="test",status="404"' in text
    assert 'modelyard_requests_total{model="draft",protocol="test",status="404"' in text


async def test_a_builder_decodes_against_the_signature_of_the_runner(plane: DataPlane) -> None:
    seen: list[tuple[Any, Any]] = []

    def build(runner: Runner, request: InferenceRequest) -> Any:
        seen.append((runner.version, request.outputs))
        names = [f.name for f in runner.predictor.signature.inputs]
        return [dict(zip(names, request.payload, strict=True))]

    call = Call("test", "const")
    request = InferenceRequest("const", 2, [0.0, 1.0, 2.0], build=build, outputs=("scores",),
                               request_id="client-7")
    result = await plane.infer(call, request)
    assert result.predictions.tolist() == [2] and seen == [(2, ("scores",))]
    assert call.request_id == "client-7"  # the id the body named replaces the call's


async def test_each_answer_is_logged_when_sampled(plane: DataPlane) -> None:
    logged: list[tuple[Any, ...]] = []
    plane.predlog = SimpleNamespace(record=lambda *e: logged.append(("answer", *e)),
                                    record_error=lambda *e: logged.append(("error", *e)),
                                    stop=lambda: None)
    runner = await plane.catalog.runner("const")
    policy = SimpleNamespace(sampled=lambda: True)
    runner.log_policy = policy
    try:
        for status in (200, 422, 503):
            call = Call("test", "const", f"req-{status}")
            await plane.infer(call, InferenceRequest("const", None, [ROW]))
            plane.record(call, status)
    finally:
        runner.log_policy = None
    assert [(e[0], e[2], e[3]) for e in logged] == [
        ("answer", "req-200", "production"), ("error", "req-503", "production")]
    answer = logged[0]
    assert answer[1] is policy and answer[6] == 1 and answer[7].predictions.tolist() == [1]
    assert logged[1][-1] == 503


async def test_readiness_follows_preloading(registry: Registry) -> None:
    plane = plane_over(registry)
    assert plane.readiness() == (False, {"status": "loading"}) and not plane.is_ready()
    await plane.start()
    try:
        await plane.wait_ready()
        assert plane.readiness() == (True, {"status": "ready"}) and plane.is_ready()
        assert plane.model_ready("const", None) and not plane.model_ready("const", "2")
        with pytest.raises(NotFoundError):
            plane.model_ready("ghost", None)
    finally:
        await plane.stop()


async def test_only_unversioned_requests_follow_a_rollout(plane: DataPlane) -> None:
    class Candidate:
        """A rollout's candidate that answers 9 to every row."""

        name, version, version_str, closed, log_policy = "const", 2, "2", False, None
        predictor = SimpleNamespace(signature=None)

        def prepare(self, payload: Any) -> tuple[Any, int]:
            return payload, 1

        async def submit(self, batch: Any, n: int, scores: bool = False) -> Any:
            return SimpleNamespace(predictions=np.array([9]))

    from modelyard.serving.rollouts import ActiveRollout

    deployment = SimpleNamespace(id=1, revision=1, model="const", strategy="direct", steps=(100,),
                                 state="progressing", step=0, key=None, every_s=1.0, rules={})
    stable = await plane.catalog.runner("const")
    plane.rollouts.active["const"] = ActiveRollout(deployment, stable, Candidate())  # type: ignore[arg-type]
    try:
        routed, pinned = Call("test", "const"), Call("test", "const")
        assert (await plane.infer(routed, InferenceRequest("const", None, [ROW])))\
            .predictions.tolist() == [9]
        assert routed.variant == "candidate"
        assert (await plane.infer(pinned, InferenceRequest("const", 1, [ROW])))\
            .predictions.tolist() == [1]
        assert pinned.variant == "production" and pinned.runner is stable
    finally:
        plane.rollouts.active.clear()
