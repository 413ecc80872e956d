"""Labels and class scores from one model call (``predict_with_scores``): exactly the labels
``predict`` gives, over real scikit-learn, XGBoost and LightGBM classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.naive_bayes import GaussianNB
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from modelyard.adapters import get_adapter
from modelyard.adapters.base import labels_from_scores
from modelyard.adapters.sklearn import argmax_classifier
from modelyard.predictor import Predictor
from modelyard.schema import Signature

RNG = np.random.default_rng(7)
X = RNG.normal(size=(400, 6))
BINARY = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(np.int64)
MULTI = np.digitize(X[:, 0] + 0.5 * X[:, 3], [-0.7, 0.0, 0.7])  # four classes, 0..3
NAMES = np.array(["bronze", "gold", "platinum", "silver"])[MULTI]  # strings, not sorted by use


class Counted:
    """Counts calls of a model's ``predict`` and ``predict_proba`` (set on the instance), and
    the rows ``predict`` was asked for."""

    def __init__(self, model: Any) -> None:
        self.calls = {"predict": 0, "predict_proba": 0}
        self.predicted_rows = 0
        for method in self.calls:
            original = getattr(model, method)

            def counted(X: Any, _m: str = method, _f: Any = original) -> Any:
                self.calls[_m] += 1
                if _m == "predict":
                    self.predicted_rows += len(X)
                return _f(X)

            setattr(model, method, counted)


def tied_rows(proba: np.ndarray) -> int:
    """Rows whose two largest probabilities are equal (a forest's 5 of 10 votes)."""
    top = np.sort(proba, axis=1)
    return int((top[:, -1] == top[:, -2]).sum())


SKLEARN = {
    "hgb": HistGradientBoostingClassifier(max_iter=20, random_state=0),
    "gradient boosting": GradientBoostingClassifier(n_estimators=20, random_state=0),
    "random forest": RandomForestClassifier(n_estimators=10, random_state=0),
    "extra trees": ExtraTreesClassifier(n_estimators=10, random_state=0),
    "decision tree": DecisionTreeClassifier(max_depth=4, random_state=0),
    "logistic regression": LogisticRegression(max_iter=500),
    "naive bayes": GaussianNB(),
    "mlp": MLPClassifier(hidden_layer_sizes=(8,), max_iter=300, random_state=0),
    "calibrated": CalibratedClassifierCV(LogisticRegression(max_iter=500), cv=3),
    "pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("labels", [BINARY, MULTI, NAMES], ids=["binary", "multiclass", "strings"])
@pytest.mark.parametrize("kind", sorted(SKLEARN))
def test_sklearn_labels_come_from_the_probabilities_as_predict_gives_them(
        kind: str, labels: np.ndarray) -> None:
    model = clone(SKLEARN[kind]).fit(X, labels)
    expected, proba = model.predict(X), model.predict_proba(X)
    assert argmax_classifier(model)
    calls = Counted(model)
    got, scores = get_adapter("sklearn").predict_with_scores(model, X)
    ties = tied_rows(proba)
    # one model call, and predict again only for the rows the model breaks a tie in
    assert calls.calls["predict"] == (1 if ties else 0)
    assert calls.predicted_rows == ties
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(scores, proba)


def test_a_dataframe_and_a_text_pipeline_give_the_same_labels() -> None:
    adapter = get_adapter("sklearn")
    frame = pd.DataFrame(X, columns=[f"c{i}" for i in range(X.shape[1])])
    model = HistGradientBoostingClassifier(max_iter=10).fit(frame, NAMES)
    got, _ = adapter.predict_with_scores(model, frame)
    np.testing.assert_array_equal(got, model.predict(frame))
    texts = ["great product", "love it", "awful", "terrible service", "really great", "bad"]
    text = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(
        texts, ["pos", "pos", "neg", "neg", "pos", "neg"])
    got, _ = adapter.predict_with_scores(text, ["so great", "awful awful", "meh"])
    np.testing.assert_array_equal(got, text.predict(["so great", "awful awful", "meh"]))


@pytest.mark.parametrize("make", [
    lambda: GradientBoostingClassifier(n_estimators=1, learning_rate=1e-300, init="zero",
                                       max_depth=1),
    lambda: HistGradientBoostingClassifier(max_iter=1, learning_rate=1e-300),
], ids=["gradient boosting", "hgb"])
def test_ties_in_the_probabilities_are_decided_by_predict(make: Any) -> None:
    """Scores of +-1e-300 are probabilities of exactly 0.5: ``predict`` decides by the sign
    (``raw >= 0`` or ``raw > 0``), the argmax of [0.5, 0.5] would say the first class."""
    balanced = np.arange(len(X)) % 2
    model = make().fit(X, balanced)
    proba = model.predict_proba(X)
    assert (proba == 0.5).all()  # every row a tie
    expected = model.predict(X)
    assert (expected != proba.argmax(axis=1)).any()  # the naive argmax would be wrong
    got, _ = get_adapter("sklearn").predict_with_scores(model, X)
    np.testing.assert_array_equal(got, expected)


def test_only_tied_rows_are_asked_again() -> None:
    scores = np.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1], [0.3, 0.3 + 1e-17]])
    asked: list[list[int]] = []

    def predict_rows(rows: np.ndarray) -> np.ndarray:
        asked.append(rows.tolist())
        return np.array(["yes"] * len(rows))

    labels = labels_from_scores(np.array(["no", "yes"]), scores, predict_rows)
    assert asked == [[1, 3]]
    assert labels.tolist() == ["yes", "yes", "no", "yes"]


