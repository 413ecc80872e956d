"""Load an MLflow model through its MLflow flavor, and ask it the parity questions.

:func:`load_native` is only called for a file that loads without running code (skops with
MLflow's type list, XGBoost, LightGBM text, ``torch.export``, ``.keras``) or for a pickle the user
trusted (:mod:`modelyard.pipeline.mlflow_import` refuses the others before this point).
:func:`mlflow_answers` gives what the MLflow-loaded model answers, in the form
:func:`modelyard.pipeline.parity.judge` compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelyard.adapters import require
from modelyard.errors import AdapterError, ImportSourceError, ModelyardError
from modelyard.pipeline.mlflow_mapping import Artifact
from modelyard.pipeline.parity import Answers

#: MLflow flavor -> the MLflow module whose ``load_model`` loads it.
_MODULES = {"sklearn": "mlflow.sklearn", "xgboost": "mlflow.xgboost",
            "lightgbm": "mlflow.lightgbm", "pytorch": "mlflow.pytorch", "keras": "mlflow.keras",
            "python_function": "mlflow.pyfunc"}


def load_native(artifact: Artifact, folder: Path) -> Any:
    """The model object MLflow's flavor loads from ``folder``; a custom pyfunc's Python model
    when its class has modelyard's python protocol (``predict``, ``save``, classmethod ``load``).
    """
    module = require(_MODULES[artifact.flavor], "mlflow")
    try:
        model = module.load_model(str(folder))
    except ModelyardError:
        raise
    except Exception as exc:  # the framework's error, translated once here
        raise AdapterError(f"MLflow's {artifact.flavor} flavor cannot load {artifact.path}: "
                           f"{type(exc).__name__}: {exc}") from exc
    if artifact.flavor == "python_function":
        return _python_model(model)
    return model


def _python_model(pyfunc: Any) -> Any:
    from modelyard.adapters import get_adapter

    inner = pyfunc.unwrap_python_model()
    if not get_adapter("python").handles(inner):
        raise ImportSourceError(
            f"the custom pyfunc {type(inner).__qualname__} cannot be brought in: modelyard's "
            "python flavor needs an importable class with predict(batch), save(path) and a "
            "classmethod load(path); add them, or log the model with its framework's flavor")
    return _PyfuncAnswers(pyfunc, inner)


class _PyfuncAnswers:
    """A custom pyfunc's Python model, kept with the MLflow wrapper that answers for parity."""

    def __init__(self, pyfunc: Any, inner: Any) -> None:
        self.pyfunc = pyfunc
        self.inner = inner


def to_register(native: Any) -> Any:
    """The object modelyard's adapter registers for what :func:`load_native` returned."""
    return native.inner if isinstance(native, _PyfuncAnswers) else native


def mlflow_answers(native: Any, flavor: str, example: Any, task: str) -> Answers:
    """What the MLflow-loaded model answers on ``example``: class scores and labels for a
    classifier, else its raw output (and the argmax of several columns as labels)."""
    try:
        if isinstance(native, _PyfuncAnswers):
            return _raw(native.pyfunc.predict(example))
        if task == "classification" and hasattr(native, "predict_proba"):
            return Answers(np.asarray(native.predict_proba(example)),
                           np.asarray(native.predict(example)))
        if flavor == "pytorch":
            return _raw(_torch_forward(native, example))
        if flavor == "keras":
            return _raw(native.predict(np.asarray(example), verbose=0))
        values = np.asarray(native.predict(example))
    except ModelyardError:
        raise
    except Exception as exc:
        raise AdapterError(f"the MLflow-loaded {flavor} model failed on its input example: "
                           f"{type(exc).__name__}: {exc}") from exc
    return Answers(values) if task == "regression" else _raw(values)


def _torch_forward(model: Any, example: Any) -> Any:
    torch = require("torch", "torch")
    with torch.no_grad():
        out = model(torch.as_tensor(np.asarray(example)))
    return out.detach().cpu().numpy()


def _raw(values: Any) -> Answers:
    arr = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
    labels = arr.argmax(axis=1) if arr.ndim == 2 and arr.shape[1] > 1 else None
    return Answers(arr, labels)


__all__ = ["load_native", "mlflow_answers", "to_register"]
