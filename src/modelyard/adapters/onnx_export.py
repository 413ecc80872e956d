"""Convert a loaded model to ONNX: one converter per flavor, registered by name in one dict.

``to_onnx(flavor, model, sample)`` returns the ONNX model's bytes. ``sample`` is a float32 array
of input rows (a table's columns in signature order, or tensor rows); it fixes the per-row shape
while the batch dimension stays dynamic. The converters are the frameworks' own: skl2onnx for
scikit-learn, onnxmltools for XGBoost and LightGBM, ``torch.onnx.export`` for PyTorch and Keras'
own ``Model.export(format="onnx")`` (tf2onnx underneath) for Keras. A part of the model a
converter does not support raises :class:`ExportError` naming
it; a converter not installed raises :class:`FrameworkMissingError` with its pip command.

Classifiers come out with two outputs, ``label`` and ``probabilities`` (no ZipMap), regressors
with one. Scoring and parity are :mod:`modelyard.pipeline.export`'s.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.adapters import require
from modelyard.errors import ExportError, ModelyardError

#: the ONNX input name every converted model takes its rows under.
INPUT = "X"
#: the extra that installs the converters.
EXTRA = "onnx"

Converter = Callable[[Any, np.ndarray], bytes]

#: skl2onnx's and onnxmltools' words for a type they have no converter for.
_UNSUPPORTED = re.compile(
    r"(?:shape calculator|converter|parser) for (?:type )?'?<class '([^']+)'>")


def to_onnx(flavor: str, model: Any, sample: np.ndarray) -> bytes:
    """The ONNX bytes of ``model`` (loaded by ``flavor``'s adapter), traced on ``sample``."""
    converter = _CONVERTERS.get(flavor)
    if converter is None:
        raise ExportError(f"no ONNX converter for the {flavor} flavor; convertible flavors: "
                          f"{', '.join(sorted(_CONVERTERS))}")
    try:
        return converter(model, sample)
    except ModelyardError:
        raise
    except Exception as exc:  # a converter's error, translated once here
        raise ExportError(_why(flavor, model, exc)) from exc


def register_converter(flavor: str, converter: Converter) -> None:
    """Add (or replace) the ONNX converter for ``flavor``."""
    _CONVERTERS[flavor] = converter


def _why(flavor: str, model: Any, exc: Exception) -> str:
    text = " ".join(str(exc).split())
    found = _UNSUPPORTED.search(text)
    if found:
        return (f"{flavor}: cannot convert {type(model).__name__} to ONNX: the converter does "
                f"not support {found.group(1)}; replace that step with a supported one, or "
                "register a converter for it (skl2onnx.update_registered_converter)")
    return f"{flavor}: cannot convert {type(model).__name__} to ONNX: {type(exc).__name__}: " \
           f"{text[:400]}"


def _features(sample: np.ndarray) -> int:
    if sample.ndim != 2:
        raise ExportError(f"a table model needs rows of features, got input of shape "
                          f"{sample.shape}")
    return int(sample.shape[1])


def _sklearn(model: Any, sample: np.ndarray) -> bytes:
    require("skl2onnx", EXTRA)
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    types = [(INPUT, FloatTensorType([None, _features(sample)]))]
    options = {"zipmap": False} if hasattr(model, "predict_proba") else None
    proto = convert_sklearn(model, initial_types=types, options=options)
    return bytes(proto.SerializeToString())


def _onnxmltools_types(sample: np.ndarray) -> list[Any]:
    require("onnxmltools", EXTRA)
    from onnxmltools.convert.common.data_types import FloatTensorType

    return [(INPUT, FloatTensorType([None, _features(sample)]))]


def _xgboost(model: Any, sample: np.ndarray) -> bytes:
    onnxmltools = require("onnxmltools", EXTRA)
    booster = model if not hasattr(model, "get_booster") else model.get_booster()
    booster = booster.copy()
    # onnxmltools reads features as f0, f1, ...: the columns go in signature order anyway
    booster.feature_names = None
    booster.feature_types = None
    proto = onnxmltools.convert_xgboost(booster, initial_types=_onnxmltools_types(sample))
    return bytes(proto.SerializeToString())


def _lightgbm(model: Any, sample: np.ndarray) -> bytes:
    onnxmltools = require("onnxmltools", EXTRA)
    booster = getattr(model, "booster_", model)
    proto = onnxmltools.convert_lightgbm(booster, initial_types=_onnxmltools_types(sample),
                                         zipmap=False)
    return bytes(proto.SerializeToString())


def _torch(model: Any, sample: np.ndarray) -> bytes:
    torch = require("torch", "torch")
    example = torch.as_tensor(np.ascontiguousarray(sample[:2]))
    buffer = io.BytesIO()
    with contextlib.suppress(NotImplementedError):  # an exported module is inference-only
        model.eval()
    model = _inference_only(torch, model)
    with warnings.catch_warnings():
        # the TorchScript-based exporter: the dynamo one needs onnxscript, not installed here
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=[INPUT], output_names=["y"],
                          dynamic_axes={INPUT: {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return buffer.getvalue()


def _inference_only(torch: Any, model: Any) -> Any:
    """``model`` behind a module whose ``train()`` does nothing: the exporter switches modes,
    which a module loaded from a ``torch.export`` program refuses (it is inference-only)."""

    class InferenceOnly(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x)

        def train(self, mode: bool = True) -> Any:
            return self

    return InferenceOnly(model)


def _keras(model: Any, sample: np.ndarray) -> bytes:
    """Keras' own ONNX export (``Model.export(format="onnx")``, tf2onnx underneath, patched for
    Keras 3, which tf2onnx's ``from_keras`` cannot read)."""
    require("tf2onnx", EXTRA)
    with tempfile.TemporaryDirectory(prefix="modelyard-keras-onnx-") as tmp:
        target = Path(tmp) / "model.onnx"
        model(np.ascontiguousarray(sample[:2]))  # a model never called cannot be exported
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.export(str(target), format="onnx", verbose=False)
        return target.read_bytes()


_CONVERTERS: dict[str, Converter] = {
    "sklearn": _sklearn,
    "xgboost": _xgboost,
    "lightgbm": _lightgbm,
    "torch": _torch,
    "tensorflow": _keras,
}


__all__ = ["INPUT", "register_converter", "to_onnx"]
