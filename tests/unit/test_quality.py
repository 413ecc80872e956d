"""Metrics from fed-back labels, per version, variant and time window (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

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


def _binary(version: int, start: int, outcomes: dict[tuple[int, int], int]
            ) -> tuple[list[LoggedPrediction], dict[str, int]]:
    """Logged one-row predictions of ``version`` and their labels: ``outcomes`` counts rows per
    (label, predicted)."""
    rows, labels = [], {}
    i = start
    for (truth, predicted), count in outcomes.items():
        for _ in range(count):
            rows.append(logged(i, version, [predicted]))
            labels[f"r{i}"] = truth
            i += 1
    return rows, labels


def test_a_candidate_that_missed_its_few_positives_is_not_significantly_worse() -> None:
    """The heal demo's canary met 3 frauds and missed them: F1 0 against stable's 0.43. A z test
    on bootstrap errors called that certain (every resample of 3 misses scores 0, so its
    standard error is 0) and rolled back a better model; the permutation test sees chance."""
    from modelyard.monitoring.quality import regression_p_value
    from modelyard.rollout.analysis import Rules, analyze
    from modelyard.rollout.stats import WindowStats

    stable, stable_labels = _binary(1, 0, {(1, 1): 6, (1, 0): 8, (0, 1): 8, (0, 0): 128})
    candidate, candidate_labels = _binary(2, 1000, {(1, 0): 3, (0, 1): 2, (0, 0): 55})
    rows, labels = stable + candidate, {**stable_labels, **candidate_labels}
    s, c = metric_windows("m", rows, labels, ["f1"], group_by_variant=False, errors=True)
    assert (s.values["f1"], c.values["f1"]) == (pytest.approx(0.4286, abs=1e-4), 0.0)
    assert c.errors["f1"] == 0.0  # the bootstrap's false certainty
    p = regression_p_value("f1", rows, labels, 1, 2)
    assert p is not None and p > 0.05  # about 0.11: chance, at 95 % confidence

    rules = Rules(metric="f1", min_labels=40, min_requests=10)

    def window(w: Any, metric_p: float | None = None) -> WindowStats:
        return WindowStats(requests=100, labeled=w.labeled, metric_value=w.values["f1"],
                           metric_se=w.errors["f1"], metric_p=metric_p)

    by_errors = analyze(window(s), window(c), rules, step=0, n_steps=3)
    assert by_errors.action == "rollback"  # what happened before
    decision = analyze(window(s), window(c, p), rules, step=0, n_steps=3)
    assert decision.action == "advance", decision.reasons
    assert "within chance on 60 labels (p" in " ".join(decision.reasons)


def test_a_candidate_that_never_finds_a_positive_is_significantly_worse() -> None:
    from modelyard.monitoring.quality import regression_p_value

    stable, stable_labels = _binary(1, 0, {(1, 1): 70, (1, 0): 30, (0, 1): 20, (0, 0): 280})
    candidate, candidate_labels = _binary(2, 1000, {(1, 0): 100, (0, 0): 300})
    rows, labels = stable + candidate, {**stable_labels, **candidate_labels}
    p = regression_p_value("f1", rows, labels, 1, 2)
    assert p is not None and p < 0.01
    # a better candidate is never "worse", and a metric where lower is better turns around
    assert regression_p_value("f1", rows, labels, 2, 1) == pytest.approx(1.0)
    assert regression_p_value("accuracy", rows, labels, 1, 2) < 0.01
    assert regression_p_value("f1", rows, labels, 1, 3) is None  # no such version logged
