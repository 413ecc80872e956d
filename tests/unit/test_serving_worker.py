"""Device workers: the pipe protocol against real worker processes (a framework-free probe model),
the supervisor's restart logic against a fake worker, and a worker-hosted version behind the
in-process app (503 at once when it dies, readiness, restart, clean shutdown)."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.adapters import get_adapter
from modelyard.config import Settings
from modelyard.errors import AdapterError, DeviceError, WorkerDiedError, WorkerUnavailableError
from modelyard.predictor import Prediction, open_version
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.serving.batching import BatchPolicy
from modelyard.serving.metrics import ServerMetrics
from modelyard.serving.runner import choose_isolation, serving_spec
from modelyard.serving.supervisor import ProcessRunner, metadata_predictor, restart_delay
from modelyard.serving.worker import (
    Worker,
    WorkerSpec,
    exit_reason,
    rebuild,
)
from modelyard.spec import ServingSpec
from modelyard.testing import register_probe

pytestmark = pytest.mark.anyio

ISOLATED = {"serving": {"isolation": "process"}}
X = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
POISON, HANG = np.array([[-1.0, 0.0, 0.0]]), np.array([[-2.0, 0.0, 0.0]])


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("serving-worker") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_probe(reg, "probe", meta=ISOLATED)
        register_probe(reg, "broken", fail_load=True, meta=ISOLATED)
        yield reg


def spec_for(registry: Registry, name: str, device: str = "cpu") -> WorkerSpec:
    record = registry.get_version(name, 1)
    return WorkerSpec.from_record(record, registry.artifact_path(record), device)


async def started(spec: WorkerSpec, on_exit: Any = None) -> Worker:
    worker = Worker(spec)
    await asyncio.to_thread(worker.start)
    worker.attach(asyncio.get_running_loop(), on_exit)
    return worker


def gone(pid: int) -> bool:
    """Whether ``pid`` is no longer a running process (exited, or a zombie nobody reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- decisions ----------------------------------------------------------------------------------
def _never() -> int:
    raise AssertionError("the GPU count was asked although it cannot change the answer")


@pytest.mark.parametrize(("isolation", "device", "accelerated", "gpus", "expected"), [
    ("process", "cpu", False, _never, "process"),
    ("inline", "cuda:0", True, _never, "inline"),
    ("auto", "cpu", True, _never, "inline"),
    ("auto", "cuda:1", True, _never, "process"),
    ("auto", "auto", True, lambda: 1, "process"),
    ("auto", "auto", True, lambda: 0, "inline"),
    ("auto", "auto", False, _never, "inline"),
])
def test_choose_isolation(isolation: str, device: str, accelerated: bool,
                          gpus: Callable[[], int], expected: str) -> None:
    spec = ServingSpec.model_validate({"isolation": isolation, "device": device})
    assert choose_isolation(spec, accelerated=accelerated, gpu_count=gpus) == expected


def test_serving_spec_reads_isolation_and_helpers_say_why() -> None:
    assert serving_spec(ISOLATED).isolation == "process"
    assert serving_spec({}).isolation == "auto"
    assert [restart_delay(i) for i in (0, 1, 2, 50)] == [0.0, 0.5, 1.0, 8.0]
    assert exit_reason(-9) == "was killed by SIGKILL" and exit_reason(3) == "exited with code 3"
    assert isinstance(rebuild("DeviceError", "no gpu"), DeviceError)
    other = rebuild("ZeroDivisionError", "division by zero")
    assert isinstance(other, AdapterError) and "ZeroDivisionError" in str(other)
    died = pickle.loads(pickle.dumps(WorkerDiedError("gone", retry_after=3)))
    assert died.status_code == 503 and died.retry_after == 3


# -- the worker process -------------------------------------------------------------------------
async def test_worker_predicts_like_in_process_and_a_bad_batch_fails_alone(
        registry: Registry) -> None:
    spec = spec_for(registry, "probe")
    worker = await started(spec)
    try:
        assert worker.info["device"] == "cpu" and worker.info["pid"] not in (None, os.getpid())
        local = open_version(registry.get_version("probe", 1), registry, device="cpu")
        got = await worker.predict(X, True)
        np.testing.assert_array_equal(got.predictions, local.predict_batch(X).predictions)
        with pytest.raises(AdapterError, match="poisoned"):
            await worker.predict(POISON)
        assert (await worker.predict(X)).predictions.tolist() == [2.0, 8.0]
    finally:
        await asyncio.to_thread(worker.stop)
    assert worker.process is not None and worker.process.returncode == 0


async def test_load_failures_are_errors_not_hangs(registry: Registry) -> None:
    broken = Worker(spec_for(registry, "broken"))
    with pytest.raises(AdapterError, match="broken on purpose"):
        await asyncio.to_thread(broken.start)
    wrong = Worker(spec_for(registry, "probe", device="cuda:1"))
    with pytest.raises(DeviceError, match="cpu only"):
        await asyncio.to_thread(wrong.start)
    for worker in (broken, wrong):
        assert worker.process is not None and worker.process.returncode is not None


async def test_a_killed_worker_fails_its_call_at_once_and_reports_why(
        registry: Registry) -> None:
    exits: list[str] = []
    worker = await started(spec_for(registry, "probe"), lambda _w, why: exits.append(why))
    pending = asyncio.ensure_future(worker.predict(HANG))
    await asyncio.sleep(0.3)  # the call is in the worker, sleeping
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="SIGKILL"):
        await pending
    assert time.monotonic() - start < 1.0
    assert exits == ["was killed by SIGKILL"]
    with pytest.raises(WorkerDiedError):
        await worker.predict(X)
    await asyncio.to_thread(worker.stop)


