"""Schemathesis over ``/openapi.json`` against a real ``modelyard serve`` process.

Every operation of the document gets valid and invalid requests (a few hundred in all, the same
ones every run: hypothesis is derandomized), once without a token and once with the server's
``MODELYARD_TOKEN``. Each answer must be no 5xx, have a status the document lists for that
operation, and match the schema documented for that status.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.testing import register_hgb, register_mlp

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token"
#: models the server serves; each operation with a {name} is also fuzzed against each of them.
MODELS = ("tabular", "mlp")
#: generated requests per operation, per generation mode and per model name.
EXAMPLES = 3


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=5, n_features=4)
        register_hgb(reg, "tabular", max_iter=6, n_features=4, promote=False)
        register_mlp(reg, "mlp", sizes=(8, 16, 3))
    port = _free_port()
    log = home / "server.log"
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_TOKEN": TOKEN,
           "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelyard.serving", "--port", str(port), "--log-level",
             "warning", "--body-timeout", "2"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not become ready: {log.read_text()}")
        time.sleep(0.2)
    yield Server(url, process, log)
    process.terminate()
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _fuzz(server: Server, headers: dict[str, str]) -> tuple[int, list[str]]:
    """Run every operation's strategies; ``(requests sent, failures)``."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, response_schema_conformance]
    failures: list[str] = []
    sent = 0

    def run(strategy: Any) -> None:
        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def each(case: Any) -> None:
            nonlocal sent
            sent += 1
            try:
                case.call_and_validate(base_url=server.url, headers=headers, checks=checks,
                                       timeout=30)
            except (Exception, BaseExceptionGroup) as exc:  # collected, not raised: no
                failures.append(_describe(case, exc))  # shrinking, and every failure is seen

        with contextlib.suppress(Unsatisfiable):  # an operation without inputs has no
            each()  # invalid request

    for result in schema.get_all_operations():
        operation = result.ok()
        names = [None, *MODELS] if "{name}" in operation.path else [None]
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            for name in names:
                fixed = {"name": name} if name else None
                if fixed and "{version}" in operation.path:
                    fixed["version"] = "1"
                run(operation.as_strategy(generation_mode=mode, path_parameters=fixed))
    return sent, failures


def _describe(case: Any, exc: BaseException) -> str:
    parts = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
    what = "; ".join(" ".join(str(p).split())[:300] for p in parts)
    body = case.body if not isinstance(case.body, bytes) else case.body[:200]
    return f"{case.method} {case.formatted_path} query={case.query} body={str(body)[:200]}: {what}"


@pytest.mark.parametrize("authorized", [False, True], ids=["no-token", "token"])
def test_every_answer_matches_the_openapi_document(server: Server, authorized: bool) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}"} if authorized else {}
    sent, failures = _fuzz(server, headers)
    assert sent >= 200
    assert not failures, f"{len(failures)} of {sent} requests broke the contract:\n" + "\n".join(
        failures[:40])
    assert server.process.poll() is None, server.log.read_text()
