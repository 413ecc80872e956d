"""The scikit-learn flavor: estimators and Pipelines, saved with skops (never pickle)."""

from __future__ import annotations

import io
import sys
import weakref
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modelyard.adapters import is_loaded, require
from modelyard.adapters.base import (
    artifact_file,
    labels_from_scores,
    listed,
    parse_device,
    plain,
    take_rows,
    trusted_names,
)
from modelyard.adapters.forest import Forest, forest_of
from modelyard.adapters.pickles import pickle_imports
from modelyard.adapters.sklearn_types import (
    check_index_arrays,
    untrusted,
    without_array_libraries,
)
from modelyard.errors import AdapterError, UnsafeArtifactError
from modelyard.schema import Signature

_FILE = "model.skops"

#: classifiers whose ``predict`` is the argmax of (a monotone function of) what
#: ``predict_proba`` returns, as ``(module, class)``: labels and scores then come from one call.
#: Others decide differently (an SVC's labels do not follow its Platt-scaled probabilities, a
#: tuned threshold moves the cut) and keep two calls.
ARGMAX_CLASSIFIERS = (
    ("sklearn.ensemble", "HistGradientBoostingClassifier"),
    ("sklearn.ensemble", "GradientBoostingClassifier"),
    ("sklearn.ensemble", "RandomForestClassifier"),
    ("sklearn.ensemble", "ExtraTreesClassifier"),
    ("sklearn.tree", "DecisionTreeClassifier"),
    ("sklearn.tree", "ExtraTreeClassifier"),
    ("sklearn.linear_model", "LogisticRegression"),
    ("sklearn.linear_model", "LogisticRegressionCV"),
    ("sklearn.naive_bayes", "GaussianNB"),
    ("sklearn.neural_network", "MLPClassifier"),
    ("sklearn.calibration", "CalibratedClassifierCV"),
    ("xgboost", "XGBClassifier"),
)


#: the walkable form of each HistGradientBoosting model this adapter loaded
#: (:mod:`modelyard.adapters.forest`), dropped with the model.
_FORESTS: weakref.WeakKeyDictionary[Any, Forest] = weakref.WeakKeyDictionary()


def _walked(model: Any, batch: Any) -> Any:
    """Raw scores of a loaded HistGradientBoosting model for a small numeric ``batch`` from its
    :class:`~modelyard.adapters.forest.Forest`; ``None`` where scikit-learn should answer."""
    forest = _FORESTS.get(model)
    return None if forest is None else forest.raw(batch)


