"""Monitoring through the server in-process: request ids, the prediction log, feedback, metrics
from labels, drift checks, the monitoring API and its Prometheus gauges."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.monitoring.monitor import Monitor
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.serving.fixtures import register_hgb, register_probe, tabular_data

pytestmark = pytest.mark.anyio
N_FEATURES = 5


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture()
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_hgb(reg, "fraud", max_iter=20, n_features=N_FEATURES, meta={
            "metrics": ["accuracy", "f1"],
            "monitoring": {"min_rows": 50, "window_s": 3600, "drift_share": 0.5},
            "serving": {"sensitive": {"f4": "drop"}}})
        register_probe(reg, "flaky", fail_predict=True)
        yield reg


@pytest.fixture()
async def app(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[App]:
    monkeypatch.delenv("MODELYARD_TOKEN", raising=False)
    app = create_app(registry, ServeOptions(poll_interval_s=3600, monitor_interval_s=3600))
    await app.startup()
    await app.wait_ready()
    yield app
    await app.shutdown()


@pytest.fixture()
async def client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://modelyard") as c:
        yield c


def records(X: np.ndarray) -> list[dict[str, float]]:
    return [{f"f{j}": float(v) for j, v in enumerate(row)} for row in X]


async def send(client: httpx.AsyncClient, X: np.ndarray) -> list[tuple[str, int]]:
    """One request per row; returns (request id, predicted class) of each."""
    out = []
    for row in records(X):
        r = await client.post("/v1/models/fraud/predict", json={"records": [row]})
        assert r.status_code == 200, r.text
        assert r.headers["x-request-id"] == r.json()["request_id"]
        out.append((r.json()["request_id"], r.json()["predictions"][0]))
    return out


async def test_a_client_request_id_is_kept_and_echoed(client: httpx.AsyncClient) -> None:
    row = records(np.zeros((1, N_FEATURES)))
    r = await client.post("/v1/models/fraud/predict", json={"records": row},
                          headers={"X-Request-Id": "order-1234"})
    assert r.headers["x-request-id"] == "order-1234"
    assert r.json()["request_id"] == "order-1234"
    v2 = await client.post("/v2/models/fraud/infer", json={
        "id": "oip-7", "inputs": [{"name": f"f{j}", "shape": [1], "datatype": "FP64",
                                   "data": [0.0]} for j in range(N_FEATURES)]})
    assert v2.status_code == 200, v2.text
    assert v2.json()["id"] == "oip-7" and v2.headers["x-request-id"] == "oip-7"


async def test_feedback_joins_labels_to_logged_predictions_and_scores_them(
        app: App, client: httpx.AsyncClient) -> None:
    X, _ = tabular_data(n_rows=120, n_features=N_FEATURES, seed=7)
    answered = await send(client, X)
    app.predlog.flush()
    # the model's own answers as labels for the first 60, their opposite for the next 40
    labels = [{"request_id": rid, "label": pred if i < 60 else 1 - pred}
              for i, (rid, pred) in enumerate(answered[:100])]
    r = await client.post("/v1/models/fraud/feedback", json={"labels": labels})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 100 and r.json()["matched"] == 100
    # a later label for the same request replaces the first
    r = await client.post("/v1/models/fraud/feedback",
                          json={"request_id": answered[0][0], "label": 1 - answered[0][1]})
    assert r.json() == {"model": "fraud", "stored": 1, "matched": 1, "unmatched": []}

    r = await client.get("/api/v1/models/fraud/metrics?since=1h")
    assert r.status_code == 200, r.text
    (window,) = r.json()["windows"]
    assert window["version"] == 1 and window["variant"] == "production"
    assert window["requests"] == 120 and window["labeled"] == 100
    assert window["values"]["accuracy"] == pytest.approx(59 / 100)
    assert 0.0 <= window["values"]["f1"] <= 1.0
    assert r.json()["latency"]["requests"] == 120 and r.json()["latency"]["p99_ms"] > 0

    app.gauges.refresh()
    text = (await client.get("/metrics")).text
    assert 'modelyard_model_metric{metric="accuracy",model="fraud",variant="production",' \
           'version="1"} 0.59' in text
    assert 'modelyard_prediction_log_written_total 120.0' in text
    cpu = re.search(r"^modelyard_prediction_log_cpu_seconds_total (\S+)$", text, re.MULTILINE)
    assert cpu is not None and float(cpu.group(1)) > 0  # what the log cost, for operators


async def test_sensitive_fields_never_reach_the_log(app: App, client: httpx.AsyncClient,
                                                   registry: Registry) -> None:
    X, _ = tabular_data(n_rows=5, n_features=N_FEATURES, seed=1)
    await send(client, X)
    app.predlog.flush()
    logged = Monitor(registry).predictions("fraud")
    assert len(logged) == 5
    assert all("f4" not in p.inputs["columns"] for p in logged)
    assert logged[0].inputs["columns"]["f0"] == [pytest.approx(X[0, 0])]


async def test_drift_is_checked_stored_and_exported(app: App, client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/models/fraud/drift")
    assert r.status_code == 409 and "needs 50" in r.json()["message"]  # nothing logged yet

    X, _ = tabular_data(n_rows=150, n_features=N_FEATURES, seed=3)
    X[:, :3] += 3.0  # three of the five features move far
    await send(client, X)
    app.predlog.flush()
    r = await client.post("/api/v1/models/fraud/drift")
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["drifted"] is True and check["rows"] == 150
    assert check["share"] == pytest.approx(3 / 4)  # f4 is dropped from the log: 4 compared
    features = check["report"]["features"]
    assert {f for f, d in features.items() if d["drifted"]} == {"f0", "f1", "f2"}

    listed = (await client.get("/api/v1/models/fraud/drift")).json()["checks"]
    assert [c["id"] for c in listed] == [check["id"]]
    app.gauges.refresh()
    text = (await client.get("/metrics")).text
    assert 'modelyard_drift_detected{model="fraud",version="1"} 1.0' in text
    assert 'modelyard_feature_drift_score{feature="f0",model="fraud"' in text


async def test_feedback_errors_say_what_to_fix(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/nope/feedback", json={"request_id": "a", "label": 1})
    assert r.status_code == 404 and "nope" in r.json()["message"]
    r = await client.post("/v1/models/fraud/feedback", json={"labels": [{"label": 1}]})
    assert r.status_code == 422 and "request_id" in r.text
    r = await client.post("/v1/models/fraud/feedback", content=b"{oops")
    assert r.status_code == 400
    r = await client.post("/v1/models/fraud/feedback", json={"something": "else"})
    assert r.status_code == 422
    r = await client.get("/api/v1/models/fraud/metrics?since=yesterday-ish")
    assert r.status_code == 400 and "since" in r.json()["message"]


@pytest.mark.parametrize("query", [
    "since=99999999999d", "since=1e400", "every=99999999999d", "every=0.0000001ms",
    "since=9999-12-31T23:59:59-01:00", "since=0001-01-01T00:00:00%2B01:00",
    "since=%D9%A1h",  # Arabic-Indic one: durations are ASCII digits
])
async def test_durations_and_times_beyond_any_representable_time_are_400(
        client: httpx.AsyncClient, query: str) -> None:
    for path in ("metrics", "events"):
        r = await client.get(f"/api/v1/models/fraud/{path}?{query}")
        if path == "events" and query.startswith("every"):
            continue  # events take no sub-window
        assert r.status_code == 400, (path, query, r.text)
    r = await client.post(f"/api/v1/models/fraud/drift?{query}")
    assert r.status_code in (400, 409) if query.startswith("every") else r.status_code == 400


@pytest.mark.parametrize("limit", ["%D9%A1", "%C2%B2", "9" * 50])
async def test_a_limit_is_ascii_digits(client: httpx.AsyncClient, limit: str) -> None:
    r = await client.get(f"/api/v1/models/fraud/events?limit={limit}")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_feedback_needs_the_token_when_one_is_set(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_TOKEN", "s3cret")
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False))
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://m") as c:
            body = {"request_id": "a", "label": 1}
            assert (await c.post("/v1/models/fraud/feedback", json=body)).status_code == 401
            r = await c.post("/v1/models/fraud/feedback", json=body,
                             headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 200 and r.json()["matched"] == 0
    finally:
        await app.shutdown()


async def test_failed_requests_are_logged_as_errors_and_give_the_error_rate(
        app: App, client: httpx.AsyncClient, registry: Registry) -> None:
    for row in ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, 5.0, 6.0]):
        r = await client.post("/v1/models/flaky/predict", json={"instances": [row]})
        assert r.status_code == (200 if not any(row) else 500), r.text
    app.predlog.flush()
    latency = Monitor(registry).latency("flaky")
    assert latency.requests == 4 and latency.error_rate == 0.5
    assert latency.p99_ms is not None and latency.p99_ms > 0
