"""``modelyard import mlflow`` against a real MLflow registry: a SQLite tracking/registry database
and a local artifact root in a temporary folder, with scikit-learn, XGBoost, LightGBM, PyTorch and
Keras models logged by MLflow's own flavors. Each imported version answers like the MLflow-loaded
model, keeps its run's params, metrics, tags, signature and lineage, and its aliases and stages."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ImportSourceError, UnsafeArtifactError
from modelyard.pipeline.bring import TRUST_ACTION
from modelyard.pipeline.mlflow_import import import_mlflow
from modelyard.pipeline.parity import Limits
from modelyard.registry import Registry

# MLflow warns about its own choices (type hints, pickles, stages) while logging and loading
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning:mlflow.*")]


def _table(n: int = 40, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 3)), columns=["a", "b", "c"])
    return X, (X.a + 0.5 * X.b - X.c > 0).astype(int).to_numpy()


def _log(client: Any, name: str, flavor: Any, model: Any, example: Any, *,
         params: dict[str, Any], metrics: dict[str, float], **options: Any) -> str:
    """Log ``model`` with MLflow's ``flavor`` module in a run; register it as the next version
    of ``name``. No pip requirements are inferred (a subprocess per model, not needed here)."""
    with mlflow.start_run() as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tag("team", "risk")
        info = flavor.log_model(model, name="model", input_example=example,
                                pip_requirements=[], **options)
    version = client.create_model_version(name, info.model_uri, run.info.run_id)
    return str(version.version)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow registry (SQLite + local artifacts) holding five flavors' models."""
    import lightgbm as lgb
    import torch
    import xgboost as xgb
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    saved = dict(os.environ)  # MLflow and the command keep their URIs and options there
    # MLflow would otherwise try to send usage telemetry, and wait on a network it cannot reach
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("churn-lab", artifact_location=str(root / "artifacts"))
    mlflow.set_experiment(experiment_id=experiment)
    client = MlflowClient(uri, uri)
    X, y = _table()
    head = X.head(8)

    client.create_registered_model("churn", tags={"owner": "risk"})
    for c in (0.1, 1.0):
        model = LogisticRegression(C=c).fit(X, y)
        v = _log(client, "churn", mlflow.sklearn, model, head, params={"C": c},
                 metrics={"accuracy": float((model.predict(X) == y).mean())})
        client.set_model_version_tag("churn", v, "reviewed", "yes")
    client.transition_model_version_stage("churn", "1", "Production")
    client.transition_model_version_stage("churn", "2", "Staging")
    client.set_registered_model_alias("churn", "Champion", "2")

    client.create_registered_model("ranker")
    booster = xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(X, y)
    _log(client, "ranker", mlflow.xgboost, booster, head, params={"depth": 3},
         metrics={"auc": 0.9})

    client.create_registered_model("prices")
    forest = lgb.LGBMRegressor(n_estimators=10, min_child_samples=2, verbose=-1)
    forest.fit(X, X.a.to_numpy() * 2)
    _log(client, "prices", mlflow.lightgbm, forest, head, params={"leaves": 31},
         metrics={"rmse": 0.1})
    # v2: a LightGBM Booster (MLflow stores its text model), logged without an input example
    booster_text = lgb.train({"objective": "regression", "verbose": -1, "min_data_in_leaf": 2},
                             lgb.Dataset(X, X.b.to_numpy()), num_boost_round=5)
    _log(client, "prices", mlflow.lightgbm, booster_text, None, params={"leaves": 31},
         metrics={"rmse": 0.2})

    client.create_registered_model("net")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    _log(client, "net", mlflow.pytorch, net, X.to_numpy(dtype=np.float32)[:8],
         params={"hidden": 4}, metrics={"loss": 0.3})
    client.set_registered_model_alias("net", "prod", "1")

    import keras

    client.create_registered_model("dense")
    keras.utils.set_random_seed(0)
    dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="softmax")])
    # mlflow.keras.log_model (3.18) writes the input example before it makes the model's folder,
    # so the model is saved into a folder made first and logged as the run's artifacts
    folder = root / "dense"
    folder.mkdir()
    with mlflow.start_run() as run:
        mlflow.log_params({"units": 2})
        mlflow.keras.save_model(dense, str(folder), input_example=X.to_numpy(np.float32)[:8],
                                pip_requirements=[])
        mlflow.log_artifacts(str(folder), "model")
    client.create_model_version("dense", f"runs:/{run.info.run_id}/model", run.info.run_id)
    yield uri
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    os.environ.clear()
    os.environ.update(saved)


with warnings.catch_warnings():
    # MLflow notes, as a warning, each type hint it cannot validate, on import and on subclassing
    warnings.simplefilter("ignore", UserWarning)
    from mlflow.pyfunc import PythonModel

    class Doubler(PythonModel):
        """A custom pyfunc whose class also has modelyard's python protocol (save, load)."""

        def predict(self, model_input: Any, params: Any = None) -> Any:
            return np.asarray(model_input, dtype=np.float64) * 2.0

        def save(self, path: Path) -> None:
            (Path(path) / "factor.json").write_text("2.0")

        @classmethod
        def load(cls, path: Path) -> Doubler:
            assert json.loads((Path(path) / "factor.json").read_text()) == 2.0
            return cls()


