"""Small real models registered in a registry, for the server's tests and benchmarks.

Each helper trains (seconds at most), saves through the flavor's adapter, registers the version
and, unless ``promote=False``, points ``production`` at it. Frameworks are imported inside.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.adapters import get_adapter
from modelyard.errors import ModelyardError
from modelyard.pipeline.evaluate import describe_outputs
from modelyard.pipeline.profile import profile
from modelyard.predictor import Predictor
from modelyard.schema import Signature


def register_model(registry: Any, name: str, model: Any, flavor: str, X: Any, y: Any = None,
                   *, promote: bool = True, meta: dict[str, Any] | None = None,
                   sample: Any = None, record_outputs: bool = True) -> Any:
    """Save ``model`` with its adapter, register it as a new version of ``name``; return it.

    ``record_outputs=False`` registers it as versions saved before outputs were recorded.
    """
    adapter = get_adapter(flavor)
    with tempfile.TemporaryDirectory(prefix="modelyard-fixture-") as tmp:
        saved = adapter.save(model, Path(tmp), sample=sample) if sample is not None else \
            adapter.save(model, Path(tmp))
        signature = adapter.infer_signature(model, X, y).to_dict()
        if record_outputs:  # as the pipeline records them (it measures the saved model)
            predictor = Predictor(name, 0, flavor, model, adapter, Signature.from_dict(signature),
                                  task=(meta or {}).get("task"))
            with contextlib.suppress(ModelyardError):  # a model failing on purpose: no record
                signature["outputs"] = describe_outputs(predictor, X)
        version = registry.register(name, Path(tmp), flavor=flavor,
                                    meta={**saved, **(meta or {})}, signature=signature,
                                    reference_stats=profile(X))
    if promote:
        registry.set_alias(name, "production", version.version)
    return version


def tabular_data(n_rows: int = 2000, n_features: int = 20, seed: int = 0) -> tuple[Any, Any]:
    """A binary classification table: ``(X float64 [n, features], y int)``."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, n_features))
    y = (X[:, 0] + 0.5 * X[:, 1] - X[:, 2] > 0).astype(np.int64)
    return X, y


def labeled_frame(n_rows: int, seed: int) -> Any:
    """A training table as a project reads it from CSV: float columns ``x0..x3`` and an int
    ``label`` a linear rule plus noise decides (a pandas ``DataFrame``)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_rows, 4))
    label = (X @ np.array([2.0, -1.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=n_rows) > 0)
    return pd.DataFrame({**{f"x{i}": X[:, i] for i in range(4)}, "label": label.astype(int)})


def register_hgb(registry: Any, name: str = "tabular", *, max_iter: int = 100,
                 n_features: int = 20, seed: int = 0, promote: bool = True,
                 meta: dict[str, Any] | None = None) -> Any:
    """A ``HistGradientBoostingClassifier`` (``max_iter`` trees) on ``n_features`` floats."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, y = tabular_data(n_features=n_features, seed=seed)
    model = HistGradientBoostingClassifier(max_iter=max_iter, early_stopping=False,
                                           random_state=seed).fit(X, y)
    return register_model(registry, name, model, "sklearn", X, y, promote=promote, meta=meta)


def register_constant(registry: Any, name: str, value: int, *, n_features: int = 3,
                      promote: bool = True, meta: dict[str, Any] | None = None) -> Any:
    """A classifier that always answers ``value`` (tells versions apart in swap tests)."""
    from sklearn.dummy import DummyClassifier

    X = np.zeros((4, n_features))
    y = np.full(4, value, dtype=np.int64)
    model = DummyClassifier(strategy="constant", constant=value).fit(X, y)
    return register_model(registry, name, model, "sklearn", X, y, promote=promote, meta=meta)


