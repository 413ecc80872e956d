"""Who may change what, in-process: every mutating route is admitted in one place (cross-site
rules, then the credential), audited under the actor the credential stands for, over REST and
gRPC; CORS and preflights; the security warnings a server logs."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.errors import ConfigError, ForbiddenError, UnauthorizedError
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.access import (
    ANONYMOUS,
    TOKEN_ACTOR,
    TOKEN_ENV,
    Access,
    is_loopback,
)
from modelyard.serving.app import MUTATIONS, ROUTES, App
from modelyard.serving.cors import normalize_origin, same_origin
from modelyard.testing import register_constant

pytestmark = pytest.mark.anyio
DASHBOARD = "https://dash.example.com"
JSON_CT = {"content-type": "application/json"}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("serving-access") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        for name in ("guarded", "loaded", "remote", "cors"):
            register_constant(reg, name, 1)
            register_constant(reg, name, 2, promote=False)
        yield reg


async def started(registry: Registry, monkeypatch: pytest.MonkeyPatch, token: str | None = None,
                  **options: Any) -> App:
    if token is None:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
    else:
        monkeypatch.setenv(TOKEN_ENV, token)
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False, **options))
    await app.startup()
    return app


def client_of(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://modelyard")


@pytest.fixture()
async def client(registry: Registry,
                 monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    app = await started(registry, monkeypatch)
    async with client_of(app) as c:
        yield c
    await app.shutdown()


def mutating_paths(name: str) -> list[str]:
    """Every route the dispatcher treats as a mutation, with ``{name}`` filled in."""
    out = []
    for routes in ROUTES.values():
        for route in routes:
            if route.handler in MUTATIONS:
                out.append("/" + "/".join(name if p == "{name}" else p for p in route.pattern))
    return sorted(out)


def production(registry: Registry, name: str) -> int | None:
    return registry.get_model(name).aliases.get("production")


def audit_count(registry: Registry, name: str) -> int:
    return len(registry.audit_events(name, limit=1000))


# -- which routes are mutations ----------------------------------------------------------------
def test_every_post_but_predictions_and_the_index_is_a_mutation() -> None:
    posts = {r.handler for routes in ROUTES.values() for r in routes if r.method == "POST"}
    assert posts - MUTATIONS == {"v1_predict", "v2_infer", "v2_index"}
    paths = mutating_paths("m")
    assert "/v2/repository/models/m/load" in paths and "/v1/models/m/feedback" in paths
    assert "/api/v1/models/m/drift" in paths and "/api/v1/models/m/promote" in paths


# -- the credential and the actor --------------------------------------------------------------
def _scope(authorization: bytes | None = None) -> dict[str, Any]:
    headers = [(b"authorization", authorization)] if authorization is not None else []
    return {"headers": headers, "client": ("10.0.0.9", 5000)}


async def test_the_actor_comes_from_the_credential() -> None:
    open_server = Access()
    assert await open_server.admit(_scope(), "deploy", "m", credential_needed=True) == ANONYMOUS
    assert await open_server.admit(_scope(b"Bearer whatever"), "deploy", "m") == ANONYMOUS
    access = Access.from_env({TOKEN_ENV: "s3cret"})
    assert access.required and not Access.from_env({TOKEN_ENV: ""}).required
    assert not access.enforced  # a token guards mutations only
    assert await access.admit(_scope(), "predict", "m") == ANONYMOUS
    scope = _scope(b"Bearer s3cret")
    assert await access.admit(scope, "deploy", "m", credential_needed=True) == TOKEN_ACTOR
    assert scope["modelyard.actor"] == TOKEN_ACTOR == "api:token"
    metadata = [("authorization", "bearer  s3cret ")]  # gRPC metadata is text
    assert await access.admit_metadata(metadata, "peer", "deploy", "m",
                                       credential_needed=True) == TOKEN_ACTOR
    for bad in (None, b"", b"s3cret", b"Basic s3cret", b"Bearer "):
        with pytest.raises(UnauthorizedError):
            await access.admit(_scope(bad), "deploy", "m", credential_needed=True)
    with pytest.raises(ForbiddenError):
        await access.admit(_scope(b"Bearer s3cre"), "deploy", "m", credential_needed=True)


async def test_x_actor_no_longer_names_the_actor(client: httpx.AsyncClient,
                                                 registry: Registry) -> None:
    r = await client.post("/api/v1/models/guarded/promote", json={"version": 2},
                          headers={"X-Actor": "the-ceo"})
    assert r.status_code == 200, r.text
    assert r.json()["event"]["actor"] == ANONYMOUS
    assert registry.audit_events("guarded@production", limit=1)[0].actor == ANONYMOUS
    r = await client.post("/api/v1/models/guarded/promote", json={"version": 1})
    assert r.status_code == 200


# -- cross-site rules --------------------------------------------------------------------------
@pytest.mark.parametrize("content_type", [
    "application/x-www-form-urlencoded", "text/plain", "multipart/form-data; boundary=x", None])
async def test_mutations_need_a_json_body(client: httpx.AsyncClient, registry: Registry,
                                          content_type: str | None) -> None:
    before = audit_count(registry, "guarded")
    headers = {} if content_type is None else {"content-type": content_type}
    for path in mutating_paths("guarded"):
        r = await client.post(path, content=b'{"version": 2}', headers=headers)
        if content_type is None and "/v2/repository/" in path:
            # tritonclient sends its repository calls without a Content-Type
            assert r.status_code == 200, (path, r.text)
            continue
        assert r.status_code == 415, (path, r.status_code, r.text)
        wanted = "application/x-tar" if path.endswith("/versions") else "application/json"
        assert wanted in r.text and r.headers["accept-post"] == wanted
    assert production(registry, "guarded") == 1  # nothing changed
    untyped_repository_calls = 2 if content_type is None else 0
    assert audit_count(registry, "guarded") == before + untyped_repository_calls


async def test_json_media_types_with_parameters_are_json(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "Application/JSON",
                         "application/merge-patch+json"):
        r = await client.post("/api/v1/models/guarded/promote", content=b'{"version": 1}',
                              headers={"content-type": content_type})
        assert r.status_code == 200, (content_type, r.text)


async def test_a_foreign_origin_cannot_mutate(client: httpx.AsyncClient,
                                              registry: Registry) -> None:
    for origin in ("https://evil.example", "null", "http://modelyard.evil.example",
                   "http://modelyard:8080"):
        for path in mutating_paths("guarded"):
            r = await client.post(path, json={"version": 2},
                                  headers={"origin": origin})
            assert r.status_code == 403, (origin, path, r.text)
            assert "cross-site request refused" in r.text
            if not path.startswith("/v2/"):  # OIP routes answer the protocol's error shape
                assert r.json()["error"] == "CrossSiteError"
    assert production(registry, "guarded") == 1
    # a page served by this server (same scheme, host and port) may
    r = await client.post("/api/v1/models/guarded/promote", json={"version": 1},
                          headers={"origin": "http://modelyard"})
    assert r.status_code == 200, r.text


async def test_predictions_and_reads_stay_open_to_any_client(client: httpx.AsyncClient) -> None:
    # predict and infer are not mutations: binary OIP bodies and plain curl keep working
    r = await client.post("/v1/models/guarded/predict", content=b'{"instances": [[0, 0, 0]]}',
                          headers={"content-type": "text/plain", "origin": "https://x.example"})
    assert r.status_code == 200, r.text
    r = await client.get("/api/v1/models", headers={"origin": "https://x.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers  # CORS is off by default
    r = await client.post("/v2/repository/index", headers={"origin": "https://x.example"})
    assert r.status_code == 200


def test_origins_compare_by_scheme_host_and_port() -> None:
    assert normalize_origin("HTTPS://Dash.Example.com:443/") == DASHBOARD
    assert normalize_origin("http://[::1]:8000") == "http://[::1]:8000"
    for bad in ("*", "dash.example.com", "ftp://x", "https://x/path", "https://u@x",
                "https://x:99999"):
        with pytest.raises(ConfigError, match="origin"):
            normalize_origin(bad)
    assert same_origin(b"http://localhost:8000", b"localhost:8000")
    assert same_origin(b"https://models.example.com", b"models.example.com:443")
    assert not same_origin(b"http://localhost:8000", b"localhost:8001")
    assert not same_origin(b"https://localhost:8000", b"localhost")
    assert not same_origin(b"null", b"localhost")
    assert not same_origin(b"http://localhost", None)


def test_cors_origins_are_checked_when_options_are_made() -> None:
    from_json: Any = [DASHBOARD + "/"]  # options travel to worker processes as JSON
    assert ServeOptions(cors_origins=from_json).cors_origins == (DASHBOARD,)
    with pytest.raises(ConfigError, match="every web page"):
        ServeOptions(cors_origins=("*",))
    with pytest.raises(ConfigError, match="not an origin"):
        ServeOptions(cors_origins=("dash.example.com",))


def test_serve_takes_cors_origins_from_the_option_and_the_environment() -> None:
    from click.testing import CliRunner

    from modelyard.serving.command import serve

    result = CliRunner().invoke(serve, ["--cors-origin", "*"])
    assert result.exit_code == 2 and "every web page" in result.output
    result = CliRunner().invoke(serve, [], env={"MODELYARD_CORS_ORIGINS": f"{DASHBOARD},nope"})
    assert result.exit_code == 2 and "'nope' is not an origin" in result.output


# -- OPTIONS and CORS --------------------------------------------------------------------------
async def test_options_answers_allow_and_no_grant_without_cors(
        client: httpx.AsyncClient) -> None:
    preflight = {"origin": DASHBOARD, "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization, content-type"}
    r = await client.options("/api/v1/models/guarded/promote", headers=preflight)
    assert r.status_code == 204 and r.content == b""
    assert r.headers["allow"] == "OPTIONS, POST"
    assert not any(h.startswith("access-control-") for h in r.headers)
    r = await client.options("/api/v1/models")
    assert r.status_code == 204 and r.headers["allow"] == "GET, HEAD, OPTIONS"
    r = await client.options("/api/v1/models/guarded/drift")
    assert r.headers["allow"] == "GET, HEAD, OPTIONS, POST"
    assert (await client.options("/no/such/route")).status_code == 404


async def test_cors_grants_only_the_configured_origins(registry: Registry,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    app = await started(registry, monkeypatch, token="s3cret", cors_origins=(DASHBOARD,))
    try:
        async with client_of(app) as client:
            preflight = {"origin": DASHBOARD, "access-control-request-method": "POST",
                         "access-control-request-headers": "authorization, content-type"}
            r = await client.options("/api/v1/models/cors/promote", headers=preflight)
            assert r.status_code == 204
            assert r.headers["access-control-allow-origin"] == DASHBOARD
            assert r.headers["access-control-allow-methods"] == "POST"
            assert r.headers["access-control-allow-headers"] == "authorization, content-type"
            assert r.headers["access-control-max-age"] == "600"
            assert r.headers["vary"] == "origin"
            # a method the path does not take, or another origin: no grant
            r = await client.options("/api/v1/models/cors/promote", headers={
                **preflight, "access-control-request-method": "DELETE"})
            assert "access-control-allow-methods" not in r.headers
            r = await client.options("/api/v1/models/cors/promote",
                                     headers={**preflight, "origin": "https://evil.example"})
            assert r.status_code == 204 and "access-control-allow-origin" not in r.headers

            # the listed origin's page may mutate (with the token) and read the answer
            r = await client.post("/api/v1/models/cors/promote", json={"version": 2},
                                  headers={"origin": DASHBOARD,
                                           "authorization": "Bearer s3cret"})
            assert r.status_code == 200, r.text
            assert r.headers["access-control-allow-origin"] == DASHBOARD
            assert "x-request-id" in r.headers["access-control-expose-headers"]
            r = await client.post("/api/v1/models/cors/promote", json={"version": 1},
                                  headers={"origin": DASHBOARD})
            assert r.status_code == 401  # CORS is not a credential
            assert r.headers["access-control-allow-origin"] == DASHBOARD  # the page reads why
            r = await client.post("/api/v1/models/cors/promote", json={"version": 1},
                                  headers={"origin": "https://evil.example",
                                           "authorization": "Bearer s3cret"})
            assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
            assert production(registry, "cors") == 2
            r = await client.get("/v1/models", headers={"origin": DASHBOARD})
            assert r.headers["access-control-allow-origin"] == DASHBOARD
    finally:
        await app.shutdown()


# -- the OIP repository extension over REST ------------------------------------------------------
async def test_repository_load_and_unload_need_the_token_and_are_audited(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await started(registry, monkeypatch, token="s3cret")
    try:
        async with client_of(app) as client:
            for action in ("load", "unload"):
                url = f"/v2/repository/models/loaded/{action}"
                r = await client.post(url)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
                assert "Bearer" in r.json()["error"]  # the OIP error shape
                r = await client.post(url, headers={"authorization": "Bearer nope"})
                assert r.status_code == 403
            assert app.catalog.cache.loaded() == []  # nothing was loaded
            assert (await client.post("/v2/repository/index")).status_code == 200  # a read

            token = {"authorization": "Bearer s3cret"}
            r = await client.post("/v2/repository/models/loaded/load", headers=token,
                                  json={"parameters": {"version": "2"}})
            assert r.status_code == 200, r.text
            assert (await client.get("/v2/models/loaded/versions/2/ready")).status_code == 200
            r = await client.post("/v2/repository/models/loaded/unload", headers=token)
            assert r.status_code == 200, r.text
    finally:
        await app.shutdown()
    unload, load = registry.audit_events("loaded", limit=2)
    assert (load.action, load.target, load.actor) == ("model.load", "loaded:2", TOKEN_ACTOR)
    assert load.details == {"protocol": "rest"}
    assert (unload.action, unload.target, unload.actor) == ("model.unload", "loaded",
                                                            TOKEN_ACTOR)
    assert unload.details == {"protocol": "rest", "versions": [2]}


# -- the OIP repository extension over gRPC ------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_grpc_repository_load_and_unload_need_the_token_and_are_audited(
        registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    from tritonclient.grpc.aio import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    address = f"127.0.0.1:{_free_port()}"
    app = await started(registry, monkeypatch, token="s3cret", grpc_address=address)
    client = InferenceServerClient(url=address)
    try:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
                await call("remote")
            with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
                await call("remote", headers={"authorization": "Bearer nope"})
        assert not await client.is_model_ready("remote")
        token = {"authorization": "Bearer s3cret"}
        await client.load_model("remote", headers=token)
        assert await client.is_model_ready("remote")
        await client.unload_model("remote", headers=token)
        assert not await client.is_model_ready("remote")
    finally:
        await client.close()
        await app.shutdown()
    unload, load = registry.audit_events("remote", limit=2)
    assert (load.action, load.target, load.actor) == ("model.load", "remote:1", TOKEN_ACTOR)
    assert load.details == {"protocol": "grpc"}
    assert (unload.action, unload.actor, unload.details) == (
        "model.unload", TOKEN_ACTOR, {"protocol": "grpc", "versions": [1]})


# -- free text ---------------------------------------------------------------------------------
async def test_over_long_free_text_is_422_naming_the_field(client: httpx.AsyncClient,
                                                           registry: Registry) -> None:
    long = "x" * 1001
    for path, body in (("promote", {"version": 2, "reason": long}),
                       ("rollback", {"reason": long}),
                       ("deployments", {"version": 2, "reason": long}),
                       ("deployments", {"version": 2, "key": "k" * 201}),
                       ("deployment/abort", {"reason": long})):
        r = await client.post(f"/api/v1/models/guarded/{path}", json=body)
        assert r.status_code == 422, (path, r.text)
        (problem,) = r.json()["detail"]
        field = "key" if "key" in body else "reason"
        assert problem["loc"] == ["body", field] and "at most" in problem["msg"]
    assert production(registry, "guarded") == 1
    r = await client.post("/api/v1/models/guarded/promote",
                          json={"version": 1, "reason": "y" * 1000})
    assert r.status_code == 200, r.text


# -- warnings ----------------------------------------------------------------------------------
def test_is_loopback() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "models.example.com"):
        assert not is_loopback(host), host


def test_serving_on_a_reachable_address_enforces_auth_unless_insecure(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from modelyard.serving import server
    from modelyard.serving.server import serve

    started: list[tuple[str, ServeOptions]] = []
    monkeypatch.setattr(server, "_start",
                        lambda host, port, settings, options, *a: started.append((host, options))
                        or 0)
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    settings = Settings.from_env(home=tmp_path / "home")
    with caplog.at_level(logging.WARNING, logger="modelyard.serving.server"):
        serve("0.0.0.0", 0, settings=settings)
        serve("127.0.0.1", 0, settings=settings)
    assert caplog.records == []
    assert [(h, o.exposed) for h, o in started] == [("0.0.0.0", True), ("127.0.0.1", False)]
    assert Access(exposed=True).enforced and not Access(exposed=True, insecure=True).enforced
    with caplog.at_level(logging.WARNING, logger="modelyard.serving.server"):
        serve("0.0.0.0", 0, settings=settings, options=ServeOptions(insecure=True))
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and "--insecure" in record.getMessage()
    assert "0.0.0.0" in record.getMessage()


async def test_the_built_in_log_key_warns_once_when_a_model_hashes_fields(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_constant(reg, "cards", 1, meta={"serving": {"sensitive": {"f0": "hash"}}})
        register_constant(reg, "cards2", 1, meta={"serving": {"sensitive": {"f1": "hash"}}})
        register_constant(reg, "dropped", 1, meta={"serving": {"sensitive": {"f0": "drop"}}})
        for key, expected in ((None, 1), ("a-real-secret", 0)):
            if key is None:
                monkeypatch.delenv("MODELYARD_LOG_KEY", raising=False)
            else:
                monkeypatch.setenv("MODELYARD_LOG_KEY", key)
            caplog.clear()
            app = create_app(reg, ServeOptions(poll_interval_s=3600, monitor_interval_s=3600))
            with caplog.at_level(logging.WARNING, logger="modelyard.serving.catalog"):
                await app.startup()
                await app.wait_ready()
                await app.shutdown()
            warned = [r for r in caplog.records if "MODELYARD_LOG_KEY" in r.getMessage()]
            assert len(warned) == expected, key  # once per process, not once per model
            if expected:
                assert "sensitive field(s)" in warned[0].getMessage()
