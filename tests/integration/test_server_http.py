"""A real ``python -m modelyard.serving`` process on a free port: native REST,
``tritonclient.http`` against the OIP v2 routes, and hot swap under concurrent load."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import (
    register_constant,
    register_hgb,
    register_mlp,
    register_text,
)

pytestmark = pytest.mark.integration

N_FEATURES = 4


@dataclass
class Server:
    url: str
    host_port: str
    home: Path
    process: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, *args: str, timeout_s: float = 180.0) -> Server:
    """Start the server process and wait until ``/readyz`` answers 200."""
    port = free_port()
    env = {**os.environ, "MODELYARD_HOME": str(home), "OMP_NUM_THREADS": "1"}
    with open(home / f"server-{port}.log", "wb") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.serving", "--port", str(port),
             "--log-level", "warning", *args], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {(home / f'server-{port}.log').read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return Server(url, f"127.0.0.1:{port}", home, process)
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("server did not become ready")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("server") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=10, n_features=N_FEATURES)
        register_text(reg, "sentiment")
        register_mlp(reg, "mlp", sizes=(8, 16, 3))
        register_constant(reg, "flip", 1)
        register_constant(reg, "flip", 2, promote=False)
    server = start_server(home, "--body-timeout", "1")
    yield server
    stop_server(server)


def test_predict_over_http(server: Server) -> None:
    row = {f"f{i}": 0.5 for i in range(N_FEATURES)}
    with httpx.Client(base_url=server.url) as c:
        r = c.post("/v1/models/tabular/predict", json={"records": [row, row], "scores": True})
        assert r.status_code == 200, r.text
        assert r.headers["x-model-version"] == "1" and len(r.json()["scores"]) == 2
        assert c.post("/v1/models/tabular/predict", json={"records": [{}]}).status_code == 422
        assert c.post("/v1/models/nope/predict", json={}).status_code == 404
        assert c.post("/v1/models/tabular/predict", content=b"x" * (17 * 1024 * 1024),
                      headers={"content-type": "application/json"}).status_code == 413
        assert "modelyard_requests_total" in c.get("/metrics").text


def test_a_stalled_body_is_answered_408_and_its_connection_closed(server: Server) -> None:
    host, _, port = server.host_port.partition(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/tabular/predict HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"records": [')  # and then nothing: the client hangs mid-body
        answer = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"connection: close" in head.lower()
    assert b"stopped arriving" in body
    with httpx.Client(base_url=server.url) as c:  # the server itself answers as before
        assert c.get("/healthz").status_code == 200


def test_tritonclient_http(server: Server) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(url=server.host_port)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"][0]["name"] == "input" and client.is_model_ready("mlp")

    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    for binary in (True, False):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        outs = [httpclient.InferRequestedOutput("predictions", binary_data=binary),
                httpclient.InferRequestedOutput("scores", binary_data=binary)]
        result = client.infer("mlp", [inp], outputs=outs)
        assert result.as_numpy("predictions").shape == (3,)
        np.testing.assert_allclose(result.as_numpy("scores").sum(axis=1), 1.0, rtol=1e-5)

    text = np.array(["great stuff", "awful"], dtype=object)
    inp = httpclient.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(text)
    result = client.infer("sentiment", [inp])  # no outputs named: all of them, binary
    assert [v.decode() for v in result.as_numpy("predictions")] == ["pos", "neg"]

    cols = [httpclient.InferInput(f"f{i}", [2], "FP64") for i in range(N_FEATURES)]
    for col in cols:
        col.set_data_from_numpy(np.array([0.1, -0.3]))
    assert client.infer("tabular", cols, model_version="1").as_numpy("predictions").shape == (2,)

    index = client.get_model_repository_index()
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index
    client.unload_model("mlp")
    assert not client.is_model_ready("mlp")
    client.load_model("mlp")
    assert client.is_model_ready("mlp")

    bad = httpclient.InferInput("wrong", [1, 8], "FP32")
    bad.set_data_from_numpy(x[:1])
    with pytest.raises(InferenceServerException, match="input"):
        client.infer("mlp", [bad])
    client.close()


def test_hot_swap_under_load_fails_no_request(server: Server) -> None:
    """Move ``flip@production`` 1 -> 2 -> 1 from another process while 4 clients hammer it."""
    stop = threading.Event()
    failures: list[str] = []
    seen: list[tuple[float, int]] = []
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post("/v1/models/flip/predict", json={"instances": [[0, 0, 0]]})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code}: {r.text}")
                        continue
                    with lock:
                        seen.append((time.monotonic(), r.json()["predictions"][0]))
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    def move(version: int) -> float:
        code = ("import sys; from modelyard.registry import Registry; "
                "r = Registry.open(); r.set_alias('flip', 'production', int(sys.argv[1]))")
        env = {**os.environ, "MODELYARD_HOME": str(server.home)}
        subprocess.run([sys.executable, "-c", code, str(version)], env=env, check=True)
        return time.monotonic()

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        moves = []
        for version in (2, 1):
            moved_at = move(version)
            moves.append((moved_at, version))
            time.sleep(2.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert len(seen) > 50
    for moved_at, version in moves:
        switched = next(t for t, v in seen if t > moved_at and v == version)
        late = switched - moved_at
        assert late < 2.0, f"version {version} served {late:.2f}s after the move"
        later = [v for t, v in seen if t > switched + 0.2 and t < moved_at + 2.4]
        assert set(later) <= {version}  # no flapping back once switched


def test_tritonclient_grpc(server: Server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    grpc_port = free_port()
    other = start_server(server.home, "--grpc-port", str(grpc_port), "--no-preload")
    try:
        client = grpcclient.InferenceServerClient(url=f"127.0.0.1:{grpc_port}")
        assert client.is_server_live() and client.is_server_ready()
        assert "model_repository" in client.get_server_metadata().extensions
        meta = client.get_model_metadata("mlp", as_json=True)
        assert meta["inputs"][0]["name"] == "input"

        x = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
        inp = grpcclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("mlp", [inp], outputs=[
            grpcclient.InferRequestedOutput("predictions"),
            grpcclient.InferRequestedOutput("scores")])
        assert result.as_numpy("predictions").shape == (2,)
        np.testing.assert_allclose(result.as_numpy("scores").sum(axis=1), 1.0, rtol=1e-5)
        assert client.is_model_ready("mlp")

        text = grpcclient.InferInput("text", [2], "BYTES")
        text.set_data_from_numpy(np.array(["great", "awful"], dtype=object))
        out = client.infer("sentiment", [text]).as_numpy("predictions")
        assert [v.decode() for v in out] == ["pos", "neg"]

        index = client.get_model_repository_index(as_json=True)["models"]
        assert any(m["name"] == "mlp" and m.get("state") == "READY" for m in index)
        client.unload_model("mlp")
        assert not client.is_model_ready("mlp")
        client.load_model("mlp")
        assert client.is_model_ready("mlp")

        bad = grpcclient.InferInput("wrong", [1, 8], "FP32")
        bad.set_data_from_numpy(x[:1])
        with pytest.raises(InferenceServerException, match="INVALID_ARGUMENT"):
            client.infer("mlp", [bad])
        with pytest.raises(InferenceServerException, match="NOT_FOUND"):
            client.infer("nope", [inp])
        client.close()
    finally:
        stop_server(other)