async def test_a_call_that_hangs_past_its_timeout_kills_the_worker(registry: Registry) -> None:
    worker = await started(spec_for(registry, "probe"))
    start = time.monotonic()
    with pytest.raises(WorkerDiedError):
        await worker.predict(HANG, timeout_s=0.3)
    assert time.monotonic() - start < 2.0
    await asyncio.to_thread(worker.stop)


def test_an_orphaned_worker_exits_when_its_server_dies(registry: Registry) -> None:
    code = ("import pickle, sys, time\n"
            "from modelyard.serving.worker import Worker\n"
            "w = Worker(pickle.loads(bytes.fromhex(sys.argv[1])))\n"
            "w.start()\n"
            "print(w.pid, flush=True)\n"
            "time.sleep(60)\n")
    server = subprocess.Popen(
        [sys.executable, "-c", code, pickle.dumps(spec_for(registry, "probe")).hex()],
        stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None
        pid = int(server.stdout.readline())
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


# -- supervision (a fake worker: no processes) --------------------------------------------------
class FakeWorker:
    """Answers ``2 * x[:, 0]``; ``hold`` keeps calls in flight until ``die``."""

    _pids = itertools.count(1000)

    def __init__(self, hold: bool = False) -> None:
        self.pid = next(self._pids)
        self.hold = hold
        self.stopped = False
        self._held: list[asyncio.Future[Any]] = []
        self._on_exit: Any = None

    def attach(self, loop: asyncio.AbstractEventLoop, on_exit: Any = None) -> None:
        self._on_exit = on_exit

    async def predict(self, batch: Any, scores: bool = False,
                      timeout_s: float | None = None) -> Prediction:
        if self.hold:
            held = asyncio.get_running_loop().create_future()
            self._held.append(held)
            await held
        return Prediction(np.asarray(batch)[:, 0] * 2)

    def die(self) -> None:
        for held in self._held:
            held.set_exception(WorkerDiedError("killed"))
        self._on_exit(self, "was killed by SIGKILL")

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped = True


def make_runner(registry: Registry, first: FakeWorker, spawn: Any,
                **kwargs: Any) -> tuple[ProcessRunner, ServerMetrics]:
    record = registry.get_version("probe", 1)
    metrics = ServerMetrics()
    vm = metrics.for_version("probe", "1")
    runner = ProcessRunner(
        metadata_predictor(record, get_adapter("python"), "cpu"),
        BatchPolicy(max_batch_size=1, max_queue=10, timeout_s=10), first,  # type: ignore[arg-type]
        spawn=spawn, observe=vm.observe_batch, **kwargs)
    runner.metrics = vm
    return runner, metrics


def restarts(metrics: ServerMetrics) -> float | None:
    return metrics.registry.get_sample_value("modelyard_worker_restarts_total",
                                             {"model": "probe", "version": "1"})


async def until(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def test_supervisor_fails_in_flight_and_queued_at_once_then_restarts(
        registry: Registry) -> None:
    first, second = FakeWorker(hold=True), FakeWorker()
    gate = threading.Event()

    def spawn() -> FakeWorker:
        gate.wait(5)
        return second

    runner, metrics = make_runner(registry, first, spawn)
    runner.start()
    row = runner.prepare([[1.0, 2.0, 3.0]])
    futures = [runner.submit(*row) for _ in range(3)]  # one in flight (held), two queued
    await asyncio.sleep(0.05)
    first.die()
    start = time.monotonic()
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert time.monotonic() - start < 0.5
    assert all(isinstance(r, WorkerDiedError) for r in results), results
    assert runner.state == "restarting" and not runner.healthy
    with pytest.raises(WorkerUnavailableError) as refused:
        runner.submit(*row)
    assert refused.value.status_code == 503 and refused.value.retry_after >= 1
    gate.set()
    await until(lambda: runner.healthy)
    assert (await runner.predict(*runner.prepare([[3.0, 0.0, 0.0]]))).predictions.tolist() == [6.0]
    assert restarts(metrics) == 1.0
    assert metrics.registry.get_sample_value(
        "modelyard_worker_up", {"model": "probe", "version": "1"}) == 1.0
    await runner.close()
    assert second.stopped and runner.state == "closed"


async def test_supervisor_gives_up_after_bounded_attempts(registry: Registry) -> None:
    def spawn() -> FakeWorker:
        raise AdapterError("cannot load")

    given_up: list[Any] = []
    runner, metrics = make_runner(registry, FakeWorker(), spawn, max_restarts=2,
                                  on_give_up=given_up.append)
    runner.start()
    runner.worker.die()  # type: ignore[attr-defined]
    await until(lambda: runner.state == "failed")
    assert given_up == [runner] and restarts(metrics) == 2.0
    assert "cannot load" in runner.last_error
    await runner.close()


async def test_unloading_during_a_restart_stops_the_new_worker(registry: Registry) -> None:
    new = FakeWorker()
    gate = threading.Event()

    def spawn() -> FakeWorker:
        gate.wait(5)
        return new

    runner, _ = make_runner(registry, FakeWorker(), spawn)
    runner.start()
    runner.worker.die()  # type: ignore[attr-defined]
    await asyncio.sleep(0.05)
    closing = asyncio.ensure_future(runner.close())
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.wait_for(closing, 5)
    assert new.stopped and runner.worker is not new


# -- a worker-hosted version behind the app -----------------------------------------------------
async def test_app_answers_503_at_once_when_the_worker_dies_then_recovers(
        registry: Registry) -> None:
    app = create_app(registry, ServeOptions(poll_interval_s=3600, worker_max_restarts=3))
    await app.startup()
    try:
        await app.wait_ready()
        runner = await check_death_and_recovery(app)
    finally:
        await app.shutdown()
    assert app.catalog.runner_now("probe") is None
    process = runner.worker.process  # the restarted worker: stopped and reaped on shutdown
    assert process is not None and process.returncode == 0


async def check_death_and_recovery(app: App) -> ProcessRunner:
    runner = app.catalog.runner_now("probe")
    assert isinstance(runner, ProcessRunner) and runner.worker.pid is not None
    pid = runner.worker.pid
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
        r = await c.post("/v1/models/probe/predict", json={"instances": X.tolist()})
        assert r.status_code == 200 and r.json()["predictions"] == [2.0, 8.0]
        assert (await c.get("/readyz")).status_code == 200
        stuck = asyncio.ensure_future(
            c.post("/v1/models/probe/predict", json={"instances": HANG.tolist()}))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        start = time.monotonic()
        r = await stuck
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert time.monotonic() - start < 1.0
        assert "SIGKILL" in r.json()["message"]
        ready = await c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["down"] == ["probe:1"]
        assert (await c.get("/v2/models/probe/ready")).status_code == 400
        r = await c.post("/v1/models/probe/predict", json={"instances": X.tolist()})
        assert r.status_code == 503 and "restarting" in r.json()["message"]

        await until(lambda: runner.healthy, 20)
        r = await c.post("/v1/models/probe/predict", json={"instances": X.tolist()})
        assert r.status_code == 200 and r.json()["predictions"] == [2.0, 8.0]
        assert (await c.get("/readyz")).status_code == 200
        text = (await c.get("/metrics")).text
        assert 'modelyard_worker_restarts_total{model="probe",version="1"} 1.0' in text
        assert 'modelyard_worker_up{model="probe",version="1"} 1.0' in text

        r = await c.post("/v1/models/broken/predict", json={"instances": X.tolist()})
        assert r.status_code == 500 and "broken on purpose" in r.json()["message"]
    assert gone(pid)
    return runner
