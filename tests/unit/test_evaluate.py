"""Scoring saved models through the serving input path, in chunks, and the champion's notes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import modelyard.pipeline.evaluate as evaluate
from modelyard.adapters import get_adapter
from modelyard.schema import Signature


@pytest.fixture()
def saved(tmp_path: Path) -> dict:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    y = (X["a"] > 0).astype(int).to_numpy()
    model = LogisticRegression().fit(X, y)
    adapter = get_adapter("sklearn")
    meta = adapter.save(model, tmp_path)
    return {"X": X, "y": y, "path": tmp_path, "meta": meta, "model": model,
            "signature": Signature.infer(X, y).to_dict()}


def load(saved: dict):
    return evaluate.load_predictor("m", 1, "sklearn", saved["path"], saved["meta"],
                                   saved["signature"], "classification")


def test_scores_match_the_model_in_memory(saved: dict):
    from sklearn.metrics import accuracy_score, roc_auc_score

    scores = evaluate.score(load(saved), saved["X"], saved["y"], ["accuracy", "roc_auc"])
    proba = saved["model"].predict_proba(saved["X"])[:, 1]
    assert scores["accuracy"] == pytest.approx(accuracy_score(saved["y"],
                                                              saved["model"].predict(saved["X"])))
    assert scores["roc_auc"] == pytest.approx(roc_auc_score(saved["y"], proba))


def test_chunked_prediction_equals_one_batch(saved: dict, monkeypatch: pytest.MonkeyPatch):
    predictor = load(saved)
    whole = evaluate.predict_all(predictor, saved["X"], scores=True)
    monkeypatch.setattr(evaluate, "EVAL_CHUNK", 7)
    chunked = evaluate.predict_all(predictor, saved["X"], scores=True)
    assert np.array_equal(whole.predictions, chunked.predictions)
    assert np.allclose(whole.scores, chunked.scores) and len(chunked.predictions) == 200


def test_champion_scored_or_explained(saved: dict):
    champion = {"ref": "m:1", "flavor": "sklearn", "path": str(saved["path"]),
                "meta": saved["meta"], "signature": saved["signature"], "task": "classification"}
    scored = evaluate.score_champion(champion, saved["X"], saved["y"], ["accuracy", "f1"])
    assert scored["note"] is None and scored["metrics"]["accuracy"] > 0.9
    narrower = saved["X"][["a", "b"]]
    other = evaluate.score_champion(champion, narrower, saved["y"], ["accuracy"])
    assert other["metrics"] is None and "cannot take this holdout" in other["note"]
    missing = evaluate.score_champion({**champion, "error": "digest mismatch"}, saved["X"],
                                      saved["y"], ["accuracy"])
    assert "could not be loaded (digest mismatch)" in missing["note"]
    broken = evaluate.score_champion({**champion, "path": str(saved["path"] / "nope")},
                                     saved["X"], saved["y"], ["accuracy"])
    assert broken["metrics"] is None and "could not be scored" in broken["note"]
