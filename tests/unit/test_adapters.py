"""Every flavor passes ``check_adapter`` with a small real model; then each adapter's own rules."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import BaseEstimator, TransformerMixin
from torch import nn

from modelyard.adapters import adapter_for, get_adapter, require
from modelyard.adapters.base import classify, probabilities
from modelyard.adapters.python import PythonAdapter
from modelyard.devices import resolve_device
from modelyard.errors import (
    ConfigError,
    DeviceError,
    FrameworkMissingError,
    UnsafeArtifactError,
)
from modelyard.testing import check_adapter

RNG = np.random.default_rng(0)


# -- data -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table() -> tuple[pd.DataFrame, np.ndarray]:
    X = pd.DataFrame({
        "age": RNG.integers(18, 80, 120),
        "income": RNG.normal(50.0, 10.0, 120),
        "score": RNG.random(120),
    })
    y = ((X["income"] > 50) ^ (X["score"] > 0.7)).astype(np.int64).to_numpy()
    return X, y


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    return images, data.target.astype(np.int64)


# -- classic flavors ------------------------------------------------------------------------------
def test_sklearn_hist_gradient_boosting_on_a_dataframe(table: Any) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = table
    model = HistGradientBoostingClassifier(max_iter=10).fit(X, y)
    signature = check_adapter(get_adapter("sklearn"), model, X, y)
    assert signature.frame and signature.names == ["age", "income", "score"]
    assert get_adapter("sklearn").predict_scores(model, X).shape == (len(X), 2)


def test_sklearn_pipeline_on_an_array(table: Any) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = table[0].to_numpy(dtype=np.float64), table[1]
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    check_adapter(get_adapter("sklearn"), model, X, y)


@pytest.mark.parametrize("kind", ["XGBClassifier", "XGBRegressor", "Booster"])
def test_xgboost(table: Any, kind: str) -> None:
    import xgboost as xgb

    X, y = table
    if kind == "Booster":
        model = xgb.train({"objective": "binary:logistic", "max_depth": 2},
                          xgb.DMatrix(X, label=y), num_boost_round=5)
    else:
        model = getattr(xgb, kind)(n_estimators=5, max_depth=2).fit(X, y)
    check_adapter(get_adapter("xgboost"), model, X, y)
    scores = get_adapter("xgboost").predict_scores(model, X)  # type: ignore[attr-defined]
    assert (scores is None) == (kind == "XGBRegressor")


@pytest.mark.parametrize("labels", ["strings", "regression"])
def test_lightgbm(table: Any, labels: str) -> None:
    import lightgbm as lgb

    X, y = table
    if labels == "strings":
        model = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, np.where(y, "yes", "no"))
    else:
        model = lgb.LGBMRegressor(n_estimators=5, verbose=-1).fit(X, X["income"])
    check_adapter(get_adapter("lightgbm"), model, X)


def test_lightgbm_classifier_loads_with_its_labels(table: Any, tmp_path: Path) -> None:
    import lightgbm as lgb

    X, y = table
    model = lgb.LGBMClassifier(n_estimators=5, verbose=-1).fit(X, np.where(y, "yes", "no"))
    adapter = get_adapter("lightgbm")
    meta = adapter.save(model, tmp_path)
    loaded = adapter.load(tmp_path, json.loads(json.dumps(meta)), "cpu")
    assert meta["classes"] == ["no", "yes"]
    assert list(adapter.predict(loaded, X)) == list(model.predict(X))


# -- deep-learning flavors ------------------------------------------------------------------------
class TinyCNN(nn.Module):
    """A small convolutional net for 8x8 digit images."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Flatten())
        self.head = nn.Linear(channels * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def test_torch_cnn_on_digits(digits: Any) -> None:
    torch.manual_seed(0)
    images, target = digits
    model = TinyCNN()
    optim = torch.optim.Adam(model.parameters(), lr=0.01)
    x, t = torch.from_numpy(images), torch.from_numpy(target)
    for _ in range(2):  # two epochs: enough to be far better than chance
        for start in range(0, len(x), 128):
            optim.zero_grad()
            batch = slice(start, start + 128)
            loss = torch.nn.functional.cross_entropy(model(x[batch]), t[batch])
            loss.backward()
            optim.step()
    adapter = get_adapter("torch")
    signature = check_adapter(adapter, model, images[:64], target[:64])
    assert signature.layout == "tensor" and signature.inputs[0].shape == (1, 8, 8)
    labels = classify(adapter.predict(model, images[:300]), signature.classes)
    assert (labels == target[:300]).mean() > 0.6
    scores = adapter.predict_scores(model, images[:5])  # type: ignore[attr-defined]
    assert np.allclose(scores.sum(axis=1), 1.0)


def test_torch_mlp(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))
    X = RNG.normal(size=(16, 256)).astype(np.float32)
    check_adapter(get_adapter("torch"), model, X)
    assert get_adapter("torch").save(model, tmp_path, sample=X)["format"] == "export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]


