"""Which types a scikit-learn artifact may hold: exact names, never module prefixes.

skops builds every object in a ``.skops`` file from a ``module.name`` written in the file, and
``get_untrusted_types`` lists the names its own defaults do not cover. A name is accepted here
only if it is one of these exact names, or one the model's spec lists in ``trusted_types``:

* the estimator classes of the installed scikit-learn (every ``BaseEstimator`` subclass it
  defines, private ones included: they hold parameters and arrays, nothing that runs);
* the scikit-learn-API classes of the installed XGBoost and LightGBM, and their ``Booster``;
* a short, reviewed list of helper classes scikit-learn's estimators hold (:data:`_HELPERS`),
  of inert value types (:data:`_VALUES`), and of the pure functions scikit-learn stores by
  default (:data:`_FUNCTIONS`).

Every other function is refused: a ``FunctionTransformer`` built from ``builtins``, numpy's
testing helpers or any other importable function runs that function when the model predicts,
whatever module it comes from. The tree classes (``Tree``, ``TreePredictor``) are accepted
because the common models need them, but skops does not trust them by default for a reason:
scikit-learn follows their node indices without bounds checks. :func:`check_index_arrays`
checks those indices after loading and before anything predicts.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.abc
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from modelyard.errors import UnsafeArtifactError

#: array libraries scikit-learn's estimator discovery would import (seconds, hundreds of MB).
_ARRAY_LIBRARIES = ("torch", "jax", "cupy", "dask", "tensorflow")

#: helper objects scikit-learn estimators hold: plain Python containers of parameters and
#: arrays (scorers and splitters call only functions that are checked separately).
_HELPERS = (
    "sklearn.utils._bunch:Bunch",
    "sklearn.calibration:_CalibratedClassifier",
    "sklearn.neural_network._stochastic_optimizers:AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers:SGDOptimizer",
    "sklearn.metrics._scorer:_PassthroughScorer",
    "sklearn.metrics._scorer:_Scorer",
    "sklearn.metrics._scorer:_MultimetricScorer",
    # node arrays checked by check_index_arrays
    "sklearn.tree._tree:Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor:TreePredictor",
)
#: the bases of scikit-learn's cross-validation splitters (held by *SearchCV and *CV models).
_SPLITTER_BASES = (
    "sklearn.model_selection._split:BaseCrossValidator",
    "sklearn.model_selection._split:BaseShuffleSplit",
    "sklearn.model_selection._split:_RepeatedSplits",
    "sklearn.model_selection._split:_CVIterableWrapper",
)
#: value types skops reports but whose construction runs nothing.
_VALUES = frozenset({
    "numpy.dtype", "collections.OrderedDict", "builtins.frozenset", "builtins.complex",
})
#: functions scikit-learn's own estimators store by default; each only computes on arrays.
#: ``functools.partial`` is a container: its function and arguments are checked on their own.
_FUNCTIONS = frozenset({
    "sklearn.utils.validation.check_array",  # HistGradientBoosting* with categorical columns
    "sklearn.feature_selection._univariate_selection.f_classif",  # SelectKBest's default
    "functools.partial",
})


class _Refuse(importlib.abc.MetaPathFinder):
    """Refuse some imports, in the importing thread only (other threads load other flavors)."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if threading.get_ident() == self.thread and name.partition(".")[0] in self.names:
            raise ImportError(f"{name} is not needed to load scikit-learn models")


@contextlib.contextmanager
def without_array_libraries() -> Iterator[None]:
    """Import scikit-learn's estimator modules without torch, JAX or TensorFlow.

    Listing scikit-learn's estimators imports its array-API shims for every array library
    installed. Refusing those imports meanwhile is safe: the walk skips modules that fail.
    """
    finder = _Refuse({name for name in _ARRAY_LIBRARIES if name not in sys.modules})
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def untrusted(reported: Iterable[str], trusted: Iterable[str] = ()) -> list[str]:
    """The names in ``reported`` (skops' untrusted types) that are not trusted, sorted.

    ``trusted`` is what the spec lists in ``trusted_types``. XGBoost and LightGBM names are
    looked up only when ``reported`` has some (their classes are listed on first use).
    """
    allowed = set(trusted) | _VALUES | _FUNCTIONS
    refused = []
    for name in sorted(set(reported) - allowed):
        root = name.partition(".")[0]
        if name not in _known(root):
            refused.append(name)
    return refused


def _known(root: str) -> frozenset[str]:
    if root == "sklearn":
        return sklearn_types()
    if root in ("xgboost", "lightgbm"):
        return _framework_types(root)
    return frozenset()


@functools.cache
def sklearn_types() -> frozenset[str]:
    """Exact names of the installed scikit-learn's estimators and reviewed helper classes."""
    from sklearn.base import BaseEstimator
    from sklearn.utils.discovery import all_estimators

    with without_array_libraries():
        all_estimators()  # imports every estimator module, so subclasses below are complete
    classes = _subclasses(BaseEstimator)
    for base in _SPLITTER_BASES:
        splitter = _resolve(base)
        if splitter is not None:
            classes |= {splitter} | _subclasses(splitter)
    names = {_name(cls) for cls in classes if _importable(cls, "sklearn")}
    names |= {_name(cls) for cls in map(_resolve, _HELPERS) if cls is not None}
    return frozenset(names)


