"""A rolling restart the way Kubernetes does one, under load, through a real load balancer.

Two ``modelyard serve`` replicas (separate processes and ports, their prediction log in the
database) share one PostgreSQL registry behind HAProxy, which health-checks ``/readyz`` as a
Kubernetes Service's readiness probe would. Client threads keep predicting through HAProxy on
keep-alive connections, each request with a unique id, while the replicas are restarted one by
one: SIGTERM, wait for the exit, start it again, wait until HAProxy has it back. Every request
must be answered 200, and every answered request id must be in the prediction log afterwards.

What makes that hold is the drain (``--drain``): on SIGTERM a replica's ``/readyz`` turns 503
while it still accepts and answers, so HAProxy takes it out (two failed checks 100 ms apart)
before it stops accepting; only then are its idle keep-alive connections closed. HAProxy retries
only what never reached a replica (``retries`` on connection failures, with ``redispatch``), so
no request is answered twice.

Needs ``haproxy`` (Debian package ``haproxy``; ``.ci/run`` installs it): skipped without it,
except under ``CI``, where it fails.
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from modelyard.config import Settings
from modelyard.monitoring.logstore import DatabaseStore
from modelyard.registry import Registry
from modelyard.serving.process import free_port
from modelyard.testing import ServerProcess, register_hgb

pytestmark = pytest.mark.integration

REPLICAS = 2
#: every replica is restarted this many times, one replica at a time.
ROUNDS = 1
CLIENTS = 3
DRAIN_S = 1.5
GRACE_S = 15.0
N_FEATURES = 4
BODY = orjson.dumps({"records": [{f"f{i}": 0.1 * i for i in range(N_FEATURES)}]})

HAPROXY_CONFIG = """\
global
    maxconn 1000

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    # a slow answer on a busy machine is no failed check: only a 503 or a refusal is
    timeout check 2s
    # a request that reached no replica (connection refused) goes to another one
    retries 3
    option redispatch 1

