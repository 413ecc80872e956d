"""A real server process with a PyTorch MLP in a device worker (``isolation: process``) beside
the same MLP inline: same answers; ``kill -9`` on the worker answers its requests 503 at once,
then it restarts and serves; nothing is left running when the server stops."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import register_mlp

pytestmark = pytest.mark.integration

SIZES = (8, 16, 3)
WORKER = {"serving": {"isolation": "process", "device": "cpu"}}
INLINE = {"serving": {"isolation": "inline", "device": "cpu"}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, timeout_s: float = 180.0) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``python -m modelyard.serving`` and wait until ``/readyz`` answers 200."""
    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    log = home / "server.log"
    with open(log, "wb") as out:  # the child keeps its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.serving", "--port", str(port),
             "--log-level", "warning"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return url, process
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise RuntimeError(f"server did not become ready: {log.read_text()}")


def workers_of(parent: int) -> list[int]:
    """Pids of the device workers whose parent is ``parent``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if ppid == parent and b"modelyard.serving.worker" in cmdline:
            found.append(int(entry))
    return found


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_killed_worker_answers_503_at_once_restarts_and_leaves_nothing_behind(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_mlp(reg, "inline", sizes=SIZES, meta=INLINE)
        register_mlp(reg, "isolated", sizes=SIZES, meta=WORKER)
    url, server = start_server(home)
    seen: set[int] = set()
    try:
        [first] = workers_of(server.pid)  # only the isolated model has a worker
        seen.add(first)
        x = np.random.default_rng(1).normal(size=(5, SIZES[0])).astype(np.float32).tolist()
        with httpx.Client(base_url=url, timeout=30) as c:
            body = {"instances": x, "scores": True}
            here = c.post("/v1/models/inline/predict", json=body).json()
            there = c.post("/v1/models/isolated/predict", json=body).json()
            assert there["predictions"] == here["predictions"]
            np.testing.assert_allclose(there["scores"], here["scores"], rtol=1e-6)

            # stop the worker so requests pile up (one in it, the rest queued), then kill it
            os.kill(first, signal.SIGSTOP)
            replies: list[tuple[int, float, str | None]] = []

            def ask() -> None:
                with httpx.Client(base_url=url, timeout=30) as own:
                    r = own.post("/v1/models/isolated/predict", json={"instances": x[:1]})
                replies.append((r.status_code, time.monotonic(), r.headers.get("retry-after")))

            threads = [threading.Thread(target=ask) for _ in range(6)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            assert not replies, "requests must wait while the worker is stopped"
            os.kill(first, signal.SIGKILL)
            killed = time.monotonic()
            for t in threads:
                t.join(10)
            assert [r[0] for r in replies] == [503] * 6
            assert max(r[1] for r in replies) - killed < 1.0
            assert {r[2] for r in replies} == {"1"}
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["down"] == ["isolated:1"]

            deadline = time.monotonic() + 45
            while True:
                r = c.post("/v1/models/isolated/predict", json=body)
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                time.sleep(0.2)
            assert r.status_code == 200 and r.json()["predictions"] == here["predictions"]
            assert c.get("/readyz").status_code == 200
            [second] = workers_of(server.pid)
            seen.add(second)
            assert second != first
            metrics = c.get("/metrics").text
            assert 'modelyard_worker_restarts_total{model="isolated",version="1"} 1.0' in metrics
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    deadline = time.monotonic() + 5
    while any(running(p) for p in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in seen if running(p)], "device workers outlived the server"
    # 0 after a graceful shutdown (uvicorn re-raised the SIGTERM it handled)
    assert server.returncode in (0, -signal.SIGTERM), (home / "server.log").read_text()


def _gpus() -> int:
    from modelyard.adapters.base import cuda_device_count

    return cuda_device_count()


@pytest.mark.skipif(_gpus() == 0, reason="needs a CUDA GPU: run this file on a GPU machine")
def test_a_cuda_worker_owns_its_gpu_and_the_server_never_initialises_cuda(
        tmp_path: Path) -> None:
    import asyncio

    import torch

    from modelyard.serving import ServeOptions, create_app
    from modelyard.serving.supervisor import ProcessRunner

    device = f"cuda:{_gpus() - 1}"  # the last GPU: an explicit index, not just the default one
    x = np.random.default_rng(2).normal(size=(64, SIZES[0])).astype(np.float32).tolist()
    body = {"instances": x, "scores": True}

    async def scenario(reg: Registry) -> None:
        app = create_app(reg, ServeOptions(poll_interval_s=3600))
        await app.startup()
        try:
            await app.wait_ready(180)
            runner = app.catalog.runner_now("gpu")
            assert isinstance(runner, ProcessRunner), "device auto-isolation must pick a worker"
            assert runner.predictor.device == device
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://m") as c:
                here = (await c.post("/v1/models/inline/predict", json=body)).json()
                there = (await c.post("/v1/models/gpu/predict", json=body)).json()
                assert there["predictions"] == here["predictions"]
                np.testing.assert_allclose(there["scores"], here["scores"], atol=1e-4)
                assert runner.worker.pid is not None
                os.kill(runner.worker.pid, signal.SIGKILL)
                for healthy, wait_s in ((False, 2), (True, 120)):  # down at once, then back
                    deadline = time.monotonic() + wait_s
                    while runner.healthy != healthy and time.monotonic() < deadline:
                        await asyncio.sleep(0.05)
                r = await c.post("/v1/models/gpu/predict", json=body)
                assert r.status_code == 200 and r.json()["predictions"] == here["predictions"]
        finally:
            await app.shutdown()

    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="tester")) as reg:
        register_mlp(reg, "inline", sizes=SIZES, meta=INLINE)
        register_mlp(reg, "gpu", sizes=SIZES, meta={"serving": {"device": device}})
        asyncio.run(scenario(reg))
    # the workers own the GPUs; a CUDA context in the server would break forked servers
    assert not torch.cuda.is_initialized()
