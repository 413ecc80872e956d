"""Schemathesis over ``/openapi.json`` against a real ``modelyard serve`` process.

Every operation of the document gets valid and invalid requests (a few hundred in all, the same
ones every run: hypothesis is derandomized), once without a token and once with the server's
``MODELYARD_TOKEN``; then against a server that enforces auth (API keys exist) with no key, a
viewer's key and a predictor's key. Each answer must be no 5xx, have a status the document
lists for that operation, and match the schema documented for that status; with auth on, no
route may answer 2xx to a caller whose role does not allow it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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


def _registry(home: Path, roles: tuple[str, ...] = ()) -> dict[str, str]:
    """The fuzzed models in a new registry at ``home``, and an API key for each of ``roles``."""
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "tabular", max_iter=5, n_features=4)
        register_hgb(reg, "tabular", max_iter=6, n_features=4, promote=False)
        register_mlp(reg, "mlp", sizes=(8, 16, 3))
        return {role: reg.keys.create_key(f"fuzz-{role}", role).secret for role in roles}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """No keys: open to predictions, mutations guarded by the one token."""
    home = tmp_path_factory.mktemp("fuzz") / "home"
    _registry(home)
    yield from _serve(home, {"MODELYARD_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server,
                                                                               dict[str, str]]]:
    """API keys exist: auth is enforced on every route but health and documents."""
    home = tmp_path_factory.mktemp("fuzz-keys") / "home"
    keys = _registry(home, ("viewer", "predictor"))
    for server in _serve(home, {}):
        yield server, keys


def _serve(home: Path, extra_env: dict[str, str]) -> Iterator[Server]:
    port = _free_port()
    log = home / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "MODELYARD_TOKEN"}
    env.update({"MODELYARD_HOME": str(home), "OMP_NUM_THREADS": "1", **extra_env})
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


def _fuzz(server: Server, headers: dict[str, str],
          allowed: Callable[[str, str], bool] | None = None) -> tuple[int, list[str]]:
    """Run every operation's strategies; ``(requests sent, failures)``. ``allowed(method,
    path)``: whether the caller's role allows an operation; a 2xx it does not is a failure."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        response_schema_conformance,
        status_code_conformance,
    )

    # a version upload's body is a tar: sent as the bytes generated for its binary schema
    schemathesis.serializer.alias("application/x-tar", "application/octet-stream")
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
                response = case.call(base_url=server.url, headers=headers, timeout=30)
                case.validate_response(response, checks=checks, headers=headers)
            except (Exception, BaseExceptionGroup) as exc:  # collected, not raised: no
                failures.append(_describe(case, exc))  # shrinking, and every failure is seen
                return
            method, path = case.method.upper(), case.operation.path
            if allowed is not None and response.status_code < 300 and not allowed(method, path):
                failures.append(f"{method} {case.formatted_path}: {response.status_code} to a "
                                "caller whose role does not allow it")

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


@pytest.mark.parametrize("role", [None, "viewer", "predictor"])
def test_with_auth_on_no_route_answers_a_caller_without_the_role(
        keyed_server: tuple[Server, dict[str, str]], role: str | None) -> None:
    from modelyard.registry.policy import Grant, decide
    from modelyard.serving.app import TABLE

    server, keys = keyed_server
    actions = {(method, path): e.action for method, path, e in TABLE}

    def allowed(method: str, path: str) -> bool:
        action = actions[(method, path)]
        grants = [Grant(role)] if role else []
        return decide(grants, action, "m" if "{name}" in path else None).allowed

    headers = {"Authorization": f"Bearer {keys[role]}"} if role else {}
    sent, failures = _fuzz(server, headers, allowed)
    assert sent >= 200
    assert not failures, f"{len(failures)} of {sent} requests broke the contract:\n" + "\n".join(
        failures[:40])
    assert server.process.poll() is None, server.log.read_text()
