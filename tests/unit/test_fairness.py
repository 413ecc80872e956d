"""Fairness rules: the spec, per-group figures with real Fairlearn, gate checks, group columns
kept out of the features, and the figures over a monitoring window."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from modelyard.errors import ConfigError, DataValidationError
from modelyard.monitoring.predlog import LoggedPrediction
from modelyard.monitoring.quality import metric_windows
from modelyard.pipeline import fairness
from modelyard.pipeline.data import load_dataset, read_groups, split, write_groups
from modelyard.pipeline.gate import evaluate_gate
from modelyard.spec import DataSpec, FairnessRule, GateSpec, Spec


@pytest.fixture(autouse=True)
def _fairlearn() -> None:
    try:
        import fairlearn  # noqa: F401
    except ImportError:
        message = "fairlearn is not installed (pip install 'modelyard[fairness]')"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this fails instead of skipping)")
        pytest.skip(message)


def biased(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, predictions and groups where group "b" is predicted right only 60 % of the time."""
    rng = np.random.default_rng(seed)
    group = rng.choice(["a", "b"], n)
    truth = rng.integers(0, 2, n)
    wrong = (group == "b") & (rng.random(n) < 0.4)
    return truth, np.where(wrong, 1 - truth, truth), group


# -- spec ---------------------------------------------------------------------------------------
def spec(gate: dict[str, Any], **more: Any) -> Spec:
    return Spec.parse({"name": "m", "train": "t.py:train",
                       "data": {"function": "t.py:load"}, "metrics": ["accuracy"],
                       "gate": gate, **more})


