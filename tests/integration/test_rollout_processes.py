"""Two real ``python -m modelyard.serving`` processes on one registry (SQLite, and PostgreSQL):
both apply a rollout within about a second of each other, answer over REST and gRPC with the
variant named, and analysis decides once per step on both processes' traffic merged."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelyard.config import Settings
from modelyard.registry import Registry
from modelyard.rollout.deployments import Deployments
from modelyard.testing import ServerProcess, register_probe

pytestmark = pytest.mark.integration

ROW = {"instances": [[1.0, 2.0, 3.0]]}
HOLD = {"min_requests": 1_000_000}  # analysis never decides: the test drives the rollout
FAST = {"min_requests": 20, "latency_floor_s": 1.0}  # decide on 20 requests, ignore latency


class Cluster:
    """Two server processes on one registry, a client for each, and the registry's deployments."""

    def __init__(self, servers: list[ServerProcess], deployments: Deployments) -> None:
        self.servers = servers
        self.deployments = deployments
        self.clients = [httpx.Client(base_url=s.url, timeout=10) for s in servers]

    def logs(self) -> str:
        return "\n".join(f"--- {s.url}\n{s.log.read_text()[-3000:]}" for s in self.servers)


@pytest.fixture()
def cluster_on(tmp_path: Path) -> Iterator[Callable[[str | None, list[str]], Cluster]]:
    """Start two servers on a registry (SQLite in ``tmp_path``, or ``db_url``) holding a probe
    model per name (version 1 production; 2 a candidate, failing every request for ``bad*``)."""
    with ExitStack() as stack:
        def start(db_url: str | None, names: list[str]) -> Cluster:
            home = tmp_path / "home"
            reg = stack.enter_context(Registry.open(
                Settings.from_env(home=home, db_url=db_url, actor="tester")))
            for name in names:
                register_probe(reg, name)
                register_probe(reg, name, promote=False, fail_predict=name.startswith("bad"))
            env = {"MODELYARD_DB": db_url} if db_url else {}
            servers = [ServerProcess(home, env=env, grpc=True, wait=False),
                       ServerProcess(home, env=env, wait=False)]
            for server in servers:
                stack.callback(server.stop)
            for server in servers:
                server.wait_ready()
            cluster = Cluster(servers, Deployments(reg))
            for client in cluster.clients:
                stack.callback(client.close)
            return cluster

        yield start


def predict(c: httpx.Client, model: str) -> httpx.Response:
    r = c.post(f"/v1/models/{model}/predict", json=ROW)
    assert r.status_code == 200, r.text  # never a failed client request
    return r


def wait_each(cluster: Cluster, check: Callable[[httpx.Client], bool],
              timeout_s: float = 15.0) -> list[float]:
    """Seconds until ``check`` first held on each server's client (polled every 20 ms)."""
    start = time.monotonic()
    took: list[float | None] = [None] * len(cluster.clients)
    while None in took:
        elapsed = time.monotonic() - start
        assert elapsed < timeout_s, f"not applied after {timeout_s} s: {took}\n{cluster.logs()}"
        for i, client in enumerate(cluster.clients):
            if took[i] is None and check(client):
                took[i] = time.monotonic() - start
        time.sleep(0.02)
    return [t for t in took if t is not None]


def routed(model: str) -> Callable[[httpx.Client], bool]:
    return lambda c: predict(c, model).headers["x-model-variant"] != "production"


def drive(cluster: Cluster, model: str, until: str, timeout_s: float = 40.0) -> list[Counter]:
    """Send requests to both servers in turn until the rollout reaches state ``until``; each
    server's answers by variant."""
    served: list[Counter[str]] = [Counter() for _ in cluster.clients]
    deadline = time.monotonic() + timeout_s
    while cluster.deployments.get(model).state != until:
        assert time.monotonic() < deadline, (cluster.deployments.get(model), cluster.logs())
        for i, client in enumerate(cluster.clients):
            for _ in range(5):
                r = predict(client, model)
                served[i][r.headers["x-model-variant"]] += 1
    return served


def assert_merged(cluster: Cluster, events: list[Any]) -> None:
    """Each decision rests on both processes' windows (the merged count is their sum), and
    both processes' traffic counted. (A process that applied a step a moment before the
    leader decided may still show an empty window in that one decision: under load, its
    first publish of the step can land before it has served anything.)"""
    contributed: Counter[str] = Counter()
    for event in events:
        shares = event.details["processes"]
        assert sorted(shares) == sorted(s.name for s in cluster.servers), (event, cluster.logs())
        per_process = [share["candidate"] for share in shares.values()]
        assert event.details["candidate_requests"] == sum(per_process)
        assert event.details["stable_requests"] == sum(s["stable"] for s in shares.values())
        contributed.update({name: share["candidate"] for name, share in shares.items()})
    assert all(contributed[s.name] > 0 for s in cluster.servers), contributed


