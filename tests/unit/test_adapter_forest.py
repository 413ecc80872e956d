"""The walks of a loaded HistGradientBoosting model (compiled by ONNX Runtime, and numpy) answer
exactly as scikit-learn does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from modelyard.adapters import get_adapter
from modelyard.adapters.forest import MAX_ROWS, Forest, forest_of
from modelyard.adapters.sklearn import _FORESTS

RNG = np.random.default_rng(7)
X = RNG.normal(size=(600, 8))
X[RNG.random(X.shape) < 0.05] = np.nan  # missing values take each node's learned side
BINARY = (np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) > 0).astype(np.int64)
THREE = np.array(["low", "mid", "high"])[np.digitize(np.nan_to_num(X[:, 2]), [-0.5, 0.5])]
VALUE = np.nan_to_num(X[:, 0]) * 3 + np.nan_to_num(X[:, 3]) ** 2


WALKS = ["compiled", "numpy"]


def loaded(model: Any, tmp_path: Path, walk: str = "compiled") -> Any:
    adapter = get_adapter("sklearn")
    got = adapter.load(tmp_path, adapter.save(model, tmp_path), "cpu")
    forest = _FORESTS[got]
    if walk == "compiled":
        assert forest.session is not None  # ONNX Runtime is installed with modelyard[sklearn]
    else:
        forest.session = None
    return got


def batches() -> list[np.ndarray]:
    """Every batch size serving sends, and one past the walk's limit."""
    return [X[:1], X[1:3], X[:32], X[100:100 + MAX_ROWS], X[:MAX_ROWS + 1],
            np.full((2, 8), np.nan), np.array([[np.inf, -np.inf] * 4])]


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("labels", [BINARY, THREE], ids=["binary", "multiclass"])
def test_classifier_answers_as_scikit_learn(labels: np.ndarray, walk: str,
                                            tmp_path: Path) -> None:
    trained = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, labels)
    model = loaded(trained, tmp_path, walk)
    assert model in _FORESTS  # the adapter walks it
    adapter = get_adapter("sklearn")
    for batch in batches():
        np.testing.assert_array_equal(adapter.predict(model, batch), trained.predict(batch))
        np.testing.assert_allclose(adapter.predict_scores(model, batch),
                                   trained.predict_proba(batch), rtol=0, atol=1e-12)
        labels_got, scores = adapter.predict_with_scores(model, batch)
        np.testing.assert_array_equal(labels_got, trained.predict(batch))
        assert scores.shape == (len(batch), len(trained.classes_))


@pytest.mark.parametrize("walk", WALKS)
def test_regressor_answers_as_scikit_learn(walk: str, tmp_path: Path) -> None:
    for loss in ("squared_error", "poisson"):
        target = np.abs(VALUE) if loss == "poisson" else VALUE
        trained = HistGradientBoostingRegressor(max_iter=40, loss=loss).fit(X, target)
        (tmp_path / loss).mkdir()
        model = loaded(trained, tmp_path / loss, walk)
        for batch in batches():
            np.testing.assert_allclose(get_adapter("sklearn").predict(model, batch),
                                       trained.predict(batch), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("walk", WALKS)
def test_integer_and_float32_rows_walk_as_float64(walk: str) -> None:
    trained = HistGradientBoostingClassifier(max_iter=10).fit(X, BINARY)
    forest = Forest.of(trained)
    assert forest is not None
    if walk == "numpy":
        forest.session = None
    for batch in (np.nan_to_num(X[:20]).astype(np.float32), np.arange(16).reshape(2, 8)):
        assert forest.rows(batch) is not None
        raw = forest.raw(batch)
        assert raw is not None
        np.testing.assert_allclose(raw, trained._raw_predict(batch), rtol=0, atol=1e-12)


def test_what_the_walk_cannot_answer_goes_to_scikit_learn() -> None:
    trained = HistGradientBoostingClassifier(max_iter=5).fit(X, BINARY)
    forest = Forest.of(trained)
    assert forest is not None
    assert forest.rows(X[:, :4]) is None  # too few features
    assert forest.rows(X[:MAX_ROWS + 1]) is None
    assert forest.rows(X[:0]) is None
    assert forest.rows(np.array([["a"] * 8])) is None
    assert forest.rows(X[:2].tolist()) is None
    categorical = np.column_stack([RNG.integers(0, 4, 600), np.nan_to_num(X[:, 1:])])
    with_categories = HistGradientBoostingClassifier(
        max_iter=5, categorical_features=[0]).fit(categorical, BINARY)
    assert Forest.of(with_categories) is None

    class Tweaked(HistGradientBoostingClassifier):
        pass

    assert Forest.of(Tweaked(max_iter=5).fit(X, BINARY)) is None
    assert forest_of(object()) is None


def test_a_dataframe_walks_when_its_columns_are_the_fitted_ones(tmp_path: Path) -> None:
    import pandas as pd

    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(8)])
    trained = HistGradientBoostingClassifier(max_iter=10).fit(frame, BINARY)
    model = loaded(trained, tmp_path)
    forest = _FORESTS[model]
    batch = frame.iloc[:5]
    assert forest.rows(batch) is not None
    np.testing.assert_array_equal(get_adapter("sklearn").predict(model, batch),
                                  trained.predict(batch))
    assert forest.rows(batch[list(reversed(batch.columns))]) is None  # scikit-learn refuses it
    assert forest.rows(batch.assign(f0=["a"] * 5)) is None


def test_a_tree_deeper_than_it_claims_is_left_to_scikit_learn() -> None:
    trained = HistGradientBoostingClassifier(max_iter=5).fit(X, BINARY)
    forest = Forest.of(trained)
    assert forest is not None
    forest.session = None  # the numpy walk steps as deep as the depth field says
    forest.levels -= 1  # as an artifact whose depth field lies would make it
    assert forest.raw(np.nan_to_num(X[:50])) is None


def test_a_tree_that_is_one_leaf_walks_compiled() -> None:
    """A target nothing splits gives trees without a branch: each still adds its leaf."""
    flat = np.full(len(X), 2.5)
    flat[:3] = 2.6  # a gain too small to split on
    trained = HistGradientBoostingRegressor(max_iter=3, min_samples_leaf=400).fit(X, flat)
    forest = Forest.of(trained)
    assert forest is not None and forest.session is not None
    assert all(len(t.nodes) == 1 for it in trained._predictors for t in it)
    raw = forest.raw(X[:4])
    assert raw is not None
    np.testing.assert_allclose(raw, trained._raw_predict(X[:4]), rtol=0, atol=1e-12)
