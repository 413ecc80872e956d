"""Pools: which models a server serves (pure decisions), and an app serving one pool of a
registry that holds two (in-process, over real registered models)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.serving.pools import Placement, Selection, placement, split_names
from modelyard.testing import register_constant

RECORD = {"records": [{"f0": 0.0, "f1": 0.0, "f2": 0.0}]}


def version(flavor: str = "sklearn", model: str = "m", **serving: Any) -> Any:
    """A registry version as far as placement reads it."""
    return SimpleNamespace(model=model, flavor=flavor, ref=f"{model}:1",
                           meta={"serving": serving} if serving else {})


# -- the pure decisions -------------------------------------------------------------------------
@pytest.mark.parametrize(("record", "pool", "device"), [
    (version(), "cpu", "auto"),
    (version("torch"), "gpu", "auto"),
    (version("torch", device="cpu"), "cpu", "cpu"),
    (version("sklearn", device="cuda:1"), "gpu", "cuda:1"),
    (version("torch", pool="nlp-a100"), "nlp-a100", "auto"),
    (version("no-such-flavor"), "cpu", "auto"),
])
def test_a_version_is_placed_by_its_serving_section(record: Any, pool: str, device: str) -> None:
    assert placement(record, {}) == Placement(pool, device)


def test_a_serve_config_can_move_a_model_to_another_pool() -> None:
    tuned = {"*": {"device": "cpu"}, "m": {"pool": "batch"}}
    assert placement(version("torch"), tuned) == Placement("batch", "cpu")
    assert placement(version("torch", model="other"), tuned) == Placement("cpu", "cpu")


def test_a_selection_of_nothing_serves_everything() -> None:
    every = Selection()
    assert every.everything and every.serves("a", "gpu") and every.serves("b", None)
    assert every.describe() == "every pool"
    assert every.to_dict() == {"pools": None, "models": None}


def test_pools_and_models_both_restrict() -> None:
    cpu = Selection.of(["cpu"])
    assert cpu.serves("a", "cpu") and not cpu.serves("a", "gpu")
    assert cpu.serves("new", None)  # no version yet: no pool to refuse it by
    named = Selection.of(models=["a", "b"])
    assert named.serves("a", "gpu") and not named.serves("c", "cpu")
    both = Selection.of(["cpu"], ["a"])
    assert both.serves("a", "cpu")
    assert not both.serves("a", "gpu") and not both.serves("b", "cpu")
    assert both.to_dict() == {"pools": ["cpu"], "models": ["a"]}


def test_a_refusal_names_the_pool_that_serves_the_model() -> None:
    assert Selection.of(["cpu"]).refusal("digits", "gpu") == (
        "model 'digits' is served by the 'gpu' pool; this server serves pool 'cpu'")
    assert Selection.of(["cpu", "nlp"]).refusal("digits", "gpu").endswith(
        "this server serves pools 'cpu', 'nlp'")
    assert Selection.of(models=["a", "b"]).refusal("c", "cpu") == (
        "model 'c' (pool 'cpu') is not served by this server, which serves models 'a', 'b'; "
        "send it to a server that serves it")


def test_names_come_from_repeated_and_comma_separated_options() -> None:
    assert split_names(["cpu,gpu", "nlp", " cpu , x "]) == ("cpu", "gpu", "nlp", "x")
    assert split_names([]) == ()


def test_a_malformed_pool_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="--pool: pool 'GPU!'"):
        Selection.of(["GPU!"])
    with pytest.raises(ConfigError, match="--pool"):
        ServeOptions(pools=("Not A Pool",))
    with pytest.raises(ConfigError, match="lists of names"):
        ServeOptions(models="abc")  # type: ignore[arg-type]
    assert ServeOptions(pools=["cpu"], models=["a"]).selection == Selection.of(  # type: ignore[arg-type]
        ["cpu"], ["a"])


@pytest.mark.parametrize("bad", [{"drain_s": -1}, {"grace_s": 0}, {"grace_s": 4000}])
def test_drain_and_grace_are_checked(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="drain_s"):
        ServeOptions(**bad)  # type: ignore[arg-type]


# -- an app serving one pool --------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home: Path = tmp_path_factory.mktemp("pools") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_constant(reg, "tabular", 1)
        register_constant(reg, "digits", 2, meta={"serving": {"pool": "gpu"}})
        register_constant(reg, "digits", 3, promote=False, meta={"serving": {"pool": "gpu"}})
        register_constant(reg, "moving", 3)
        register_constant(reg, "moving", 4, promote=False, meta={"serving": {"pool": "gpu"}})
        yield reg


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


async def serving(registry: Registry, **options: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(registry, ServeOptions(poll_interval_s=3600, **options))
    await app.startup()
    await app.wait_ready()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://modelyard") as c:
            c.app = app  # type: ignore[attr-defined]
            yield c
    finally:
        await app.shutdown()


@pytest.fixture()
async def cpu(registry: Registry) -> AsyncIterator[httpx.AsyncClient]:
    async for client in serving(registry, pools=("cpu",)):
        yield client


@pytest.mark.anyio
async def test_a_cpu_server_refuses_the_gpu_model_with_its_pool(cpu: httpx.AsyncClient) -> None:
    assert (await cpu.post("/v1/models/tabular/predict", json=RECORD)).status_code == 200
    r = await cpu.post("/v1/models/digits/predict", json=RECORD)
    assert r.status_code == 404
    assert r.json()["message"] == (
        "model 'digits' is served by the 'gpu' pool; this server serves pool 'cpu'")
    v2 = await cpu.post("/v2/models/digits/infer", json={"inputs": []})
    assert v2.status_code == 404 and "'gpu' pool" in v2.json()["error"]
    assert (await cpu.get("/v2/models/digits")).status_code == 404
    assert (await cpu.post("/v2/repository/models/digits/load", json={})).status_code == 404
    unknown = await cpu.post("/v1/models/nope/predict", json=RECORD)
    assert unknown.status_code == 404 and "not in the registry" in unknown.json()["message"]
    app: App = cpu.app  # type: ignore[attr-defined]
    assert {k[0] for k, _ in app.catalog.cache.loaded()} == {"tabular", "moving"}


@pytest.mark.anyio
async def test_models_and_metadata_show_pool_and_device(cpu: httpx.AsyncClient) -> None:
    listed = (await cpu.get("/v1/models")).json()
    assert [m["name"] for m in listed["models"]] == ["moving", "tabular"]
    tabular = listed["models"][1]
    assert (tabular["pool"], tabular["device"], tabular["devices"]) == ("cpu", "auto",
                                                                        {"1": "cpu"})
    assert listed["serves"] == {"pools": ["cpu"], "models": None}
    assert listed["elsewhere"] == {"digits": "gpu"}
    meta = (await cpu.get("/v2/models/tabular")).json()
    assert meta["parameters"] == {"pool": "cpu", "device": "auto", "devices": {"1": "cpu"}}
    assert (await cpu.get("/v2")).json()["parameters"] == {"pools": ["cpu"], "models": None}
    ready = (await cpu.get("/readyz")).json()
    assert ready["serves"] == {"pools": ["cpu"], "models": None}


@pytest.mark.anyio
async def test_a_promotion_to_another_pool_moves_the_model_away(
        registry: Registry, cpu: httpx.AsyncClient) -> None:
    app: App = cpu.app  # type: ignore[attr-defined]
    registry.set_alias("moving", "production", 2)  # version 2 is the gpu pool's
    try:
        await app.watcher.poll()
        await app.watcher.stop()  # the swap it started has finished
        r = await cpu.post("/v1/models/moving/predict", json=RECORD)
        assert r.status_code == 404 and "'gpu' pool" in r.json()["message"]
        assert "moving" not in {k[0] for k, _ in app.catalog.cache.loaded()}
    finally:
        registry.set_alias("moving", "production", 1)


@pytest.mark.anyio
async def test_a_server_of_named_models_serves_only_those(registry: Registry) -> None:
    async for c in serving(registry, models=("digits",)):
        assert (await c.post("/v1/models/digits/predict", json=RECORD)).json()[
            "predictions"] == [2]
        r = await c.post("/v1/models/tabular/predict", json=RECORD)
        assert r.status_code == 404
        assert "not served by this server, which serves model 'digits'" in r.json()["message"]
        assert [m["name"] for m in (await c.get("/v1/models")).json()["models"]] == ["digits"]


@pytest.mark.anyio
async def test_the_default_server_serves_every_pool(registry: Registry) -> None:
    async for c in serving(registry):
        for name in ("tabular", "digits"):
            assert (await c.post(f"/v1/models/{name}/predict", json=RECORD)).status_code == 200
        listed = (await c.get("/v1/models")).json()
        assert {m["name"]: m["pool"] for m in listed["models"]} == {
            "digits": "gpu", "moving": "cpu", "tabular": "cpu"}
        assert listed["elsewhere"] == {} and "serves" not in (await c.get("/readyz")).json()


@pytest.mark.anyio
async def test_another_pools_rollout_is_left_to_that_pool(registry: Registry,
                                                          cpu: httpx.AsyncClient) -> None:
    from modelyard.rollout.deployments import Deployments

    app: App = cpu.app  # type: ignore[attr-defined]
    deployments = Deployments(registry)
    deployments.start("digits", 2, "canary", steps=[50, 100], every_s=600)
    try:
        await app.rollouts.poll()
        await app.rollouts.stop()  # what the poll started has finished
        assert "digits" not in app.rollouts.active
        assert "digits" not in {k[0] for k, _ in app.catalog.cache.loaded()}
        assert deployments.get("digits").state == "progressing"  # not rolled back here
    finally:
        deployments.abort("digits", reason="test over")