def test_one_rule_or_a_list_and_each_needs_a_bound() -> None:
    one = GateSpec.model_validate({"fairness": {"group": "sex", "metric": "recall",
                                                "max_gap": 0.05}})
    assert one.fairness == [FairnessRule(group="sex", metric="recall", max_gap=0.05)]
    many = spec({"fairness": [{"group": "sex", "max_demographic_parity": 0.1},
                              {"group": "age_band", "max_equalized_odds": 0.1}]})
    assert [r.group for r in many.gate.fairness] == ["sex", "age_band"]
    for bad, needle in [
        ({"group": "sex", "metric": "rmse", "max_gap": 0.1}, "not a classification metric"),
        ({"group": 3, "max_gap": 0.1, "metric": "recall"}, "valid string"),
        ({"group": "sex"}, "needs a bound"),
        ({"group": "sex", "max_gap": 0.1}, "set metric too"),
        ({"group": "sex", "metric": "f1"}, "max_gap"),
        ({"group": "sex", "max_demographic_parity": 1.5}, "less than or equal to 1"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            spec({"fairness": bad})


def test_fairness_gap_is_an_alert_signal_only_with_a_metric_rule() -> None:
    alerts = {"alerts": [{"on": "fairness_gap", "above": 0.1}]}
    ok = spec({"fairness": {"group": "sex", "metric": "recall", "max_gap": 0.05}},
              monitoring=alerts)
    assert ok.monitoring.alerts[0].on == "fairness_gap"
    with pytest.raises(ConfigError, match=r"fairness_gap needs a gate\.fairness rule"):
        spec({"fairness": {"group": "sex", "max_demographic_parity": 0.1}}, monitoring=alerts)
    with pytest.raises(ConfigError, match="regression"):
        spec({"fairness": {"group": "sex", "max_demographic_parity": 0.1}}, task="regression")


# -- figures ------------------------------------------------------------------------------------
def test_figures_per_group_match_a_hand_count_and_fairlearn() -> None:
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    truth, predicted, group = biased()
    rule = FairnessRule(group="g", metric="recall", max_gap=0.05, max_demographic_parity=0.1,
                        max_equalized_odds=0.1)
    (record,) = fairness.measure([rule], truth, predicted, {"g": group})
    for name in ("a", "b"):
        rows = group == name
        positives = rows & (truth == 1)
        figures = record["groups"][name]
        assert figures["n"] == rows.sum()
        assert figures["value"] == pytest.approx((predicted[positives] == 1).mean())
        assert figures["selection_rate"] == pytest.approx(predicted[rows].mean())
        assert figures["fpr"] == pytest.approx(predicted[rows & (truth == 0)].mean())
    assert record["groups"]["a"]["value"] == 1.0 and record["groups"]["b"]["value"] < 0.7
    assert record["gap"] == pytest.approx(1.0 - record["groups"]["b"]["value"])
    assert record["demographic_parity"] == pytest.approx(
        demographic_parity_difference(truth, predicted, sensitive_features=group))
    assert record["equalized_odds"] == pytest.approx(
        equalized_odds_difference(truth, predicted, sensitive_features=group))


def test_text_labels_take_the_last_class_as_positive_and_scores_are_split_per_group() -> None:
    truth, predicted, group = biased(seed=1)
    words = np.array(["no", "yes"], dtype=object)
    rng = np.random.default_rng(0)
    p_yes = np.clip(predicted * 0.8 + rng.random(len(truth)) * 0.2, 0, 1)
    scores = np.column_stack([1 - p_yes, p_yes])
    rules = [FairnessRule(group="g", metric="recall", max_gap=1.0),
             FairnessRule(group="g", metric="roc_auc", max_gap=1.0)]
    recall, auc = fairness.measure(rules, words[truth], words[predicted], {"g": group},
                                   scores=scores, classes=["no", "yes"])
    (as_numbers,) = fairness.measure(rules[:1], truth, predicted, {"g": group})
    assert recall["groups"] == as_numbers["groups"]
    assert recall["demographic_parity"] == as_numbers["demographic_parity"]
    assert auc["groups"]["a"]["value"] > auc["groups"]["b"]["value"]
    with pytest.raises(ConfigError, match="needs class scores"):
        fairness.measure(rules[1:], truth, predicted, {"g": group})


def test_missing_groups_one_group_and_multiclass_are_said() -> None:
    rule = FairnessRule(group="g", metric="accuracy", max_gap=0.1, max_demographic_parity=0.1)
    (record,) = fairness.measure([rule], [0, 1, 2, 1], [0, 1, 1, 1], {"g": [1.0, 1, None, 1]})
    assert set(record["groups"]) == {"1", fairness.MISSING}  # 1.0 and 1 are one group
    assert record["demographic_parity"] is None and "need two classes" in record["note"]
    (alone,) = fairness.measure([rule], [0, 1], [0, 1], {"g": ["x", "x"]})
    assert alone["gap"] == 0.0 and "only one group" in alone["note"]
    (absent,) = fairness.measure([rule], [0, 1], [0, 1], {})
    assert absent["groups"] == {} and "not in the data" in absent["note"]


# -- the gate -----------------------------------------------------------------------------------
def test_the_gate_rejects_beyond_a_bound_with_every_groups_figures() -> None:
    truth, predicted, group = biased()
    rule = FairnessRule(group="sex", metric="recall", max_gap=0.05, max_demographic_parity=0.5)
    records = fairness.measure([rule], truth, predicted, {"sex": group})
    gate = GateSpec(fairness=[rule])
    result = evaluate_gate(gate, {}, None, lambda _: True, fairness=records)
    assert not result.passed
    (reason,) = result.reasons
    b = records[0]["groups"]["b"]
    assert reason == (f"recall gap across sex {records[0]['gap']:.3f} > max 0.050 "
                      f"(a n={records[0]['groups']['a']['n']} recall 1.000; "
                      f"b n={b['n']} recall {b['value']:.3f})")
    parity = [c for c in result.checks if c.get("kind") == "demographic_parity"]
    assert parity[0]["passed"] and "selection rate" in parity[0]["message"]
    loose = GateSpec(fairness=[rule.model_copy(update={"max_gap": 0.6})])
    assert evaluate_gate(loose, {}, None, lambda _: True, fairness=records).passed
    unmeasured = evaluate_gate(gate, {}, None, lambda _: True)
    assert unmeasured.reasons == ["fairness rules were not measured on the holdout"]
    binary_only = FairnessRule(group="sex", max_equalized_odds=0.2)
    multi = fairness.measure([binary_only], [0, 1, 2], [0, 1, 2], {"sex": ["a", "b", "a"]})
    (why,) = evaluate_gate(GateSpec(fairness=[binary_only]), {}, None, lambda _: True,
                           fairness=multi).reasons
    assert why.startswith("equalized odds difference across sex was not computed (")


# -- data: the group column is kept for evaluation only -------------------------------------------
def test_a_group_column_outside_the_features_is_kept_apart(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=50), "sex": rng.choice(["F", "M"], 50),
                          "label": rng.integers(0, 2, 50)})
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = DataSpec(path="d.csv", target="label", features=["x"])
    dataset = load_dataset(data, tmp_path, ["sex"])
    assert dataset.feature_names == ["x"] and list(dataset.X.columns) == ["x"]
    assert dataset.groups["sex"].tolist() == frame["sex"].tolist()
    assert list(dataset.extra_groups().columns) == ["sex"]
    _, holdout = split(dataset, 0.2, 0)
    assert len(holdout.groups["sex"]) == len(holdout) == 10
    write_groups(holdout.groups, tmp_path)
    assert read_groups(tmp_path) == {"sex": holdout.groups["sex"].tolist()}
    assert load_dataset(DataSpec(path="d.csv", target="label"), tmp_path,
                        ["sex"]).extra_groups() is None  # a feature already
    with pytest.raises(DataValidationError, match=r"gate\.fairness groups by column"):
        load_dataset(data, tmp_path, ["race"])