def register_text(registry: Any, name: str = "sentiment", *, promote: bool = True) -> Any:
    """A TF-IDF + logistic regression text classifier (input: strings)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    texts = ["great product", "love it", "awful", "terrible service", "really great",
             "bad bad bad", "wonderful", "hate it"]
    labels = ["pos", "pos", "neg", "neg", "pos", "neg", "pos", "neg"]
    model = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(texts, labels)
    return register_model(registry, name, model, "sklearn", texts, labels, promote=promote)


class ProbeModel:
    """A python-flavor model for worker tests: ``2 * x[:, 0]``, unless ``x[:, 0]`` says otherwise.

    A first feature of ``-1`` raises (a bad batch), ``-2`` hangs for a minute (a stuck device
    call), ``-3`` kills its own process (a crash mid-call). ``fail_load`` makes ``load`` raise;
    ``fail_predict`` makes every row but an all-zero one raise (it loads and warms up, then
    fails real traffic: a bad rollout candidate); ``delay_s`` sleeps in each call (a slow one).
    """

    def __init__(self, fail_load: bool = False, *, fail_predict: bool = False,
                 delay_s: float = 0.0) -> None:
        self.fail_load = fail_load
        self.fail_predict = fail_predict
        self.delay_s = delay_s

    def predict(self, batch: Any) -> Any:
        """Twice the first column, or the misbehaviour its value asks for."""
        x = np.asarray(batch, dtype=np.float64)
        first = x[:, 0]
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_predict and x.any():
            raise ValueError("probe: this version fails every real request on purpose")
        if (first == -1).any():
            raise ValueError("probe: a poisoned row (-1) in the batch")
        if (first == -2).any():
            time.sleep(60)
        if (first == -3).any():
            os.kill(os.getpid(), signal.SIGKILL)
        return first * 2

    def save(self, path: Path) -> None:
        """Write the settings."""
        (Path(path) / "probe.txt").write_text("fail" if self.fail_load else "ok")
        if self.fail_predict or self.delay_s:
            (Path(path) / "probe-predict.txt").write_text(
                f"{int(self.fail_predict)} {self.delay_s!r}")

    @classmethod
    def load(cls, path: Path) -> ProbeModel:
        """Read the setting back; raises if the model was saved with ``fail_load``."""
        if (Path(path) / "probe.txt").read_text() == "fail":
            raise RuntimeError("probe: this version is broken on purpose")
        extra = Path(path) / "probe-predict.txt"
        if extra.exists():
            fail, delay = extra.read_text().split()
            return cls(fail_predict=fail == "1", delay_s=float(delay))
        return cls()


def register_probe(registry: Any, name: str = "probe", *, n_features: int = 3,
                   fail_load: bool = False, fail_predict: bool = False, delay_s: float = 0.0,
                   promote: bool = True, meta: dict[str, Any] | None = None) -> Any:
    """A :class:`ProbeModel` over ``n_features`` floats (loads in a blink: no framework)."""
    X = np.arange(4 * n_features, dtype=np.float64).reshape(4, n_features)
    model = ProbeModel(fail_load, fail_predict=fail_predict, delay_s=delay_s)
    return register_model(registry, name, model, "python", X, promote=promote, meta=meta)


class BallastModel:
    """A python-flavor model that holds ``mb`` megabytes once loaded, from an artifact of a few
    bytes: what a loaded version really costs is then known, and far above its estimate. It
    answers ``value`` for every row."""

    def __init__(self, mb: int, value: float = 0.0) -> None:
        self.mb = mb
        self.value = value
        self.ballast: Any = None

    def predict(self, batch: Any) -> Any:
        """``value`` for each row."""
        return np.full(len(np.asarray(batch)), self.value)

    def save(self, path: Path) -> None:
        """Write the settings (not the ballast)."""
        (Path(path) / "ballast.txt").write_text(f"{self.mb} {self.value!r}")

    @classmethod
    def load(cls, path: Path) -> BallastModel:
        """Read the settings and take the ballast: ``mb`` MiB, every page written (resident)."""
        mb, value = (Path(path) / "ballast.txt").read_text().split()
        model = cls(int(mb), float(value))
        model.ballast = np.ones(model.mb << 20, dtype=np.uint8)
        return model


def register_ballast(registry: Any, name: str = "ballast", *, mb: int = 32, value: float = 0.0,
                     n_features: int = 3, promote: bool = True,
                     meta: dict[str, Any] | None = None) -> Any:
    """A :class:`BallastModel` over ``n_features`` floats that holds ``mb`` MiB once loaded."""
    X = np.zeros((4, n_features))
    return register_model(registry, name, BallastModel(mb, value), "python", X, promote=promote,
                          meta=meta)


def mlp(sizes: tuple[int, ...] = (256, 1024, 1024, 10), seed: int = 0) -> Any:
    """A PyTorch MLP with ReLU between ``sizes`` (eval mode)."""
    import torch

    torch.manual_seed(seed)
    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval()


def register_mlp(registry: Any, name: str = "mlp", *,
                 sizes: tuple[int, ...] = (256, 1024, 1024, 10), promote: bool = True,
                 meta: dict[str, Any] | None = None) -> Any:
    """A PyTorch MLP classifier over ``sizes[0]`` float32 features (``sizes[-1]`` classes)."""
    model = mlp(sizes)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(16, sizes[0])).astype(np.float32)
    y = np.arange(16) % sizes[-1]
    return register_model(registry, name, model, "torch", X, y, promote=promote, meta=meta,
                          sample=X[:8])


__all__ = [
    "BallastModel",
    "ProbeModel",
    "mlp",
    "register_ballast",
    "register_constant",
    "register_hgb",
    "register_mlp",
    "register_model",
    "register_probe",
    "register_text",
    "tabular_data",
]
