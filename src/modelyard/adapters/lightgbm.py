"""The LightGBM flavor: ``LGBMClassifier``, ``LGBMRegressor`` and ``Booster``, as model text."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import artifact_file, classify, parse_device, plain
from modelyard.errors import AdapterError
from modelyard.schema import Signature

_FILE = "model.txt"


class BoosterClassifier:
    """A loaded LightGBM classifier: a ``Booster`` plus its class labels.

    ``predict`` returns labels (argmax of the probabilities mapped to ``classes_``) and
    ``predict_proba`` the ``(n, k)`` probabilities, like ``LGBMClassifier``.
    """

    def __init__(self, booster: Any, classes: list[Any]) -> None:
        self.booster_ = booster
        self.classes_ = classes

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities ``(n, k)`` in ``classes_`` order."""
        proba = np.asarray(self.booster_.predict(X))
        if proba.ndim == 1:  # binary objectives return P(classes_[1]) only
            proba = np.column_stack([1.0 - proba, proba])
        return proba

    def predict(self, X: Any) -> Any:
        """Class labels, one per row."""
        return classify(self.predict_proba(X), self.classes_)


class LightGBMAdapter:
    """Save, load and run LightGBM models as LightGBM's own text format (``model.txt``).

    A classifier comes back as a :class:`BoosterClassifier`, a regressor or raw booster as a
    ``lightgbm.Booster``. Nothing is pickled. LightGBM runs on cpu here.
    """

    flavor: ClassVar[str] = "lightgbm"
    extra: ClassVar[str] = "lightgbm"
    accelerated: ClassVar[bool] = False

    @classmethod
    def gpu_count(cls) -> int:
        """Always 0: this flavor runs on cpu."""
        return 0

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is a LightGBM estimator, ``Booster`` or :class:`BoosterClassifier`."""
        if isinstance(model, BoosterClassifier):
            return True
        if not is_loaded("lightgbm"):
            return False
        import lightgbm as lgb

        return isinstance(model, lgb.LGBMModel | lgb.Booster)

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Write ``model.txt`` into ``path``; meta records the kind and a classifier's classes."""
        lgb = require("lightgbm", self.extra)
        classes = getattr(model, "classes_", None)
        if isinstance(model, lgb.Booster):
            booster, kind = model, "booster"
        else:
            booster = getattr(model, "booster_", None)
            kind = "classifier" if classes is not None else "regressor"
        if booster is None:
            raise AdapterError(f"lightgbm: {type(model).__name__} is not fitted; fit it first")
        try:
            booster.save_model(Path(path) / _FILE)
        except Exception as exc:
            raise AdapterError(f"lightgbm: could not save {type(model).__name__}: {exc}") from exc
        meta: dict[str, Any] = {"file": _FILE, "kind": kind, "lightgbm_version": lgb.__version__}
        if kind == "classifier":
            meta["classes"] = plain(classes)
        return meta

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """A :class:`BoosterClassifier` for a classifier, else a ``lightgbm.Booster``."""
        parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        lgb = require("lightgbm", self.extra)
        target = artifact_file(path, meta, _FILE, self.flavor)
        try:
            booster = lgb.Booster(model_file=str(target))
        except Exception as exc:
            raise AdapterError(f"lightgbm: could not load {target.name}: {exc}") from exc
        if meta.get("kind") == "classifier":
            return BoosterClassifier(booster, list(meta["classes"]))
        return booster

    def predict(self, model: Any, batch: Any) -> Any:
        """Labels for a classifier, values for a regressor, raw output for a ``Booster``."""
        try:
            return np.asarray(model.predict(batch))
        except Exception as exc:
            raise AdapterError(f"lightgbm: {type(model).__name__} predict failed: {exc}") from exc

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities ``(n, k)`` for a classifier, ``None`` otherwise."""
        if not hasattr(model, "predict_proba"):
            return None
        try:
            return np.asarray(model.predict_proba(batch))
        except Exception as exc:
            raise AdapterError(f"lightgbm: {type(model).__name__} scoring failed: {exc}") from exc

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """``predict`` and ``predict_scores`` from one model call (a loaded classifier's labels
        are the argmax of its probabilities)."""
        if not isinstance(model, BoosterClassifier):
            return self.predict(model, batch), self.predict_scores(model, batch)
        proba = self.predict_scores(model, batch)
        return np.asarray(classify(proba, model.classes_)), proba

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A table signature from the training features."""
        return Signature.infer(X, y, layout="table")


__all__ = ["BoosterClassifier", "LightGBMAdapter"]
