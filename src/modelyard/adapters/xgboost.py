"""The XGBoost flavor: the scikit-learn wrappers and raw Boosters, in XGBoost's own format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import (
    artifact_file,
    check_gpu,
    cuda_device_count,
    labels_from_scores,
    parse_device,
    plain,
    take_rows,
)
from modelyard.errors import AdapterError
from modelyard.schema import Signature

_FILE = "model.ubj"

#: the classes a saved model may be rebuilt as; the name comes from meta, so it is allow-listed.
_CLASSES = ("XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor", "XGBRanker")
#: objectives whose raw output is already a probability (per class for multi:softprob).
_PROBABILISTIC = ("binary:logistic", "multi:softprob")


class XGBoostAdapter:
    """Save, load and run XGBoost models as UBJSON (``model.ubj``), on cpu or ``cuda:N``.

    Scikit-learn wrappers come back as the same class; a raw ``Booster`` comes back as a
    ``Booster``. Nothing is pickled.
    """

    flavor: ClassVar[str] = "xgboost"
    extra: ClassVar[str] = "xgboost"
    accelerated: ClassVar[bool] = True

    @classmethod
    def gpu_count(cls) -> int:
        """CUDA devices XGBoost can use here (0 for a cpu-only build such as ``xgboost-cpu``)."""
        xgb = require("xgboost", cls.extra)
        if not xgb.build_info().get("USE_CUDA"):
            return 0
        return cuda_device_count()

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is an XGBoost scikit-learn model or a ``Booster``."""
        if not is_loaded("xgboost"):
            return False
        import xgboost as xgb

        return isinstance(model, xgb.XGBModel | xgb.Booster)

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Write ``model.ubj`` into ``path``; meta records the class to rebuild."""
        xgb = require("xgboost", self.extra)
        kind = "Booster" if isinstance(model, xgb.Booster) else type(model).__name__
        if kind != "Booster" and kind not in _CLASSES:
            kind = "XGBClassifier" if hasattr(model, "predict_proba") else "XGBRegressor"
        try:
            model.save_model(Path(path) / _FILE)
        except Exception as exc:
            raise AdapterError(f"xgboost: could not save {type(model).__name__}: {exc}") from exc
        meta: dict[str, Any] = {"file": _FILE, "class": kind, "xgboost_version": xgb.__version__}
        classes = getattr(model, "classes_", None) if kind != "Booster" else None
        if classes is not None:
            meta["classes"] = plain(classes)
        return meta

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Rebuild the saved class from ``model.ubj`` and set its ``device`` parameter."""
        index = parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        if index is not None:
            check_gpu(index, self.gpu_count(), self.flavor)
        xgb = require("xgboost", self.extra)
        kind = str(meta.get("class", "Booster"))
        if kind != "Booster" and kind not in _CLASSES:
            raise AdapterError(f"xgboost: unknown model class {kind!r} in the version's metadata")
        target = artifact_file(path, meta, _FILE, self.flavor)
        where = "cpu" if index is None else f"cuda:{index}"
        try:
            model = getattr(xgb, kind)()
            model.load_model(target)
            if kind == "Booster":
                model.set_param({"device": where})
            else:
                model.set_params(device=where)
        except Exception as exc:
            raise AdapterError(f"xgboost: could not load {target.name} as {kind}: {exc}") from exc
        return model

    def predict(self, model: Any, batch: Any) -> Any:
        """Labels for a classifier, values for a regressor, raw output for a ``Booster``."""
        try:
            if _is_booster(model):  # inplace_predict skips a DMatrix copy per call
                return np.asarray(model.inplace_predict(batch))
            return np.asarray(model.predict(batch))
        except Exception as exc:
            raise AdapterError(f"xgboost: {type(model).__name__} predict failed: {exc}") from exc

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities ``(n, k)``, or ``None`` for regressors and other objectives."""
        try:
            if hasattr(model, "predict_proba"):
                return np.asarray(model.predict_proba(batch))
            if _is_booster(model) and _objective(model) in _PROBABILISTIC:
                proba = np.asarray(model.inplace_predict(batch))
                # binary:logistic gives P(class 1) only; return (n, 2) like every classifier
                return np.column_stack([1.0 - proba, proba]) if proba.ndim == 1 else proba
        except Exception as exc:
            raise AdapterError(f"xgboost: {type(model).__name__} scoring failed: {exc}") from exc
        return None

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """``predict`` and ``predict_scores`` from one model call: a classifier's labels are the
        argmax of its probabilities, a probabilistic ``Booster``'s output is its scores."""
        if _is_booster(model):
            out = self.predict(model, batch)
            try:
                probabilistic = _objective(model) in _PROBABILISTIC
            except Exception as exc:
                raise AdapterError(f"xgboost: Booster scoring failed: {exc}") from exc
            if not probabilistic:
                return out, None
            return out, np.column_stack([1.0 - out, out]) if out.ndim == 1 else out
        if not hasattr(model, "predict_proba"):
            return self.predict(model, batch), None
        proba = self.predict_scores(model, batch)
        return labels_from_scores(model.classes_, proba,
                                  lambda rows: self.predict(model, take_rows(batch, rows))), proba

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A table signature from the training features."""
        return Signature.infer(X, y, layout="table")


def _is_booster(model: Any) -> bool:
    import xgboost as xgb

    return isinstance(model, xgb.Booster)


def _objective(booster: Any) -> str:
    return str(json.loads(booster.save_config())["learner"]["objective"]["name"])


__all__ = ["XGBoostAdapter"]
