"""The scikit-learn flavor: estimators and Pipelines, saved with skops (never pickle)."""

from __future__ import annotations

import importlib.abc
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import parse_device, plain
from modelyard.errors import AdapterError, UnsafeArtifactError
from modelyard.schema import Signature

_FILE = "model.skops"

#: types from these top-level modules are trusted on load; skops already refuses anything that
#: would run code while loading, these are the libraries a scikit-learn model is built from.
_TRUSTED_ROOTS = frozenset(
    {"sklearn", "numpy", "scipy", "xgboost", "lightgbm", "builtins", "collections"}
)
#: builtins that would let a FunctionTransformer run arbitrary code on its input.
_DANGEROUS = frozenset(
    f"builtins.{name}"
    for name in (
        "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "input", "breakpoint", "exit", "quit", "help",
    )
)


#: array libraries scikit-learn's estimator discovery would import while skops starts.
_ARRAY_LIBRARIES = ("torch", "jax", "cupy", "dask", "tensorflow")


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuse some imports, in the importing thread only (other threads load other flavors)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if threading.get_ident() == self.thread and name.partition(".")[0] in self.names:
            raise ImportError(f"{name} is not needed to load scikit-learn models")


def _skops_io(extra: str) -> Any:
    """Import ``skops.io`` without dragging in torch, JAX or TensorFlow.

    skops lists scikit-learn's estimators at import time, and that walk imports scikit-learn's
    array-API shims for every array library installed (seconds, and hundreds of MB for torch).
    Refusing those imports for the duration is safe: the walk skips modules that fail to import.
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    blocked = {name for name in _ARRAY_LIBRARIES if name not in sys.modules}
    finder = _Refuse(blocked)
    sys.meta_path.insert(0, finder)
    try:
        return require("skops.io", extra)
    finally:
        sys.meta_path.remove(finder)


def untrusted_types(reported: Iterable[str], trusted: Iterable[str] = ()) -> list[str]:
    """The types in ``reported`` that are neither from a trusted library nor in ``trusted``."""
    allowed = set(trusted)
    return sorted(
        t for t in reported
        if t not in allowed and (t in _DANGEROUS or t.split(".", 1)[0] not in _TRUSTED_ROOTS)
    )


def _refusal(types: list[str], action: str) -> UnsafeArtifactError:
    return UnsafeArtifactError(
        f"sklearn: refusing to {action} a model containing types outside scikit-learn, numpy, "
        f"scipy, xgboost and lightgbm: {', '.join(types)}. If this is your own code, trust it "
        f"explicitly: SklearnAdapter().save(model, path, trusted_types={types!r})"
    )


class SklearnAdapter:
    """Save, load and run scikit-learn estimators and Pipelines (file: ``model.skops``).

    Loading trusts only scikit-learn, numpy, scipy, xgboost and lightgbm types plus the types the
    user listed in ``trusted_types`` when saving; anything else raises
    :class:`UnsafeArtifactError`.
    """

    flavor: ClassVar[str] = "sklearn"
    extra: ClassVar[str] = "sklearn"
    accelerated: ClassVar[bool] = False

    @classmethod
    def gpu_count(cls) -> int:
        """Always 0: scikit-learn runs on cpu."""
        return 0

    def handles(self, model: Any) -> bool:
        """Whether ``model`` is a scikit-learn estimator with ``predict``."""
        if not is_loaded("sklearn"):
            return False
        from sklearn.base import BaseEstimator

        return isinstance(model, BaseEstimator) and callable(getattr(model, "predict", None))

    def save(
        self, model: Any, path: Path, *, sample: Any = None, trusted_types: Iterable[str] = ()
    ) -> dict[str, Any]:
        """Write ``model.skops`` into ``path``; ``trusted_types`` names your own classes in it.

        Raises :class:`UnsafeArtifactError` now, not at deploy time, when the model holds a type
        that loading would refuse.
        """
        sio = _skops_io(self.extra)
        sklearn = require("sklearn", self.extra)
        trusted = sorted({str(t) for t in trusted_types})
        try:
            data = sio.dumps(model)
            reported = sio.get_untrusted_types(data=data)
        except Exception as exc:
            raise AdapterError(f"sklearn: could not save {type(model).__name__}: {exc}") from exc
        refused = untrusted_types(reported, trusted)
        if refused:
            raise _refusal(refused, "save")
        (Path(path) / _FILE).write_bytes(data)
        meta: dict[str, Any] = {
            "file": _FILE,
            "estimator": f"{type(model).__module__}.{type(model).__qualname__}",
            "trusted_types": trusted,
            "sklearn_version": sklearn.__version__,
        }
        classes = getattr(model, "classes_", None)
        if classes is not None:
            meta["classes"] = plain(classes)
        return meta

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Load ``model.skops``, refusing types that are neither well known nor trusted."""
        parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        sio = _skops_io(self.extra)
        target = Path(path) / str(meta.get("file", _FILE))
        try:  # check and load the same bytes, so the file cannot change in between
            data = target.read_bytes()
            reported = sio.get_untrusted_types(data=data)
        except Exception as exc:
            raise AdapterError(f"sklearn: cannot read {target.name}: {exc}") from exc
        refused = untrusted_types(reported, meta.get("trusted_types", ()))
        if refused:
            raise _refusal(refused, "load")
        try:
            return sio.loads(data, trusted=list(reported))
        except Exception as exc:
            raise AdapterError(f"sklearn: could not load {target.name}: {exc}") from exc

    def predict(self, model: Any, batch: Any) -> Any:
        """``model.predict(batch)``: labels for a classifier, values for a regressor."""
        try:
            return np.asarray(model.predict(batch))
        except Exception as exc:
            raise AdapterError(f"sklearn: {type(model).__name__}.predict failed: {exc}") from exc

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities ``(n, k)`` in ``model.classes_`` order, or ``None`` without them."""
        if not hasattr(model, "predict_proba"):  # also False when predict_proba is unavailable
            return None
        try:
            return np.asarray(model.predict_proba(batch))
        except Exception as exc:
            raise AdapterError(
                f"sklearn: {type(model).__name__}.predict_proba failed: {exc}"
            ) from exc

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A table signature from the training features (a DataFrame stays a DataFrame)."""
        return Signature.infer(X, y, layout="table")


__all__ = ["SklearnAdapter", "untrusted_types"]
