"""The parent/child boundary of a training run: task inference and failure messages."""

from __future__ import annotations

import signal

import numpy as np

from modelyard.errors import TrainingError, UnsafeArtifactError
from modelyard.pipeline import child


def test_infer_task():
    from sklearn.linear_model import LinearRegression, LogisticRegression

    X, y = np.arange(8.0).reshape(4, 2), np.array([0, 1, 0, 1])
    assert child.infer_task(LogisticRegression().fit(X, y), y) == "classification"
    assert child.infer_task(LinearRegression().fit(X, y), y) == "regression"
    assert child.infer_task(object(), np.array([0.5, 1.5])) == "regression"
    assert child.infer_task(object(), np.array(["a", "b"])) == "classification"
    assert child.infer_task(object(), np.zeros((2, 4, 4))) == "raw"


def test_failures_become_modelyard_errors():
    hint = "see logs: modelyard runs show r1"
    raised = child._failure({"stage": "train", "type": "ValueError", "message": "bad",
                             "modelyard": False}, hint)
    assert isinstance(raised, TrainingError)
    assert str(raised) == "train function raised ValueError: bad; " + hint
    unsafe = child._failure({"stage": "save", "type": "UnsafeArtifactError", "message": "no",
                             "modelyard": True}, hint)
    assert isinstance(unsafe, UnsafeArtifactError) and str(unsafe) == "no"
    assert "killed by signal SIGKILL" in child._death(-signal.SIGKILL)
    assert child._death(3) == "exited with code 3 without a result"
