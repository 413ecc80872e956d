"""What loaded versions cost and when they go: the measured footprint (fake readings, then real
models), eviction under --max-memory by what loads measured, idle unloading on a controllable
clock with the next request loading again, the load-time histogram, and device workers charged
their process's resident memory."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.serving.cache import ModelCache, choose_idle
from modelyard.serving.footprint import (
    Cost,
    Footprint,
    malloc_in_use,
    release_memory,
    rss_bytes,
)
from modelyard.serving.runner import estimate_memory
from modelyard.serving.supervisor import ProcessRunner
from modelyard.serving.unloader import IdleUnloader, check_interval, rollout_versions
from modelyard.testing.models import (
    register_ballast,
    register_constant,
    register_hgb,
    register_probe,
)

pytestmark = pytest.mark.anyio

MiB = 1 << 20
BALLAST_MB = 48
ROW = {"instances": [[0.0, 0.0, 0.0]]}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


# -- the footprint, on fake readings ------------------------------------------------------------
class FakeProcess:
    """Resident and allocated bytes a test moves by hand; ``load(n)`` makes a load that holds
    ``n`` bytes (plus, on the first call, ``framework`` and, on the second, ``slack`` bytes the
    allocator keeps resident once)."""

    def __init__(self) -> None:
        self.resident = 100 * MiB
        self.allocated = 50 * MiB
        self.loads = 0
        self.released = 0

    def rss(self) -> int:
        return self.resident

    def in_use(self) -> int:
        return self.allocated

    def release(self, full: bool) -> None:
        self.released += 1

    def footprint(self, **options: Any) -> Footprint:
        return Footprint(self.rss, self.release, in_use=self.in_use, **options)

    def load(self, holds: int, framework: int = 0, slack: int = 0,
             resident: bool = True) -> Any:
        def run() -> SimpleNamespace:
            self.loads += 1
            self.resident += (holds if resident else 0) + (framework if self.loads == 1 else 0)
            self.resident += slack if self.loads == 2 else 0
            self.allocated += holds
            return SimpleNamespace(holds=holds)

        return run


def test_a_flavors_first_load_is_split_into_framework_and_version() -> None:
    proc = FakeProcess()
    footprint = proc.footprint()
    value, cost = footprint.measure("torch", proc.load(7 * MiB, framework=300 * MiB),
                                    lambda _v: 5 * MiB)
    assert value.holds == 7 * MiB
    assert proc.loads == 3  # two more copies, each loaded while the first lives, measure it
    assert cost == Cost(grown=7 * MiB, estimate=5 * MiB, framework=300 * MiB)
    assert cost.bytes == 7 * MiB and footprint.frameworks == {"torch": 300 * MiB}
    # later versions of the flavor load once and are charged their growth
    _, later = footprint.measure("torch", proc.load(9 * MiB), lambda _v: 5 * MiB)
    assert proc.loads == 4 and later == Cost(9 * MiB, 5 * MiB) and later.bytes == 9 * MiB
    assert footprint.frameworks == {"torch": 300 * MiB}
    assert proc.released >= 6  # before every reading


def test_what_the_allocator_keeps_once_is_not_charged_to_the_version() -> None:
    proc = FakeProcess()
    footprint = proc.footprint()
    _, cost = footprint.measure("lightgbm", proc.load(MiB, 150 * MiB, slack=16 * MiB),
                                lambda _v: 0)
    assert cost.bytes == MiB and cost.framework == 150 * MiB


def test_a_load_that_reuses_kept_pages_is_charged_what_it_allocated() -> None:
    proc = FakeProcess()
    footprint = proc.footprint()
    footprint.frameworks["lightgbm"] = 150 * MiB
    _, cost = footprint.measure("lightgbm", proc.load(20 * MiB, resident=False), lambda _v: 0)
    assert cost.bytes == 20 * MiB  # the resident set did not grow: it reused kept pages


def test_the_estimate_is_charged_when_it_is_larger_or_nothing_can_be_measured() -> None:
    proc = FakeProcess()
    footprint = proc.footprint()
    footprint.frameworks["sklearn"] = 0
    _, cost = footprint.measure("sklearn", proc.load(0), lambda _v: 3 * MiB)
    assert cost.bytes == 3 * MiB and cost.grown == 0
    blind = Footprint(lambda: 0, proc.release, in_use=lambda: 0)  # no /proc
    _, cost = blind.measure("xgboost", proc.load(50 * MiB), lambda _v: 2 * MiB)
    assert cost == Cost(0, 2 * MiB) and blind.frameworks == {}


def test_a_large_first_version_is_not_loaded_again() -> None:
    proc = FakeProcess()
    footprint = proc.footprint(remeasure_limit=100 * MiB)
    _, cost = footprint.measure("torch", proc.load(400 * MiB, framework=200 * MiB),
                                lambda _v: 390 * MiB)
    assert proc.loads == 1
    assert cost.bytes == 390 * MiB and footprint.frameworks["torch"] == 210 * MiB


def test_concurrent_loads_are_measured_one_at_a_time() -> None:
    """Two loads at once: each is charged only its own growth, never the other's."""
    proc = FakeProcess()
    footprint = proc.footprint()
    footprint.frameworks["python"] = 0
    second_began = threading.Event()
    costs: dict[str, Cost] = {}

    def slow() -> None:
        proc.resident += 100 * MiB
        # were loads not serialized, the other load would grow the process meanwhile
        second_began.wait(0.3)

    def fast() -> None:
        second_began.set()
        proc.resident += 30 * MiB

    def measure(name: str, load: Any) -> None:
        costs[name] = footprint.measure("python", load, lambda _v: 0)[1]

    first = threading.Thread(target=measure, args=("slow", slow))
    first.start()
    while not footprint._lock.locked():  # the slow load holds the measurement
        pass
    measure("fast", fast)
    first.join()
    assert costs["slow"].bytes == 100 * MiB and costs["fast"].bytes == 30 * MiB


