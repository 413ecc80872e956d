"""The promotion gate as a pure function: thresholds, the champion rule, and readable reasons."""

from __future__ import annotations

from modelyard.metrics import greater_is_better
from modelyard.pipeline.gate import evaluate_gate
from modelyard.spec import GateSpec


def gate(**fields) -> GateSpec:
    return GateSpec.model_validate(fields)


def test_thresholds_pass_and_fail_with_reasons():
    g = gate(min={"f1": 0.6, "accuracy": 0.5}, max={"log_loss": 0.4})
    ok = evaluate_gate(g, {"f1": 0.7, "accuracy": 0.9, "log_loss": 0.3}, None, greater_is_better)
    assert ok.passed and ok.reasons == []
    assert len(ok.checks) == 3 and all(c["passed"] for c in ok.checks)
    bad = evaluate_gate(g, {"f1": 0.58, "accuracy": 0.9, "log_loss": 0.7}, None, greater_is_better)
    assert not bad.passed
    assert bad.reasons == ["f1 0.58 < min 0.60", "log_loss 0.70 > max 0.40"]


def test_close_values_get_enough_decimals():
    result = evaluate_gate(gate(min={"f1": 0.6}), {"f1": 0.5996}, None, greater_is_better)
    assert result.reasons == ["f1 0.5996 < min 0.6000"]


def test_missing_metric_fails():
    result = evaluate_gate(gate(min={"roc_auc": 0.8}), {"f1": 0.9}, None, greater_is_better)
    assert result.reasons == ["roc_auc was not computed"]


def test_champion_rule_rejects_a_worse_candidate():
    g = gate(champion={"metric": "f1", "max_drop": 0.0})
    result = evaluate_gate(g, {"f1": 0.81}, {"f1": 0.84}, greater_is_better,
                           champion_ref="fraud:3")
    assert not result.passed
    assert result.reasons == [
        "f1 0.81 is 0.03 below champion fraud:3 (0.84), allowed drop 0.00"
    ]
    check = result.checks[0]
    assert check["rule"] == "champion" and check["champion_value"] == 0.84


def test_champion_rule_allows_the_configured_drop_and_equal_models():
    g = gate(champion={"metric": "f1", "max_drop": 0.05})
    assert evaluate_gate(g, {"f1": 0.81}, {"f1": 0.84}, greater_is_better).passed
    exact = gate(champion={"metric": "f1"})
    assert evaluate_gate(exact, {"f1": 0.1 + 0.2}, {"f1": 0.3}, greater_is_better).passed


def test_champion_rule_for_lower_is_better_metrics():
    g = gate(champion={"metric": "rmse", "max_drop": 0.1})
    assert evaluate_gate(g, {"rmse": 1.05}, {"rmse": 1.0}, greater_is_better).passed
    worse = evaluate_gate(g, {"rmse": 1.5}, {"rmse": 1.0}, greater_is_better, champion_ref="m:1")
    assert worse.reasons == ["rmse 1.50 is 0.50 above champion m:1 (1.00), allowed drop 0.10"]


def test_no_champion_passes_with_a_note():
    g = gate(champion={"metric": "f1"})
    result = evaluate_gate(g, {"f1": 0.5}, None, greater_is_better)
    assert result.passed
    assert "no production version yet" in result.checks[0]["message"]
    noted = evaluate_gate(g, {"f1": 0.5}, None, greater_is_better,
                          champion_note="champion m:2 cannot take this holdout")
    assert noted.passed and "cannot take this holdout" in noted.checks[0]["message"]
    assert noted.to_dict()["passed"] is True
