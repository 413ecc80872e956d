"""Composed models on a real server: a sequence (a PyTorch embedding feeding a scikit-learn
classifier, each on its own runner), ensembles (mean, vote), switches (by field, by router), a
member's canary inside a graph, the step versions in headers and in the prediction log, and
bad input refused with the step named."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ConfigError, NotFoundError
from modelyard.pipeline.run import run_pipeline
from modelyard.registry import Registry
from modelyard.rollout.deployments import Deployments
from modelyard.spec import Spec
from modelyard.testing import ServerProcess, mlp, register_constant, register_model

pytestmark = pytest.mark.integration

HOLD = {"min_requests": 1_000_000}  # the test drives the rollout, analysis never decides
ROWS = [[0.5, -1.0, 2.0], [-1.5, 0.3, 0.1], [2.0, 2.0, -0.5]]


def compose(reg: Registry, name: str, graph: dict[str, Any]) -> Any:
    return run_pipeline(Spec.parse({"name": name, "graph": graph}), reg).version


def training_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3)).astype(np.float32)
    return X, (X[:, 0] - X[:, 1] > 0).astype(np.int64)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import GaussianNB

    home = tmp_path_factory.mktemp("graphs") / "home"
    X, y = training_data()
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        embedder = mlp((3, 8, 2))
        # the embedding runs in a device worker process of its own (where a GPU would be),
        # the classifier inside the server: one graph, two runners, two placements
        register_model(reg, "embed", embedder, "torch", X, None, sample=X[:8],
                       meta={"task": "raw", "serving": {"isolation": "process"}})
        import torch

        with torch.no_grad():
            Z = embedder(torch.from_numpy(X)).numpy().astype(np.float64)
        register_model(reg, "clf", LogisticRegression().fit(Z, y), "sklearn", Z, y)
        X64 = X.astype(np.float64)
        register_model(reg, "lr", LogisticRegression().fit(X64, y), "sklearn", X64, y)
        register_model(reg, "nb", GaussianNB().fit(X64, y), "sklearn", X64, y)
        for name, value in (("one", 1), ("also_one", 1), ("zero", 0), ("two", 2), ("canm", 1)):
            register_constant(reg, name, value)
        register_constant(reg, "canm", 1, promote=False)  # the canary's candidate
        register_constant(reg, "shape", 1, n_features=2)  # takes what embed answers...
        register_constant(reg, "shape", 1, n_features=3, promote=False)  # ...and then not
        # waits up to 300 ms for more rows: concurrent graph requests share its batches
        register_constant(reg, "batched", 1, meta={"serving": {
            "batching": {"max_batch_size": 64, "max_delay_ms": 300}}})
    return home


@pytest.fixture(scope="module")
def registry(home: Path) -> Iterator[Registry]:
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        yield reg


@pytest.fixture(scope="module")
def graphs(home: Path, registry: Registry) -> Path:
    project = home.parent / "modelyard.yaml"
    project.write_text("models:\n"
                       "  seq:\n"
                       "    description: a PyTorch embedding feeding a classifier\n"
                       "    graph: {kind: sequence, steps: [embed, clf]}\n")
    done = CliRunner().invoke(main, ["--home", str(home), "train", "seq", "-p", str(project)])
    assert done.exit_code == 0, done.output
    assert "seq:1" in done.output
    compose(registry, "mean", {"kind": "ensemble", "members": ["lr", "nb:1"], "rule": "mean"})
    compose(registry, "vote", {"kind": "ensemble", "members": ["one", "zero", "also_one"],
                               "rule": "vote"})
    compose(registry, "by_region", {"kind": "switch", "field": "region",
                                    "routes": {"eu": "one", "us": "zero"}})
    compose(registry, "by_router", {"kind": "switch", "router": "two",
                                    "routes": {"1": "zero", "2": "one@production"}})
    compose(registry, "with_canary", {"kind": "ensemble", "members": ["canm", "one"],
                                      "rule": "vote"})
    compose(registry, "reshaped", {"kind": "sequence", "steps": ["embed", "shape"]})
    compose(registry, "nested", {"kind": "ensemble", "members": ["vote", "zero", "one"],
                                 "rule": "vote"})
    compose(registry, "via_batched", {"kind": "ensemble", "members": ["batched", "one"],
                                      "rule": "vote"})
    compose(registry, "gswap", {"kind": "ensemble", "members": ["one", "zero"], "rule": "vote"})
    run_pipeline(Spec.parse({"name": "gswap", "graph": {  # a second version, not promoted
        "kind": "ensemble", "members": ["zero", "one"], "rule": "vote"}}), registry,
        promote=False)
    return project


@pytest.fixture(scope="module")
def server(home: Path, graphs: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(home, grpc=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def eventually(check: Callable[[], Any], timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s} s: {check}")
        time.sleep(0.1)


def predict(c: httpx.Client, model: str, body: Any, status: int = 200) -> httpx.Response:
    r = c.post(f"/v1/models/{model}/predict", json=body)
    assert r.status_code == status, r.text
    return r


def test_a_graph_is_a_version_like_any_model(registry: Registry, graphs: Path) -> None:
    seq = registry.resolve("seq@production")
    assert seq.flavor == "graph" and seq.version == 1
    assert seq.meta["graph"] == {"kind": "sequence", "steps": [
        {"model": "embed", "output": "predictions", "pass_through": []},
        {"model": "clf", "output": "predictions", "pass_through": []}]}
    assert seq.meta["members"] == {"embed": "embed:1", "clf": "clf:1"}  # lineage
    assert seq.signature["inputs"] == registry.resolve("embed").signature["inputs"]
    assert seq.signature["classes"] == [0, 1]
    again = run_pipeline(Spec.parse({"name": "vote", "graph": {
        "kind": "ensemble", "members": ["one", "zero", "also_one"], "rule": "vote"}}), registry)
    assert again.version is None and again.unchanged is not None  # same declaration


def test_registration_refuses_missing_members_cycles_and_unfit_rules(registry: Registry,
                                                                     graphs: Path) -> None:
    with pytest.raises(NotFoundError, match="graph member ghost"):
        compose(registry, "bad", {"kind": "sequence", "steps": ["embed", "ghost"]})
    with pytest.raises(NotFoundError, match="graph member clf:9"):
        compose(registry, "bad", {"kind": "sequence", "steps": ["embed", "clf:9"]})
    with pytest.raises(ConfigError, match="graph vote contains itself: vote -> nested -> vote"):
        compose(registry, "vote", {"kind": "ensemble", "members": ["nested", "one"],
                                   "rule": "vote"})
    with pytest.raises(ConfigError, match=r"graph\.steps\.1: lr takes 3 values a row, but "
                       r"embed answers 2 predictions a row"):
        compose(registry, "bad", {"kind": "sequence", "steps": ["embed", "lr"]})
    with pytest.raises(ConfigError, match=r"graph\.rule: mean needs members with the same classes"):
        compose(registry, "bad", {"kind": "ensemble", "members": ["one", "zero"], "rule": "mean"})
    assert registry.resolve("vote").version == 1  # nothing registered by the refusals


def test_a_sequence_feeds_an_embedding_to_a_classifier(client: httpx.Client) -> None:
    r = predict(client, "seq", {"instances": ROWS, "scores": True})
    assert r.headers["x-model-version"] == "1"
    assert r.headers["x-model-steps"] == "embed:1,clf:1"
    embedded = predict(client, "embed", {"instances": ROWS}).json()["predictions"]
    direct = predict(client, "clf", {"instances": embedded, "scores": True}).json()
    assert r.json()["predictions"] == direct["predictions"]
    np.testing.assert_allclose(r.json()["scores"], direct["scores"])
    placed = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert placed["embed"]["devices"] == {"1": "cpu"} and placed["clf"]["devices"] == {"1": "cpu"}
    workers = [line for line in client.get("/metrics").text.splitlines()
               if line.startswith("modelyard_worker_up{")]
    assert any('model="embed"' in line and line.endswith(" 1.0") for line in workers), workers
    assert not any('model="clf"' in line for line in workers), workers
    oip = client.post("/v2/models/seq/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [3, 3],
         "data": [v for row in ROWS for v in row]}]})
    assert oip.status_code == 200, oip.text
    assert oip.headers["x-model-steps"] == "embed:1,clf:1"
    (out, *_) = oip.json()["outputs"]
    assert out["data"] == direct["predictions"]


def test_an_ensemble_averages_scores_or_votes(client: httpx.Client) -> None:
    r = predict(client, "mean", {"instances": ROWS, "scores": True})
    assert r.headers["x-model-steps"] == "lr:1,nb:1"
    lr = predict(client, "lr", {"instances": ROWS, "scores": True}).json()
    nb = predict(client, "nb", {"instances": ROWS, "scores": True}).json()
    expected = (np.asarray(lr["scores"]) + np.asarray(nb["scores"])) / 2
    np.testing.assert_allclose(r.json()["scores"], expected)
    assert r.json()["predictions"] == expected.argmax(1).tolist()
    voted = predict(client, "vote", {"instances": ROWS})
    assert voted.json()["predictions"] == [1, 1, 1]
    assert voted.headers["x-model-steps"] == "one:1,zero:1,also_one:1"
    nested = predict(client, "nested", {"instances": ROWS})  # a graph inside a graph
    assert nested.json()["predictions"] == [1, 1, 1]
    assert nested.headers["x-model-steps"] == "vote:1,zero:1,one:1"


def test_a_switch_routes_rows_by_field_or_by_router(client: httpx.Client) -> None:
    records = [{"f0": 1.0, "f1": 2.0, "f2": 3.0, "region": region}
               for region in ("us", "eu", "us")]
    r = predict(client, "by_region", {"records": records})
    assert r.json()["predictions"] == [0, 1, 0]
    assert set(r.headers["x-model-steps"].split(",")) == {"zero:1", "one:1"}
    unknown = predict(client, "by_region", {"records": [{**records[0], "region": "apac"}]}, 422)
    assert "'apac'" in unknown.json()["message"]
    routed = predict(client, "by_router", {"instances": ROWS})
    assert routed.json()["predictions"] == [1, 1, 1]  # the router says 2: route "2" -> one
    assert routed.headers["x-model-steps"] == "two:1,one:1"


def test_bad_input_is_refused_with_the_failing_step_named(client: httpx.Client) -> None:
    r = predict(client, "seq", {"instances": [[1.0, 2.0]]}, 422)
    assert r.json()["message"].startswith("step embed: ")
    assert r.json()["detail"][0]["loc"][:2] == ["step", "embed"]
    missing = predict(client, "by_region", {"instances": ROWS}, 422)
    assert "field 'region' is missing" in missing.json()["message"]


def test_steps_are_in_the_prediction_log_under_the_request_id(client: httpx.Client) -> None:
    rid = "graph-log-1"
    r = client.post("/v1/models/seq/predict", json={"instances": ROWS[:1]},
                    headers={"X-Request-Id": rid})
    assert r.status_code == 200, r.text

    def logged(model: str) -> Any:
        found = client.get(f"/api/v1/models/{model}/predictions/{rid}")
        return found.json()["predictions"] if found.status_code == 200 else None

    (graph_row,) = eventually(lambda: logged("seq"))
    assert graph_row["version"] == 1 and graph_row["outputs"]["steps"] == ["embed:1", "clf:1"]
    (clf_row,) = eventually(lambda: logged("clf"))  # each member logs its own step
    assert clf_row["version"] == 1
    assert clf_row["outputs"]["predictions"] == graph_row["outputs"]["predictions"]
    assert eventually(lambda: logged("embed"))


def test_graphs_on_table_inputs_are_logged_too(client: httpx.Client) -> None:
    records = [{"f0": 1.0, "f1": 2.0, "f2": 3.0}]
    for model in ("mean", "by_router"):
        rid = f"graph-log-{model}"
        r = client.post(f"/v1/models/{model}/predict", json={"records": records},
                        headers={"X-Request-Id": rid})
        assert r.status_code == 200, r.text
        found = eventually(lambda m=model, i=rid: client.get(
            f"/api/v1/models/{m}/predictions/{i}").json().get("predictions"))
        (row,) = found
        assert row["inputs"]["columns"]["f0"] == [1.0]
        assert row["outputs"]["steps"] == r.headers["x-model-steps"].split(",")
    rid = "graph-log-split"  # rows split between members: each member logs its own rows
    r = client.post("/v1/models/by_region/predict", headers={"X-Request-Id": rid}, json={
        "records": [{**records[0], "region": "eu"}, {**records[0], "region": "us"}]})
    assert r.status_code == 200, r.text
    for member in ("one", "zero"):
        (row,) = eventually(lambda m=member: client.get(
            f"/api/v1/models/{m}/predictions/{rid}").json().get("predictions"))
        assert row["rows"] == 1


def test_a_member_canary_rolls_out_inside_the_graph(client: httpx.Client,
                                                   registry: Registry) -> None:
    deployments = Deployments(registry)
    deployments.start("canm", 2, "canary", steps=[50], every_s=600, rules=HOLD)
    try:
        def both() -> set[str]:
            return {predict(client, "with_canary", {"instances": ROWS[:1]})
                    .headers["x-model-steps"].split(",")[0] for _ in range(40)}

        seen = eventually(lambda: (s := both()) >= {"canm:1(stable)", "canm:2(candidate)"} and s)
        assert seen <= {"canm:1", "canm:1(stable)", "canm:2(candidate)"}
    finally:
        deployments.abort("canm", reason="test over")


def test_a_graph_rolls_out_between_its_own_versions(client: httpx.Client,
                                                    registry: Registry) -> None:
    deployments = Deployments(registry)
    deployments.start("gswap", 2, "canary", steps=[50], every_s=600, rules=HOLD)
    try:
        def answers() -> set[tuple[str, str, int]]:
            out = set()
            for _ in range(40):
                r = predict(client, "gswap", {"instances": ROWS[:1]})
                out.add((r.headers["x-model-variant"], r.headers["x-model-steps"],
                         r.json()["predictions"][0]))
            return out

        expected = {("stable", "one:1,zero:1", 1), ("candidate", "zero:1,one:1", 0)}
        # until the server applies the rollout (its next poll) answers say production
        assert eventually(lambda: answers() == expected)
    finally:
        deployments.abort("gswap", reason="test over")


def test_concurrent_graph_requests_share_a_member_batch(client: httpx.Client) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def batches() -> tuple[float, float]:
        lines = client.get("/metrics").text.splitlines()
        picked = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in lines
                  if line.startswith("modelyard_batch_size_") and 'model="batched"' in line
                  and "_bucket" not in line}
        return picked.get("modelyard_batch_size_count", 0.0), picked.get(
            "modelyard_batch_size_sum", 0.0)

    predict(client, "via_batched", {"instances": ROWS[:1]})  # loaded and warm
    count, rows = batches()
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: predict(client, "via_batched",
                                                  {"instances": ROWS[:1]}), range(8)))
    assert all(a.headers["x-model-steps"] == "batched:1,one:1" for a in answers)
    more_count, more_rows = batches()
    assert more_rows - rows == 8  # every graph request's row went through the member's batcher
    assert more_count - count < 8  # in fewer model calls than requests


def test_a_member_moved_under_the_graph_fails_its_step_with_a_4xx(client: httpx.Client,
                                                                  registry: Registry) -> None:
    assert predict(client, "reshaped", {"instances": ROWS}).json()["predictions"] == [1, 1, 1]
    registry.set_alias("shape", "production", 2)  # now takes 3 values; embed answers 2
    try:
        r = eventually(lambda: (r := client.post("/v1/models/reshaped/predict", json={
            "instances": ROWS})).status_code != 200 and r)
        assert r.status_code == 422, r.text
        assert r.json()["message"].startswith("step shape: ") and "x-request-id" in r.headers
    finally:
        registry.set_alias("shape", "production", 1)


def test_grpc_names_the_steps_too(server: ServerProcess) -> None:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP64",
                                                            shape=[1, 3])
    tensor.contents.fp64_contents.extend(ROWS[0])
    request = service_pb2.ModelInferRequest(model_name="vote", inputs=[tensor])
    assert server.grpc_address is not None
    with grpc.insecure_channel(server.grpc_address) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response, call = stub.ModelInfer.with_call(request, timeout=10)
    metadata = dict(call.initial_metadata())
    assert metadata["x-model-version"] == "1"
    assert metadata["x-model-steps"] == "one:1,zero:1,also_one:1"
    out = response.outputs[0]
    assert out.name == "predictions" and out.datatype == "INT64"
    assert np.frombuffer(response.raw_output_contents[0], np.int64).tolist() == [1]
