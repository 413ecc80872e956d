"""A real ``modelyard serve --workers 2``: ``/metrics`` counts every worker's requests, whichever
worker answers the scrape."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import register_probe

pytestmark = pytest.mark.integration

#: new connections per request: the kernel hands each to whichever worker accepts first.
MAX_REQUESTS = 400


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_probe(reg, "probe")
    port = free_port()
    cli = Path(sys.executable).with_name("modelyard")  # the console script of this environment
    shared = tmp_path / "metrics"  # the server makes a fresh folder of its own in there
    env = {**os.environ, "MODELYARD_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(cli), "serve", "--port", str(port), "--workers", "2", "--log-level", "warning"],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: ready(url, process, log), 120)
        (folder,) = shared.iterdir()
        assert folder.name.startswith("modelyard-metrics-")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert not list(shared.iterdir())  # the next start counts from zero


def ready(url: str, process: subprocess.Popen[bytes], log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"server exited: {log.read_text()}")
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: object, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def samples(url: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``name``'s samples in one scrape (a new connection), by their labels."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def test_metrics_count_every_workers_requests(server: str) -> None:
    answered_by: set[str] = set()
    sent = 0
    # Until both workers have answered (each names its process in its request ids' prefix),
    # and at least 40 requests: the counts below would pass with one worker alone otherwise.
    while sent < 40 or len(answered_by) < 2:
        assert sent < MAX_REQUESTS, f"only {answered_by} answered {sent} requests"
        r = httpx.post(server + "/v1/models/probe/predict",
                       json={"instances": [[1.0, 2.0, 3.0]]}, timeout=30)
        assert r.status_code == 200, r.text
        answered_by.add(r.json()["request_id"][:16])
        sent += 1

    for _ in range(6):  # several scrapes: whichever worker answers counts them all
        requests = samples(server, "modelyard_requests_total")
        assert sum(requests.values()) == sent, requests
        (labels,) = requests
        assert dict(labels) == {"model": "probe", "version": "1", "protocol": "v1",
                                "status": "200", "variant": "production"}
        durations = samples(server, "modelyard_request_duration_seconds_count")
        assert sum(durations.values()) == sent
        loaded = samples(server, "modelyard_model_loaded")
        assert loaded == {(("model", "probe"), ("version", "1")): 1.0}
    for _ in range(4):  # the console's overview too: whichever worker renders it
        page = httpx.get(server + "/ui/", timeout=10)
        assert page.status_code == 200, page.text[:300]
        assert re.search(rf'<td class="num">{sent:,}</td>', page.text), page.text[-3000:]
    # each worker's prediction log writes within a second or so of its requests
    wait_until(lambda: samples(server, "modelyard_prediction_log_written_total")
               .get((), 0) == sent, 30)
    text = httpx.get(server + "/metrics", timeout=10).text
    assert re.search(r"^modelyard_prediction_log_dropping 0\.0$", text, re.MULTILINE)
