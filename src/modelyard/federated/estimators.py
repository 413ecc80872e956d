"""Exchange a scikit-learn model's weights: build the estimator ``federated.estimator`` names,
read its weights as arrays, set averaged ones back, and fit it on a site's data from them.

Linear models exchange ``coef_`` and ``intercept_``; multi-layer perceptrons ``coefs_`` then
``intercepts_``. Every site and the server build the same estimator from the spec's ``params``,
the class labels and the feature names, so the arrays line up; a shape that differs is refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import FederationError
from modelyard.predictor import Prediction
from modelyard.spec.training import FEDERATED_ESTIMATORS

#: where each supported estimator lives, and whether it tells classes apart.
_CLASSES: dict[str, tuple[str, bool]] = {
    "LogisticRegression": ("sklearn.linear_model", True),
    "SGDClassifier": ("sklearn.linear_model", True),
    "SGDRegressor": ("sklearn.linear_model", False),
    "MLPClassifier": ("sklearn.neural_network", True),
    "MLPRegressor": ("sklearn.neural_network", False),
}
assert set(_CLASSES) == set(FEDERATED_ESTIMATORS)


def is_classifier(name: str) -> bool:
    """Whether the estimator ``name`` predicts class labels."""
    return _CLASSES[_known(name)][1]


def build(name: str, params: dict[str, Any], *, classes: Sequence[Any] | None,
          features: Sequence[str]) -> Any:
    """The estimator ``name`` with ``params``, fitted in structure (every learned attribute set,
    the weights at their starting values) for ``features`` and ``classes``.

    The structure comes from a fit on a few rows of zeros: scikit-learn sets ``classes_``,
    ``n_features_in_`` and an MLP's layers only while fitting.
    """
    import pandas as pd

    estimator = _new(name, params)
    if not features:
        raise FederationError(f"{name}: no feature columns to train on")
    if is_classifier(name) and (not classes or len(classes) < 2):
        raise FederationError(f"{name} needs at least two class labels, got {list(classes or [])};"
                              " declare them under federated.classes")
    labels = np.asarray(list(classes)) if classes is not None else np.zeros(0)
    rows = max(2, len(labels))
    X0 = pd.DataFrame(np.zeros((rows, len(features))), columns=list(features))
    y0 = np.resize(labels, rows) if is_classifier(name) else np.zeros(rows)
    _fit_quietly(estimator, X0, y0, labels if is_classifier(name) else None)
    return estimator


def get_weights(estimator: Any) -> list[np.ndarray]:
    """The weights a site sends: ``coef_, intercept_`` or an MLP's ``coefs_`` then
    ``intercepts_``, as float64 arrays."""
    if hasattr(estimator, "coefs_"):
        return [np.asarray(a, dtype=np.float64) for a in
                [*estimator.coefs_, *estimator.intercepts_]]
    return [np.asarray(estimator.coef_, dtype=np.float64),
            np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))]


def set_weights(estimator: Any, weights: Sequence[np.ndarray]) -> Any:
    """Put ``weights`` (as :func:`get_weights` gives them) into ``estimator``; a count or shape
    that differs from the estimator's own is refused with :class:`FederationError`."""
    own = get_weights(estimator)
    shapes = [w.shape for w in own]
    given = [np.shape(w) for w in weights]
    if given != shapes:
        raise FederationError(f"{type(estimator).__name__}: parameters of shapes {given} do not "
                              f"fit this model's {shapes}; every site must have the same "
                              "features and the server the same classes")
    arrays = [np.array(w, dtype=np.float64) for w in weights]
    if hasattr(estimator, "coefs_"):
        half = len(arrays) // 2
        estimator.coefs_, estimator.intercepts_ = arrays[:half], arrays[half:]
    else:
        estimator.coef_ = arrays[0]
        intercept = arrays[1]
        # scikit-learn keeps a scalar-like intercept where the model has one output
        estimator.intercept_ = intercept if np.ndim(estimator.intercept_) else intercept[0]
    return estimator


def fit_local(estimator: Any, X: Any, y: np.ndarray, *, classes: Sequence[Any] | None,
              epochs: int) -> Any:
    """Fit ``estimator`` on a site's ``(X, y)`` for ``epochs`` passes, starting from the weights
    it holds (incremental ``partial_fit``; a warm-started ``fit`` for LogisticRegression)."""
    labels = np.asarray(list(classes)) if classes is not None else None
    if not hasattr(estimator, "partial_fit"):
        present = set(np.unique(y).tolist())
        missing = [c for c in (labels.tolist() if labels is not None else []) if c not in present]
        if missing:
            raise FederationError(f"LogisticRegression needs every class at every site; this "
                                  f"site has no rows of {missing}: use SGDClassifier, whose "
                                  "updates work without them")
        estimator.set_params(warm_start=True)
    for _ in range(epochs):
        _fit_quietly(estimator, X, y, labels)
    return estimator


def predict(estimator: Any, X: Any) -> Prediction:
    """Predictions (and class scores where the estimator has them) of ``X``, for metrics."""
    predictions = np.asarray(estimator.predict(X))
    scores = None
    classes = tuple(getattr(estimator, "classes_", ())) or None
    try:
        scores = np.asarray(estimator.predict_proba(X))
    except AttributeError:  # a hinge-loss SGDClassifier, or a regressor: labels only
        scores = None
    return Prediction(predictions, scores, classes)


def _fit_quietly(estimator: Any, X: Any, y: np.ndarray, classes: np.ndarray | None) -> None:
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # a few passes per round never converge on their own: the rounds are the iterations
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            if not hasattr(estimator, "partial_fit"):
                estimator.fit(X, y)
            elif classes is not None:
                estimator.partial_fit(X, y, classes=classes)
            else:
                estimator.partial_fit(X, y)
        except (TypeError, ValueError) as exc:
            raise FederationError(f"{type(estimator).__name__} cannot fit this data: "
                                  f"{_first_line(exc)}") from None


def _new(name: str, params: dict[str, Any]) -> Any:
    import importlib

    module, _ = _CLASSES[_known(name)]
    cls = getattr(importlib.import_module(module), name)
    try:
        return cls(**params)
    except TypeError as exc:
        raise FederationError(f"{name} does not take these params: {exc}") from None


def _known(name: str) -> str:
    if name not in _CLASSES:
        raise FederationError(f"unknown federated estimator {name!r}; use one of "
                              f"{', '.join(_CLASSES)}")
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["build", "fit_local", "get_weights", "is_classifier", "predict", "set_weights"]
