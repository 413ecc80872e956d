"""``serving.runtime: onnx`` through a real in-process server: a version is answered by ONNX
Runtime from its exported derivative, in its own response shape and under its own name and
version; a version without a derivative is refused naming the export command."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime
import pytest

from modelyard.adapters.onnx import OnnxModel
from modelyard.config import Settings
from modelyard.errors import ConflictError
from modelyard.pipeline.export import export_onnx
from modelyard.predictor import load
from modelyard.registry import Registry
from modelyard.serving import ServeOptions, create_app
from modelyard.serving.app import App
from modelyard.testing import register_hgb, register_mlp, tabular_data

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

FEATURES = 5
#: what a trained classifier carries (export compares class scores for a classification task)
TASK = {"task": "classification"}
RUNTIME = {"serving": {"runtime": "onnx"}}
ONNX = {**TASK, **RUNTIME}


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    home = tmp_path_factory.mktemp("onnx-runtime") / "home"
    with Registry.open(Settings.from_env(home=home, actor="tester")) as reg:
        register_hgb(reg, "tab", max_iter=20, n_features=FEATURES, meta=ONNX)  # tab:1
        export_onnx(reg, "tab:1")  # tab:2, derived
        register_mlp(reg, "mlp", sizes=(8, 16, 3), meta=RUNTIME)  # logits: no task
        export_onnx(reg, "mlp:1")
        register_hgb(reg, "plain", max_iter=10, n_features=FEATURES, meta=TASK)  # native spec
        export_onnx(reg, "plain:1")
        register_hgb(reg, "bare", max_iter=5, n_features=FEATURES, meta=ONNX)  # never exported
        yield reg


@pytest.fixture()
async def app(registry: Registry) -> AsyncIterator[App]:
    app = create_app(registry, ServeOptions(poll_interval_s=3600, prediction_log="off"))
    await app.startup()
    await app.wait_ready()
    yield app
    await app.shutdown()


@pytest.fixture()
async def client(app: App) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://modelyard") as c:
        yield c


def rows(n: int = 40) -> list[list[float]]:
    X, _ = tabular_data(n_rows=n, n_features=FEATURES, seed=3)
    return X.tolist()  # type: ignore[no-any-return]


async def test_a_classifier_answers_like_its_native_self_from_onnxruntime(
        app: App, client: httpx.AsyncClient, registry: Registry) -> None:
    runner = app.catalog.runner_now("tab")
    assert runner is not None and (runner.name, runner.version) == ("tab", 1)
    assert runner.predictor.flavor == "onnx"
    assert isinstance(runner.predictor.model, OnnxModel)
    assert isinstance(runner.predictor.model.session, onnxruntime.InferenceSession)
    assert runner.predictor.metadata["runtime"] == "onnx"
    # batched as the tree model it is: an idle server answers at once, as it did natively
    assert runner.batcher.policy.max_delay_s == 0.0

    payload = rows()
    r = await client.post("/v1/models/tab/predict", json={"instances": payload, "scores": True})
    assert r.status_code == 200, r.text
    assert r.headers["x-model-version"] == "1"  # the source version answers, by its number
    got = r.json()
    native = load("tab:1", registry=registry, device="cpu").predict_full(
        np.asarray(payload), scores=True)
    want = native.to_dict(scores=True)
    assert set(got) - {"model_version", "request_id", "model", "version"} == set(want)
    assert got["predictions"] == want["predictions"]
    assert got["classes"] == want["classes"]
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-5)
    assert type(got["predictions"][0]) is int  # labels as the source gives them, not floats

    # OIP: the same outputs and datatypes as the native model announces; the platform says
    # ONNX Runtime runs it
    meta = (await client.get("/v2/models/tab")).json()
    assert meta["platform"] == "modelyard_onnx"
    assert meta["outputs"] == [{"name": "predictions", "datatype": "INT64", "shape": [-1]},
                               {"name": "scores", "datatype": "FP64", "shape": [-1, 2]}]
    infer = await client.post("/v2/models/tab/infer", json={"inputs": [
        {"name": "x", "shape": [3, FEATURES], "datatype": "FP64",
         "data": np.ravel(payload[:3]).tolist()}]})
    assert infer.status_code == 200, infer.text
    outputs = {o["name"]: o for o in infer.json()["outputs"]}
    assert outputs["predictions"]["datatype"] == "INT64"
    assert outputs["predictions"]["data"] == want["predictions"][:3]
    assert outputs["scores"]["datatype"] == "FP64"
    np.testing.assert_allclose(np.reshape(outputs["scores"]["data"], (3, 2)),
                               want["scores"][:3], atol=1e-5)

    # metrics carry the source version's labels
    text = (await client.get("/metrics")).text
    assert 'model="tab",version="1"' in text
    assert 'model="tab",version="2"' not in text


async def test_a_network_answers_like_its_native_self(
        app: App, client: httpx.AsyncClient, registry: Registry) -> None:
    runner = app.catalog.runner_now("mlp")
    assert runner is not None and runner.predictor.flavor == "onnx"
    x = np.random.default_rng(4).normal(size=(16, 8)).astype(np.float32)
    r = await client.post("/v1/models/mlp/predict",
                          json={"instances": x.tolist(), "scores": True})
    assert r.status_code == 200, r.text
    want = load("mlp:1", registry=registry, device="cpu").predict_full(x, scores=True)
    assert r.json()["predictions"] == want.predictions.tolist()
    np.testing.assert_allclose(r.json()["scores"], want.scores, atol=1e-5)


async def test_a_version_without_an_export_is_refused_naming_the_command(
        app: App, client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/bare/predict", json={"instances": rows(2)})
    assert r.status_code == ConflictError.status_code, r.text
    message = r.json()["message"]
    assert "bare:1 is served with runtime onnx but has no ONNX export" in message
    assert "modelyard export bare:1 --format onnx" in message
    assert app.catalog.runner_now("bare") is None
    # its metadata (read from the registry: nothing loaded) names what would run it
    meta = (await client.get("/v2/models/bare")).json()
    assert meta["platform"] == "modelyard_onnx"
    assert [o["name"] for o in meta["outputs"]] == ["predictions", "scores"]


async def test_the_runtime_is_chosen_at_serve_time_per_model(registry: Registry) -> None:
    app = create_app(registry, ServeOptions(
        poll_interval_s=3600, prediction_log="off",
        serving_overrides={"plain": {"runtime": "onnx"}, "tab": {"runtime": "native"}}))
    await app.startup()
    try:
        await app.wait_ready()
        plain, tab = app.catalog.runner_now("plain"), app.catalog.runner_now("tab")
        assert plain is not None and tab is not None
        assert (plain.version, plain.predictor.flavor) == (1, "onnx")
        assert (tab.version, tab.predictor.flavor) == (1, "sklearn")  # its spec said onnx
        payload = np.asarray(rows(20))
        native = load("plain:1", registry=registry, device="cpu").predict_full(
            payload, scores=True)
        served = await plain.predict(*plain.prepare(payload.tolist()), scores=True)
        assert served.predictions.tolist() == native.predictions.tolist()
        np.testing.assert_allclose(served.scores, native.scores, atol=1e-5)
    finally:
        await app.shutdown()


async def test_a_device_worker_serves_the_export_in_the_source_shape(registry: Registry) -> None:
    from modelyard.serving.supervisor import ProcessRunner

    app = create_app(registry, ServeOptions(
        poll_interval_s=3600, prediction_log="off",
        serving_overrides={"plain": {"runtime": "onnx", "isolation": "process"}}))
    await app.startup()
    try:
        await app.wait_ready()
        runner = app.catalog.runner_now("plain")
        assert isinstance(runner, ProcessRunner)
        assert (runner.version, runner.predictor.flavor) == (1, "onnx")
        assert [(f.name, f.dtype) for f in runner.outputs] == [("predictions", "int64"),
                                                              ("scores", "float64")]
        payload = np.asarray(rows(10))
        native = load("plain:1", registry=registry, device="cpu").predict_full(
            payload, scores=True)
        served = await runner.predict(*runner.prepare(payload.tolist()), scores=True)
        assert served.predictions.tolist() == native.predictions.tolist()
        np.testing.assert_allclose(served.scores, native.scores, atol=1e-5)
    finally:
        await app.shutdown()


def test_the_derivative_of_an_exported_version_is_found(registry: Registry) -> None:
    from modelyard.serving.onnx_runtime import derivative, served_record

    source = registry.get_version("tab", 1)
    found = derivative(registry.list_versions("tab"), source)
    assert found is not None and found.ref == "tab:2"
    served = served_record(registry, source)
    assert (served.ref, served.flavor, served.meta["served_by"]) == ("tab:1", "onnx", "tab:2")
    assert served.artifact_digest == found.artifact_digest
    assert served.signature == source.signature
    with pytest.raises(ConflictError, match="modelyard export bare:1 --format onnx"):
        served_record(registry, registry.get_version("bare", 1))


def test_a_later_export_of_another_artifact_is_not_taken(tmp_path: Path) -> None:
    """A derivative is tied to its source's digest: an export of a different artifact that
    claims the same ref (a registry rebuilt from scratch) is not served."""
    from modelyard.serving.onnx_runtime import derivative

    with Registry.open(Settings.from_env(home=tmp_path / "home")) as reg:
        register_hgb(reg, "m", max_iter=5, n_features=FEATURES, meta=TASK)
        export_onnx(reg, "m:1")
        export_onnx(reg, "m:1")  # m:3: the newest export serves
        source = reg.get_version("m", 1)
        versions = reg.list_versions("m")
        assert derivative(versions, source).ref == "m:3"
        other: Any = type("V", (), {"ref": "m:1", "artifact_digest": "0" * 64})()
        assert derivative(versions, other) is None


TRAIN_PY = '''
def train(X, y, params):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=500).fit(X, y)


def kernel(X, y, params):
    from sklearn.kernel_approximation import Nystroem
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(Nystroem(n_components=10, random_state=0),
                         LogisticRegression(max_iter=500)).fit(X, y)
'''

PROJECT = '''
models:
  fast:
    train: train.py:train
    data: {path: "data/*.csv", target: label}
    serving: {runtime: onnx}
  odd:
    train: train.py:kernel
    data: {path: "data/*.csv", target: label}
    serving: {runtime: onnx}
'''


def project(root: Path) -> dict[str, Any]:
    from modelyard.spec import load_project
    from modelyard.testing import labeled_frame

    (root / "data").mkdir(parents=True)
    (root / "train.py").write_text(TRAIN_PY)
    (root / "modelyard.yaml").write_text(PROJECT)
    labeled_frame(300, seed=1).to_csv(root / "data" / "part-1.csv", index=False)
    return load_project(root / "modelyard.yaml")


def test_training_a_runtime_onnx_spec_exports_before_promoting(tmp_path: Path) -> None:
    from modelyard.pipeline import run_pipeline

    specs = project(tmp_path / "project")
    with Registry.open(Settings.from_env(home=tmp_path / "home")) as reg:
        stages: list[str] = []
        result = run_pipeline(specs["fast"], reg, progress=stages.append)
        assert stages[-3:] == ["register", "export", "promote"]
        assert result.promoted and result.version is not None
        assert result.version.ref == "fast:1" and result.version.flavor == "sklearn"
        assert reg.resolve("fast@production").version == 1  # the source serves, by its number
        export = reg.get_version("fast", 2)
        assert export.flavor == "onnx" and export.meta["derived_from"] == "fast:1"
        assert "exported fast:1 -> fast:2" in (result.run.logs or "")
        # the export is its source's twin: the same data and code trains nothing new
        again = run_pipeline(specs["fast"], reg)
        assert again.unchanged is not None and again.unchanged.ref == "fast:1"


def test_a_refused_export_fails_the_run_and_promotes_nothing(tmp_path: Path) -> None:
    from modelyard.errors import ExportError
    from modelyard.pipeline import run_pipeline

    specs = project(tmp_path / "project")
    with Registry.open(Settings.from_env(home=tmp_path / "home")) as reg:
        with pytest.raises(ExportError) as info:
            run_pipeline(specs["odd"], reg)
        message = str(info.value)
        assert message.startswith("registered odd:1, not promoted: serving.runtime onnx needs")
        assert "modelyard export odd:1 --format onnx" in message
        assert "\n" not in message
        assert [v.version for v in reg.list_versions("odd")] == [1]
        assert reg.get_model("odd").aliases == {}
        assert reg.list_runs("odd")[0].status == "failed"


def test_promote_checks_the_export_a_server_would_load(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from modelyard.cli import main

    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home)) as reg:
        register_hgb(reg, "m", max_iter=5, n_features=FEATURES, meta=ONNX)
        register_hgb(reg, "m", max_iter=5, n_features=FEATURES, meta=ONNX, promote=False)
        export_onnx(reg, "m:1")
    cli = CliRunner()
    refused = cli.invoke(main, ["--home", str(home), "promote", "m", "2"])
    assert refused.exit_code == ConflictError.exit_code, refused.output
    assert "m:2 cannot be loaded, so m@production stays at v1" in refused.output
    assert "run `modelyard export m:2 --format onnx`" in refused.output
    with Registry.open(Settings.from_env(home=home)) as reg:
        export_onnx(reg, "m:2")
    done = cli.invoke(main, ["--home", str(home), "promote", "m", "2"])
    assert done.exit_code == 0, done.output
