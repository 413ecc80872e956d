"""Monitoring through the server in-process: request ids, the prediction log, feedback, metrics
from labels, drift checks, the monitoring API and its Prometheus gauges."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import update

from modelyard.config import Settings
from modelyard.monitoring.monitor import Monitor
from modelyard.registry import Registry
from modelyard.registry.tables import LabelRow
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.testing import register_hgb, register_probe, tabular_data

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
    assert r.json() == {"model": "fraud", "stored": 1, "matched": 1, "unmatched": [],
                        "pending": 0, "message": "every label matches a logged prediction"}

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


async def test_drift_is_checked_stored_audited_and_exported(
        app: App, client: httpx.AsyncClient, registry: Registry) -> None:
    r = await client.post("/api/v1/models/fraud/drift", json={})
    assert r.status_code == 409 and "needs 50" in r.json()["message"]  # nothing logged yet

    X, _ = tabular_data(n_rows=150, n_features=N_FEATURES, seed=3)
    X[:, :3] += 3.0  # three of the five features move far
    await send(client, X)
    app.predlog.flush()
    r = await client.post("/api/v1/models/fraud/drift", json={})
    assert r.status_code == 200, r.text
    check = r.json()
    assert check["drifted"] is True and check["rows"] == 150
    assert check["share"] == pytest.approx(3 / 4)  # f4 is dropped from the log: 4 compared
    features = check["report"]["features"]
    assert {f for f, d in features.items() if d["drifted"]} == {"f0", "f1", "f2"}
    audit = registry.audit_events("fraud", limit=1)[0]  # the refused first check left none
    assert (audit.action, audit.target, audit.actor) == ("drift.check", "fraud:1",
                                                         "api:anonymous")
    assert audit.details == {"check": check["id"], "rows": 150, "share": check["share"],
                             "drifted": True}

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
    r = await client.post("/v1/models/fraud/feedback", content=b"{oops",
                          headers={"content-type": "application/json"})
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
    r = await client.post(f"/api/v1/models/fraud/drift?{query}", json={})
    assert r.status_code in (400, 409) if query.startswith("every") else r.status_code == 400


@pytest.mark.parametrize("limit", ["%D9%A1", "%C2%B2", "9" * 50])
async def test_a_limit_is_ascii_digits(client: httpx.AsyncClient, limit: str) -> None:
    r = await client.get(f"/api/v1/models/fraud/events?limit={limit}")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_feedback_needs_the_token_when_one_is_set_and_is_audited(
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
                             headers={"Authorization": "Bearer s3cret", "X-Actor": "bob"})
            assert r.status_code == 200 and r.json()["matched"] == 0
    finally:
        await app.shutdown()
    audit = registry.audit_events("fraud", limit=1)[0]
    assert (audit.action, audit.actor, audit.details) == ("labels.store", "api:token",
                                                          {"labels": 1})
    # from Python (and the CLI) the registry's actor is recorded
    Monitor(registry).feedback("fraud", {"b": 0, "c": 1})
    audit = registry.audit_events("fraud", limit=1)[0]
    assert (audit.action, audit.actor, audit.details) == ("labels.store", "tester",
                                                          {"labels": 2})


async def test_failed_requests_are_logged_as_errors_and_give_the_error_rate(
        app: App, client: httpx.AsyncClient, registry: Registry) -> None:
    for row in ([0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [4.0, 5.0, 6.0]):
        r = await client.post("/v1/models/flaky/predict", json={"instances": [row]})
        assert r.status_code == (200 if not any(row) else 500), r.text
    app.predlog.flush()
    latency = Monitor(registry).latency("flaky")
    assert latency.requests == 4 and latency.error_rate == 0.5
    assert latency.p99_ms is not None and latency.p99_ms > 0


async def test_feedback_sent_before_the_log_is_written_is_kept_and_joined_later(
        app: App, client: httpx.AsyncClient, registry: Registry) -> None:
    X, _ = tabular_data(n_rows=2, n_features=N_FEATURES, seed=11)
    (request_id, predicted), (other, _) = await send(client, X)
    r = await client.post("/v1/models/fraud/feedback",
                          json={"labels": [{"request_id": request_id, "label": predicted},
                                           {"request_id": other, "label": 0}]})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["matched"] == 0 and answer["pending"] == 2 and answer["stored"] == 2
    assert "kept and joined when the prediction is logged" in answer["message"]
    assert set(answer["unmatched"]) == {request_id, other}

    app.predlog.flush()  # the writer's next wake
    (window,) = Monitor(registry).metrics("fraud")
    assert window.requests == 2 and window.labeled == 2


async def test_one_request_is_looked_up_by_its_id(app: App, client: httpx.AsyncClient) -> None:
    X, _ = tabular_data(n_rows=1, n_features=N_FEATURES, seed=12)
    ((request_id, predicted),) = await send(client, X)
    r = await client.get(f"/api/v1/models/fraud/predictions/{request_id}")
    assert r.status_code == 404 and "not written yet" in r.json()["message"]
    app.predlog.flush()
    await client.post("/v1/models/fraud/feedback",
                      json={"request_id": request_id, "label": 1 - predicted})

    r = await client.get(f"/api/v1/models/fraud/predictions/{request_id}")
    assert r.status_code == 200, r.text
    found = r.json()
    assert found["model"] == "fraud" and found["request_id"] == request_id
    assert found["labeled"] is True and found["label"] == 1 - predicted
    (logged,) = found["predictions"]
    assert logged["version"] == 1 and logged["variant"] == "production" and logged["rows"] == 1
    assert logged["latency_ms"] > 0 and logged["at"].startswith("20")
    assert logged["outputs"]["predictions"] == [predicted]
    assert logged["inputs"]["columns"]["f0"] == [pytest.approx(X[0, 0])]
    assert "f4" not in logged["inputs"]["columns"]  # sensitive: dropped, as logged

    assert (await client.get("/api/v1/models/nope/predictions/x")).status_code == 404


async def test_a_lookup_needs_the_token_when_one_is_set(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELYARD_TOKEN", "s3cret")  # it shows what clients sent
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False))
    await app.startup()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://m") as c:
            path = "/api/v1/models/fraud/predictions/some-id"
            assert (await c.get(path)).status_code == 401
            r = await c.get(path, headers={"Authorization": "Bearer s3cret"})
            assert r.status_code == 404 and "some-id" in r.json()["message"]
    finally:
        await app.shutdown()


async def test_a_256_wide_torch_mlp_is_logged_with_its_columns(tmp_path: Path) -> None:
    from modelyard.testing import register_mlp

    with Registry.open(Settings.from_env(home=tmp_path / "mlp", actor="tester")) as registry:
        version = register_mlp(registry, "mlp", sizes=(256, 32, 10), meta={
            "monitoring": {"min_rows": 30}})
        assert version.reference_stats["kind"] == "table"  # 256 columns, one tensor input
        app = create_app(registry, ServeOptions(poll_interval_s=3600, monitor_interval_s=3600))
        await app.startup()
        await app.wait_ready()
        try:
            rows = np.random.default_rng(0).normal(size=(40, 256)).astype(np.float32)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                         base_url="http://m") as c:
                for row in rows:
                    r = await c.post("/v1/models/mlp/predict", json={"inputs": [row.tolist()]})
                    assert r.status_code == 200, r.text
                app.predlog.flush()
                assert (app.predlog.written, app.predlog.dropped) == (40, 0)
                text = (await c.get("/metrics")).text
                assert "modelyard_prediction_log_dropped_total 0.0" in text
                assert "modelyard_prediction_log_written_total 40.0" in text
            monitor = Monitor(registry)
            logged = monitor.predictions("mlp")
            assert len(logged) == 40
            (vector,) = logged[0].inputs["vectors"]
            assert vector[255] == pytest.approx(rows[0, 255])
            assert monitor.check_drift("mlp").rows == 40  # the drift check finds the columns
        finally:
            await app.shutdown()


async def test_a_log_that_drops_everything_is_named_by_readyz_and_a_metric(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELYARD_TOKEN", raising=False)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    app = create_app(registry, ServeOptions(poll_interval_s=3600, monitor_interval_s=3600,
                                            prediction_log=f"parquet:{blocker}/log"))
    await app.startup()
    await app.wait_ready()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://m") as c:
            ready = await c.get("/readyz")
            assert ready.json() == {"status": "ready"}
            X, _ = tabular_data(n_rows=5, n_features=N_FEATURES, seed=13)
            await send(c, X)
            app.predlog.flush()
            assert (app.predlog.written, app.predlog.dropped) == (0, 5)

            ready = await c.get("/readyz")
            assert ready.status_code == 200  # the models still answer
            body = ready.json()
            assert body["status"] == "ready"
            (problem,) = body["degraded"]
            assert problem.startswith("prediction log dropping: 5 dropped, 0 written")
            assert "store failed" in problem and "not-a-folder" in problem
            assert body["prediction_log"]["dropping"] is True
            text = (await c.get("/metrics")).text
            assert "modelyard_prediction_log_dropping 1.0" in text
            assert "modelyard_prediction_log_dropped_total 5.0" in text
    finally:
        await app.shutdown()


@pytest.mark.parametrize("kind", ["db", "parquet",
                                  pytest.param("postgres", marks=pytest.mark.integration)])
async def test_the_server_deletes_predictions_and_labels_past_their_retention(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db_url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else None
    settings = Settings.from_env(home=tmp_path / "home", db_url=db_url, actor="tester")
    with Registry.open(settings) as reg:
        register_probe(reg, "short", meta={"monitoring": {"retention_days": 7}})
        register_probe(reg, "kept", meta={"monitoring": {"retention_days": None}})
        where = f"parquet:{tmp_path / 'log'}" if kind == "parquet" else "db"
        app = create_app(reg, ServeOptions(poll_interval_s=3600, monitor_interval_s=3600,
                                           preload=False, prediction_log=where))
        await app.startup()
        try:
            monitor = Monitor(reg, app.predlog.store)
            at = datetime.now(UTC)
            ages = (40, 8, 6, 1)  # days; whole days apart, so Parquet's days agree
            for model in ("short", "kept"):
                monitor.log_predictions([{
                    "request_id": f"{model}-{age}d", "model": model, "version": 1,
                    "variant": "production", "at": at - timedelta(days=age), "latency_ms": 1.0,
                    "rows": 1, "inputs": {}, "outputs": {"predictions": [0]}} for age in ages])
                monitor.feedback(model, {f"{model}-{age}d": 0 for age in ages})
                with reg.db.session(write=True) as s:  # labels arrive with their predictions
                    for age in ages:
                        s.execute(update(LabelRow).where(
                            LabelRow.model == model, LabelRow.request_id == f"{model}-{age}d")
                            .values(at=at - timedelta(days=age)))

            await app.retention.tick()  # what the server does an hour after the last sweep

            assert [p.request_id for p in monitor.predictions("short", since=at - timedelta(
                days=60))] == ["short-6d", "short-1d"]
            assert set(monitor.labels("short", [f"short-{a}d" for a in ages])) == {
                "short-6d", "short-1d"}
            assert len(monitor.predictions("kept", since=at - timedelta(days=60))) == 4
            assert len(monitor.labels("kept", [f"kept-{a}d" for a in ages])) == 4
        finally:
            await app.shutdown()


async def test_the_gauges_read_no_log_for_a_model_without_labels(
        app: App, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    X, _ = tabular_data(n_rows=20, n_features=N_FEATURES, seed=4)
    answered = await send(client, X)
    app.predlog.flush()
    read: list[str] = []
    metrics = Monitor.metrics

    def counted(self: Monitor, model: str, **kw: object) -> object:
        read.append(model)
        return metrics(self, model, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Monitor, "metrics", counted)
    app.gauges.refresh()
    assert read == []  # no label was ever fed back: nothing to score, nothing read
    assert "modelyard_labeled_rows{" not in (await client.get("/metrics")).text
    r = await client.post("/v1/models/fraud/feedback",
                          json={"request_id": answered[0][0], "label": answered[0][1]})
    assert r.status_code == 200, r.text
    app.gauges.refresh()
    assert read == ["fraud"]
    assert 'modelyard_labeled_rows{model="fraud",variant="production",version="1"} 1.0' in (
        await client.get("/metrics")).text
