"""The admin API (/api/v1) in-process (httpx.ASGITransport): listing, alias promote and
rollback, rollouts started, read and ended over HTTP, bearer-token auth and error statuses."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.admin import TOKEN_ENV
from modelyard.serving.app import App
from modelyard.serving.openapi import OPENAPI
from modelyard.testing import register_constant, register_probe

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    # each test mutates its own model, so the tests do not depend on each other's order
    home = tmp_path_factory.mktemp("serving-admin") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        for name in ("listed", "promoted", "rolled", "canary", "busy", "ended", "halted", "authz"):
            register_constant(reg, name, 1)
            register_constant(reg, name, 2, promote=False)
        register_constant(reg, "rolled", 3)  # production history: 1 -> 3
        declared = {"rollout": {"strategy": "shadow", "steps": [20], "every_s": 15,
                                "max_error_rate": 0.05}, "metrics": ["accuracy"]}
        register_constant(reg, "declared", 1, meta=declared)
        register_constant(reg, "declared", 2, meta=declared, promote=False)
        register_probe(reg, "unloadable")
        register_probe(reg, "unloadable", fail_load=True, promote=False)
        yield reg


async def started(registry: Registry) -> App:
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False))
    await app.startup()
    return app


@pytest.fixture()
async def app(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[App]:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    app = await started(registry)
    yield app
    await app.shutdown()


async def _client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://modelyard")


@pytest.fixture()
async def client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(app) as c:
        yield c


def production(registry: Registry, name: str) -> int | None:
    return registry.get_model(name).aliases.get("production")


# -- reads --------------------------------------------------------------------------------------
async def test_lists_models_with_aliases_and_versions(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/models")
    assert r.status_code == 200, r.text
    models = {m["name"]: m for m in r.json()["models"]}
    assert models["listed"]["aliases"] == {"production": 1}
    assert models["listed"]["latest_version"] == 2
    r = await client.get("/api/v1/models/listed/versions")
    assert r.status_code == 200
    versions = r.json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    assert versions[1]["aliases"] == ["production"] and "signature" not in versions[1]


async def test_unknown_model_is_404_and_no_rollout_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/models/nope/versions", "/api/v1/models/nope/deployment",
                 "/api/v1/models/nope/deployment/history"):
        r = await client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"] == "NotFoundError"
    r = await client.post("/api/v1/models/nope/promote", json={"version": 1})
    assert r.status_code == 404 and r.json()["error"] == "NotFoundError"
    r = await client.post("/api/v1/models/nope/rollback", json={})
    assert r.status_code == 404
    r = await client.post("/api/v1/models/listed/promote", json={"version": 9})
    assert r.status_code == 404
    r = await client.get("/api/v1/models/listed/deployment")
    assert r.status_code == 404 and "no rollout" in r.json()["message"]
    r = await client.get("/api/v1/models/listed/deployment/history")
    assert r.status_code == 200 and r.json()["events"] == []


# -- aliases ------------------------------------------------------------------------------------
async def test_promote_moves_the_alias_and_audits_the_anonymous_actor(
        client: httpx.AsyncClient, registry: Registry) -> None:
    r = await client.post("/api/v1/models/promoted/promote",
                          json={"version": 2, "reason": "better f1"})
    assert r.status_code == 200, r.text
    event = r.json()["event"]
    assert event["version"] == 2 and event["previous_version"] == 1
    assert event["actor"] == "api:anonymous"  # no token on this server: anyone
    assert production(registry, "promoted") == 2
    audit = registry.audit_events("promoted@production", limit=1)[0]
    assert audit.actor == "api:anonymous" and audit.details["reason"] == "better f1"


async def test_promote_loads_the_version_first_and_refuses_one_that_cannot(
        client: httpx.AsyncClient, registry: Registry) -> None:
    """The alias used to move, and every server then failed to load what it pointed to."""
    r = await client.post("/api/v1/models/unloadable/promote", json={"version": 2})
    assert r.status_code == 409, r.text
    message = r.json()["message"]
    assert "unloadable:2 cannot be loaded, so the alias stays where it is" in message
    assert "broken on purpose" in message
    assert production(registry, "unloadable") == 1
    assert [e.version for e in registry.alias_history("unloadable", "production")] == [1]


async def test_rollback_walks_the_alias_back(client: httpx.AsyncClient,
                                             registry: Registry) -> None:
    assert production(registry, "rolled") == 3
    r = await client.post("/api/v1/models/rolled/rollback", json={"to": None, "reason": "bad"})
    assert r.status_code == 200, r.text
    assert r.json()["event"]["version"] == 1 and r.json()["deployment"] is None
    assert production(registry, "rolled") == 1
    r = await client.post("/api/v1/models/rolled/rollback", json={"to": 1})
    assert r.status_code == 409 and r.json()["error"] == "ConflictError"
    r = await client.post("/api/v1/models/rolled/rollback", json={"to": 2})
    assert r.status_code == 200 and production(registry, "rolled") == 2


async def test_bad_bodies_are_400_and_422(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/models/listed/promote", content=b"{nope",
                          headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "BadJSONError"
    r = await client.post("/api/v1/models/listed/promote", json={"version": 2, "colour": "red"})
    assert r.status_code == 422
    assert {"loc": ["body", "colour"], "msg": "unknown field"} in r.json()["detail"]
    r = await client.post("/api/v1/models/listed/promote", json={"version": "2"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "version"]
    r = await client.post("/api/v1/models/listed/promote", json={})
    assert r.status_code == 422 and r.json()["detail"][0]["msg"] == "field required"
    r = await client.post("/api/v1/models/listed/promote", json=[1])
    assert r.status_code == 422
    r = await client.post("/api/v1/models/listed/deployments",
                          json={"version": 2, "strategy": "yolo"})
    assert r.status_code == 400 and "strategy" in r.json()["message"]
    r = await client.get("/api/v1/models/listed/promote")
    assert r.status_code == 405 and r.headers["allow"] == "POST"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("promote", {"version": 2**63}, "version"),
    ("rollback", {"to": 2**64 - 1}, "to"),
    ("rollback", {"to": 2**63}, "to"),
    ("deployments", {"version": 2**64 - 1}, "version"),
])
async def test_integers_beyond_int64_are_422_naming_the_field(
        client: httpx.AsyncClient, path: str, body: dict[str, int], field: str) -> None:
    r = await client.post(f"/api/v1/models/listed/{path}", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == [{"loc": ["body", field],
                                   "msg": "is out of range (a 64-bit integer)"}]


# -- rollouts -----------------------------------------------------------------------------------
async def test_canary_start_status_and_abort(client: httpx.AsyncClient,
                                             registry: Registry) -> None:
    r = await client.post("/api/v1/models/canary/deployments", json={
        "version": 2, "strategy": "canary", "steps": [5, 25, 50, 100], "every_s": 60,
        "key": "user_id", "rules": {"min_requests": 10}, "reason": "try v2"})
    assert r.status_code == 201, r.text
    d = r.json()
    assert d["state"] == "progressing" and d["stable_version"] == 1
    assert d["candidate_version"] == 2 and d["steps"] == [5, 25, 50, 100]
    assert d["key"] == "user_id" and d["created_by"] == "api:anonymous" and d["active"] is True
    # planned, but no server routes it yet (this app polls hourly): no traffic is claimed
    assert d["traffic"]["planned_candidate_percent"] == 5.0 and d["candidate_percent"] == 0.0
    assert "no server routes this rollout yet" in d["traffic"]["note"]
    assert d["explain"].startswith("Canary: v2 answers 5% of requests, v1 the rest")
    r = await client.get("/api/v1/models/canary/deployment")
    assert r.status_code == 200 and r.json()["id"] == d["id"]
    assert r.json()["state"] == "progressing"
    r = await client.post("/api/v1/models/canary/deployment/abort", json={"reason": "enough"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "aborted" and r.json()["active"] is False
    assert production(registry, "canary") == 1
    r = await client.get("/api/v1/models/canary/deployment/history")
    events = r.json()["events"]
    assert [e["action"] for e in events] == ["abort", "start"]
    assert events[0]["actor"] == "api:anonymous" and events[0]["reason"] == "enough"
    # nothing left to abort: the finished rollout cannot change again
    r = await client.post("/api/v1/models/canary/deployment/abort", json={})
    assert r.status_code == 409 and "already aborted" in r.json()["message"]


async def test_a_rollout_takes_the_settings_the_version_declares(
        client: httpx.AsyncClient) -> None:
    """Started over HTTP, a rollout used to be a 60 s canary with default rules whatever the
    version's spec declared."""
    r = await client.post("/api/v1/models/declared/deployments", json={"version": 2})
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["strategy"], d["steps"], d["every_s"]) == ("shadow", [20], 15.0)
    assert d["rules"]["max_error_rate"] == 0.05 and d["rules"]["metric"] == "accuracy"
    assert "never promotes by itself" in d["explain"]
    abort = await client.post("/api/v1/models/declared/deployment/abort", json={})
    assert abort.status_code == 200
    r = await client.post("/api/v1/models/declared/deployments", json={
        "version": 2, "strategy": "canary", "every_s": 5, "rules": {"min_requests": 7}})
    d = r.json()
    assert (d["strategy"], d["steps"], d["every_s"]) == ("canary", [5, 25, 50, 100], 5.0)
    assert d["rules"]["min_requests"] == 7 and d["rules"]["max_error_rate"] == 0.05
    abort = await client.post("/api/v1/models/declared/deployment/abort", json={})
    assert abort.status_code == 200