def _home(tmp_path: Path) -> Path:
    return tmp_path / "yard"


def _registry(tmp_path: Path) -> Registry:
    return Registry.open(Settings.from_env(home=_home(tmp_path)))


def _cli(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(_home(tmp_path)), "import", "mlflow", *args])


def test_every_flavor_is_imported_with_its_lineage_and_answers_like_mlflow(
        source: str, tmp_path: Path) -> None:
    result = _cli(tmp_path, "--tracking-uri", source, "--all-versions")
    assert result.exit_code == 0, result.output
    assert "imported prices v2 -> prices:2: lightgbm model.lgb (text); no input example: " \
        "parity not checked" in result.output
    with _registry(tmp_path) as registry:
        churn = {v.version: v for v in registry.list_versions("churn")}
        assert sorted(churn) == [1, 2]
        v2 = churn[2]
        assert v2.flavor == "sklearn" and v2.meta["task"] == "classification"
        src = v2.meta["source"]
        assert src["kind"] == "mlflow" and src["model"] == "churn" and src["version"] == 2
        assert src["tracking_uri"] == source and src["experiment"] == "churn-lab"
        assert src["run_id"] and src["format"] == "skops" and not src.get("trusted")
        assert src["tags"] == {"reviewed": "yes"} and src["run_tags"] == {"team": "risk"}
        assert v2.params == {"C": "1.0"} and v2.metrics["accuracy"] > 0.8
        assert v2.metrics["parity_rows"] == 8 and v2.metrics["parity_max_abs_diff"] < 1e-9
        assert v2.metrics["parity_label_agreement"] == 1.0
        assert src["parity"]["rows"] == 8
        # the MLflow column signature, mapped
        assert v2.signature["layout"] == "table" and v2.signature["frame"] is True
        assert [f["name"] for f in v2.signature["inputs"]] == ["a", "b", "c"]
        assert {f["dtype"] for f in v2.signature["inputs"]} == {"float64"}
        assert v2.signature["classes"] == [0, 1]
        # an MLflow alias (lowercased) and the legacy stages, as aliases
        model = registry.get_model("churn")
        assert model.aliases == {"champion": 2, "production": 1, "staging": 2}

        for name, flavor in (("ranker", "xgboost"), ("prices", "lightgbm"), ("net", "torch"),
                             ("dense", "tensorflow")):
            version = registry.resolve(f"{name}:1")
            assert version.flavor == flavor, name
            assert version.meta["source"]["parity"]["max_abs_diff"] < 1e-4, name
        text = registry.resolve("prices:2")
        assert text.flavor == "lightgbm" and text.meta["source"]["format"] == "text"
        assert "parity" not in text.meta["source"] and "parity_rows" not in text.metrics
        assert registry.get_model("net").aliases == {"prod": 1}
        net = registry.resolve("net:1")
        assert net.signature["layout"] == "tensor"
        assert net.signature["inputs"][0]["shape"] == [3]

    import modelyard

    X, _ = _table()
    native = mlflow.sklearn.load_model("models:/churn/2")
    with _registry(tmp_path) as registry:
        ours = modelyard.load("churn@champion", registry=registry)
        np.testing.assert_array_equal(ours.predict(X), native.predict(X))
        np.testing.assert_allclose(ours.predict_proba(X), native.predict_proba(X), atol=1e-12)


def test_a_second_import_skips_what_was_imported_and_dry_run_writes_nothing(
        source: str, tmp_path: Path) -> None:
    planned = _cli(tmp_path, "--tracking-uri", source, "--model", "churn", "--dry-run", "--json")
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.output)
    assert [(v["version"], v["action"]) for v in plan["versions"]] == [(2, "planned")]
    with _registry(tmp_path) as registry:
        assert registry.list_models() == []

    first = _cli(tmp_path, "--tracking-uri", source, "--model", "churn")
    assert first.exit_code == 0, first.output
    assert "imported churn v2 -> churn:1" in first.output
    # v1 holds 'production' in MLflow but was not imported: said, not set
    assert "churn@production: not set" in first.output
    again = _cli(tmp_path, "--tracking-uri", source, "--model", "churn", "--all-versions")
    assert again.exit_code == 0, again.output
    assert "skipped  churn v2 -> churn:1" in again.output
    assert "imported churn v1 -> churn:2" in again.output
    with _registry(tmp_path) as registry:
        assert len(registry.list_versions("churn")) == 2
        assert registry.get_model("churn").aliases == {"champion": 1, "production": 2,
                                                       "staging": 1}
        moves = len(registry.alias_history("churn"))
    third = _cli(tmp_path, "--tracking-uri", source, "--all-versions", "--model", "churn")
    assert third.exit_code == 0 and third.output.count("skipped") == 2, third.output
    with _registry(tmp_path) as registry:
        assert len(registry.list_versions("churn")) == 2
        assert len(registry.alias_history("churn")) == moves