def test_torch_input_follows_a_module_cast_after_its_first_prediction() -> None:
    """The input's dtype comes from the module as it is now, not as it was first seen."""
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    X = np.random.default_rng(0).normal(size=(5, 4))
    adapter = get_adapter("torch")
    assert adapter.predict(model, X).dtype == np.float32
    model.double()
    out = adapter.predict(model, X)
    assert out.dtype == np.float64
    with torch.inference_mode():
        np.testing.assert_array_equal(out, model(torch.from_numpy(X)).numpy())


def test_torch_never_unpickles(digits: Any, tmp_path: Path, monkeypatch: Any) -> None:
    images = digits[0][:8]
    model = TinyCNN().eval()
    adapter = get_adapter("torch")
    exported, scripted, weights = tmp_path / "e", tmp_path / "s", tmp_path / "w"
    for folder in (exported, scripted, weights):
        folder.mkdir()
    metas = [
        (exported, adapter.save(model, exported, sample=images)),
        (scripted, adapter.save(torch.jit.script(model), scripted)),
        (weights, adapter.save_state_dict(model, weights, {"channels": 8})),  # type: ignore[attr-defined]
    ]
    real_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True"
        return real_load(*args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle used while loading a torch model")

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    expected = adapter.predict(model, images)
    for folder, meta in metas:
        loaded = adapter.load(folder, meta, "cpu")
        assert np.allclose(adapter.predict(loaded, images), expected, atol=1e-5), meta["format"]
    assert [m["format"] for _, m in metas] == ["export", "torchscript", "state_dict"]


def test_torch_falls_back_to_torchscript(monkeypatch: Any, tmp_path: Path) -> None:
    def cannot_export(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("unsupported")

    monkeypatch.setattr(torch.export, "export", cannot_export)
    model = nn.Sequential(nn.Linear(4, 3))
    X = RNG.normal(size=(5, 4)).astype(np.float32)
    meta = get_adapter("torch").save(model, tmp_path, sample=X)
    assert meta["format"] == "torchscript" and (tmp_path / "model.ts").is_file()
    check_adapter(get_adapter("torch"), model, X)


def test_torch_save_needs_a_sample(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sample"):
        get_adapter("torch").save(nn.Linear(2, 2), tmp_path)


@pytest.fixture(scope="module")
def text_model() -> tuple[Any, np.ndarray, np.ndarray]:
    keras = require("keras", "tensorflow")
    keras.utils.set_random_seed(0)
    good, bad = ["good", "great", "happy", "nice"], ["bad", "awful", "sad", "poor"]
    filler = ["the", "a", "day"]
    y = np.arange(200) % 2
    X = np.array([" ".join(RNG.choice((good if label else bad) + filler, 5)) for label in y],
                 dtype=object)
    vectorize = keras.layers.TextVectorization(max_tokens=50, output_sequence_length=8)
    vectorize.adapt(X)
    text = keras.Input(shape=(), dtype="string")
    hidden = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(50, 8)(vectorize(text)))
    model = keras.Model(text, keras.layers.Dense(2, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(X, y, epochs=2, verbose=0)
    return model, X, y


def test_tensorflow_text_classifier(text_model: Any) -> None:
    model, X, y = text_model
    signature = check_adapter(get_adapter("tensorflow"), model, X[:40], y[:40])
    assert signature.inputs[0].dtype == "string" and signature.inputs[0].shape == ()
    batch, _ = signature.prepare(["a good day", "a sad day"])
    assert get_adapter("tensorflow").predict(model, batch).shape == (2, 2)


def test_tensorflow_numeric_model() -> None:
    keras = require("keras", "tensorflow")
    inputs = keras.Input(shape=(4,))
    hidden = keras.layers.Dense(8, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    check_adapter(get_adapter("tensorflow"), model, RNG.normal(size=(10, 4)).astype(np.float32))


def test_tensorflow_refuses_lambda_layers(tmp_path: Path) -> None:
    keras = require("keras", "tensorflow")
    inputs = keras.Input(shape=(3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda z: z * 2)(inputs))
    adapter = get_adapter("tensorflow")
    (tmp_path / "saved").mkdir()
    with pytest.raises(UnsafeArtifactError, match=r"keras\.layers\.Lambda"):
        adapter.save(model, tmp_path / "saved")  # refused when saved, not when deployed
    assert not (tmp_path / "saved" / "model.keras").exists()
    keras.saving.save_model(model, tmp_path / "model.keras")  # written without modelyard
    with pytest.raises(UnsafeArtifactError, match=r"keras\.layers\.Lambda \(Python bytecode\)"):
        adapter.load(tmp_path, {"file": "model.keras"}, "cpu")


# -- onnx and python ------------------------------------------------------------------------------
def _linear_onnx(weights: np.ndarray, bias: np.ndarray) -> Any:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, weights.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, weights.shape[1]])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by older onnxruntime builds too
    onnx.checker.check_model(model)
    return model


def test_onnx_linear_model(tmp_path: Path) -> None:
    weights = RNG.normal(size=(4, 2)).astype(np.float32)
    bias = np.array([0.5, -0.5], dtype=np.float32)
    model = _linear_onnx(weights, bias)
    X = RNG.normal(size=(12, 4))  # float64: predict casts to the input's float32
    check_adapter(get_adapter("onnx"), model, X)
    adapter = get_adapter("onnx")
    assert adapter.handles(model.SerializeToString())
    meta = adapter.save(model, tmp_path)
    loaded = adapter.load(tmp_path, meta, "cpu")
    assert np.allclose(adapter.predict(loaded, X), X @ weights + bias, atol=1e-5)
    assert meta["inputs"] == ["x"] and meta["outputs"] == ["y"]


def test_onnx_cuda_without_the_cuda_provider_is_a_device_error(tmp_path: Path) -> None:
    adapter = get_adapter("onnx")
    model = _linear_onnx(np.eye(2, dtype=np.float32), np.zeros(2, dtype=np.float32))
    meta = adapter.save(model, tmp_path)
    if adapter.gpu_count():  # type: ignore[attr-defined]
        pytest.skip("this onnxruntime has a usable CUDA provider")
    with pytest.raises(DeviceError, match="cuda:0"):
        adapter.load(tmp_path, meta, "cuda:0")


class LinearModel:
    """A user's own model class, served by the python flavor."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = np.asarray(weights)

    def predict(self, batch: Any) -> np.ndarray:
        return np.asarray(batch, dtype=np.float64) @ self.weights

    def save(self, path: Path) -> None:
        (path / "weights.json").write_text(json.dumps(self.weights.tolist()))

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        return cls(json.loads((path / "weights.json").read_text()))


def test_python_flavor() -> None:
    model = LinearModel([1.0, -2.0, 0.5])
    check_adapter(get_adapter("python"), model, RNG.normal(size=(9, 3)))
    assert adapter_for(model).flavor == "python"


def test_python_flavor_refuses_objects_it_cannot_reload(tmp_path: Path) -> None:
    class Local(LinearModel):
        pass

    class NoLoad:
        def predict(self, batch: Any) -> Any:
            return batch

    adapter = get_adapter("python")
    with pytest.raises(ConfigError, match="load"):
        adapter.save(NoLoad(), tmp_path)
    with pytest.raises(ConfigError, match="move it into a module"):
        adapter.save(Local([1.0]), tmp_path)


class DeviceBlindAdapter(PythonAdapter):
    """A broken adapter: loads on any device string without checking it."""

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        return LinearModel.load(path)


def test_check_adapter_catches_a_broken_adapter() -> None:
    with pytest.raises(AssertionError, match="must raise DeviceError"):
        check_adapter(DeviceBlindAdapter(), LinearModel([1.0]), RNG.normal(size=(4, 1)))


def test_classify_and_probabilities() -> None:
    logits = np.array([[2.0, -1.0], [0.0, 3.0]])
    assert list(classify(logits, ["cat", "dog"])) == ["cat", "dog"]
    assert list(classify(np.array([0.2, 0.9]), [0, 1])) == [0, 1]
    assert np.allclose(probabilities(logits).sum(axis=1), 1.0)
    proba = np.array([[0.25, 0.75]])
    assert probabilities(proba) is proba and probabilities(np.zeros(3)) is None


# -- sklearn trust --------------------------------------------------------------------------------
class Doubler(TransformerMixin, BaseEstimator):
    """A user's own transformer: skops cannot vouch for it."""

    def fit(self, X: Any, y: Any = None) -> Doubler:
        return self

    def transform(self, X: Any) -> Any:
        return np.asarray(X) * 2


def test_sklearn_refuses_untrusted_types(table: Any, tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    X, y = table[0].to_numpy(dtype=np.float64), table[1]
    custom = make_pipeline(Doubler(), LogisticRegression()).fit(X, y)
    adapter = get_adapter("sklearn")
    name = f"{Doubler.__module__}.{Doubler.__qualname__}"
    with pytest.raises(UnsafeArtifactError, match="trusted_types"):
        adapter.save(custom, tmp_path / "refused")  # fails at save, not at deploy time
    # an artifact swapped for one holding the custom type is refused at load
    safe, trusted = tmp_path / "safe", tmp_path / "trusted"
    safe.mkdir()
    trusted.mkdir()
    safe_meta = adapter.save(make_pipeline(LogisticRegression()).fit(X, y), safe)
    trusted_meta = adapter.save(custom, trusted, trusted_types=[name])  # type: ignore[call-arg]
    (safe / "model.skops").write_bytes((trusted / "model.skops").read_bytes())
    with pytest.raises(UnsafeArtifactError, match=name):
        adapter.load(safe, safe_meta, "cpu")
    loaded = adapter.load(trusted, trusted_meta, "cpu")  # explicitly trusted: loads
    assert list(adapter.predict(loaded, X)) == list(custom.predict(X))
    assert trusted_meta["trusted_types"] == [name]


# -- devices, registry, imports -------------------------------------------------------------------
def test_missing_gpu_is_a_device_error_that_points_to_auto() -> None:
    with pytest.raises(DeviceError, match="auto"):
        resolve_device("cuda:1", accelerated=True, gpu_count=lambda: 0)
    assert resolve_device("auto", accelerated=True, gpu_count=lambda: 0) == "cpu"


@pytest.mark.parametrize("flavor", ["sklearn", "lightgbm", "python"])
def test_classic_flavors_refuse_cuda(flavor: str, tmp_path: Path) -> None:
    adapter = get_adapter(flavor)
    with pytest.raises(DeviceError):
        resolve_device("cuda", accelerated=adapter.accelerated, gpu_count=lambda: 1)
    with pytest.raises(DeviceError, match="cpu only"):
        adapter.load(tmp_path, {}, "cuda:0")


def test_unknown_flavor_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known flavors: .*sklearn.*torch"):
        get_adapter("nope")


def test_adapter_for_prefers_xgboost_over_sklearn(table: Any) -> None:
    import xgboost as xgb

    X, y = table
    assert adapter_for(xgb.XGBClassifier(n_estimators=2).fit(X, y)).flavor == "xgboost"


def test_require_names_the_pip_command() -> None:
    with pytest.raises(FrameworkMissingError, match=r"pip install 'modelyard\[x\]'"):
        require("not_a_module", "x")


def test_importing_adapters_imports_no_framework() -> None:
    code = (
        "import sys, modelyard.adapters, modelyard.testing\n"
        "from modelyard.adapters import base, lightgbm, onnx, python, sklearn, tensorflow, torch"
        ", xgboost\n"
        "class M:\n"
        "    def predict(self, b): return b\n"
        "    def save(self, p): pass\n"
        "    @classmethod\n"
        "    def load(cls, p): return cls()\n"
        "assert modelyard.adapters.adapter_for(M()).flavor == 'python'\n"
        "heavy = {'torch', 'tensorflow', 'keras', 'sklearn', 'xgboost', 'lightgbm', 'onnx',"
        " 'onnxruntime', 'skops'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
