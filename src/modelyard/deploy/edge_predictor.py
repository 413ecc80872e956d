"""A modelyard edge bundle's predictor: one ONNX model, answered with onnxruntime and numpy only.

This file is copied as it is into every bundle (``modelyard export MODEL:V --bundle DIR``) as
the package's ``__init__.py``, next to ``model.onnx`` and ``signature.json``; it imports nothing
from modelyard, no server and no training framework::

    import my_model                     # pip install ./DIR  (or DIR on sys.path)
    model = my_model.load()
    model.predict([{"amount": 12.5, "age": 40}])     # records, rows or an array
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

HERE = Path(__file__).resolve().parent


class Model:
    """The bundled model: ``predict`` gives labels (classifiers) or values, one per row."""

    def __init__(self, folder: Path = HERE, providers: list[str] | None = None) -> None:
        self.signature: dict[str, Any] = json.loads((folder / "signature.json").read_text())
        self.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), providers=providers or ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.columns = [str(f["name"]) for f in self.signature.get("inputs", [])]
        self.task = self.signature.get("task")

    def rows(self, data: Any) -> np.ndarray:
        """Input as the float32 rows the model takes: records are ordered by the signature."""
        if isinstance(data, dict):
            data = [data]
        if isinstance(data, list) and data and isinstance(data[0], dict):
            missing = [c for c in self.columns if c not in data[0]]
            if missing:
                raise ValueError(f"a record lacks the inputs {missing}; expected {self.columns}")
            data = [[record[c] for c in self.columns] for record in data]
        return np.ascontiguousarray(np.asarray(data, dtype=np.float32))

    def run(self, data: Any) -> dict[str, np.ndarray]:
        """Every output of the model for ``data``, by name."""
        return dict(zip(self.outputs, self.session.run(None, {self.input: self.rows(data)}),
                        strict=True))

    def predict(self, data: Any) -> np.ndarray:
        """Labels for a classifier, values for a regressor, the raw output otherwise."""
        out = self.run(data)
        if "label" in out:
            return out["label"]
        first = out[self.outputs[0]]
        return first.reshape(-1) if self.task == "regression" else first

    def predict_proba(self, data: Any) -> np.ndarray | None:
        """Class probabilities ``(n, k)`` for a classifier, else ``None``."""
        out = self.run(data)
        return out.get("probabilities")


def load(providers: list[str] | None = None) -> Model:
    """The model bundled with this package."""
    return Model(HERE, providers)


__all__ = ["Model", "load"]