@functools.cache
def _framework_types(root: str) -> frozenset[str]:
    """XGBoost's or LightGBM's scikit-learn-API classes and their ``Booster``."""
    if root == "xgboost":
        bases, booster = "xgboost.sklearn:XGBModel", "xgboost.core:Booster"
    else:
        bases, booster = "lightgbm.sklearn:LGBMModel", "lightgbm.basic:Booster"
    base = _resolve(bases)
    if base is None:  # not installed: the model cannot load anyway
        return frozenset()
    classes = {base, _resolve(booster)} | _subclasses(base)
    return frozenset(_name(c) for c in classes if c is not None and _importable(c, root))


def _resolve(ref: str) -> Any:
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _subclasses(base: type) -> set[type]:
    found: set[type] = set()
    stack: list[type] = [base]
    while stack:
        sub: type
        for sub in stack.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                stack.append(sub)
    return found


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def _importable(cls: type, root: str) -> bool:
    """Whether skops would find exactly ``cls`` under its name, in ``root``, outside tests."""
    module = cls.__module__
    if not module.startswith(f"{root}.") or ".tests" in module or "._testing" in module:
        return False
    return getattr(sys.modules.get(module), cls.__name__, None) is cls


# -- index arrays -------------------------------------------------------------------------------
def check_index_arrays(model: Any) -> None:
    """Refuse a loaded model whose trees point outside their own node and feature arrays.

    scikit-learn walks ``Tree`` and ``TreePredictor`` nodes in compiled code without bounds
    checks; a crafted file could make ``predict`` read memory it does not own or loop forever.
    Each inner node must point at two later nodes of the same tree and at a feature the model
    has; raises :class:`UnsafeArtifactError` naming the type otherwise.
    """
    from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor
    from sklearn.tree._tree import Tree

    for obj in _objects(model):
        n_features = getattr(obj, "n_features_in_", None)
        tree = getattr(obj, "tree_", None)
        if isinstance(obj, Tree) or isinstance(tree, Tree):
            _check_tree(obj if isinstance(obj, Tree) else tree, n_features)
        for row in getattr(obj, "_predictors", None) or ():
            for predictor in row:
                if not isinstance(predictor, TreePredictor) or n_features is None:
                    raise _bad_nodes(_name(TreePredictor), "is not owned by a fitted model")
                _check_predictor(predictor, int(n_features))


def _objects(root: Any) -> Iterator[Any]:
    """Every object reachable from ``root`` through containers and scikit-learn objects."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        yield obj
        if isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif isinstance(obj, np.ndarray) and obj.dtype == object:
            stack.extend(obj.ravel().tolist())
        elif type(obj).__module__.startswith("sklearn.") and hasattr(obj, "__dict__"):
            stack.extend(vars(obj).values())


def _check_tree(tree: Any, n_features: Any) -> None:
    count = int(tree.node_count)
    limit = min(int(tree.n_features), int(n_features if n_features is not None else 1 << 62))
    left, right = np.asarray(tree.children_left), np.asarray(tree.children_right)
    feature, index = np.asarray(tree.feature), np.arange(count)
    if count < 1 or not len(left) == len(right) == len(feature) == len(tree.value) == count:
        raise _bad_nodes(_name(type(tree)), "has node arrays of the wrong length")
    leaf = left == -1
    inner_ok = ((left > index) & (left < count) & (right > index) & (right < count)
                & (feature >= 0) & (feature < limit))
    if not np.all(np.where(leaf, right == -1, inner_ok)):
        raise _bad_nodes(_name(type(tree)), "has node indices out of range")


def _check_predictor(predictor: Any, n_features: int) -> None:
    nodes = predictor.nodes
    count, index = len(nodes), np.arange(len(nodes))
    inner = nodes["is_leaf"] == 0
    left, right = nodes["left"].astype(np.int64), nodes["right"].astype(np.int64)
    feature, bitset = nodes["feature_idx"].astype(np.int64), nodes["bitset_idx"]
    ok = ((left > index) & (left < count) & (right > index) & (right < count)
          & (feature >= 0) & (feature < n_features))
    categorical = inner & (nodes["is_categorical"] != 0)
    bitsets = min(len(predictor.raw_left_cat_bitsets), len(predictor.binned_left_cat_bitsets))
    if count < 1 or not np.all(ok[inner]) or not np.all(bitset[categorical] < bitsets):
        raise _bad_nodes(_name(type(predictor)), "has node indices out of range")


def _bad_nodes(type_name: str, what: str) -> UnsafeArtifactError:
    return UnsafeArtifactError(
        f"sklearn: refusing the model: its {type_name} {what}, which scikit-learn would follow "
        "without bounds checks; the file was not written by scikit-learn: retrain and register "
        "the model again"
    )


__all__ = ["check_index_arrays", "sklearn_types", "untrusted", "without_array_libraries"]
