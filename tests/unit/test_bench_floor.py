"""The benchmark's floor (``bench/floor_app.py``): a bare batching server whose CPU a request
``bench/serve.py`` sets beside modelyard's and the naive endpoint's. Its figure means something
only if it does the work it claims: every request answered with its own row's prediction and
scores, from batched calls of the model."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import orjson
import pytest
from tests.unit.test_bench_loadgen import bench_module

import modelyard
from modelyard.registry import Registry
from modelyard.testing import register_hgb, register_mlp

floor_app = bench_module("floor_app")


async def _post(app: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    parts = [body[:7], body[7:]]  # a body in two parts is read whole

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": parts.pop(0), "more_body": bool(parts)}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


async def _serve(name: str, rows: np.ndarray) -> list[dict[str, Any]]:
    app = floor_app.make_app(name)
    startup = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    started = asyncio.Event()

    async def lifespan_receive() -> dict[str, Any]:
        if len(startup) == 1:
            await asyncio.sleep(3600)  # shut down only when cancelled
        return startup.pop(0)

    async def lifespan_send(message: dict[str, Any]) -> None:
        assert message["type"] == "lifespan.startup.complete"
        started.set()

    life = asyncio.ensure_future(app({"type": "lifespan"}, lifespan_receive, lifespan_send))
    await started.wait()
    answers = await asyncio.gather(*(
        _post(app, orjson.dumps({"instances": [row.tolist()]})) for row in rows))
    life.cancel()
    assert all(status == 200 for status, _ in answers)
    return [doc for _, doc in answers]


@pytest.mark.parametrize("kind", ["tabular", "dl"])
def test_the_floor_answers_each_request_with_its_own_rows_prediction(
        registry: Registry, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setenv("MODELYARD_HOME", str(registry.settings.home))
    if kind == "tabular":
        register_hgb(registry, "tabular", max_iter=5, n_features=4)
        rows = np.random.default_rng(1).normal(size=(40, 4))
    else:
        register_mlp(registry, "dl", sizes=(8, 16, 3))
        rows = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)

    answers = asyncio.run(_serve(kind, rows))

    expected = modelyard.load(f"{kind}@production", device="cpu").predict_batch(rows, scores=True)
    assert [a["predictions"][0] for a in answers] == np.asarray(expected.predictions).tolist()
    assert expected.scores is not None
    np.testing.assert_allclose([a["scores"][0] for a in answers], expected.scores, rtol=1e-6)
