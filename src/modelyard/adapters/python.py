"""The Python flavor: any object with ``predict(batch)`` whose class can save and load it."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters.base import class_ref, import_ref, parse_device
from modelyard.errors import AdapterError, ConfigError, ModelyardError
from modelyard.schema import Signature


def _has_protocol(model: Any) -> bool:
    cls = type(model)
    loader = inspect.getattr_static(cls, "load", None)
    return (
        callable(getattr(model, "predict", None))
        and callable(getattr(cls, "save", None))
        and isinstance(loader, classmethod | staticmethod)
    )


class PythonAdapter:
    """Serve your own model class: give it ``predict(batch)``, ``save(path)`` and a classmethod
    ``load(path)``.

    ``save(path)`` writes into the empty folder ``path``; ``load(path)`` returns the object. The
    class must live in an importable module of your project: meta records ``"module:QualName"``
    and loading imports it.
    """

    flavor: ClassVar[str] = "python"
    extra: ClassVar[str] = ""
    accelerated: ClassVar[bool] = False

    @classmethod
    def gpu_count(cls) -> int:
        """Always 0: custom Python models are placed on cpu."""
        return 0

    def handles(self, model: Any) -> bool:
        """Whether ``model`` has ``predict`` and ``save``, and its class a classmethod ``load``."""
        return _has_protocol(model)

    def save(self, model: Any, path: Path, *, sample: Any = None) -> dict[str, Any]:
        """Call ``model.save(path)``; meta records the class to import when loading."""
        if not _has_protocol(model):
            raise ConfigError(
                f"python: {type(model).__qualname__} cannot be saved; the python flavor needs "
                "methods predict(batch) and save(path), and a classmethod load(path)"
            )
        ref = class_ref(type(model), self.flavor)
        try:
            model.save(Path(path))
        except ModelyardError:
            raise
        except Exception as exc:
            raise AdapterError(f"python: {ref}.save failed: {exc}") from exc
        return {"class": ref}

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Import the recorded class and call its ``load(path)``."""
        parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        ref = str(meta.get("class", ""))
        cls = import_ref(ref, self.flavor)
        try:
            return cls.load(Path(path))
        except ModelyardError:
            raise
        except Exception as exc:
            raise AdapterError(f"python: {ref}.load failed: {exc}") from exc

    def predict(self, model: Any, batch: Any) -> Any:
        """``model.predict(batch)`` as an array (a dict of arrays is kept as a dict)."""
        try:
            out = model.predict(batch)
        except ModelyardError:
            raise
        except Exception as exc:
            raise AdapterError(f"python: {type(model).__qualname__}.predict failed: {exc}") from exc
        if isinstance(out, Mapping):
            return {str(k): np.asarray(v) for k, v in out.items()}
        return np.asarray(out)

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """``model.predict_proba(batch)`` when the class defines it, else ``None``."""
        if not callable(getattr(model, "predict_proba", None)):
            return None
        try:
            return np.asarray(model.predict_proba(batch))
        except Exception as exc:
            raise AdapterError(
                f"python: {type(model).__qualname__}.predict_proba failed: {exc}"
            ) from exc

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """The signature of ``X``: a table for DataFrames and 2-D arrays, else a tensor."""
        return Signature.infer(X, y)


__all__ = ["PythonAdapter"]
