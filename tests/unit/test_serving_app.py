"""The ASGI app in-process (httpx.ASGITransport): both protocols, every error status, metrics,
the model cache and hot swap, over real registered models."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.testing import (
    register_constant,
    register_hgb,
    register_mlp,
    register_probe,
    register_text,
)

pytestmark = pytest.mark.anyio

N_FEATURES = 5
RECORD = {f"f{i}": 0.1 * i for i in range(N_FEATURES)}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("serving-app") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=10, n_features=N_FEATURES)
        register_text(reg, "sentiment")
        register_mlp(reg, "mlp", sizes=(8, 16, 3))
        register_constant(reg, "const", 1)
        register_constant(reg, "const", 2, promote=False)
        register_constant(reg, "slow", 0, meta={
            "serving": {"batching": {"max_batch_size": 1, "max_queue": 2}}})
        register_constant(reg, "draft", 5, promote=False)
        register_probe(reg, "moved")
        register_probe(reg, "moved", fail_load=True, promote=False)
        yield reg


async def started(registry: Registry, **options: Any) -> App:
    app = create_app(registry, ServeOptions(poll_interval_s=3600, **options))
    await app.startup()
    await app.wait_ready()
    return app


@pytest.fixture()
async def app(registry: Registry) -> AsyncIterator[App]:
    app = await started(registry, max_body_bytes=4096)
    yield app
    await app.shutdown()


@pytest.fixture()
async def client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://modelyard") as c:
        yield c


# -- native REST --------------------------------------------------------------------------------
async def test_v1_predicts_records_columns_and_rows(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tabular/predict", json={"records": [RECORD, RECORD]})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1"
    assert r.headers["content-length"] == str(len(r.content))  # not chunked: one write
    doc = r.json()
    assert doc["model"] == "tabular" and doc["version"] == 1 and len(doc["predictions"]) == 2
    cols = {k: [v, v] for k, v in RECORD.items()}
    r2 = await client.post("/v1/models/tabular/predict", json={"columns": cols})
    r3 = await client.post("/v1/models/tabular/versions/1/predict",
                           json={"instances": [list(RECORD.values())] * 2})
    assert r2.json()["predictions"] == r3.json()["predictions"] == doc["predictions"]


async def test_v1_scores_by_query_or_body(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tabular/predict?scores=true", json={"records": [RECORD]})
    doc = r.json()
    assert doc["classes"] == [0, 1] and len(doc["scores"][0]) == 2
    assert abs(sum(doc["scores"][0]) - 1) < 1e-6
    r = await client.post("/v1/models/sentiment/predict",
                          json={"instances": ["great", "awful"], "scores": True})
    assert r.json()["predictions"] == ["pos", "neg"] and r.json()["classes"] == ["neg", "pos"]


async def test_v1_tensor_model(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/mlp/predict", json={"instances": [[0.5] * 8] * 3})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3
    r = await client.post("/v1/models/mlp/predict", json={"inputs": {"input": [[0.5] * 8]}})
    assert r.status_code == 200


async def test_concurrent_requests_are_batched_and_split_back(client: httpx.AsyncClient,
                                                              app: App) -> None:
    rows = np.random.default_rng(1).normal(size=(40, N_FEATURES)).tolist()
    replies = await asyncio.gather(*(
        client.post("/v1/models/tabular/predict", json={"instances": [row]}) for row in rows))
    together = await client.post("/v1/models/tabular/predict", json={"instances": rows})
    assert [r.json()["predictions"][0] for r in replies] == together.json()["predictions"]
    metrics = (await client.get("/metrics")).text
    assert 'modelyard_batch_size_count{model="tabular",version="1"}' in metrics


# -- errors -------------------------------------------------------------------------------------
async def test_unknown_model_and_version_are_404_naming_what_exists(
        client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/nope/predict", json={"records": [RECORD]})
    assert r.status_code == 404 and "tabular" in r.json()["message"]
    r = await client.post("/v1/models/tabular/versions/9/predict", json={"records": [RECORD]})
    assert r.status_code == 404 and "versions: 1..1" in r.json()["message"]
    r = await client.post("/v1/models/draft/predict", json={"records": [{"f0": 0}]})
    assert r.status_code == 404 and "production" in r.json()["message"]
    r = await client.post("/v1/models/tabular/versions/x/predict", json={})
    assert r.status_code == 404
    assert (await client.get("/nowhere")).status_code == 404


async def test_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/tabular/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert (await client.delete("/metrics")).status_code == 405


async def test_signature_mismatch_is_422_with_field_detail(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tabular/predict",
                          json={"records": [{**RECORD, "f1": "abc", "extra": 1}]})
    assert r.status_code == 422
    locs = [d["loc"] for d in r.json()["detail"]]
    assert ["f1", 0] in locs and ["extra"] in locs
    r = await client.post("/v1/models/mlp/predict", json={"instances": [[1.0] * 7]})
    assert r.status_code == 422
    r = await client.post("/v1/models/tabular/predict", json={"rows": []})
    assert r.status_code == 422


async def test_unparseable_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tabular/predict", content=b"{nope")
    assert r.status_code == 400 and r.json()["error"] == "BadJSONError"


async def test_oversize_body_is_413_by_header_and_while_streaming(
        client: httpx.AsyncClient, app: App) -> None:
    r = await client.post("/v1/models/tabular/predict", content=b" " * 5000)
    assert r.status_code == 413
    chunks = [b"{" + b" " * 3000, b" " * 3000 + b"}"]  # no Content-Length: streamed
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/models/tabular/predict",
             "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert sent[0]["status"] == 413


async def test_full_queue_is_503_with_retry_after(client: httpx.AsyncClient, app: App) -> None:
    runner = await app.catalog.runner("slow")
    gate = threading.Event()
    original = runner.predictor.predict_batch

    def blocked(batch: Any, *, scores: bool = False) -> Any:
        gate.wait(10)
        return original(batch, scores=scores)

    runner.predictor.predict_batch = blocked  # type: ignore[method-assign]
    body = {"instances": [[0, 0, 0]]}
    pending = [asyncio.ensure_future(client.post("/v1/models/slow/predict", json=body))]
    await asyncio.sleep(0.3)  # the first one is running (blocked)
    pending += [asyncio.ensure_future(client.post("/v1/models/slow/predict", json=body))
                for _ in range(2)]
    await asyncio.sleep(0.3)  # two queued: the queue (2 rows) is full
    r = await client.post("/v1/models/slow/predict", json=body)
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    gate.set()
    assert [p.status_code for p in await asyncio.gather(*pending)] == [200, 200, 200]


async def test_a_model_exception_is_500_for_that_request_only(
        client: httpx.AsyncClient, app: App) -> None:
    runner = await app.catalog.runner("tabular")
    original = runner.predictor.predict_batch

    def flaky(batch: Any, *, scores: bool = False) -> Any:
        if (np.asarray(batch) == 666).any():
            raise RuntimeError("the model exploded")
        return original(batch, scores=scores)

    runner.predictor.predict_batch = flaky  # type: ignore[method-assign]
    bad = {"records": [{**RECORD, "f0": 666}]}
    replies = await asyncio.gather(
        *(client.post("/v1/models/tabular/predict", json={"records": [RECORD]})
          for _ in range(5)),
        client.post("/v1/models/tabular/predict", json=bad))
    assert [r.status_code for r in replies] == [200] * 5 + [500]
    assert "exploded" in replies[-1].json()["message"]
    r = await client.post("/v1/models/tabular/predict", json={"records": [RECORD]})
    assert r.status_code == 200


# -- OIP v2 -------------------------------------------------------------------------------------
async def test_v2_health_server_and_model_metadata(client: httpx.AsyncClient) -> None:
    assert (await client.get("/v2/health/live")).status_code == 200
    assert (await client.get("/v2/health/ready")).status_code == 200
    server = (await client.get("/v2")).json()
    assert server["name"] == "modelyard" and "binary_tensor_data" in server["extensions"]
    meta = (await client.get("/v2/models/mlp")).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    assert (await client.get("/v2/models/mlp/versions/1")).status_code == 200
    assert (await client.get("/v2/models/mlp/ready")).status_code == 200
    assert (await client.get("/v2/models/const/versions/2/ready")).status_code == 400
    r = await client.get("/v2/models/nope")
    assert r.status_code == 404 and "error" in r.json()


async def test_v2_infer_json_columns_matrix_and_bytes(client: httpx.AsyncClient) -> None:
    cols = [{"name": k, "shape": [2], "datatype": "FP64", "data": [v, v]}
            for k, v in RECORD.items()]
    r = await client.post("/v2/models/tabular/infer", json={"inputs": cols,
                          "outputs": [{"name": "predictions"}]})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert [o["name"] for o in out] == ["predictions"] and out[0]["datatype"] == "INT64"
    matrix = {"inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP32",
                          "data": list(RECORD.values())}]}
    r = await client.post("/v2/models/tabular/versions/1/infer", json=matrix)
    assert {o["name"] for o in r.json()["outputs"]} == {"predictions", "scores"}
    text = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                        "data": ["great", "awful"]}]}
    r = await client.post("/v2/models/sentiment/infer", json=text)
    preds = r.json()["outputs"][0]
    assert preds["datatype"] == "BYTES" and preds["data"] == ["pos", "neg"]


async def test_v2_infer_binary_round_trip(client: httpx.AsyncClient) -> None:
    x = np.full((2, 8), 0.5, dtype=np.float32)
    header = orjson.dumps({"inputs": [{"name": "input", "shape": [2, 8], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "scores", "parameters": {"binary_data": True}}]})
    r = await client.post("/v2/models/mlp/infer", content=header + x.tobytes(),
                          headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    doc = orjson.loads(r.content[:length])
    assert doc["outputs"][0]["datatype"] == "FP32"  # a torch model's float32, as it answered
    scores = np.frombuffer(r.content[length:], dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


async def test_v2_errors_use_the_oip_error_shape(client: httpx.AsyncClient) -> None:
    r = await client.post("/v2/models/mlp/infer", json={"inputs": [
        {"name": "wrong", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}]})
    assert r.status_code == 422 and isinstance(r.json()["error"], str)
    r = await client.post("/v2/models/mlp/infer", json={"inputs": [
        {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0] * 8}],
        "outputs": [{"name": "nope"}]})
    assert r.status_code == 422
    r = await client.post("/v2/models/mlp/infer", content=b"{",
                          headers={"Inference-Header-Content-Length": "1"})
    assert r.status_code == 400


async def test_v2_repository_index_load_unload(client: httpx.AsyncClient) -> None:
    rows = (await client.post("/v2/repository/index")).json()
    states = {(r["name"], r["version"]): r["state"] for r in rows}
    assert states[("mlp", "1")] == "READY" and states[("const", "2")] == "UNAVAILABLE"
    assert (await client.post("/v2/repository/models/mlp/unload")).status_code == 200
    assert (await client.get("/v2/models/mlp/ready")).status_code == 400
    assert (await client.post("/v2/repository/models/mlp/load")).status_code == 200
    assert (await client.get("/v2/models/mlp/ready")).status_code == 200
    ready = (await client.post("/v2/repository/index", json={"ready": True})).json()
    assert all(r["state"] == "READY" for r in ready)
    assert (await client.post("/v2/repository/models/nope/load")).status_code == 404


# -- operations ---------------------------------------------------------------------------------
async def test_health_ready_docs_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    assert "/v1/models/{name}/predict" in (await client.get("/openapi.json")).json()["paths"]
    assert "modelyard API" in (await client.get("/docs")).text
    await client.post("/v1/models/tabular/predict", json={"records": [RECORD]})
    await client.post("/v1/models/tabular/predict", json={"records": [{"f0": "x"}]})
    await client.post("/v1/models/ghost/predict", json={})
    text = (await client.get("/metrics")).text
    assert ('modelyard_requests_total{model="tabular",protocol="v1",status="200",'
            'variant="production",version="1"}' in text)
    assert 'status="422"' in text and 'model="",protocol="v1",status="404"' in text
    assert 'modelyard_model_loaded{model="mlp",version="1"} 1.0' in text
    assert "modelyard_queue_seconds_bucket" in text
    assert "modelyard_request_duration_seconds_count" in text
    assert "modelyard_model_memory_bytes" in text


async def test_readyz_is_503_until_preloaded(registry: Registry) -> None:
    app = create_app(registry, ServeOptions(poll_interval_s=3600))
    await app.startup()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
        first = (await c.get("/readyz")).status_code
        await app.wait_ready()
        assert first == 503 and (await c.get("/readyz")).status_code == 200
    await app.shutdown()


# -- cache and hot swap -------------------------------------------------------------------------
async def test_versions_load_on_demand_and_evict_lru_under_max_memory(
        registry: Registry) -> None:
    app = await started(registry, preload=False, max_memory=1)
    try:
        assert app.catalog.cache.loaded() == []
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
            for version in (1, 2):
                r = await c.post(f"/v1/models/const/versions/{version}/predict",
                                 json={"instances": [[0, 0, 0]]})
                assert r.json()["predictions"] == [version]
        assert [k for k, _ in app.catalog.cache.loaded()] == [("const", 2)]
    finally:
        await app.shutdown()


async def test_concurrent_first_requests_share_one_load(registry: Registry) -> None:
    app = await started(registry, preload=False)
    calls: list[Any] = []
    original = app.catalog._open

    def counting(record: Any) -> Any:
        calls.append(record.ref)
        return original(record)

    app.catalog._open = counting  # type: ignore[method-assign]
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
            replies = await asyncio.gather(*(
                c.post("/v1/models/const/predict", json={"instances": [[0, 0, 0]]})
                for _ in range(8)))
        assert {r.status_code for r in replies} == {200}
        assert calls == ["const:1"]
    finally:
        await app.shutdown()


async def test_alias_move_swaps_versions_without_failing_requests(registry: Registry) -> None:
    app = await started(registry)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
            stop = asyncio.Event()
            seen: list[int] = []

            async def load() -> None:
                while not stop.is_set():
                    r = await c.post("/v1/models/const/predict", json={"instances": [[0, 0, 0]]})
                    assert r.status_code == 200, r.text
                    seen.append(r.json()["predictions"][0])

            workers = [asyncio.ensure_future(load()) for _ in range(4)]
            await asyncio.sleep(0.1)
            registry.set_alias("const", "production", 2)
            await app.watcher.poll()
            await asyncio.gather(*list(app.watcher.spawned))
            await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*workers)
        assert seen[0] == 1 and seen[-1] == 2
        assert [k for k, _ in app.catalog.cache.loaded() if k[0] == "const"] == [("const", 2)]
    finally:
        registry.set_alias("const", "production", 1)
        await app.shutdown()


async def test_an_alias_moved_to_a_version_that_cannot_load_is_reported_not_served(
        registry: Registry) -> None:
    """The server kept the old version, but /readyz and /v1/models did not say so, or why."""
    app = await started(registry)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
            registry.set_alias("moved", "production", 2)  # moved by design, past any check
            await app.watcher.poll()
            await asyncio.gather(*list(app.watcher.spawned))
            r = await c.post("/v1/models/moved/predict", json={"instances": [[1.0, 0, 0]]})
            assert r.status_code == 200 and r.headers["x-model-version"] == "1"
            ready = await c.get("/readyz")
            assert ready.status_code == 200  # it answers, with the old version
            [stale] = ready.json()["not_served"]
            assert (stale["model"], stale["alias"], stale["version"], stale["serving"]) == (
                "moved", "production", 2, 1)
            assert "broken on purpose" in stale["reason"]
            models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
            assert models["moved"]["aliases"]["production"] == 2
            assert models["moved"]["served_version"] == 1
            assert models["moved"]["not_served"]["version"] == 2
            assert "broken on purpose" in models["moved"]["not_served"]["reason"]
            assert models["const"]["not_served"] is None
            # the alias moves back: nothing is stale any more
            registry.set_alias("moved", "production", 1, reason="back")
            await app.watcher.poll()
            await asyncio.gather(*list(app.watcher.spawned))
            assert (await c.get("/readyz")).json() == {"status": "ready"}
    finally:
        registry.set_alias("moved", "production", 1)
        await app.shutdown()


def test_module_paths_exist() -> None:
    assert Path(__file__).name.startswith("test_serving_")


async def test_replicas_it_does_not_run_yet_are_named_in_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_constant(reg, "copies", 1, meta={"serving": {"replicas": 2}})
        with caplog.at_level(logging.WARNING, logger="modelyard.serving.catalog"):
            app = await started(reg)
            await app.shutdown()
    assert "copies:1: serving.replicas=2 is not used yet" in caplog.text


# -- the boundary: no 500 for a client's mistake, every 500 logged once -------------------------
@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "\uff11", "0", "9" * 5000,
                                     str(2**63), "1.0"])
async def test_a_version_is_ascii_digits_in_range_else_404(client: httpx.AsyncClient,
                                                           version: str) -> None:
    r = await client.post(f"/v1/models/tabular/versions/{version}/predict",
                          json={"records": [RECORD]})
    assert r.status_code == 404, r.text
    assert (await client.get(f"/v2/models/tabular/versions/{version}")).status_code == 404
    assert (await client.get(f"/v2/models/tabular/versions/{version}/ready")).status_code == 404
    infer = {"inputs": [{"name": "input__0", "shape": [1, N_FEATURES], "datatype": "FP64",
                         "data": [0.0] * N_FEATURES}]}
    r = await client.post(f"/v2/models/tabular/versions/{version}/infer", json=infer)
    assert r.status_code == 404


@pytest.mark.parametrize("value", ["NaN", None, True, 1e39])
async def test_non_numbers_and_overflow_are_422_on_both_protocols(
        client: httpx.AsyncClient, value: object) -> None:
    r = await client.post("/v1/models/tabular/predict", json={"records": [{**RECORD,
                                                                            "f1": value}]})
    if value == 1e39:  # a float64 column holds 1e39: only float32 overflows
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["f1", 0], r.text
    r = await client.post("/v1/models/mlp/predict", json={"instances": [[0.5] * 7 + [value]]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["input", 7], r.text
    r = await client.post("/v2/models/mlp/infer", json={"inputs": [
        {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 7 + [value]}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["inputs", 0, "data", 7]


async def test_oip_bodies_of_the_wrong_shape_are_4xx_not_500(client: httpx.AsyncClient) -> None:
    x = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    for body in ({"inputs": [x], "parameters": [1]}, {"inputs": [{**x, "parameters": "p"}]},
                 {"inputs": [x], "outputs": [{"name": "scores", "parameters": 1}]},
                 {"inputs": [x, x]},
                 {"inputs": [{**x, "datatype": "INT64", "data": [2**63] * 8}]}):
        r = await client.post("/v2/models/mlp/infer", json=body)
        assert r.status_code == 422, (body, r.text)
    r = await client.post("/v2/models/mlp/infer", json={"id": "line\nbreak", "inputs": [x]})
    assert r.status_code == 200 and "\n" not in r.headers["x-request-id"]  # no header injection
    assert r.json()["id"] == "line\nbreak"
    assert (await client.post("/v2/repository/index", json={"ready": "yes"})).status_code == 422
    assert (await client.post("/v2/repository/index", json=[1])).status_code == 422
    r = await client.post("/v2/repository/models/const/load", json={"parameters": [1]})
    assert r.status_code == 422
    r = await client.post("/v2/repository/models/const/load",
                          json={"parameters": {"version": "\u0662"}})
    assert r.status_code == 404


async def test_requested_outputs_are_exactly_those_or_422_naming_the_known_ones(
        client: httpx.AsyncClient) -> None:
    x = {"name": "input", "shape": [2, 8], "datatype": "FP32", "data": [0.5] * 16}
    r = await client.post("/v2/models/mlp/infer", json={"inputs": [x],
                                                         "outputs": [{"name": "scores"}]})
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["scores"]
    r = await client.post("/v2/models/mlp/infer", json={"inputs": [x],
                                                         "outputs": [{"name": "logits"}]})
    assert r.status_code == 422
    assert "logits" in r.json()["error"] and "predictions, scores" in r.json()["error"]
    col = [{"name": f"f{i}", "shape": [1], "datatype": "FP64", "data": [0.0]} for i in range(3)]
    r = await client.post("/v2/models/const/infer", json={"inputs": col,
                                                           "outputs": [{"name": "predictions"}]})
    assert r.status_code == 200 and [o["name"] for o in r.json()["outputs"]] == ["predictions"]


async def test_oip_metadata_states_real_output_shapes_and_datatypes(tmp_path: Path) -> None:
    from modelyard.testing import mlp, register_model

    x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_model(reg, "logits", mlp((4, 8, 10)), "torch", x, sample=x[:8])
        register_model(reg, "old", mlp((4, 8, 10)), "torch", x, sample=x[:8],
                       record_outputs=False)  # saved before outputs were recorded
        register_mlp(reg, "classifier", sizes=(8, 16, 3))
        register_hgb(reg, "tabular", max_iter=5, n_features=3)
        app = await started(reg, preload=False)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
                meta = (await c.get("/v2/models/logits")).json()  # recorded: not loaded yet
                assert meta["outputs"] == [{"name": "predictions", "datatype": "FP32",
                                            "shape": [-1, 10]}]
                assert (await c.post("/v2/repository/models/old/load")).status_code == 200
                assert (await c.get("/v2/models/old")).json()["outputs"] == meta["outputs"]
                scores = (await c.get("/v2/models/classifier")).json()["outputs"][1]
                assert scores == {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}
                scores = (await c.get("/v2/models/tabular")).json()["outputs"][1]
                assert scores == {"name": "scores", "datatype": "FP64", "shape": [-1, 2]}
                r = await c.post("/v2/models/logits/infer", json={"inputs": [
                    {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.1] * 8}]})
                out = r.json()["outputs"][0]
                assert out["datatype"] == "FP32" and out["shape"] == [2, 10]
        finally:
            await app.shutdown()


async def _one_failure_line(caplog: pytest.LogCaptureFixture, r: httpx.Response) -> None:
    assert r.status_code == 500, r.text
    request_id = r.headers["x-request-id"]
    lines = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert len(lines) == 1, [rec.getMessage() for rec in caplog.records]
    assert "answered 500" in lines[0].getMessage()


async def test_every_5xx_writes_one_log_line_with_the_request_id(
        client: httpx.AsyncClient, app: App, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    runner = await app.catalog.runner("mlp")

    def broken(batch: Any, *, scores: bool = False) -> Any:
        raise RuntimeError("the model exploded")

    monkeypatch.setattr(runner.predictor, "predict_batch", broken)

    def no_database(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(app.catalog.registry, "list_models", no_database)
    monkeypatch.setattr(app.catalog.registry, "list_versions", no_database)
    from modelyard.monitoring.monitor import Monitor

    monkeypatch.setattr(Monitor, "events", no_database)
    x = {"name": "input", "shape": [1, 8], "datatype": "FP32", "data": [0.5] * 8}
    with caplog.at_level(logging.WARNING):
        r = await client.post("/v1/models/mlp/predict", json={"instances": [[0.5] * 8]},
                              headers={"x-request-id": "client-chosen-id"})
        assert r.headers["x-request-id"] == "client-chosen-id"
        await _one_failure_line(caplog, r)
        await _one_failure_line(caplog, await client.post("/v2/models/mlp/infer",
                                                          json={"inputs": [x]}))
        await _one_failure_line(caplog, await client.get("/api/v1/models"))
        await _one_failure_line(caplog, await client.get("/api/v1/models/mlp/versions"))
        await _one_failure_line(caplog, await client.get("/api/v1/models/mlp/events"))


async def test_grpc_validates_like_rest_and_logs_each_5xx_once(
        registry: Registry, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import grpc
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = await started(registry, grpc_address=f"127.0.0.1:{port}")

    def tensor(name: str, datatype: str, shape: list[int], field: str,
               values: list[Any]) -> Any:
        t = pb.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
        getattr(t.contents, field).extend(values)
        return t

    good = tensor("input", "FP32", [1, 8], "fp32_contents", [0.5] * 8)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            for inputs, version, code in [
                ([good, good], "", grpc.StatusCode.INVALID_ARGUMENT),  # twice the same name
                ([tensor("input", "INT8", [1, 8], "int_contents", [1000] * 8)], "",
                 grpc.StatusCode.INVALID_ARGUMENT),  # int32 contents beyond int8
                ([tensor("input", "FP32", [-1, -8], "fp32_contents", [0.5] * 8)], "",
                 grpc.StatusCode.INVALID_ARGUMENT),  # negative sizes
                ([good], "\u00b2", grpc.StatusCode.NOT_FOUND),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(pb.ModelInferRequest(
                        model_name="mlp", model_version=version, inputs=inputs))
                assert caught.value.code() == code, caught.value.details()
            wanted = pb.ModelInferRequest.InferRequestedOutputTensor
            for outputs in ([wanted(name="scores"), wanted(name="scores")], [wanted(name="x")]):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ModelInfer(pb.ModelInferRequest(model_name="mlp", inputs=[good],
                                                               outputs=outputs))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

            runner = await app.catalog.runner("mlp")

            def broken(batch: Any, *, scores: bool = False) -> Any:
                raise RuntimeError("the model exploded")

            monkeypatch.setattr(runner.predictor, "predict_batch", broken)
            with caplog.at_level(logging.WARNING), pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.ModelInfer(pb.ModelInferRequest(model_name="mlp", id="grpc-call-7",
                                                           inputs=[good]))
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            assert ("x-request-id", "grpc-call-7") in tuple(caught.value.trailing_metadata())
            lines = [r for r in caplog.records if "grpc-call-7" in r.getMessage()]
            assert len(lines) == 1 and "gRPC ModelInfer answered 500" in lines[0].getMessage()
    finally:
        await app.shutdown()


async def test_a_draining_app_says_not_ready_and_still_answers(registry: Registry) -> None:
    app = await started(registry)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://modelyard") as c:
            assert (await c.get("/readyz")).status_code == 200
            app.drain()  # what the server does on SIGTERM
            r = await c.get("/readyz")
            assert (r.status_code, r.json()) == (503, {"status": "draining"})
            assert (await c.get("/v2/health/ready")).status_code == 503
            assert not app.is_ready()
            answered = await c.post("/v1/models/tabular/predict", json={"records": [RECORD]})
            assert answered.status_code == 200
    finally:
        await app.shutdown()
