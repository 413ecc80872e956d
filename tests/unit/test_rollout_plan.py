"""Where a rollout's settings come from: the version's registered ``rollout:`` section and
metrics, each overridden by what a person asks for."""

from __future__ import annotations

import pytest

from modelyard.errors import ConfigError
from modelyard.rollout.plan import plan_rollout
from modelyard.spec import RolloutSpec

CANARY = {"rollout": {"strategy": "canary", "steps": [10, 50, 100], "every_s": 30,
                      "max_error_rate": 0.05, "min_requests": 40},
          "metrics": ["f1", "accuracy"]}


def meta_of(**rollout: object) -> dict[str, object]:
    spec = RolloutSpec(**rollout)  # type: ignore[arg-type]
    return {"rollout": spec.model_dump(mode="json", exclude_unset=True), "metrics": ["accuracy"]}


def test_the_declared_rollout_is_the_default():
    plan = plan_rollout(CANARY)
    assert (plan.strategy, plan.steps, plan.every_s, plan.key) == ("canary", (10, 50, 100),
                                                                  30.0, None)
    assert plan.rules["max_error_rate"] == 0.05 and plan.rules["min_requests"] == 40
    assert plan.rules["metric"] == "f1"  # the first metric the model declares


def test_what_a_person_asks_for_wins_rule_by_rule():
    plan = plan_rollout(CANARY, steps=[20, 100], every_s=5, rules={"min_requests": 10,
                                                                   "metric": "accuracy"})
    assert (plan.steps, plan.every_s) == ((20, 100), 5.0)
    assert plan.rules["min_requests"] == 10 and plan.rules["max_error_rate"] == 0.05
    assert plan.rules["metric"] == "accuracy"
    shadow = plan_rollout(CANARY, strategy="shadow")
    assert shadow.strategy == "shadow" and shadow.steps is None  # canary steps do not apply


def test_a_declared_metric_and_key_and_single_step_strategies():
    plan = plan_rollout(meta_of(strategy="ab", steps=[30], key="user_id", metric="accuracy"))
    assert (plan.strategy, plan.steps, plan.key, plan.rules["metric"]) == (
        "ab", (30,), "user_id", "accuracy")
    assert plan_rollout(meta_of(strategy="shadow")).steps is None  # its own default: 100 %


def test_without_a_declared_strategy_deploy_runs_a_canary_and_the_first_version_goes_direct():
    bare = plan_rollout({})
    assert (bare.strategy, bare.steps, bare.every_s) == ("canary", None, 60.0)
    assert "metric" in bare.rules and bare.rules["metric"] is None
    assert plan_rollout(CANARY, has_production=False).strategy == "direct"
    # asked for explicitly, a canary stays a canary (starting it then says why it cannot)
    assert plan_rollout(CANARY, strategy="canary", has_production=False).strategy == "canary"
    declared_direct = meta_of(strategy="direct")
    assert plan_rollout(declared_direct).strategy == "direct"


def test_a_broken_registered_section_is_a_config_error():
    with pytest.raises(ConfigError, match="registered rollout section is invalid"):
        plan_rollout({"rollout": {"strategy": "sideways"}})


def test_a_metric_this_process_does_not_know_is_no_default():
    # registered by the user's own code at training time: deploy cannot compute it
    plan = plan_rollout({"metrics": ["house_score", "accuracy"]})
    assert plan.rules["metric"] == "accuracy"
    assert plan_rollout({"metrics": ["house_score"]}).rules["metric"] is None