def test_an_array_source_cannot_name_a_group(tmp_path: Path) -> None:
    def load() -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((4, 2)), np.array([0, 1, 0, 1])

    with pytest.raises(ConfigError, match="X here is an array"):
        load_dataset(DataSpec(function=load), tmp_path, ["sex"])


# -- monitoring -----------------------------------------------------------------------------------
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def logged(i: int, predicted: int, sex: Any) -> LoggedPrediction:
    inputs = {"columns": {"x": [0.5]} | ({} if sex is None else {"sex": [sex]})}
    return LoggedPrediction(f"r{i}", "m", 1, "production", T0, 1.0, 1, inputs,
                            {"predictions": [predicted]})


def test_a_window_measures_the_rules_from_logged_groups_and_labels() -> None:
    truth, predicted, group = biased(200)
    log = [logged(i, int(p), g) for i, (p, g) in enumerate(zip(predicted, group, strict=True))]
    labels = {f"r{i}": int(t) for i, t in enumerate(truth)}
    rules = [FairnessRule(group="sex", metric="recall", max_gap=0.05),
             FairnessRule(group="sex", metric="accuracy", max_gap=0.05)]
    (window,) = metric_windows("m", log, labels, ["accuracy"], fairness=rules)
    recall, accuracy = window.fairness
    expected = fairness.measure(rules, truth, predicted, {"sex": group})
    assert recall["groups"] == expected[0]["groups"] and recall["gap"] > 0.3
    assert window.values["fairness_gap"] == pytest.approx(max(recall["gap"], accuracy["gap"]))
    assert window.to_dict()["fairness"][0]["gap"] == recall["gap"]

    unlogged = [logged(i, 1, None) for i in range(5)]
    (blind,) = metric_windows("m", unlogged, {f"r{i}": 1 for i in range(5)}, [],
                              fairness=rules[:1])
    assert "not in the logged inputs" in blind.fairness[0]["note"]
    assert blind.values["fairness_gap"] is None and blind.fairness[0]["groups"] == {}
    (none,) = metric_windows("m", unlogged, {}, [], fairness=rules[:1])
    assert none.values["fairness_gap"] is None and none.fairness[0]["groups"] == {}
    (plain,) = metric_windows("m", log, labels, ["accuracy"])
    assert plain.fairness == [] and "fairness_gap" not in plain.values


def test_rules_are_read_back_from_a_versions_meta() -> None:
    truth, predicted, group = biased(50)
    rule = FairnessRule(group="sex", metric="recall", max_gap=0.05)
    meta = {"fairness": [*fairness.measure([rule], truth, predicted, {"sex": group}),
                         {"group": 7}, "junk"]}
    assert fairness.rules_of(meta) == [rule]
    assert fairness.rules_of({}) == []
