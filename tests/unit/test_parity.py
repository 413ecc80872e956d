"""The parity judgement between an original model's answers and its conversion's (pure)."""

from __future__ import annotations

import numpy as np

from modelyard.pipeline.parity import Answers, Limits, judge


def test_equal_answers_pass_with_their_figures() -> None:
    scores = np.array([[0.2, 0.8], [0.9, 0.1]])
    parity = judge(Answers(scores, [1, 0]), Answers(scores + 1e-7, np.array([1, 0])), Limits())
    assert parity.passed and parity.rows == 2 and parity.label_agreement == 1.0
    assert parity.max_abs_diff < 2e-7
    assert set(parity.metrics()) == {"parity_rows", "parity_max_abs_diff",
                                     "parity_label_agreement"}


def test_scores_past_the_tolerance_or_disagreeing_labels_fail_and_say_why() -> None:
    a = Answers(np.array([[0.2, 0.8], [0.6, 0.4]]), ["b", "a"])
    b = Answers(np.array([[0.2, 0.8], [0.4, 0.6]]), ["b", "b"])
    parity = judge(a, b, Limits(max_abs_diff=1e-3, min_label_agreement=0.99))
    assert not parity.passed
    assert "scores differ by up to 0.2" in parity.reasons[0]
    assert "labels agree on 50.00% of rows" in parity.reasons[1]


def test_regression_tolerance_is_relative_above_a_scale_of_one() -> None:
    values = np.array([1000.0, -2000.0])
    assert judge(Answers(values), Answers(values + 0.1), Limits(max_abs_diff=1e-4)).passed
    assert not judge(Answers(values), Answers(values + 1.0), Limits(max_abs_diff=1e-4)).passed


def test_outputs_of_another_shape_fail() -> None:
    parity = judge(Answers(np.zeros((3, 2))), Answers(np.zeros((3, 3))), Limits())
    assert not parity.passed and "differ in shape" in parity.reasons[0]


def test_labels_compare_across_integer_and_float_types() -> None:
    parity = judge(Answers(np.zeros(3), np.array([0, 1, 2])),
                   Answers(np.zeros(3), np.array([0.0, 1.0, 2.0])), Limits())
    assert parity.label_agreement == 1.0