frontend models
    bind 127.0.0.1:{port}
    default_backend replicas

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 100ms fastinter 100ms downinter 100ms fall 2 rise 2
{servers}
"""


def haproxy() -> str:
    """The ``haproxy`` program; skipped (failed under CI) when it is not installed."""
    found = shutil.which("haproxy", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
    if found is None:
        message = "haproxy is not installed (apt-get install haproxy)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)
    return found


class Balancer:
    """HAProxy in front of the replicas' ports, with its stats page for the servers' states."""

    def __init__(self, program: str, folder: Path, ports: list[int]) -> None:
        self.port, self.stats_port = free_port(), free_port()
        servers = "\n".join(f"    server r{i} 127.0.0.1:{p} check" for i, p in enumerate(ports))
        config = folder / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(port=self.port, stats_port=self.stats_port,
                                                servers=servers))
        self.log = folder / "haproxy.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen([program, "-db", "-f", str(config)],
                                            stdout=out, stderr=subprocess.STDOUT)

    def stats(self) -> dict[str, dict[str, str]]:
        """The backend's rows of HAProxy's CSV stats, by server name (and ``BACKEND``)."""
        url = f"http://127.0.0.1:{self.stats_port}/stats;csv"
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode().lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "replicas"}

    def wait_up(self, server: str, timeout_s: float = 30.0) -> None:
        """Until HAProxy sends traffic to ``server`` (its checks say UP)."""
        wait_for(lambda: self._status(server) == "UP", timeout_s, f"HAProxy to take {server}")

    def _status(self, server: str) -> str | None:
        if self.process.poll() is not None:
            raise AssertionError(f"haproxy exited: {self.log.read_text()}")
        try:
            return self.stats()[server]["status"]
        except OSError:  # not listening yet
            return None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Load:
    """Client threads predicting through the balancer on keep-alive connections, each request
    with a unique id, until stopped; what each answer was."""

    def __init__(self, port: int, clients: int = CLIENTS) -> None:
        self.port = port
        self.stopping = threading.Event()
        self.answered: list[str] = []  # request ids answered 200
        self.failed: list[tuple[str, str]] = []  # request id, what went wrong
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                        for n in range(clients)]

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def _client(self, n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        while not self.stopping.is_set():
            request_id = f"c{n}-{i}"
            i += 1
            try:
                conn.request("POST", "/v1/models/tabular/predict", BODY, {
                    "content-type": "application/json", "x-request-id": request_id})
                r = conn.getresponse()
                body = r.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failed.append((request_id, repr(exc)))
                conn.close()  # a new connection for the next request
                continue
            if r.status == 200:
                self.answered.append(request_id)
            else:
                self.failed.append((request_id, f"{r.status} {body[:200]!r}"))
        conn.close()


def wait_for(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture()
def home(tmp_path: Path, pg_url: str) -> Path:
    """A registry on PostgreSQL holding one small scikit-learn model in production."""
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, db_url=pg_url, actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=10, n_features=N_FEATURES)
    return home


def replica(home: Path, pg_url: str, port: int) -> ServerProcess:
    """A replica on ``port`` (not waited for), logging every prediction to the database."""
    return ServerProcess(home, port=port, env={"MODELYARD_DB": pg_url}, wait=False, args=(
        "--prediction-log", "db", "--drain", str(DRAIN_S), "--grace", str(GRACE_S)))


def restart(server: ServerProcess, home: Path, pg_url: str) -> tuple[ServerProcess, float]:
    """What Kubernetes does to a pod of a rolling update: SIGTERM, wait for the exit, start
    the new one. The new replica, and how long the old one took to exit."""
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    status = server.process.wait(DRAIN_S + GRACE_S + 5)
    took = time.monotonic() - started
    assert status == 0, server.log.read_text()
    assert took >= DRAIN_S, f"exited {took:.2f} s after SIGTERM, before its drain ended"
    fresh = replica(home, pg_url, server.port)
    fresh.wait_ready()
    return fresh, took


@contextlib.contextmanager
def replicas(home: Path, pg_url: str) -> Iterator[list[ServerProcess]]:
    servers = [replica(home, pg_url, free_port()) for _ in range(REPLICAS)]
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop(DRAIN_S + GRACE_S + 5)


def logged_ids(home: Path, pg_url: str, ids: list[str]) -> set[str]:
    """Which of ``ids`` the prediction log in PostgreSQL holds."""
    with Registry.open(Settings.from_env(home=home, db_url=pg_url)) as reg:
        store = DatabaseStore(reg)
        found: set[str] = set()
        for start in range(0, len(ids), 5000):
            found.update(p.request_id for p in store.find("tabular", ids[start:start + 5000]))
        return found


@pytest.mark.timeout(180)
def test_a_rolling_restart_behind_haproxy_fails_no_request_and_loses_no_log_row(
        home: Path, pg_url: str, tmp_path: Path) -> None:
    program = haproxy()
    with replicas(home, pg_url) as servers:
        balancer = Balancer(program, tmp_path, [s.port for s in servers])
        try:
            for i in range(REPLICAS):
                balancer.wait_up(f"r{i}")
            exits = []
            with Load(balancer.port) as load:
                time.sleep(1.0)
                for _ in range(ROUNDS):
                    for i in range(REPLICAS):
                        servers[i], took = restart(servers[i], home, pg_url)
                        exits.append(took)
                        balancer.wait_up(f"r{i}")
                        time.sleep(0.5)  # both serve again before the next goes
                time.sleep(1.0)
            backend = balancer.stats()["BACKEND"]
        finally:
            balancer.stop()
    # every replica has exited (SIGTERM), so each flushed its prediction log
    found = logged_ids(home, pg_url, load.answered)
    missing = sorted(set(load.answered) - found)
    print(f"\nrolling restart: {len(load.answered) + len(load.failed)} requests through "
          f"HAProxy, {len(load.failed)} failed; {len(exits)} restarts of {REPLICAS} replicas "
          f"(exit after SIGTERM {min(exits):.2f}-{max(exits):.2f} s, drain {DRAIN_S} s); "
          f"{len(found)} of {len(load.answered)} answered request ids in the prediction log; "
          f"HAProxy retried {backend['wretr']} and redispatched {backend['wredis']}")
    assert load.answered and not load.failed, load.failed[:10]
    assert not missing, f"{len(missing)} answered requests are not logged: {missing[:10]}"