def grpc_answers(address: str, model: str, n: int) -> list[dict[str, str]]:
    """The initial metadata of ``n`` gRPC inferences (through tritonclient's service stubs)."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP64",
                                                            shape=[1, 3])
    tensor.contents.fp64_contents.extend([1.0, 2.0, 3.0])
    request = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor])
    with grpc.insecure_channel(address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        out = []
        for _ in range(n):
            response, call = stub.ModelInfer.with_call(request, timeout=10)
            metadata = dict(call.initial_metadata())
            assert response.model_version == metadata["x-model-version"]
            out.append(metadata)
        return out


def promote_once_per_step(cluster: Cluster, model: str) -> None:
    d = cluster.deployments.start(model, 2, "canary", steps=[50, 100], every_s=1, rules=FAST)
    took = wait_each(cluster, routed(model))
    started = time.monotonic()
    served = drive(cluster, model, "promoted")
    print(f"\n{model}: applied by the two processes after {took[0]:.2f} s and {took[1]:.2f} s; "
          f"promoted {time.monotonic() - started:.1f} s later; served {served}")
    events = list(reversed(cluster.deployments.history(model)))
    assert [(e.action, e.actor) for e in events] == [
        ("start", "user:tester"), ("advance", "analysis"), ("promote", "analysis")], events
    assert all(e.deployment_id == d.id for e in events)
    assert_merged(cluster, events[1:])
    wait_each(cluster, lambda c: predict(c, model).headers["x-model-version"] == "2"
              and predict(c, model).headers["x-model-variant"] == "production")


@pytest.mark.timeout(150)
def test_two_processes_on_sqlite_apply_together_and_decide_once(cluster_on) -> None:
    cluster = cluster_on(None, ["split", "good", "bad"])
    deps = cluster.deployments
    address = cluster.servers[0].grpc_address
    assert address is not None
    assert {m["x-model-variant"] for m in grpc_answers(address, "split", 3)} == {"production"}

    # a change is applied by both processes within a couple of seconds
    deps.start("split", 2, "canary", steps=[50, 100], every_s=600, rules=HOLD)
    started = wait_each(cluster, routed("split"))
    wait_each(cluster, lambda c: predict(c, "split").headers["x-model-variant"] == "candidate")
    answers = grpc_answers(address, "split", 60)
    assert {(m["x-model-variant"], m["x-model-version"]) for m in answers} == {
        ("stable", "1"), ("candidate", "2")}
    deps.abort("split", reason="test over")
    ended = wait_each(cluster, lambda c: not routed("split")(c))
    print(f"\nstart applied after {started[0]:.2f} s / {started[1]:.2f} s (loads the candidate); "
          f"abort after {ended[0]:.2f} s / {ended[1]:.2f} s")
    assert max(started) < 5.0 and max(ended) < 3.0, (started, ended)
    import numpy as np
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=address)  # unaffected by the metadata
    tensor = grpcclient.InferInput("input", [1, 3], "FP64")
    tensor.set_data_from_numpy(np.array([[1.0, 2.0, 3.0]]))
    assert client.infer("split", [tensor]).as_numpy("predictions").tolist() == [2.0]
    client.close()

    # a good candidate: one advance and one promote, each decided on both processes' traffic
    promote_once_per_step(cluster, "good")

    # a failing candidate: rolled back once, and no client request failed
    deps.start("bad", 2, "canary", steps=[50, 100], every_s=1, rules=FAST)
    wait_each(cluster, routed("bad"))
    served = drive(cluster, "bad", "rolled_back")
    print(f"bad: rolled back; served {served}, none failed")
    events = list(reversed(deps.history("bad")))
    assert [(e.action, e.actor) for e in events] == [
        ("start", "user:tester"), ("rollback", "analysis")], events
    assert "error rate" in events[1].reason
    assert_merged(cluster, events[1:])
    wait_each(cluster, lambda c: not routed("bad")(c))
    assert all(predict(c, "bad").headers["x-model-version"] == "1" for c in cluster.clients)


@pytest.mark.timeout(150)
def test_two_processes_on_postgresql_decide_once(cluster_on, pg_url: str) -> None:
    promote_once_per_step(cluster_on(pg_url, ["good"]), "good")