def test_rss_and_the_allocators_bytes_are_read_from_this_process() -> None:
    own = rss_bytes()
    assert own > 10 * MiB and abs(rss_bytes(os.getpid()) - own) < 50 * MiB
    assert rss_bytes(2**22 + 12345) == 0  # no such process
    before = malloc_in_use()
    held = np.ones(8 * MiB, dtype=np.uint8)
    # other threads (the test process's own) may free a few bytes in between
    assert malloc_in_use() - before >= 7 * MiB
    del held


def test_a_full_release_frees_cycles_the_frozen_heap_holds() -> None:
    """The server freezes its heap after preloading; an unloaded preloaded model with reference
    cycles must still be freed when it is unloaded."""

    class Node:
        pass

    was_frozen = gc.get_freeze_count() > 0
    node = Node()
    node.cycle = node  # type: ignore[attr-defined]
    alive = weakref.ref(node)
    gc.freeze()
    try:
        del node
        release_memory(full=False)  # what runs before each reading: the young generations
        assert alive() is not None
        release_memory(full=True)  # what runs after an unload
        assert alive() is None and gc.get_freeze_count() > 0  # still frozen afterwards
    finally:
        if not was_frozen:
            gc.unfreeze()


# -- the cache's idle decision ------------------------------------------------------------------
def test_choose_idle_and_which_versions_a_rollout_keeps() -> None:
    entries = [(("a", 1), 0.0), (("b", 1), 50.0), (("c", 1), 95.0)]
    assert choose_idle(entries, 100.0, 50.0) == [("a", 1), ("b", 1)]
    assert choose_idle(entries, 100.0, 50.0, keep={("a", 1)}) == [("b", 1)]
    active = {"m": SimpleNamespace(deployment=SimpleNamespace(stable_version=1,
                                                              candidate_version=2)),
              "n": SimpleNamespace(deployment=SimpleNamespace(stable_version=None,
                                                              candidate_version=4))}
    assert rollout_versions(active) == {("m", 1), ("m", 2), ("n", 4)}
    assert check_interval(600.0) == 30.0 and check_interval(2.0) == pytest.approx(0.2)


