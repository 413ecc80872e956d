"""``modelyard serve --workers 2``: both workers answer on one port, a killed worker is started
again, SIGTERM drains and stops them all, restarting none."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.serving import process
from modelyard.testing import ServerProcess

pytestmark = pytest.mark.integration


def answering_pids(url: str, want: int, timeout_s: float = 60) -> set[int]:
    """The pids ``/healthz`` names over new connections, until ``want`` differ (or time)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < want and time.monotonic() < deadline:
        try:  # a new connection each time: the kernel hands it to whichever worker accepts
            r = httpx.get(url + "/healthz", timeout=5)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        assert r.status_code == 200
        seen.add(r.json()["pid"])
    return seen


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_answer_and_a_killed_one_is_restarted(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry.open(Settings.from_env(home=home, actor="tester")).close()
    with ServerProcess(home, args=("--workers", "2")) as server:
        first = answering_pids(server.url, 2)
        assert len(first) == 2 and server.process.pid not in first
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        # the other worker answers throughout; a new one joins after the restart pause
        deadline = time.monotonic() + 60
        now = answering_pids(server.url, 2, timeout_s=5)
        while not now - first and time.monotonic() < deadline:
            now = answering_pids(server.url, 2, timeout_s=5)
        assert now - first, "no worker was started in place of the killed one"
        assert victim not in now and not running(victim)
        workers = sorted(now)
        assert len(workers) == 2
        server.stop()
        assert server.process.returncode == 0, server.log.read_text()
    deadline = time.monotonic() + 10
    while any(running(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if running(p)], "workers outlived the supervisor"


def test_sigterm_drains_every_worker_and_restarts_none(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Registry.open(Settings.from_env(home=home, actor="tester")).close()
    # at info level the supervisor logs each worker it starts
    with process.ServerProcess(home, args=("--workers", "2", "--drain", "4", "--grace", "5"),
                               env={"OMP_NUM_THREADS": "1"}, log_level="info") as server:
        workers = answering_pids(server.url, 2)
        assert len(workers) == 2
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # draining: every worker still accepts and answers, and says it is not ready
        during = set()
        for _ in range(12):  # new connections: the kernel hands each to either worker
            r = httpx.get(server.url + "/readyz", timeout=5)
            assert (r.status_code, r.json()["status"]) == (503, "draining")
            during.add(httpx.get(server.url + "/healthz", timeout=5).json()["pid"])
        assert time.monotonic() - started < 4
        assert during <= workers
        assert server.process.wait(15) == 0
        took = time.monotonic() - started
    log = server.log.read_text()
    assert 4 <= took < 12, log
    assert log.count("started (process") == 2, log  # none started again while stopping
    assert not [p for p in workers if running(p)]
