"""What the ``modelyard consume`` tests share: a registry with probe models, consumer processes
(the ``consumers`` fixture, which also carries the small helpers), and the brokers' addresses,
where a broker missing under ``CI`` fails instead of skipping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import register_probe

#: the probe answers ``2 * x[0]``; ``slow`` takes 20 ms a batch, so a kill lands mid-stream.
N_FEATURES = 3


def unique(prefix: str) -> str:
    """A queue, stream, subject or topic name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def service_missing(name: str, address: str, reason: object) -> NoReturn:
    """Skip a test whose broker is not running here; fail under ``CI``, where it must be."""
    message = f"{name} at {address} is not usable: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + " (CI is set, so this fails instead of skipping)")
    pytest.skip(message)


def require_port(name: str, host: str, port: int) -> None:
    """Skip (fail under CI) unless something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        service_missing(name, f"{host}:{port}", exc)


def make_home(tmp_path: Path) -> Path:
    """A registry with ``probe`` and ``slow`` (both promoted to production)."""
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_probe(reg, "probe", n_features=N_FEATURES)
        register_probe(reg, "slow", n_features=N_FEATURES, delay_s=0.02)
    return home


@dataclass
class Consumers:
    """``modelyard consume`` processes of one test; every one is stopped at the end."""

    home: Path
    logs: Path
    started: list[tuple[subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def start(self, url: str, queue: str, *args: str, ready: str = "consuming ") -> \
            subprocess.Popen[bytes]:
        """Start a consumer and wait until it consumes (its log says so)."""
        cli = Path(sys.executable).with_name("modelyard")
        log = self.logs / f"consumer-{len(self.started)}.log"
        env = {**os.environ, "MODELYARD_HOME": str(self.home), "OMP_NUM_THREADS": "1",
               "MODELYARD_PREDICTION_LOG": "off"}
        with open(log, "wb") as out:
            process = subprocess.Popen([str(cli), "consume", url, "--queue", queue, *args],
                                       env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started.append((process, log))
        wait_until(lambda: _says(process, log, ready), 120, f"consumer log {log}")
        return process

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        """What ``process`` wrote so far."""
        return next(log for p, log in self.started if p is process).read_text()

    def stop(self, process: subprocess.Popen[bytes]) -> int:
        """SIGTERM, and the exit status once it has finished what it held."""
        process.send_signal(signal.SIGTERM)
        return process.wait(60)

    def close(self) -> None:
        """Kill whatever still runs."""
        for process, _ in self.started:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    @staticmethod
    def unique(prefix: str) -> str:
        """A queue, stream, subject or topic name no other test uses."""
        return unique(prefix)

    @staticmethod
    def row(value: float) -> list[float]:
        """One probe input row whose answer is ``2 * value``."""
        return [value] + [0.0] * (N_FEATURES - 1)

    @staticmethod
    def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
        """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
        wait_until(condition, timeout_s, what)


def _says(process: subprocess.Popen[bytes], log: Path, text: str) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"consumer exited ({process.returncode}): {log.read_text()}")
    return text in log.read_text()


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture()
def consumers(tmp_path: Path) -> Iterator[Consumers]:
    """A registry with probe models and a starter of consumer processes over it."""
    group = Consumers(make_home(tmp_path), tmp_path)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture()
def rabbit_url() -> str:
    """The RabbitMQ on this machine."""
    require_port("RabbitMQ", "127.0.0.1", 5672)
    return "amqp://guest:guest@127.0.0.1:5672/"


@pytest.fixture()
def redis_url() -> str:
    """The Redis on this machine."""
    require_port("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379"


@pytest.fixture()
def nats_url() -> str:
    """The NATS server (with JetStream) on this machine."""
    require_port("NATS", "127.0.0.1", 4222)
    return "nats://127.0.0.1:4222"
