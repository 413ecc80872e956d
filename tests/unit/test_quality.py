"""Metrics from fed-back labels, per version, variant and time window (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from modelyard.monitoring.predlog import LoggedPrediction
from modelyard.monitoring.quality import label_rows, metric_windows

T0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def logged(i: int, version: int, predicted: list, *, minutes: float = 0.0,
           variant: str = "production") -> LoggedPrediction:
    return LoggedPrediction(f"r{i}", "m", version, variant, T0 + timedelta(minutes=minutes),
                            1.0, len(predicted), {}, {"predictions": predicted})


def test_label_rows_fit_one_value_per_row() -> None:
    assert label_rows(1, 1, [0]) == [1]
    assert label_rows([1], 1, [0]) == [1]
    assert label_rows([1, 2, 3], 1, [[1, 2, 3]]) == [[1, 2, 3]]  # one sequence-valued row
    assert label_rows([1, 0], 2, [1, 1]) == [1, 0]
    assert label_rows([1], 2, [1, 1]) is None


def test_windows_score_each_version_and_variant_on_its_own_labels() -> None:
    predictions = [logged(0, 1, [1]), logged(1, 1, [0]), logged(2, 2, [1], variant="candidate"),
                   logged(3, 2, [1, 1], variant="candidate"), logged(4, 1, [1])]
    labels = {"r0": 1, "r1": 1, "r2": 0, "r3": [1, 1]}  # r4 not labeled yet
    stable, candidate = metric_windows("m", predictions, labels, ["accuracy", "roc_auc"])
    assert (stable.version, stable.requests, stable.labeled) == (1, 3, 2)
    assert stable.values["accuracy"] == pytest.approx(0.5)
    assert stable.values["roc_auc"] is None  # no scores were logged
    assert (candidate.variant, candidate.labeled) == ("candidate", 3)
    assert candidate.values["accuracy"] == pytest.approx(2 / 3)


def test_every_cuts_the_window_into_a_series() -> None:
    predictions = [logged(i, 1, [1], minutes=i * 4) for i in range(6)]  # 0..20 minutes
    labels = {f"r{i}": int(i < 3) for i in range(6)}
    series = metric_windows("m", predictions, labels, ["accuracy"], every=timedelta(minutes=10))
    assert [(w.start, w.requests, w.values["accuracy"]) for w in series] == [
        (T0, 3, 1.0), (T0 + timedelta(minutes=10), 2, 0.0), (T0 + timedelta(minutes=20), 1, 0.0)]
    assert series[0].end == T0 + timedelta(minutes=10)


def test_mismatched_labels_are_counted_not_scored() -> None:
    (window,) = metric_windows("m", [logged(0, 1, [1, 0])], {"r0": [1]}, ["accuracy"])
    assert window.labeled == 0 and window.mismatched == 1
    assert window.values == {"accuracy": None}


def test_bootstrap_errors_shrink_with_more_labels() -> None:
    few = [logged(i, 1, [i % 2]) for i in range(20)]
    many = [logged(i, 1, [i % 2]) for i in range(2000)]

    def error(preds: list[LoggedPrediction]) -> float:
        labels = {p.request_id: int(i % 3 == 0) for i, p in enumerate(preds)}
        (w,) = metric_windows("m", preds, labels, ["accuracy"], errors=True)
        return w.errors["accuracy"]

    assert error(few) > 3 * error(many) > 0