def test_an_unknown_model_or_an_unreachable_registry_is_one_line_and_exit_22(
        source: str, tmp_path: Path) -> None:
    unknown = _cli(tmp_path, "--tracking-uri", source, "--model", "nope")
    assert unknown.exit_code == 22
    assert unknown.output.strip().count("\n") == 0 and "'nope'" in unknown.output
    missing = _cli(tmp_path, "--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.exit_code == 22 and "no MLflow database" in missing.output
    assert not (tmp_path / "none.db").exists()
    down = _cli(tmp_path, "--tracking-uri", "http://127.0.0.1:9")
    assert down.exit_code == 22, down.output
    assert down.output.startswith("error: cannot read")
    assert ImportSourceError.exit_code == 22


def test_a_pickled_model_needs_trust_and_is_audited(source: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from sklearn.tree import DecisionTreeClassifier

    X, y = _table(seed=1)
    client = MlflowClient(source, source)
    client.create_registered_model("tree")
    tree = DecisionTreeClassifier(max_depth=3).fit(X, y)
    _log(client, "tree", mlflow.sklearn, tree, X.head(6), params={"depth": 3}, metrics={},
         serialization_format="cloudpickle")
    with _registry(tmp_path) as registry:
        report = import_mlflow(registry, source, model="tree")
        [refused] = report.refused
        assert isinstance(refused.error, UnsafeArtifactError)
        assert "--trust" in refused.detail
        assert registry.list_models() == []
        report = import_mlflow(registry, source, model="tree", trust=True)
        assert not report.refused
        version = registry.resolve("tree:1")
        assert version.meta["source"]["trusted"] is True
        assert version.meta["source"]["format"] == "cloudpickle"
        [event] = registry.audit_events(version.ref, action=TRUST_ACTION)
        assert event.details["sha256"] == version.meta["source"]["sha256"]
    result = _cli(tmp_path, "--tracking-uri", source, "--model", "tree")
    assert result.exit_code == 0 and "skipped" in result.output


def test_a_torch_save_model_and_a_custom_pyfunc_come_in_with_trust(
        source: str, tmp_path: Path) -> None:
    import torch
    from mlflow import MlflowClient

    rows = np.random.default_rng(2).normal(size=(6, 3)).astype(np.float32)
    client = MlflowClient(source, source)
    client.create_registered_model("pickled-net")
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2))
    _log(client, "pickled-net", mlflow.pytorch, net, rows, params={}, metrics={},
         serialization_format="pickle")
    client.create_registered_model("doubler")
    with mlflow.start_run() as run:
        info = mlflow.pyfunc.log_model(name="model", python_model=Doubler(),
                                       input_example=rows, pip_requirements=[])
    client.create_model_version("doubler", info.model_uri, run.info.run_id)

    with _registry(tmp_path) as registry:
        for name in ("pickled-net", "doubler"):
            [refused] = import_mlflow(registry, source, model=name).refused
            assert isinstance(refused.error, UnsafeArtifactError), refused.detail
        assert registry.list_models() == []
        for name in ("pickled-net", "doubler"):
            report = import_mlflow(registry, source, model=name, trust=True)
            assert not report.refused, report.refused[0].detail
        torch_version = registry.resolve("pickled-net:1")
        assert torch_version.flavor == "torch"
        assert torch_version.meta["source"]["format"] == "pickle"
        assert torch_version.meta["source"]["trusted"] is True
        pyfunc = registry.resolve("doubler:1")
        assert pyfunc.flavor == "python" and pyfunc.meta["source"]["format"] == "cloudpickle"
        assert pyfunc.metrics["parity_max_abs_diff"] == 0.0
        assert len(registry.audit_events(action=TRUST_ACTION)) == 2

        import modelyard

        with torch.no_grad():
            expected = net(torch.as_tensor(rows)).numpy()
        loaded = modelyard.load("pickled-net:1", registry=registry)
        np.testing.assert_allclose(loaded.predict(rows), expected, atol=1e-6)


def test_a_version_that_does_not_answer_like_mlflow_is_refused_and_nothing_registered(
        source: str, tmp_path: Path) -> None:
    # a tolerance no answer meets (below zero) stands for a version that answers differently
    with _registry(tmp_path) as registry:
        report = import_mlflow(registry, source, model="ranker", limits=Limits(max_abs_diff=-1))
        [refused] = report.refused
        assert isinstance(refused.error, ImportSourceError)
        assert refused.detail.startswith("ranker v1 refused: modelyard's version does not "
                                         "answer like MLflow's on the input example (8 rows")
        assert registry.list_models() == []


def test_through_a_server_the_command_refuses_in_one_line(source: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--server", "http://127.0.0.1:9", "import", "mlflow",
                                       "--tracking-uri", source])
    assert result.exit_code == 2
    assert result.output.startswith("error: '") and \
        "import mlflow' works on the registry database" in result.output
    assert result.output.count("\n") == 1
