"""The image's HEALTHCHECK: 0 when the server's /healthz answers 200, 1 otherwise."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from modelyard.deploy import healthcheck
from modelyard.serving.process import free_port


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # quiet
        pass


@pytest.fixture()
def server() -> Iterator[int]:
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def test_healthy_only_on_a_200(server: int) -> None:
    assert healthcheck.healthy(f"http://127.0.0.1:{server}/healthz")
    assert not healthcheck.healthy(f"http://127.0.0.1:{server}/readyz")  # a 503
    assert not healthcheck.healthy(f"http://127.0.0.1:{free_port()}/healthz", timeout_s=1)


def test_main_asks_the_port_the_server_listens_on(server: int, monkeypatch) -> None:
    monkeypatch.setenv("MODELYARD_PORT", str(server))
    assert healthcheck.main() == 0
    monkeypatch.setenv("MODELYARD_PORT", str(free_port()))
    assert healthcheck.main() == 1