async def test_second_rollout_is_409_and_promote_ends_it(client: httpx.AsyncClient,
                                                         registry: Registry) -> None:
    r = await client.post("/api/v1/models/busy/deployments", json={"version": 2})
    assert r.status_code == 201, r.text
    r = await client.post("/api/v1/models/busy/deployments", json={"version": 2})
    assert r.status_code == 409 and r.json()["error"] == "ConflictError"
    assert "already has" in r.json()["message"]
    r = await client.post("/api/v1/models/busy/deployment/promote", json={})
    assert r.status_code == 200 and r.json()["state"] == "promoted"
    assert production(registry, "busy") == 2


async def test_rollback_ends_an_active_rollout_first(client: httpx.AsyncClient,
                                                     registry: Registry) -> None:
    r = await client.post("/api/v1/models/ended/deployments", json={"version": 2})
    assert r.status_code == 201
    r = await client.post("/api/v1/models/ended/rollback", json={"to": 2, "reason": "v1 broke"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["deployment"]["state"] == "rolled_back"
    assert doc["event"]["version"] == 2 and doc["event"]["actor"] == "api:anonymous"
    assert production(registry, "ended") == 2
    r = await client.get("/api/v1/models/ended/deployment/history")
    assert r.json()["events"][0]["actor"] == "api:anonymous"
    r = await client.post("/api/v1/models/ended/deployment/rollback", json={})
    assert r.status_code == 409  # already rolled back: a finished rollout stays finished


async def test_rollback_without_a_version_only_ends_the_rollout(client: httpx.AsyncClient,
                                                                registry: Registry) -> None:
    r = await client.post("/api/v1/models/halted/deployments", json={"version": 2})
    assert r.status_code == 201
    before = production(registry, "halted")
    r = await client.post("/api/v1/models/halted/rollback", json={})
    assert r.status_code == 200, r.text
    assert r.json()["event"] is None and r.json()["deployment"]["state"] == "rolled_back"
    assert production(registry, "halted") == before  # stable was production all along


# -- auth ---------------------------------------------------------------------------------------
async def test_token_guards_mutations_but_not_reads(registry: Registry,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    app = await started(registry)
    try:
        async with await _client(app) as client:
            assert (await client.get("/api/v1/models")).status_code == 200
            assert (await client.get("/api/v1/models/authz/versions")).status_code == 200
            for path, body in (("promote", {"version": 2}), ("rollback", {}),
                               ("deployments", {"version": 2}), ("deployment/abort", {})):
                url = f"/api/v1/models/authz/{path}"
                r = await client.post(url, json=body)
                assert r.status_code == 401, path
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"] == "UnauthorizedError"
                r = await client.post(url, json=body, headers={"Authorization": "Basic x"})
                assert r.status_code == 401
                r = await client.post(url, json=body,
                                      headers={"Authorization": "Bearer wrong"})
                assert r.status_code == 403 and r.json()["error"] == "ForbiddenError"
            assert production(registry, "authz") == 1
            r = await client.post("/api/v1/models/authz/promote", json={"version": 2},
                                  headers={"Authorization": "Bearer s3cret",
                                           "X-Actor": "someone-else"})
            assert r.status_code == 200, r.text
            assert production(registry, "authz") == 2
            # the actor is what the credential stands for, not what the client claims
            assert r.json()["event"]["actor"] == "api:token"
            assert registry.audit_events("authz@production", limit=1)[0].actor == "api:token"
    finally:
        await app.shutdown()


async def test_without_a_token_mutations_are_open(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/models/listed/promote", json={"version": 1},
                          headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200


def test_openapi_documents_the_admin_routes() -> None:
    paths: dict[str, Any] = OPENAPI["paths"]
    assert "/api/v1/models" in paths and "/api/v1/models/{name}/deployment/abort" in paths
    start = paths["/api/v1/models/{name}/deployments"]["post"]
    assert {"201", "401", "403", "409", "415", "422"} <= set(start["responses"])
    for path in ("/v2/repository/models/{name}/load", "/v2/repository/models/{name}/unload",
                 "/v1/models/{name}/feedback", "/api/v1/models/{name}/drift"):
        assert {"401", "403", "415"} <= set(paths[path]["post"]["responses"]), path
        assert paths[path]["post"]["security"] == [{"bearer": []}], path


def test_openapi_documents_every_route_the_app_answers() -> None:
    from modelyard.serving.app import ROUTES

    paths: dict[str, Any] = OPENAPI["paths"]
    for routes in ROUTES.values():
        for route in routes:
            path = "/" + "/".join(route.pattern)
            assert route.method.lower() in paths.get(path, {}), f"{route.method} {path}"
