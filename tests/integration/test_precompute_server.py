"""Precomputed predictions end to end: a precompute batch run into the registry database
(SQLite, PostgreSQL) or the real Redis, then a real server answering by key, live where an
answer is missing, stale or of another version, and live when its store is down."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.precompute.freshness import encode_answer
from modelyard.precompute.job import precompute
from modelyard.precompute.stores import open_store, store_url
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.testing import ServerProcess
from modelyard.testing.models import register_hgb, tabular_data

pytestmark = pytest.mark.integration

FEATURES = [f"f{i}" for i in range(4)]
IDS = list(range(100, 130))
TTL_S = 3600.0


@dataclass
class Setup:
    home: Path
    db_url: str | None  # the registry database (None: SQLite in the home)
    store: str
    population: str  # the SQLite file the precompute input queries


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Setup:
    population = tmp_path / "population.db"
    X, _ = tabular_data(n_rows=len(IDS), n_features=4, seed=7)
    with sqlite3.connect(population) as conn:
        conn.execute("CREATE TABLE people (id INTEGER, f0 REAL, f1 REAL, f2 REAL, f3 REAL)")
        conn.executemany("INSERT INTO people VALUES (?, ?, ?, ?, ?)",
                         [(i, *map(float, row)) for i, row in zip(IDS, X, strict=True)])
    db_url = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    store = request.getfixturevalue("redis_url") if request.param == "redis" else "registry"
    return Setup(tmp_path / "home", db_url, store, str(population))


def section(setup: Setup, store: str | None = None) -> dict[str, Any]:
    return {"precompute": {
        "input": "sql:SELECT id, f0, f1, f2, f3 FROM people ORDER BY id",
        "url": f"sqlite:///{setup.population}", "key": "id",
        "store": store or setup.store, "ttl": f"{int(TTL_S)}s"}}


def features(setup: Setup, key: int) -> dict[str, float]:
    with sqlite3.connect(setup.population) as conn:
        row = conn.execute("SELECT f0, f1, f2, f3 FROM people WHERE id = ?", (key,)).fetchone()
    return dict(zip(FEATURES, row, strict=True))


def expected(reg: Registry, ref: str, rows: list[dict[str, float]]) -> Any:
    got = load(ref, registry=reg).predict_full(
        np.array([[r[f] for f in FEATURES] for r in rows]), scores=True)
    return got.predictions.tolist(), got.scores.tolist()


def logged_variants(c: httpx.Client, request_id: str) -> list[str]:
    """The variants the prediction log holds for a request (it writes in the background)."""
    deadline = time.monotonic() + 30
    while True:
        r = c.get(f"/api/v1/models/tab/predictions/{request_id}")
        if (r.status_code == 200 and len(r.json()["predictions"]) == 2) or \
                time.monotonic() > deadline:
            return [p["variant"] for p in r.json().get("predictions", [])]
        time.sleep(0.2)


@pytest.fixture()
def served(setup: Setup) -> Iterator[tuple[Registry, ServerProcess]]:
    settings = Settings.from_env(home=setup.home, actor="tester",
                                 **({"db_url": setup.db_url} if setup.db_url else {}))
    with Registry.open(settings) as reg:
        register_hgb(reg, "tab", max_iter=10, n_features=4, meta=section(setup))
        # a store nobody listens on: its model must still answer, live
        register_hgb(reg, "down", max_iter=5, n_features=4,
                     meta=section(setup, "redis://127.0.0.1:1/0"))
        summary = precompute(reg, "tab")
        assert (summary.status, summary.rows, summary.errors) == ("succeeded", len(IDS), 0)
        env = {"MODELYARD_DB": setup.db_url} if setup.db_url else {}
        with ServerProcess(setup.home, env=env) as server:
            yield reg, server


def test_answers_by_key_from_the_store_live_for_the_rest_and_never_another_versions(
        setup: Setup, served: tuple[Registry, ServerProcess]) -> None:
    reg, server = served
    row100, row999 = features(setup, 100), {f: 0.25 for f in FEATURES}
    want, _ = expected(reg, "tab:1", [row100, features(setup, 101), row999])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        # a mixed batch: a key with inputs, a key alone, an unknown key with inputs
        r = c.post("/v1/models/tab/predict", json={"records": [
            {"id": 100, **row100}, {"id": 101}, {"id": 999, **row999}]})
        assert r.status_code == 200, r.text
        assert r.headers["x-prediction-source"] == "mixed"
        assert r.headers["x-model-version"] == "1"
        body = r.json()
        assert set(body) == {"model", "version", "predictions", "request_id"}
        assert body["predictions"] == want

        # keys alone, all fresh: no model call, scores and classes as a live answer has them
        r = c.post("/v1/models/tab/predict", json={"records": [{"id": 102}, {"id": 103}],
                                                    "scores": True})
        assert r.status_code == 200, r.text
        assert r.headers["x-prediction-source"] == "precomputed"
        assert len(r.json()["scores"]) == 2 and r.json()["classes"] == [0, 1]

        # columns carry keys too; the answer's rows keep the request's order
        r = c.post("/v1/models/tab/predict", json={"columns": {
            "id": [999, 100], **{f: [row999[f], row100[f]] for f in FEATURES}}})
        assert r.headers["x-prediction-source"] == "mixed"
        assert r.json()["predictions"] == [want[2], want[0]]

        # the prediction log says where each part came from
        r = c.post("/v1/models/tab/predict", headers={"X-Request-Id": "pc-mixed"},
                   json={"records": [{"id": 104, **features(setup, 104)}, {"id": 998, **row999}]})
        assert r.headers["x-prediction-source"] == "mixed"
        assert sorted(logged_variants(c, "pc-mixed")) == ["precomputed", "production"]

        # no key: live, and the answer says so
        r = c.post("/v1/models/tab/predict", json={"records": [row999]})
        assert (r.status_code, r.headers["x-prediction-source"]) == (200, "live")

        r = c.get("/v1/models/tab/precomputed/100")
        assert r.status_code == 200, r.text
        assert r.headers["x-prediction-source"] == "precomputed"
        assert (r.json()["key"], r.json()["version"], r.json()["predictions"]) == (
            "100", 1, want[:1])

        # a key the population does not hold: 404 naming it
        r = c.get("/v1/models/tab/precomputed/999")
        assert r.status_code == 404 and "999" in r.json()["message"]

        # the store down: live answers, never a 500
        r = c.post("/v1/models/down/predict", json={"records": [{"id": 100, **row100}]})
        assert (r.status_code, r.headers["x-prediction-source"]) == (200, "live")

        metrics = c.get("/metrics").text
        assert 'modelyard_prediction_source_total{model="tab",source="mixed",version="1"}' \
            in metrics


def test_a_stale_answer_is_answered_live(setup: Setup,
                                         served: tuple[Registry, ServerProcess]) -> None:
    reg, server = served
    want, _ = expected(reg, "tab:1", [features(setup, 105)])
    store = open_store(store_url(setup.store, reg.db.url))
    try:  # an answer written two TTLs ago, which a live answer must replace
        store.write("tab", 1, [("105", encode_answer(7))], time.time() - 2 * TTL_S, TTL_S)
    finally:
        store.close()
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.get("/v1/models/tab/precomputed/105")
        assert r.status_code == 200, r.text
        assert r.headers["x-prediction-source"] == "live"
        assert r.json()["predictions"] == want
        r = c.post("/v1/models/tab/predict", json={"records": [{"id": 105}]})
        assert r.status_code == 422  # stale, and no inputs to answer it live with
        r = c.post("/v1/models/tab/predict", json={"records": [{"id": 100}, {"id": 105}]})
        assert r.status_code == 422  # its error names the request's row, not the live part's
        assert {tuple(e["loc"]) for e in r.json()["detail"]} == {(1, f) for f in FEATURES}


def test_a_promotion_never_serves_the_old_versions_answers(
        setup: Setup, served: tuple[Registry, ServerProcess]) -> None:
    reg, server = served
    register_hgb(reg, "tab", max_iter=10, n_features=4, seed=3, meta=section(setup))
    want2, _ = expected(reg, "tab:2", [features(setup, 100)])
    with httpx.Client(base_url=server.url, timeout=30) as c:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the server picks the promotion up on its poll
            served_now = {m["name"]: m["served_version"]
                          for m in c.get("/v1/models").json()["models"]}
            if served_now["tab"] == 2:
                break
            time.sleep(0.2)
        r = c.get("/v1/models/tab/precomputed/100")
        assert r.status_code == 200, r.text
        assert (r.headers["x-model-version"], r.headers["x-prediction-source"]) == ("2", "live")
        assert r.json()["predictions"] == want2
        # v1's answer for key 100 is in the store, yet a key alone is not answered by it
        assert c.post("/v1/models/tab/predict",
                      json={"records": [{"id": 100}]}).status_code == 422

        assert precompute(reg, "tab").version == 2
        r = c.get("/v1/models/tab/precomputed/100")
        assert (r.headers["x-model-version"], r.headers["x-prediction-source"]) == (
            "2", "precomputed")
        assert r.json()["predictions"] == want2