def _owner(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO that defines ``name`` (what an instance would run)."""
    return next((k for k in cls.__mro__ if name in vars(k)), None)


def argmax_classifier(model: Any) -> bool:
    """Whether ``model``'s labels are the argmax of its ``predict_proba`` (a Pipeline: whether
    its last step's are), so one call gives both."""
    pipeline = sys.modules.get("sklearn.pipeline")
    if pipeline is not None and isinstance(model, pipeline.Pipeline):
        runs = (_owner(type(model), "predict"), _owner(type(model), "predict_proba"))
        if runs != (pipeline.Pipeline, pipeline.Pipeline):
            return False
        return argmax_classifier(model.steps[-1][1])
    cls = type(model)
    decided = _DECIDED.get(cls)
    if decided is None:
        decided = _DECIDED[cls] = _argmax_class(cls)
    return decided


#: the answer of :func:`_argmax_class` for each class seen.
_DECIDED: dict[type, bool] = {}


def _argmax_class(cls: type) -> bool:
    """Whether instances of ``cls`` run a listed classifier's own ``predict`` and
    ``predict_proba`` (matched by the class defining each, so a subclass that overrides either
    is not taken for its parent). Decided once per class: a model's class is loaded with its
    module, so the listed class it derives from is too."""
    key = (_owner(cls, "predict"), _owner(cls, "predict_proba"))
    for module, name in ARGMAX_CLASSIFIERS:
        listed_cls = getattr(sys.modules.get(module), name, None)
        if isinstance(listed_cls, type) and key == (_owner(listed_cls, "predict"),
                                                    _owner(listed_cls, "predict_proba")):
            return True
    return False


def _skops_io(extra: str) -> Any:
    """Import ``skops.io`` without dragging in torch, JAX or TensorFlow.

    skops lists scikit-learn's estimators at import time, which would import scikit-learn's
    array-API shims for every array library installed (seconds, and hundreds of MB for torch).
    """
    if "skops.io" in sys.modules:
        return sys.modules["skops.io"]
    with without_array_libraries():
        return require("skops.io", extra)


def untrusted_types(reported: Iterable[str], trusted: Iterable[str] = ()) -> list[str]:
    """The types in ``reported`` that are neither trusted by exact name nor in ``trusted``.

    See :mod:`modelyard.adapters.sklearn_types` for the names trusted without being listed.
    """
    return untrusted(reported, trusted)


def pickled_arrays(data: bytes) -> list[str]:
    """What the pickled object arrays in a ``.skops`` file would import, as ``name (in member)``.

    skops never writes object arrays as pickles and loads arrays with ``allow_pickle=False``;
    a file that holds one was made by hand, and naming its imports says what it tried to run.
    """
    found: list[str] = []
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member, blob in _arrays(archive):
                imports = sorted(pickle_imports(blob)) or ["a pickled object"]
                found += [f"{name} (pickled in {member})" for name in imports]
    except zipfile.BadZipFile:
        pass  # skops reports a file that is not a zip itself
    return found


def _arrays(archive: zipfile.ZipFile, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    """``(member, pickle bytes)`` of each object array in ``archive`` (``.npz`` included)."""
    for member in archive.namelist():
        if member.endswith(".npz"):
            with zipfile.ZipFile(io.BytesIO(archive.read(member))) as inner:
                yield from _arrays(inner, f"{prefix}{member}/")
        elif member.endswith(".npy"):
            stream = io.BytesIO(archive.read(member))
            try:
                version = np.lib.format.read_magic(stream)
                read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                        else np.lib.format.read_array_header_2_0)
                dtype = read(stream)[2]
            except (ValueError, OSError, SyntaxError):
                continue  # not an array numpy can read: loading it fails, it runs nothing
            if dtype.hasobject:
                yield f"{prefix}{member}", stream.read()


def _refusal(types: list[str], action: str, target: str) -> UnsafeArtifactError:
    return UnsafeArtifactError(
        f"sklearn: refusing to {action} {target}: it holds {listed(types)}, which modelyard "
        "does not trust (a function or class there would run when the model loads or predicts); "
        "if this is your own code, trust it deliberately: list these names under trusted_types "
        "in the model's spec"
    )


class SklearnAdapter:
    """Save, load and run scikit-learn estimators and Pipelines (file: ``model.skops``).

    Saving, registering and loading trust skops' defaults, the exact estimator classes of the
    installed scikit-learn, XGBoost and LightGBM, and the names listed in ``trusted_types``;
    any other type or function raises :class:`UnsafeArtifactError` naming it. Trees' node
    indices are checked after loading, before anything predicts.
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
            raise _refusal(refused, "save", type(model).__name__)
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

    def verify(self, path: Path, meta: dict[str, Any]) -> None:
        """Refuse (:class:`UnsafeArtifactError`) an artifact loading would refuse; loads nothing.

        A folder without the model file passes: there is nothing to run, and loading it fails.
        """
        if artifact_file(path, meta, _FILE, self.flavor).is_file():
            self._checked(path, meta)

    def load(self, path: Path, meta: dict[str, Any], device: str) -> Any:
        """Load ``model.skops``, refusing types that are neither well known nor trusted."""
        parse_device(device, flavor=self.flavor, accelerated=self.accelerated)
        data, reported, name = self._checked(path, meta)
        sio = _skops_io(self.extra)
        try:  # the bytes that were checked, so the file cannot change in between
            model = sio.loads(data, trusted=reported)
        except Exception as exc:
            raise AdapterError(f"sklearn: could not load {name}: {exc}") from exc
        check_index_arrays(model)
        forest = forest_of(model)
        if forest is not None:
            _FORESTS[model] = forest
        return model

    def _checked(self, path: Path, meta: dict[str, Any]) -> tuple[bytes, list[str], str]:
        """The file's bytes and skops' untrusted types in it, once every one is trusted."""
        sio = _skops_io(self.extra)
        target = artifact_file(path, meta, _FILE, self.flavor)
        try:
            data = target.read_bytes()
            reported = list(sio.get_untrusted_types(data=data))
        except Exception as exc:
            raise AdapterError(f"sklearn: cannot read {target.name}: {exc}") from exc
        refused = untrusted_types(reported, trusted_names(meta)) + pickled_arrays(data)
        if refused:
            raise _refusal(refused, "load", target.name)
        return data, reported, target.name

    def predict(self, model: Any, batch: Any) -> Any:
        """``model.predict(batch)``: labels for a classifier, values for a regressor."""
        raw = _walked(model, batch)
        if raw is not None:
            if not hasattr(model, "classes_"):
                return model._loss.link.inverse(raw.ravel())
            # scikit-learn's own rule: a binary model's class 1 needs a raw score above 0
            classes = (raw.ravel() > 0).astype(np.intp) if raw.shape[1] == 1 else raw.argmax(1)
            return model.classes_[classes]
        try:
            return np.asarray(model.predict(batch))
        except Exception as exc:
            raise AdapterError(f"sklearn: {type(model).__name__}.predict failed: {exc}") from exc

    def predict_scores(self, model: Any, batch: Any) -> Any:
        """Class probabilities ``(n, k)`` in ``model.classes_`` order, or ``None`` without them."""
        if not hasattr(model, "predict_proba"):  # also False when predict_proba is unavailable
            return None
        raw = _walked(model, batch)
        if raw is not None:
            return np.asarray(model._loss.predict_proba(raw))
        try:
            return np.asarray(model.predict_proba(batch))
        except Exception as exc:
            raise AdapterError(
                f"sklearn: {type(model).__name__}.predict_proba failed: {exc}"
            ) from exc

    def predict_with_scores(self, model: Any, batch: Any) -> tuple[Any, Any]:
        """Labels and class probabilities from one ``predict_proba`` call where the labels are
        its argmax (:func:`argmax_classifier`); from ``predict`` and ``predict_proba`` otherwise.
        """
        if not argmax_classifier(model):
            return self.predict(model, batch), self.predict_scores(model, batch)
        proba = self.predict_scores(model, batch)
        classes = getattr(model, "classes_", None)
        if (not isinstance(proba, np.ndarray) or proba.ndim != 2 or classes is None
                or np.ndim(classes) != 1 or proba.shape[1] != len(classes)):
            return self.predict(model, batch), proba  # multi-output and other shapes
        labels = labels_from_scores(classes, proba,
                                    lambda rows: self.predict(model, take_rows(batch, rows)))
        return labels, proba

    def infer_signature(self, model: Any, X: Any, y: Any = None) -> Signature:
        """A table signature from the training features (a DataFrame stays a DataFrame)."""
        return Signature.infer(X, y, layout="table")


__all__ = ["SklearnAdapter", "untrusted_types"]
