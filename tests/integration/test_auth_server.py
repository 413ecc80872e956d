"""A server whose registry holds API keys: every route x role x scope answers as the policy
says, over REST and gRPC; keys that expire or are revoked stop working; failed attempts are
counted and rate-limited; the audit names the key's principal."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.registry.policy import ROLES, Grant, decide
from modelyard.serving import ServeOptions, create_app
from modelyard.serving import access as access_module
from modelyard.serving.access import TOKEN_ENV, FailureLimiter
from modelyard.serving.app import TABLE, App
from modelyard.serving.grpc_server import ACTIONS as GRPC_ACTIONS
from modelyard.testing import register_constant

pytestmark = pytest.mark.anyio
MODEL = "guarded"


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, dict[str, str]]]:
    """A registry with two versions of MODEL and one key per role (all models), plus an admin
    key scoped to other models."""
    home = tmp_path_factory.mktemp("auth-server") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_constant(reg, MODEL, 1)
        register_constant(reg, MODEL, 2, promote=False)
        keys = {role: reg.keys.create_key(f"{role}-user", role).secret for role in ROLES}
        keys["elsewhere"] = reg.keys.create_key("scoped", "admin", models="other-*").secret
        yield reg, keys


async def started(registry: Registry, monkeypatch: pytest.MonkeyPatch, **options: Any) -> App:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False, **options))
    await app.startup()
    return app


def client_of(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://modelyard")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def _path(pattern: str) -> str:
    return (pattern.replace("{name}", MODEL).replace("{version}", "1")
            .replace("{request_id}", str(uuid.uuid4())).replace("{run_id}", "nosuchrun")
            .replace("{key_id}", "000000000000").replace("{key}", "k1"))


#: what each route needs, written out here so a changed declaration fails this test.
EXPECTED_ACTIONS = {
    ("POST", "/v1/models/{name}/predict"): "predict",
    ("POST", "/v1/models/{name}/versions/{version}/predict"): "predict",
    ("GET", "/v1/models/{name}/precomputed/{key}"): "predict",
    ("GET", "/v1/models"): "describe",
    ("GET", "/v2"): "public",
    ("GET", "/v2/health/live"): "public",
    ("GET", "/v2/health/ready"): "public",
    ("GET", "/v2/models/{name}"): "describe",
    ("GET", "/v2/models/{name}/versions/{version}"): "describe",
    ("GET", "/v2/models/{name}/ready"): "describe",
    ("GET", "/v2/models/{name}/versions/{version}/ready"): "describe",
    ("POST", "/v2/models/{name}/infer"): "predict",
    ("POST", "/v2/models/{name}/versions/{version}/infer"): "predict",
    ("POST", "/v2/repository/index"): "describe",
    ("POST", "/v2/repository/models/{name}/load"): "deploy",
    ("POST", "/v2/repository/models/{name}/unload"): "deploy",
    ("GET", "/metrics"): "read",
    ("GET", "/healthz"): "public",
    ("GET", "/readyz"): "public",
    ("GET", "/openapi.json"): "public",
    ("GET", "/docs"): "public",
    ("GET", "/api/v1/models"): "read",
    ("GET", "/api/v1/models/{name}/versions"): "read",
    ("GET", "/api/v1/models/{name}/deployment"): "read",
    ("GET", "/api/v1/models/{name}/deployment/history"): "read",
    ("POST", "/api/v1/models/{name}/promote"): "deploy",
    ("POST", "/api/v1/models/{name}/rollback"): "deploy",
    ("POST", "/api/v1/models/{name}/deployments"): "deploy",
    ("POST", "/api/v1/models/{name}/deployment/promote"): "deploy",
    ("POST", "/api/v1/models/{name}/deployment/abort"): "deploy",
    ("POST", "/api/v1/models/{name}/deployment/rollback"): "deploy",
    ("POST", "/api/v1/models/{name}/deployment/pause"): "deploy",
    ("POST", "/api/v1/models/{name}/deployment/resume"): "deploy",
    ("GET", "/api/v1/models/{name}"): "read",
    ("GET", "/api/v1/models/{name}/versions/{version}"): "read",
    ("GET", "/api/v1/models/{name}/history"): "read",
    ("GET", "/api/v1/runs"): "read",
    ("GET", "/api/v1/runs/{run_id}"): "read",
    ("GET", "/api/v1/audit"): "read",
    ("GET", "/api/v1/audit/verify"): "admin",
    ("GET", "/api/v1/audit/export"): "admin",
    ("GET", "/api/v1/models/{name}/versions/{version}/card"): "read",
    ("GET", "/api/v1/auth/whoami"): "describe",
    ("GET", "/api/v1/auth/keys"): "admin",
    ("POST", "/api/v1/auth/keys"): "admin",
    ("POST", "/api/v1/auth/keys/{key_id}/revoke"): "admin",
    ("POST", "/api/v1/auth/keys/{key_id}/rotate"): "admin",
    ("POST", "/api/v1/models/{name}/runs"): "train",
    ("POST", "/api/v1/runs/{run_id}/beat"): "train",
    ("POST", "/api/v1/runs/{run_id}/finish"): "train",
    ("POST", "/api/v1/runs/{run_id}/cancel"): "train",
    ("POST", "/api/v1/models/{name}/versions"): "train",
    ("GET", "/api/v1/models/{name}/versions/{version}/artifact"): "train",
    ("POST", "/v1/models/{name}/feedback"): "feedback",
    ("GET", "/api/v1/models/{name}/metrics"): "read",
    ("GET", "/api/v1/models/{name}/drift"): "read",
    ("POST", "/api/v1/models/{name}/drift"): "read",
    ("GET", "/api/v1/models/{name}/events"): "read",
    ("GET", "/api/v1/events"): "read",
    ("GET", "/api/v1/predictions/{request_id}"): "read",
    ("GET", "/api/v1/models/{name}/predictions/{request_id}"): "read",
}
#: every route the app answers, with the action this test expects of it.
ROUTES = [(method, path, EXPECTED_ACTIONS.get((method, path), "undeclared"))
          for method, path, _ in TABLE]
#: the routes whose body is not JSON (a version upload's tar), by route.
MEDIA = {(method, path): e.media for method, path, e in TABLE if e.media is not None}


def test_every_route_declares_the_action_expected_of_it() -> None:
    declared = {(method, path): endpoint.action for method, path, endpoint in TABLE}
    assert declared == EXPECTED_ACTIONS


def test_the_openapi_document_says_which_routes_need_a_credential() -> None:
    from modelyard.serving.openapi import OPENAPI, PUBLIC

    assert {path for (_, path), action in EXPECTED_ACTIONS.items()
                      if action == "public"} == PUBLIC
    for path, item in OPENAPI["paths"].items():
        for op in item.values():
            secured = "security" in op and {"401", "403", "429"} <= set(op["responses"])
            assert secured == (path not in PUBLIC), path


async def _status(client: httpx.AsyncClient, method: str, path: str,
                  headers: dict[str, str]) -> int:
    kw: dict[str, Any] = {"json": {}} if method == "POST" else {}
    media = MEDIA.get((method, path))
    if media is not None:
        kw = {"content": b""}
        headers = {**headers, "content-type": media.decode()}
    r = await client.request(method, _path(path), headers=headers, **kw)
    return r.status_code


async def test_every_route_answers_each_role_as_the_policy_says(
        keyed: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    registry, keys = keyed
    app = await started(registry, monkeypatch)
    app.access.limiter = FailureLimiter(limit=10**6)  # this test fails on purpose, often
    assert app.access.enforced  # keys exist: no --host needed to turn auth on
    wrong: list[str] = []
    try:
        async with client_of(app) as client:
            for method, path, action in ROUTES:
                callers: dict[str, dict[str, str]] = {
                    "no key": {}, "garbage": bearer("myk_000000000000_" + "x" * 43),
                    **{role: bearer(keys[role]) for role in ROLES},
                    "out of scope": bearer(keys["elsewhere"])}
                for who, headers in callers.items():
                    got = await _status(client, method, path, headers)
                    want = _expected(action, who, "{name}" in path)
                    if (want == "allowed") != (got not in (401, 403)) or (
                            want != "allowed" and got != want):
                        wrong.append(f"{method} {path} as {who}: {got}, wanted {want}")
    finally:
        await app.shutdown()
    assert wrong == []


def _expected(action: str, who: str, names_model: bool) -> int | str:
    if action == "public":
        return "allowed"
    if who == "no key":
        return 401
    if who == "garbage":
        return 403
    grant = Grant("admin", "other-*") if who == "out of scope" else Grant(who)
    return "allowed" if decide([grant], action, MODEL if names_model else None).allowed else 403


async def test_the_audit_names_the_keys_principal_and_refusals_are_counted(
        keyed: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    registry, keys = keyed
    app = await started(registry, monkeypatch)
    try:
        async with client_of(app) as client:
            r = await client.post(f"/api/v1/models/{MODEL}/promote", json={"version": 1},
                                  headers={**bearer(keys["deployer"]), "X-Actor": "the-ceo"})
            assert r.status_code == 200, r.text
            assert r.json()["event"]["actor"] == "deployer-user"
            r = await client.post(f"/v1/models/{MODEL}/predict",
                                  json={"instances": [[0, 0, 0]]},
                                  headers=bearer(keys["predictor"]))
            assert r.status_code == 200, r.text
            r = await client.post(f"/v1/models/{MODEL}/predict",
                                  json={"instances": [[0, 0, 0]]}, headers=bearer(keys["viewer"]))
            assert r.status_code == 403
            assert "'predict' needs one of the roles admin, predictor" in r.json()["message"]
            r = await client.get("/metrics", headers=bearer(keys["viewer"]))
            assert r.status_code == 200
            assert 'modelyard_auth_failures_total{reason="forbidden"} 1.0' in r.text
    finally:
        await app.shutdown()
    event = registry.audit_events(f"{MODEL}@production", limit=1)[0]
    assert event.actor == "deployer-user"
    listed = {k.principal: k for k in registry.keys.list_keys()}
    assert listed["predictor-user"].last_used_at is not None


async def test_lists_show_a_scoped_key_only_its_models(
        keyed: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    registry, keys = keyed
    app = await started(registry, monkeypatch)
    try:
        async with client_of(app) as client:
            for path, field in (("/v1/models", "models"), ("/api/v1/models", "models")):
                everything = (await client.get(path, headers=bearer(keys["admin"]))).json()
                assert MODEL in [m["name"] for m in everything[field]]
                scoped = (await client.get(path, headers=bearer(keys["elsewhere"]))).json()
                assert scoped[field] == []
            r = await client.post("/v2/repository/index", json={},
                                  headers=bearer(keys["elsewhere"]))
            assert r.status_code == 200 and r.json() == []
    finally:
        await app.shutdown()


async def test_public_metrics_opens_only_metrics(
        keyed: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    app = await started(keyed[0], monkeypatch, public_metrics=True)
    try:
        async with client_of(app) as client:
            assert (await client.get("/metrics")).status_code == 200
            assert (await client.get("/api/v1/models")).status_code == 401
    finally:
        await app.shutdown()


async def test_expired_and_revoked_keys_stop_working(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_module, "RECHECK_S", 0.0)
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as registry:
        register_constant(registry, MODEL, 1)
        short = registry.keys.create_key("brief", "viewer", expires=timedelta(seconds=1))
        kept = registry.keys.create_key("kept", "viewer")
        app = await started(registry, monkeypatch)
        try:
            async with client_of(app) as client:
                for made in (short, kept):
                    r = await client.get("/api/v1/models", headers=bearer(made.secret))
                    assert r.status_code == 200, r.text
                registry.keys.revoke(kept.key.id)
                await asyncio.sleep(1.1)
                for made in (short, kept):
                    r = await client.get("/api/v1/models", headers=bearer(made.secret))
                    assert r.status_code == 403, made.key.principal
                    assert "expired or revoked" in r.json()["message"]
        finally:
            await app.shutdown()


async def test_a_client_that_keeps_failing_is_held_back(
        keyed: tuple[Registry, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> None:
    registry, keys = keyed
    app = await started(registry, monkeypatch)
    app.access.limiter = FailureLimiter(limit=3, window_s=60)
    try:
        async with client_of(app) as client:
            for _ in range(3):
                r = await client.get("/api/v1/models", headers=bearer("nope"))
                assert r.status_code == 403
            r = await client.get("/api/v1/models", headers=bearer(keys["viewer"]))
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert (await client.get("/healthz")).status_code == 200  # probes still answer
    finally:
        await app.shutdown()


async def test_auth_turns_on_when_the_first_key_is_made(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_module, "KEYS_POLL_S", 0.05)
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as registry:
        register_constant(registry, MODEL, 1)
        app = await started(registry, monkeypatch)
        try:
            async with client_of(app) as client:
                body = {"instances": [[0, 0, 0]]}
                assert (await client.post(f"/v1/models/{MODEL}/predict", json=body)
                        ).status_code == 200
                made = registry.keys.create_key("app", "predictor", models=MODEL)
                for _ in range(100):
                    if app.access.enforced:
                        break
                    await asyncio.sleep(0.05)
                r = await client.post(f"/v1/models/{MODEL}/predict", json=body)
                assert r.status_code == 401
                r = await client.post(f"/v1/models/{MODEL}/predict", json=body,
                                      headers=bearer(made.secret))
                assert r.status_code == 200, r.text
        finally:
            await app.shutdown()


def test_an_exposed_server_enforces_auth_before_any_key_exists(tmp_path: Any) -> None:
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as registry:
        register_constant(registry, MODEL, 1)

        async def run() -> None:
            app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False,
                                                    exposed=True))
            await app.startup()
            try:
                async with client_of(app) as client:
                    r = await client.post(f"/v1/models/{MODEL}/predict",
                                          json={"instances": [[0, 0, 0]]})
                    assert r.status_code == 401
                    assert (await client.get("/readyz")).status_code == 200
            finally:
                await app.shutdown()

        asyncio.run(run())


# -- gRPC ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
async def grpc_app(keyed: tuple[Registry, dict[str, str]],
                   monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, App]]:
    address = f"127.0.0.1:{_free_port()}"
    app = await started(keyed[0], monkeypatch, grpc_address=address)
    app.access.limiter = FailureLimiter(limit=10**6)
    yield address, app
    await app.shutdown()


async def test_grpc_methods_need_the_role_they_declare(
        keyed: tuple[Registry, dict[str, str]], grpc_app: tuple[str, App]) -> None:
    import numpy as np
    from tritonclient.grpc import InferInput
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    _, keys = keyed
    address, _ = grpc_app
    assert GRPC_ACTIONS["ModelInfer"] == "predict"
    client = InferenceServerClient(url=address)
    tensor = InferInput("input", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.zeros((1, 3)))
    try:
        assert await client.is_server_live()  # public
        with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
            await client.infer(MODEL, [tensor])
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            await client.infer(MODEL, [tensor], headers=bearer(keys["viewer"]))
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            await client.infer(MODEL, [tensor], headers=bearer(keys["elsewhere"]))
        answer = await client.infer(MODEL, [tensor], headers=bearer(keys["predictor"]))
        assert answer.get_response().model_name == MODEL
        assert await client.is_model_ready(MODEL, headers=bearer(keys["viewer"]))
        with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
            await client.load_model(MODEL, headers=bearer(keys["predictor"]))
        await client.load_model(MODEL, headers=bearer(keys["deployer"]))
    finally:
        await client.close()
    load = keyed[0].audit_events(MODEL, limit=1)[0]
    assert (load.action, load.actor) == ("model.load", "deployer-user")