class OwnDecision(LogisticRegression):
    """A subclass with its own decision: not the argmax of its probabilities."""

    def predict(self, X: Any) -> Any:
        return np.full(len(X), self.classes_[0])


def test_classifiers_that_decide_otherwise_keep_two_calls() -> None:
    adapter = get_adapter("sklearn")
    for model in (SVC(probability=True, random_state=0).fit(X[:120], BINARY[:120]),
                  OwnDecision(max_iter=500).fit(X, BINARY)):
        assert not argmax_classifier(model)
        got, scores = adapter.predict_with_scores(model, X)
        np.testing.assert_array_equal(got, model.predict(X))
        np.testing.assert_array_equal(scores, model.predict_proba(X))
    ridge = Ridge().fit(X, X[:, 0])  # and a model without probabilities
    got, scores = adapter.predict_with_scores(ridge, X)
    np.testing.assert_array_equal(got, ridge.predict(X))
    assert scores is None


@pytest.mark.parametrize("labels", [BINARY, MULTI], ids=["binary", "multiclass"])
def test_xgboost_classifier_and_booster(labels: np.ndarray) -> None:
    import xgboost as xgb

    adapter = get_adapter("xgboost")
    model = xgb.XGBClassifier(n_estimators=10, max_depth=3).fit(X, labels)
    got, scores = adapter.predict_with_scores(model, X)
    np.testing.assert_array_equal(got, adapter.predict(model, X))
    assert got.dtype == adapter.predict(model, X).dtype
    np.testing.assert_array_equal(scores, adapter.predict_scores(model, X))
    booster = model.get_booster()
    got, scores = adapter.predict_with_scores(booster, X)
    np.testing.assert_array_equal(got, adapter.predict(booster, X))
    np.testing.assert_array_equal(scores, adapter.predict_scores(booster, X))


@pytest.mark.parametrize("labels", [BINARY, NAMES], ids=["binary", "strings"])
def test_lightgbm_loaded_classifier(labels: np.ndarray, tmp_path: Path) -> None:
    import lightgbm as lgb

    adapter = get_adapter("lightgbm")
    trained = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(X, labels)
    meta = adapter.save(trained, tmp_path)
    model = adapter.load(tmp_path, meta, "cpu")
    got, scores = adapter.predict_with_scores(model, X)
    expected = adapter.predict(model, X)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(scores, adapter.predict_scores(model, X))
    np.testing.assert_array_equal(got, trained.predict(X))


def test_a_predictor_asks_the_model_once_for_labels_and_scores() -> None:
    model = HistGradientBoostingClassifier(max_iter=10).fit(X, NAMES)
    adapter = get_adapter("sklearn")
    predictor = Predictor("m", 1, "sklearn", model, adapter,
                          adapter.infer_signature(model, X, NAMES))
    expected = model.predict(X)
    calls = Counted(model)
    result = predictor.predict_batch(X, scores=True)
    assert calls.calls == {"predict": 0, "predict_proba": 1}
    np.testing.assert_array_equal(result.predictions, expected)
    assert result.classes == tuple(sorted(set(NAMES)))
    np.testing.assert_array_equal(result.scores, model.predict_proba(X))
    calls.calls.update(predict=0, predict_proba=0)
    plain = predictor.predict_batch(X)  # without scores: predict alone, as before
    assert calls.calls == {"predict": 1, "predict_proba": 0}
    assert plain.scores is None


def test_a_torch_classifier_runs_one_forward_pass_for_labels_and_scores() -> None:
    import torch

    passes = []

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(6, 1)

        def forward(self, x: Any) -> Any:
            passes.append(len(x))
            return torch.sigmoid(self.linear(x)).squeeze(1)  # (n,): one probability a row

    adapter = get_adapter("torch")
    signature = Signature.infer(X.astype(np.float32), BINARY, layout="tensor")
    predictor = Predictor("m", 1, "torch", Net().eval(), adapter, signature)
    result = predictor.predict_batch(X[:5].astype(np.float32), scores=True)
    assert passes == [5]
    assert result.scores is None  # a (n,) output: no class scores, as before
