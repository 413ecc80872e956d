"""The web console in-process (httpx.ASGITransport): every page renders, auth through the
session cookie, CSRF on every POST, buttons only for roles that may use them, and a button's
audit record naming the key's principal."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from modelyard.config import Settings
from modelyard.pipeline.profile import profile
from modelyard.registry import Registry
from modelyard.registry.tables import VersionRow
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.admin import TOKEN_ENV
from modelyard.serving.app import App
from modelyard.testing import register_constant

pytestmark = pytest.mark.anyio


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("console") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        for name in ("alpha", "beta"):
            register_constant(reg, name, 1)
            register_constant(reg, name, 2)
        register_constant(reg, "gamma", 1)
        yield reg


@pytest.fixture()
async def app(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[App]:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False))
    await app.startup()
    yield app
    await app.shutdown()


def _client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, html[:500]
    return found.group(1)


async def test_every_page_renders_open_on_a_laptop(app: App) -> None:
    async with _client(app) as c:
        for path in ("/ui/", "/ui/?sort=name&dir=desc&q=al", "/ui/models/alpha",
                     "/ui/models/alpha?at=2000-01-01T00:00:00", "/ui/models/alpha/compare?a=1&b=2",
                     "/ui/models/alpha/rollout", "/ui/models/alpha/monitoring", "/ui/runs",
                     "/ui/audit?model=alpha", "/ui/login"):
            r = await c.get(path)
            assert r.status_code == 200, (path, r.text[:300])
            assert "text/html" in r.headers["content-type"]
        overview = (await c.get("/ui/?q=al")).text
        assert "alpha" in overview and "gamma" not in overview
        assert (await c.get("/ui/models/nope")).status_code == 404
        # each version links its model card, shown in the console's own page
        assert '/ui/models/alpha/versions/2/card">model card</a>' in (
            await c.get("/ui/models/alpha")).text
        card = await c.get("/ui/models/alpha/versions/2/card")
        assert card.status_code == 200, card.text[:300]
        assert "model card of v2" in card.text and "<h2>Metrics and gate</h2>" in card.text
        assert "<!doctype" not in card.text.split("<article", 1)[1]  # elements, not a document
        assert (await c.get("/ui/models/alpha/versions/9/card")).status_code == 404
        assert (await c.get("/ui/models/alpha/versions/x/card")).status_code == 422
        partial = await c.get("/ui/", headers={"HX-Request": "true"})
        assert "<html" not in partial.text and "alpha" in partial.text


async def test_static_files_are_cached_for_a_year(app: App) -> None:
    async with _client(app) as c:
        r = await c.get("/ui/static/vendor/htmx-2.0.11.min.js")
        assert r.status_code == 200 and "immutable" in r.headers["cache-control"]
        assert (await c.get("/ui/static/..%2F..%2Fapp.py")).status_code == 404


async def test_a_button_needs_its_csrf_token_and_moves_production(app: App,
                                                                  registry: Registry) -> None:
    async with _client(app) as c:
        page = await c.get("/ui/models/beta")
        token = _csrf(page.text)
        refused = await c.post("/ui/models/beta/act/rollback", data={"csrf": "0" * 64})
        assert refused.status_code == 403
        foreign = await c.post("/ui/models/beta/act/rollback", data={"csrf": token},
                               headers={"Origin": "https://evil.example"})
        assert foreign.status_code == 403
        done = await c.post("/ui/models/beta/act/rollback",
                            data={"csrf": token, "back": "/ui/models/beta"})
        assert done.status_code == 303, done.text[:300]
        assert "msg=" in done.headers["location"]
    assert registry.get_model("beta").aliases["production"] == 1


async def test_keys_roles_and_the_session_cookie(app: App, registry: Registry) -> None:
    viewer = registry.keys.create_key("vera", "viewer").secret
    deployer = registry.keys.create_key("dora", "deployer").secret
    await app.access.refresh()
    async with _client(app) as c:
        r = await c.get("/ui/")
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
        login = await c.get("/ui/login")
        bad = await c.post("/ui/login", data={"csrf": _csrf(login.text), "key": "nope"})
        assert bad.status_code == 403
        ok = await c.post("/ui/login", data={"csrf": _csrf(login.text), "key": viewer,
                                             "next": "/ui/models/alpha"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/models/alpha"
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert viewer not in ok.headers["location"]
        page = await c.get("/ui/models/alpha")
        assert page.status_code == 200 and "vera" in page.text
        assert "act/rollback" not in page.text  # a viewer sees no buttons
        forbidden = await c.post("/ui/models/alpha/act/rollback", data={"csrf": _csrf(page.text)})
        assert forbidden.status_code == 403
        await c.post("/ui/logout", data={"csrf": _csrf(page.text)})
        assert (await c.get("/ui/")).status_code == 303
        login = await c.get("/ui/login")
        await c.post("/ui/login", data={"csrf": _csrf(login.text), "key": deployer})
        page = await c.get("/ui/models/alpha")
        assert "act/rollback" in page.text
        done = await c.post("/ui/models/alpha/act/rollback", data={"csrf": _csrf(page.text)})
        assert done.status_code == 303 and "msg=" in done.headers["location"]
    assert registry.get_model("alpha").aliases["production"] == 1
    moved = registry.audit_events("alpha", limit=1, action="alias.rollback")
    assert moved and moved[0].actor == "dora"


async def test_the_console_is_outside_the_api_table_and_can_be_left_out(
        registry: Registry, app: App) -> None:
    async with _client(app) as c:
        paths = (await c.get("/openapi.json")).json()["paths"]
        assert not any(p.startswith("/ui") for p in paths)
    bare = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False, mounts=()))
    await bare.startup()
    try:
        async with _client(bare) as c:
            assert (await c.get("/ui/")).status_code == 404
    finally:
        await bare.shutdown()


def test_registry_pages_are_bounded(registry: Registry) -> None:
    assert [v.version for v in registry.list_versions("alpha", limit=1)] == [2]
    assert [v.version for v in registry.list_versions("alpha", limit=1, offset=1)] == [1]
    assert len(registry.alias_history("alpha", limit=1)) == 1
    assert set(registry.versions_at_alias("production")) >= {"alpha", "beta", "gamma"}
    assert registry.last_moves("production")["gamma"].version == 1
    first, second = (registry.audit_events(limit=1, offset=n) for n in (0, 1))
    assert first[0].id > second[0].id
    assert all(e.actor == "tester" for e in registry.audit_events(actor="tester", limit=5))
    assert registry.audit_events(action="no.such.action") == []


async def test_the_monitoring_page_draws_numeric_and_categorical_features(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"amount": rng.normal(size=200),
                          "city": rng.choice(["oslo", "rome", "lima"], size=200)})
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as registry:
        register_constant(registry, "cities", 1)
        with registry.db.session(write=True) as s:  # the profile a trained version carries
            s.execute(update(VersionRow).values(reference_stats=profile(frame)))
        app = create_app(registry, ServeOptions(poll_interval_s=3600, preload=False))
        await app.startup()
        try:
            async with _client(app) as c:
                answer = await c.get("/ui/models/cities/monitoring")
        finally:
            await app.shutdown()
    assert answer.status_code == 200, answer.text[:300]
    assert "<figcaption>amount" in answer.text
    caption = re.search(r"<figcaption>city <span class=\"muted\">\(([^;]+);", answer.text)
    assert caption is not None, answer.text[-3000:]
    assert set(caption.group(1).split(" · ")) == {"oslo", "rome", "lima", "other"}
