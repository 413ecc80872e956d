"""Rollouts applied by a real ``python -m modelyard.serving`` process: canary split, sticky A/B,
shadow copies, automatic rollback of a failing candidate with no failed client request, and a
good candidate promoted step by step by the server's own analysis."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.rollout.deployments import Deployments
from modelyard.testing import ServerProcess, register_constant, register_probe

pytestmark = pytest.mark.integration

ROW = {"instances": [[1.0, 2.0, 3.0]]}
HOLD = {"min_requests": 1_000_000}  # analysis never decides: the test drives the rollout
FAST = {"min_requests": 20, "latency_floor_s": 1.0}  # decide on 20 requests, ignore latency


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("rollout") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        for name in ("canary", "ab", "good", "bluegreen"):
            register_probe(reg, name)
            register_probe(reg, name, promote=False)
        register_probe(reg, "bad")
        register_probe(reg, "bad", fail_predict=True, promote=False)
        register_probe(reg, "slow")
        register_probe(reg, "slow", delay_s=0.05, promote=False)
        register_probe(reg, "unloadable")
        register_probe(reg, "unloadable", fail_load=True, promote=False)
        register_constant(reg, "shadow", 1)
        register_constant(reg, "shadow", 2, promote=False)
    return home


@pytest.fixture(scope="module")
def deployments(home: Path) -> Iterator[Deployments]:
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        yield Deployments(reg)


@pytest.fixture(scope="module")
def client(home: Path) -> Iterator[httpx.Client]:
    server = ServerProcess(home)
    try:
        with httpx.Client(base_url=server.url, timeout=10) as c:
            yield c
    finally:
        server.stop()


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s} s: {check}")
        time.sleep(0.1)


def predict(c: httpx.Client, model: str, body: Any = None, **headers: str) -> httpx.Response:
    r = c.post(f"/v1/models/{model}/predict", json=body or ROW, headers=headers)
    assert r.status_code == 200, r.text
    return r


def routed(c: httpx.Client, model: str) -> bool:
    return predict(c, model).headers["x-model-variant"] != "production"


def p99_ms(latencies: list[float]) -> float:
    return sorted(latencies)[int(0.99 * len(latencies)) - 1] * 1e3


def test_canary_splits_traffic_and_names_the_variant(client, deployments) -> None:
    deployments.start("canary", 2, "canary", steps=[50, 100], every_s=600, rules=HOLD)
    eventually(lambda: routed(client, "canary"))
    seen = {"stable": 0, "candidate": 0}
    for _ in range(400):
        r = predict(client, "canary")
        variant, version = r.headers["x-model-variant"], r.headers["x-model-version"]
        assert version == {"stable": "1", "candidate": "2"}[variant]
        seen[variant] += 1
    share = seen["candidate"] / 400
    print(f"\ncanary at 50 %: candidate answered {share:.1%} of 400 requests")
    assert 0.40 < share < 0.60  # four standard deviations of a fair coin over 400 draws
    oip = client.post("/v2/models/canary/infer", json={"inputs": [
        {"name": "input", "datatype": "FP64", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]})
    assert oip.status_code == 200, oip.text
    assert oip.headers["x-model-variant"] in ("stable", "candidate")
    assert "variant=\"candidate\"" in client.get("/metrics").text

    deployments.abort("canary", reason="test over")
    eventually(lambda: not routed(client, "canary"))
    assert predict(client, "canary").headers["x-model-version"] == "1"


def test_ab_is_sticky_by_request_key(client, deployments) -> None:
    deployments.start("ab", 2, "ab", steps=[50], every_s=600, rules=HOLD)
    eventually(lambda: routed(client, "ab"))
    groups: dict[str, set[str]] = {}
    for i in range(40):
        for _ in range(3):
            r = predict(client, "ab", **{"X-Request-Key": f"user-{i}"})
            groups.setdefault(f"user-{i}", set()).add(r.headers["x-model-variant"])
    assert all(len(v) == 1 for v in groups.values()), groups
    assert {next(iter(v)) for v in groups.values()} == {"stable", "candidate"}
    deployments.abort("ab")
    eventually(lambda: not routed(client, "ab"))


def test_shadow_answers_from_stable_only(client, deployments) -> None:
    def timed(n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            r = predict(client, "shadow", {"records": [{"f0": 0.0, "f1": 0.0, "f2": 0.0}]})
            out.append(time.perf_counter() - start)
            assert r.json()["predictions"] == [1]
            assert r.headers["x-model-version"] == "1"
        return out

    before = timed(300)
    # the candidate answers 2 where stable answers 1: analysis sees the disagreement
    deployments.start("shadow", 2, "shadow", every_s=1,
                      rules={**FAST, "min_requests": 50, "min_agreement": 0.9})
    eventually(lambda: routed(client, "shadow"))
    during = timed(300)
    print(f"\nshadow: primary p99 {p99_ms(before):.2f} ms without, {p99_ms(during):.2f} ms with "
          f"a shadow copy of every request")
    assert p99_ms(during) < p99_ms(before) * 5 + 20  # loose: timing on a shared machine
    eventually(lambda: deployments.get("shadow").state == "rolled_back")
    assert "agree" in deployments.history("shadow")[0].reason
    eventually(lambda: not routed(client, "shadow"))


def test_failing_candidate_is_rolled_back_without_failed_requests(client, deployments) -> None:
    deployments.start("bad", 2, "canary", steps=[50, 100], every_s=1, rules=FAST)
    eventually(lambda: routed(client, "bad"))
    sent = 0
    deadline = time.monotonic() + 30
    while deployments.get("bad").state != "rolled_back":
        assert time.monotonic() < deadline, "the failing candidate was not rolled back"
        for _ in range(20):
            r = predict(client, "bad")  # 200 every time: candidate failures retry on stable
            assert r.headers["x-model-version"] == "1"
            sent += 1
    d = deployments.get("bad")
    print(f"\nfailing candidate rolled back after {sent} requests, none failed: {d.revision}")
    assert d.candidate_version == 2 and d.stable_version == 1
    eventually(lambda: not routed(client, "bad"))
    last = deployments.history("bad")[0]
    assert (last.action, last.actor) == ("rollback", "analysis")


def test_slow_candidate_is_rolled_back_on_p99_without_failed_requests(client,
                                                                      deployments) -> None:
    deployments.start("slow", 2, "canary", steps=[50, 100], every_s=1,
                      rules={"min_requests": 20, "max_p99_ratio": 3.0})
    eventually(lambda: routed(client, "slow"))
    started, sent = time.monotonic(), 0
    while deployments.get("slow").state != "rolled_back":
        assert time.monotonic() - started < 60, "the slow candidate was not rolled back"
        for _ in range(20):
            predict(client, "slow")  # slow, but every request succeeds
            sent += 1
    elapsed = time.monotonic() - started
    print(f"\nslow candidate rolled back after {sent} requests in {elapsed:.1f} s")
    last = deployments.history("slow")[0]
    assert (last.action, last.actor) == ("rollback", "analysis")
    # 50 ms more on a sub-millisecond model: confidently slower, typically and in the tail
    assert re.search(r"typical latency [\d.]+ ms is [\d.]+x stable's", last.reason), last.reason
    assert last.details["latency_ratio_low"] > 3.0
    eventually(lambda: not routed(client, "slow"))


def test_a_candidate_that_cannot_load_is_rolled_back_with_the_reason(client, deployments) -> None:
    """It used to stay 'progressing' at 50 % for ever while every server retried the load and
    stable answered everything."""
    d = deployments.start("unloadable", 2, "canary", steps=[50, 100], every_s=600, rules=FAST)
    assert d.candidate_percent == 50.0  # planned
    served = []
    deadline = time.monotonic() + 15  # far within the 600 s analysis interval
    while deployments.get("unloadable").active:
        assert time.monotonic() < deadline, deployments.describe(deployments.get("unloadable"))
        served.append(predict(client, "unloadable").headers["x-model-version"])  # 200 always
        time.sleep(0.05)
    assert set(served) == {"1"}
    ended = deployments.get("unloadable")
    last = deployments.history("unloadable")[0]
    print(f"\nunloadable candidate rolled back after {len(served)} requests: {last.reason}")
    assert (ended.state, last.action) == ("rolled_back", "rollback")
    assert last.actor.startswith("server:")
    assert "candidate unloadable:2 cannot be loaded on server:" in last.reason
    assert "broken on purpose" in last.reason
    status = deployments.describe(ended)
    assert status["candidate_percent"] == 0.0 and status["explain"].startswith("Ended: rolled")


def test_status_counts_only_traffic_a_server_routes(client, deployments) -> None:
    d = deployments.start("canary", 2, "canary", steps=[30, 100], every_s=600, rules=HOLD)
    first = deployments.describe(d)  # written a moment ago: no server has loaded it yet
    assert first["candidate_percent"] == 0.0 and first["traffic"]["servers"] == []
    eventually(lambda: routed(client, "canary"))
    for _ in range(50):
        predict(client, "canary")
    routing = eventually(lambda: (lambda s: s if s["traffic"]["requests"]["candidate"] else None)(
        deployments.describe(deployments.get("canary"))))
    assert routing["candidate_percent"] == 30.0 and len(routing["traffic"]["servers"]) == 1
    assert routing["traffic"]["requests"]["stable"] > 0
    deployments.abort("canary")
    eventually(lambda: not routed(client, "canary"))


def test_good_candidate_is_promoted_through_every_step(client, deployments) -> None:
    deployments.start("good", 2, "canary", steps=[50, 100], every_s=1, rules=FAST)
    eventually(lambda: routed(client, "good"))
    deadline = time.monotonic() + 30
    while deployments.get("good").state != "promoted":
        assert time.monotonic() < deadline, deployments.get("good")
        for _ in range(20):
            predict(client, "good")
    actions = [e.action for e in reversed(deployments.history("good"))]
    assert actions[0] == "start" and actions[-2:] == ["advance", "promote"], actions
    r = eventually(lambda: (lambda r: r if r.headers["x-model-variant"] == "production"
                            else None)(predict(client, "good")))
    assert r.headers["x-model-version"] == "2"


def test_blue_green_is_activated_once_warm_then_promoted(client, deployments) -> None:
    assert deployments.start("bluegreen", 2, "blue-green", every_s=1, rules=FAST).state == \
        "pending"
    eventually(lambda: deployments.get("bluegreen").state != "pending")
    deadline = time.monotonic() + 30
    while deployments.get("bluegreen").state != "promoted":
        assert time.monotonic() < deadline, deployments.get("bluegreen")
        for _ in range(20):
            r = predict(client, "bluegreen")
            assert r.headers["x-model-version"] == "2" or r.headers["x-model-variant"] != \
                "candidate"
    events = [(e.action, e.actor) for e in reversed(deployments.history("bluegreen"))]
    assert events[1][0] == "activate" and events[1][1].startswith("server:"), events
    assert events[-1] == ("promote", "analysis"), events
    assert predict(client, "bluegreen").headers["x-model-version"] == "2"