class FakeRunner:
    def __init__(self, key: tuple[str, int]) -> None:
        self.key = key
        self.memory = 1
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class Clock:
    """A clock tests move by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_cache_unloads_idle_versions_and_labels_each_load_with_why() -> None:
    loads: list[tuple[tuple[str, int], str]] = []

    async def load(key: tuple[str, int]) -> FakeRunner:
        return FakeRunner(key)

    clock = Clock()
    cache = ModelCache(load, max_memory=2, clock=clock,
                       on_load=lambda key, _s, why: loads.append((key, why)))
    await cache.get(("a", 1), "preload")
    await cache.get(("b", 1))
    clock.now += 100
    cache.touch(("b", 1))  # a batch ran
    clock.now += 100
    unloader = IdleUnloader(cache, 150.0)
    await unloader.tick()
    assert [k for k, _ in cache.loaded()] == [("b", 1)]
    assert cache.unloaded_because(("a", 1)) == "idle"
    await cache.get(("a", 1))  # back on the next request
    assert cache.unloaded_because(("a", 1)) is None
    await cache.get(("c", 1))  # over the budget of 2: the least recently used goes
    assert [k for k, _ in cache.loaded()] == [("a", 1), ("c", 1)]
    await cache.get(("b", 1))
    cache.evict(("c", 1))  # any other unload (an alias moved away, an OIP unload)
    await cache.get(("c", 1))
    assert loads == [(("a", 1), "preload"), (("b", 1), "first"), (("a", 1), "idle"),
                     (("c", 1), "first"), (("b", 1), "memory"), (("c", 1), "reload")]
    kept = IdleUnloader(cache, 0.0, keep=lambda: {("b", 1)})
    await kept.tick()
    assert [k for k, _ in cache.loaded()] == [("b", 1)]
    await cache.close()


# -- real models behind the in-process app ------------------------------------------------------
@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("serving-memory") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_ballast(reg, "ballast", mb=BALLAST_MB, value=1.0)
        register_ballast(reg, "ballast", mb=BALLAST_MB, value=2.0, promote=False)
        register_constant(reg, "const", 7)
        register_probe(reg, "isolated", meta={"serving": {"isolation": "process"}},
                       promote=False)
        register_probe(reg, "slow", delay_s=0.5, promote=False)
        yield reg


async def started(registry: Registry, clock: Clock | None = None, **options: Any) -> App:
    app = create_app(registry, ServeOptions(poll_interval_s=3600, prediction_log="off",
                                            **options))
    if clock is not None:
        app.catalog.cache.clock = clock
    await app.startup()
    await app.wait_ready()
    return app


@pytest.fixture()
async def budget_app(registry: Registry) -> AsyncIterator[App]:
    app = await started(registry, preload=False, max_memory=80 * MiB)
    yield app
    await app.shutdown()


def client(app: App) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m")


async def test_eviction_compares_what_versions_measured_with_the_budget(
        budget_app: App, registry: Registry) -> None:
    """Two versions of a few hundred bytes each by the old estimate, 48 MiB each once loaded:
    together they exceed an 80 MiB budget, so the least recently used one goes."""
    async with client(budget_app) as c:
        for version in (1, 2):
            r = await c.post(f"/v1/models/ballast/versions/{version}/predict", json=ROW)
            assert r.status_code == 200 and r.json()["predictions"] == [float(version)]
        loaded = dict(budget_app.catalog.cache.loaded())
        assert list(loaded) == [("ballast", 2)]
        runner = loaded[("ballast", 2)]
        assert runner.memory >= 40 * MiB  # what the load grew the process by
        record = registry.get_version("ballast", 2)
        assert 2 * estimate_memory(runner.predictor.model, record.artifact_size) < MiB
        models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
        assert models["ballast"]["memory_bytes"] == {"2": runner.memory}
        # version 1 comes back on request, and version 2 makes room for it
        r = await c.post("/v1/models/ballast/versions/1/predict", json=ROW)
        assert r.status_code == 200
        assert [k for k, _ in budget_app.catalog.cache.loaded()] == [("ballast", 1)]
        text = (await c.get("/metrics")).text
    assert "modelyard_memory_budget_bytes 8.388608e+07" in text
    for version, reason in (("1", "first"), ("2", "first"), ("1", "memory")):
        assert (f'modelyard_model_load_seconds_count{{model="ballast",reason="{reason}",'
                f'version="{version}"}} 1.0') in text
    assert 'modelyard_model_memory_bytes{model="ballast",version="1"}' in text


async def test_an_idle_version_is_unloaded_then_loads_again_on_the_next_request(
        registry: Registry) -> None:
    clock = Clock()
    app = await started(registry, clock, idle_unload_s=600)
    opened: list[str] = []
    original = app.catalog._open

    def counting(record: Any) -> Any:
        opened.append(record.ref)
        return original(record)

    app.catalog._open = counting  # type: ignore[method-assign]
    assert app.plane.idle is not None
    try:
        async with client(app) as c:
            clock.now += 400
            r = await c.post("/v1/models/const/predict", json=ROW)  # used at 1400
            assert r.status_code == 200
            clock.now += 400  # ballast idle for 800 s, const for 400 s
            await app.plane.idle.tick()
            assert [k for k, _ in app.catalog.cache.loaded()] == [("const", 1)]
            clock.now += 200
            await app.plane.idle.tick()
            assert app.catalog.cache.loaded() == []
            ready = await c.get("/readyz")
            assert ready.status_code == 200  # idle is not down: the next request loads it
            assert ready.json()["idle"] == ["ballast:1", "const:1"]
            models = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
            assert models["const"]["served_version"] == 1
            assert models["const"]["loaded_versions"] == []
            assert models["const"]["memory_bytes"] == {}
            replies = await asyncio.gather(*(c.post("/v1/models/const/predict", json=ROW)
                                             for _ in range(8)))
            assert [r.status_code for r in replies] == [200] * 8
            assert {r.json()["predictions"][0] for r in replies} == {7}
            assert opened == ["const:1"]  # one load, shared by every request waiting for it
            assert (await c.get("/readyz")).json()["idle"] == ["ballast:1"]
            text = (await c.get("/metrics")).text
        for reason in ("preload", "idle"):
            assert (f'modelyard_model_load_seconds_count{{model="const",reason="{reason}",'
                    f'version="1"}} 1.0') in text
        assert 'modelyard_model_loaded{model="const",version="1"} 1.0' in text
        assert 'modelyard_model_loaded{model="ballast"' not in text
    finally:
        await app.shutdown()


async def test_a_request_in_flight_when_its_version_goes_idle_is_answered(
        registry: Registry) -> None:
    """Unloading drains: the batch that runs (stamped when it began) finishes and answers."""
    clock = Clock()
    app = await started(registry, clock, preload=False, idle_unload_s=60)
    assert app.plane.idle is not None
    try:
        async with client(app) as c:
            pending = asyncio.ensure_future(c.post("/v1/models/slow/versions/1/predict",
                                                   json={"instances": [[1.0, 0.0, 0.0]]}))
            began = 'modelyard_batch_size_count{model="slow",version="1"} 1.0'
            while began not in app.metrics.render().decode():  # until its batch runs
                await asyncio.sleep(0.005)
            clock.now += 61
            await app.plane.idle.tick()
            assert app.catalog.cache.loaded() == [] and not pending.done()
            r = await pending
            assert r.status_code == 200 and r.json()["predictions"] == [2.0]
            r = await c.post("/v1/models/slow/versions/1/predict",
                             json={"instances": [[2.0, 0.0, 0.0]]})
            assert r.status_code == 200 and r.json()["predictions"] == [4.0]
    finally:
        await app.shutdown()


async def test_without_the_flag_nothing_is_unloaded_for_idleness(registry: Registry) -> None:
    app = await started(registry, Clock())
    try:
        assert app.plane.idle is None
        assert {k for k, _ in app.catalog.cache.loaded()} == {("ballast", 1), ("const", 1)}
    finally:
        await app.shutdown()


async def test_a_device_worker_version_costs_its_process_resident_memory(
        registry: Registry) -> None:
    app = await started(registry, preload=False)
    try:
        async with client(app) as c:
            r = await c.post("/v1/models/isolated/versions/1/predict", json=ROW)
            assert r.status_code == 200
        runner = app.catalog.runner_now("isolated", 1)
        assert isinstance(runner, ProcessRunner) and runner.worker.pid is not None
        resident = rss_bytes(runner.worker.pid)
        assert resident > 10 * MiB  # an interpreter with numpy, far above the artifact's bytes
        assert abs(runner.memory - resident) < 8 * MiB
        assert app.catalog.memory_of("isolated") == {"1": runner.memory}
    finally:
        await app.shutdown()


def test_a_frameworks_import_is_charged_to_the_framework_not_its_first_version(
        tmp_path: Path) -> None:
    """In a fresh interpreter, loading a scikit-learn model first imports scikit-learn (well
    over 50 MB); the version is charged what it holds (a small HGB: about 1 MB)."""
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=20, n_features=5)
    script = (
        "import asyncio, json, sys\n"
        "from modelyard.config import Settings\n"
        "from modelyard.registry import Registry\n"
        "from modelyard.serving import ServeOptions, create_app\n"
        "async def main():\n"
        "    with Registry.open(Settings.from_env(home=sys.argv[1])) as reg:\n"
        "        app = create_app(reg, ServeOptions(poll_interval_s=3600, prediction_log='off'))\n"
        "        await app.startup()\n"
        "        await app.wait_ready()\n"
        "        runner = app.catalog.runner_now('tabular')\n"
        "        print(json.dumps({'version': runner.memory,\n"
        "                          'frameworks': app.catalog.footprint.frameworks,\n"
        "                          'metrics': app.metrics.render().decode()}))\n"
        "        await app.shutdown()\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-c", script, str(home)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["frameworks"]["sklearn"] > 50 * MiB
    assert 0 < found["version"] < 20 * MiB
    assert 'modelyard_framework_memory_bytes{framework="sklearn"}' in found["metrics"]


def test_serve_reads_idle_unload_as_a_duration(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelyard.serving import command, server

    seen: list[ServeOptions] = []
    monkeypatch.setattr(server, "serve", lambda *a, options, **kw: seen.append(options))
    monkeypatch.setattr(command, "_check_registry", lambda settings: None)
    result = CliRunner().invoke(command.serve, ["--idle-unload", "10m", "--max-memory", "2GiB"])
    assert result.exit_code == 0, result.output
    assert seen[0].idle_unload_s == 600.0 and seen[0].max_memory == 2 * 1024**3
    bad = CliRunner().invoke(command.serve, ["--idle-unload", "soon"])
    assert bad.exit_code == 2 and "duration" in bad.output
    with pytest.raises(Exception, match="idle_unload_s"):
        ServeOptions(idle_unload_s=0)
