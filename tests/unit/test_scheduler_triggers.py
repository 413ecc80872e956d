"""The scheduler's pure decisions: which retrain trigger holds, and what it watches."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from modelyard.monitoring.quality import MetricWindow
from modelyard.scheduler import (
    Evidence,
    RetrainDecision,
    has_policy,
    retrain_decision,
    retrain_trigger,
    watches,
    window_values,
)
from modelyard.spec import AlertRule, MonitorSpec, RetrainSpec, Spec

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def ago(**kw: float) -> datetime:
    return NOW - timedelta(**kw)


def test_nothing_declared_never_triggers():
    assert retrain_trigger(RetrainSpec(), Evidence(NOW, drift_share=1.0, new_labels=10**6)) is None


def test_a_schedule_is_due_when_its_last_time_is_after_the_last_scheduled_run():
    daily = RetrainSpec(schedule="0 3 * * *")
    assert retrain_trigger(daily, Evidence(NOW, last_schedule_run_at=ago(days=1))) == (
        "schedule: 0 3 * * *")
    ran_today = Evidence(NOW, last_run_at=ago(hours=8, minutes=59),
                         last_schedule_run_at=ago(hours=8, minutes=59))  # 03:01 today
    assert retrain_trigger(daily, ran_today) is None


def test_a_schedule_without_scheduled_runs_counts_from_the_last_run():
    daily = RetrainSpec(schedule="0 3 * * *")
    assert retrain_trigger(daily, Evidence(NOW)) == "schedule: 0 3 * * *"  # never trained
    assert retrain_trigger(daily, Evidence(NOW, last_run_at=ago(hours=1))) is None
    assert retrain_trigger(daily, Evidence(NOW, last_run_at=ago(days=2))) is not None


def test_a_manual_run_does_not_put_a_scheduled_one_off():
    daily = RetrainSpec(schedule="0 3 * * *")
    evidence = Evidence(NOW, last_run_at=ago(minutes=5), last_schedule_run_at=ago(days=1))
    assert retrain_trigger(daily, evidence) == "schedule: 0 3 * * *"


def test_drift_share_at_or_above_the_bound_triggers():
    policy = RetrainSpec(drift_share=0.5)
    assert retrain_trigger(policy, Evidence(NOW, drift_share=0.62)) == "drift: share 0.62 >= 0.5"
    assert retrain_trigger(policy, Evidence(NOW, drift_share=0.5)) == "drift: share 0.5 >= 0.5"
    assert retrain_trigger(policy, Evidence(NOW, drift_share=0.49)) is None
    assert retrain_trigger(policy, Evidence(NOW, drift_share=None)) is None


def test_a_metric_below_its_bound_triggers_only_on_enough_labels():
    policy = RetrainSpec(metric_below={"accuracy": 0.9, "f1": 0.7})
    low = Evidence(NOW, metrics={"accuracy": 0.95, "f1": 0.61}, labeled=500)
    assert retrain_trigger(policy, low, min_labels=100) == "metric: f1 0.61 < 0.7"
    few = Evidence(NOW, metrics={"f1": 0.61}, labeled=20)
    assert retrain_trigger(policy, few, min_labels=100) is None
    unknown = Evidence(NOW, metrics={"f1": None}, labeled=500)
    assert retrain_trigger(policy, unknown, min_labels=100) is None
    fine = Evidence(NOW, metrics={"accuracy": 0.91, "f1": 0.7}, labeled=500)
    assert retrain_trigger(policy, fine, min_labels=100) is None


def test_new_labels_count_since_the_last_run():
    policy = RetrainSpec(new_labels=1000)
    assert retrain_trigger(policy, Evidence(NOW, new_labels=1200)) == "labels: 1200 new"
    assert retrain_trigger(policy, Evidence(NOW, new_labels=999)) is None
    assert retrain_trigger(policy, Evidence(NOW, new_labels=None)) is None


def test_drift_and_metric_triggers_wait_out_the_cooldown_after_a_run():
    policy = RetrainSpec(drift_share=0.5, metric_below={"f1": 0.7}, new_labels=10)
    stale = Evidence(NOW, drift_share=0.9, metrics={"f1": 0.1}, labeled=1000)
    just_ran = replace(stale, last_run_at=ago(minutes=10))
    assert retrain_trigger(policy, just_ran, cooldown_s=3600, min_labels=1) is None
    later = replace(stale, last_run_at=ago(hours=2))
    assert retrain_trigger(policy, later, cooldown_s=3600, min_labels=1).startswith("drift")
    labels = replace(just_ran, new_labels=50)
    assert retrain_trigger(policy, labels, cooldown_s=3600) == "labels: 50 new"


def test_the_first_matching_trigger_wins_in_a_fixed_order():
    policy = RetrainSpec(schedule="0 3 * * *", drift_share=0.3, metric_below={"f1": 0.9},
                         new_labels=1)
    everything = Evidence(NOW, last_run_at=ago(days=3), drift_share=0.4,
                          metrics={"f1": 0.5}, labeled=1000, new_labels=5)
    assert retrain_trigger(policy, everything).startswith("schedule:")
    no_schedule = Evidence(NOW, last_run_at=ago(hours=1), last_schedule_run_at=ago(hours=1),
                           drift_share=0.4, metrics={"f1": 0.5}, labeled=1000, new_labels=5)
    assert retrain_trigger(policy, no_schedule).startswith("drift:")
    no_drift = Evidence(NOW, last_run_at=ago(hours=1), last_schedule_run_at=ago(hours=1),
                        metrics={"f1": 0.5}, labeled=1000, new_labels=5)
    assert retrain_trigger(policy, no_drift).startswith("metric:")


def test_the_decision_says_why_each_declared_trigger_does_not_hold():
    policy = RetrainSpec(schedule="0 3 * * *", drift_share=0.3,
                         metric_below={"f1": 0.7, "accuracy": 0.8}, new_labels=500)
    quiet = Evidence(NOW, last_run_at=ago(hours=2), last_schedule_run_at=ago(hours=8),
                     drift_share=0.125, metrics={"f1": 0.75, "accuracy": None}, labeled=300,
                     new_labels=42)
    assert retrain_decision(policy, quiet, min_labels=100, cooldown_s=3600) == RetrainDecision(
        None, ("schedule '0 3 * * *' not due until 2024-05-02 03:00 UTC",
               "drift share 0.125 below 0.3",
               "metric: f1 0.75 not below 0.7, no accuracy value",
               "only 42 new labels of 500"))


def test_the_decision_says_what_evidence_is_missing_or_cooling_down():
    policy = RetrainSpec(drift_share=0.3, metric_below={"f1": 0.7})
    unknown = Evidence(NOW, labeled=12)
    assert retrain_decision(policy, unknown, min_labels=100).waiting == (
        "drift: no drift value yet (too few logged rows in the window)",
        "metric: only 12 labeled rows in the window, 100 needed")
    cooling = Evidence(NOW, last_run_at=ago(minutes=10), drift_share=0.9, metrics={"f1": 0.1},
                       labeled=1000)
    assert retrain_decision(policy, cooling, cooldown_s=3600).waiting == (
        "drift: waiting 3000s more after the last run",
        "metric: waiting 3000s more after the last run")
    assert retrain_decision(RetrainSpec(auto_rollout=True), Evidence(NOW)) == RetrainDecision(
        None, ("no retrain policy in the spec",))


def test_the_decision_and_the_trigger_agree():
    policy = RetrainSpec(drift_share=0.5, new_labels=10)
    fired = retrain_decision(policy, Evidence(NOW, drift_share=0.6, new_labels=3))
    assert fired == RetrainDecision("drift: share 0.6 >= 0.5")
    assert retrain_trigger(policy, Evidence(NOW, drift_share=0.6)) == fired.trigger


def _spec(**fields: object) -> Spec:
    return Spec.parse({"name": "m", "train": "train.py:train",
                       "data": {"function": "train.py:load"}, **fields})


def test_what_the_scheduler_watches():
    assert not has_policy(RetrainSpec()) and not has_policy(RetrainSpec(auto_rollout=True))
    assert has_policy(RetrainSpec(new_labels=5)) and has_policy(RetrainSpec(schedule="* * * * *"))
    assert not watches(_spec())
    assert watches(_spec(retrain={"metric_below": {"f1": 0.5}}, metrics=["f1"]))
    assert watches(_spec(monitoring=MonitorSpec(alerts=[AlertRule(on="p99_ms", above=9)])))


def _window(version: int, variant: str, labeled: int, f1: float | None) -> MetricWindow:
    return MetricWindow("m", version, variant, NOW, NOW, labeled + 5, labeled, {"f1": f1})


def test_window_values_take_the_versions_best_labeled_window():
    windows = [_window(1, "stable", 300, 0.8), _window(2, "candidate", 900, 0.5),
               _window(1, "", 50, 0.4)]
    assert window_values(windows, 1) == ({"f1": 0.8}, 300)
    assert window_values(windows, 2) == ({"f1": 0.5}, 900)
    assert window_values(windows, None) == ({"f1": 0.5}, 900)
    assert window_values(windows, 3) == ({}, 0)


def test_a_bad_schedule_is_refused_by_the_spec_and_by_cron():
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError, match="5-field cron"):
        _spec(retrain={"schedule": "every day"})
    with pytest.raises(ConfigError, match="minute field"):
        retrain_trigger(RetrainSpec(schedule="99 * * * *"), Evidence(NOW))
