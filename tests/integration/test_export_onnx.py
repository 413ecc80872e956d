"""``modelyard export --format onnx`` with the real converters (skl2onnx, onnxmltools,
torch.onnx) and onnxruntime: parity measured, derived versions registered, refusals explained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import torch
import xgboost as xgb
from click.testing import CliRunner
from sklearn.ensemble import RandomForestClassifier
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import modelyard
from modelyard.cli import main
from modelyard.config import Settings
from modelyard.errors import ExportError
from modelyard.pipeline.export import export_onnx
from modelyard.registry import Registry

pytestmark = pytest.mark.integration


def _table(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(rng.normal(size=(n, 5)), columns=[f"x{i}" for i in range(5)])
    y = pd.Series(((X.x0 + X.x1 * X.x2) > 0).astype(int) + (X.x3 > 1).astype(int))
    return X, y


def _cli(home: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["--home", str(home), *args])


def test_a_sklearn_pipeline_exports_through_the_cli_with_parity(tmp_path: Path) -> None:
    X, y = _table()
    model = make_pipeline(StandardScaler(), RandomForestClassifier(30, random_state=0)).fit(X, y)
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home)) as registry:
        registry.register_model("forest", model, sample=X, labels=y)

    done = _cli(home, "export", "forest:1", "--format", "onnx", "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["derived_from"] == "forest:1" and report["sample"] == "reference"
    assert report["parity"]["parity_label_agreement"] == 1.0
    assert report["parity"]["parity_max_abs_diff"] < 1e-5

    with Registry.open(Settings.from_env(home=home)) as registry:
        version = registry.get_version("forest", 2)
        assert version.flavor == "onnx"
        assert version.meta["derived_from"] == "forest:1"
        assert version.meta["conversion"]["from"] == "sklearn"
        assert version.metrics == report["parity"]
        assert version.signature == registry.get_version("forest", 1).signature
        rows = X.tail(60)
        got = modelyard.load("forest:2", registry=registry).predict(rows.to_dict("records"))
        assert got.tolist() == model.predict(rows).tolist()


@pytest.mark.parametrize("make", [
    lambda X, y: xgb.XGBClassifier(n_estimators=20, max_depth=4).fit(X, y),
    lambda X, y: xgb.XGBRegressor(n_estimators=20).fit(X, X.x0 * 30 + X.x1),
    lambda X, y: lgb.LGBMClassifier(n_estimators=20, verbose=-1).fit(X, y),
], ids=["xgboost-classifier", "xgboost-regressor", "lightgbm-classifier"])
def test_boosted_trees_export_with_a_given_sample(registry: Registry, make: Any) -> None:
    X, y = _table(seed=1)
    registry.register_model("boost", make(X, y), sample=X.head(200), labels=y.head(200))
    result = export_onnx(registry, "boost:1", sample=X.tail(200))
    assert result.sample == "given" and result.parity.rows == 200
    assert result.parity.max_abs_diff < 1e-4 * result.parity.scale
    assert result.parity.label_agreement in (None, 1.0)
    assert result.version.meta["derived_from"] == "boost:1"
    assert result.version.metrics["parity_rows"] == 200.0
    got = modelyard.load(result.version.ref, registry=registry).predict(X.head(5))
    want = modelyard.load("boost:1", registry=registry).predict(X.head(5))
    assert np.asarray(got).shape == np.asarray(want).shape
    # trees have no weight matrix to quantize: refused before anything is registered
    with pytest.raises(ExportError, match="export it without --quantize"):
        export_onnx(registry, "boost:1", sample=X.tail(50), quantize="int8")
    assert registry.get_model("boost").latest_version == 2


class _MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(5, 32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _trained_mlp(sample: np.ndarray) -> _MLP:
    """An MLP fitted to a rule with clear margins: an untrained one scores every class about
    alike, so any quantization flips labels between near-ties and parity means nothing."""
    torch.manual_seed(0)
    net = _MLP()
    x = torch.as_tensor(sample)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()  # three classes
    optimiser = torch.optim.Adam(net.parameters(), lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimiser.step()
    return net.eval()


def test_a_torch_model_exports_and_quantizes_to_int8(tmp_path: Path) -> None:
    sample = np.random.default_rng(2).normal(size=(300, 5)).astype(np.float32)
    net = _trained_mlp(sample)
    np.save(tmp_path / "sample.npy", sample)
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home)) as registry:
        registry.register_model("mlp", net, sample=sample[:100])

    plain = _cli(home, "export", "mlp:1", "--format", "onnx",
                 "--data", str(tmp_path / "sample.npy"))
    assert plain.exit_code == 0, plain.output
    assert "exported mlp:1 -> mlp:2 (onnx); parity on given 300 rows" in plain.output

    strict = _cli(home, "export", "mlp:1", "--quantize", "int8", "--tolerance", "1e-6")
    assert strict.exit_code == ExportError.exit_code, strict.output
    assert "the ONNX conversion is refused" in strict.output
    assert "nothing was registered" in strict.output

    quantized = _cli(home, "export", "mlp:1", "--quantize", "int8", "--json",
                     "--data", str(tmp_path / "sample.npy"))
    assert quantized.exit_code == 0, quantized.output
    report = json.loads(quantized.output)
    assert report["version"]["version"] == 3
    assert report["parity"]["parity_label_agreement"] >= 0.99
    # the tolerance is relative to the size of the scores (here logits) above 1
    with torch.no_grad():
        scale = max(1.0, float(np.abs(net(torch.as_tensor(sample)).numpy()).max()))
    assert 0 < report["parity"]["parity_max_abs_diff"] < 5e-2 * scale

    with Registry.open(Settings.from_env(home=home)) as registry:
        assert registry.get_version("mlp", 3).meta["conversion"]["quantize"] == "int8"
        with torch.no_grad():
            want = net(torch.as_tensor(sample[:20])).numpy()
        got = modelyard.load("mlp:2", registry=registry).predict(sample[:20].tolist())
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)


def test_an_unsupported_transformer_is_named_and_nothing_is_registered(tmp_path: Path) -> None:
    X, y = _table(seed=3)
    model = make_pipeline(Nystroem(n_components=10, random_state=0),
                          LogisticRegression(max_iter=500)).fit(X, y)
    home = tmp_path / "home"
    with Registry.open(Settings.from_env(home=home)) as registry:
        registry.register_model("kernel", model, sample=X)
    refused = _cli(home, "export", "kernel:1", "--format", "onnx")
    assert refused.exit_code == ExportError.exit_code, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "does not support sklearn.kernel_approximation.Nystroem" in lines[0]
    with Registry.open(Settings.from_env(home=home)) as registry:
        assert [v.version for v in registry.list_versions("kernel")] == [1]


def test_a_keras_file_is_registered_and_exported(tmp_path: Path) -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    model.save(tmp_path / "net.keras")
    sample = np.random.default_rng(4).normal(size=(200, 5)).astype(np.float32)
    np.save(tmp_path / "sample.npy", sample)
    home = tmp_path / "home"
    done = _cli(home, "register", "knet", str(tmp_path / "net.keras"), "--data",
                str(tmp_path / "sample.npy"))
    assert done.exit_code == 0, done.output
    assert "registered knet:1 (tensorflow, raw)" in done.output
    done = _cli(home, "export", "knet:1", "--data", str(tmp_path / "sample.npy"), "--json")
    assert done.exit_code == 0, done.output
    report = json.loads(done.output)
    assert report["parity"]["parity_label_agreement"] == 1.0
    assert report["parity"]["parity_max_abs_diff"] < 1e-5
    with Registry.open(Settings.from_env(home=home)) as registry:
        got = modelyard.load("knet:2", registry=registry).predict(sample[:10].tolist())
    np.testing.assert_allclose(np.asarray(got), model.predict(sample[:10], verbose=0),
                               atol=1e-5)
