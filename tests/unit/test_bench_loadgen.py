"""The benchmark's open-loop HTTP client (``bench/loadgen.py http``): the p99 goals of
``bench/serve.py`` are read from it, so it must count every answer, every failure and every
millisecond a request waited for a free connection."""

from __future__ import annotations

import argparse
import importlib.util
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    """The script ``bench/{name}.py`` as a module (``bench/`` is no package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


loadgen = bench_module("loadgen")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects
    disable_nagle_algorithm = True  # the head and the body are two writes
    delay_s = 0.0
    fail_every = 0
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(body)
        time.sleep(self.delay_s)
        failed = self.fail_every and len(self.bodies) % self.fail_every == 0
        answer = b'{"error": "boom"}' if failed else b'{"predictions": [1]}'
        self.send_response(500 if failed else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"bodies": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def _run(port: int, tmp_path: Path, rate: float, seconds: float,
         connections: int) -> dict[str, float]:
    body = tmp_path / "body.json"
    body.write_bytes(b'{"instances": [[1.0, 2.0]]}')
    args = argparse.Namespace(port=port, path="/v1/models/m/predict", body=str(body), rate=rate,
                              seconds=seconds, connections=connections)
    return loadgen.http_run(args)  # type: ignore[no-any-return]


def test_every_scheduled_request_is_sent_answered_and_timed(server, tmp_path) -> None:
    port, handler = server
    handler.delay_s = 0.005
    got = _run(port, tmp_path, rate=200, seconds=1.0, connections=4)
    assert got["requests"] == 200 and got["errors"] == 0
    assert handler.bodies == [b'{"instances": [[1.0, 2.0]]}'] * 200
    assert 0.95 <= got["wall_s"] < 2.0 and got["rps"] > 100
    assert 5.0 <= got["p50"] <= got["p99"] <= got["max"]  # the server's 5 ms are in each


def test_failed_answers_count_as_errors(server, tmp_path) -> None:
    port, handler = server
    handler.fail_every = 4
    got = _run(port, tmp_path, rate=100, seconds=1.0, connections=2)
    assert got["requests"] == 100 and got["errors"] == 25


def test_a_request_waiting_for_a_free_connection_counts_its_wait(server, tmp_path) -> None:
    """Coordinated omission: one connection, a request due every 10 ms, each answered in 20 ms;
    the last is sent about a second after it was due, and its latency says so."""
    port, handler = server
    handler.delay_s = 0.02
    got = _run(port, tmp_path, rate=100, seconds=1.0, connections=1)
    assert got["requests"] == 100 and got["errors"] == 0
    assert got["max"] > 700  # ms: 100 answers of 20 ms in a schedule of one second
    assert got["p50"] > 100
