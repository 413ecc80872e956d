"""Analysis: candidate vs stable windows -> promote, advance, hold or roll back."""

from __future__ import annotations

import random

import pytest

from modelyard.errors import ConfigError
from modelyard.rollout.analysis import (
    Rules,
    analyze,
    latency_ratio,
    tail_excess_p,
    wilson_interval,
    worse_proportion_p,
)
from modelyard.rollout.stats import WindowStats, bucket_of
from modelyard.spec import RolloutSpec

RULES = Rules()


def decide(stable: WindowStats, candidate: WindowStats, rules: Rules = RULES) -> str:
    """The action at the first of two steps: ``advance`` means every check passed."""
    return analyze(stable, candidate, rules, step=0, n_steps=2).action


def window(requests: int = 1000, errors: int = 0, latency_s: float = 0.010, *,
           labeled: int = 0, metric: float | None = None, compared: int = 0,
           agreed: int = 0) -> WindowStats:
    return WindowStats(requests=requests, errors=errors,
                       latency_buckets={bucket_of(latency_s): requests} if requests else {},
                       labeled=labeled, metric_value=metric, compared=compared, agreed=agreed)


def test_too_few_candidate_requests_holds():
    decision = analyze(window(), window(requests=99, errors=99), RULES)
    assert decision.action == "hold"
    assert "99 of the 100" in decision.reason


def test_good_candidate_advances_then_promotes_at_the_last_step():
    assert analyze(window(), window(), RULES, step=0, n_steps=4).action == "advance"
    assert analyze(window(), window(), RULES, step=2, n_steps=4).action == "advance"
    final = analyze(window(), window(), RULES, step=3, n_steps=4)
    assert final.action == "promote" and final.automatic
    assert any("error rate" in r for r in final.reasons)


def test_clearly_higher_error_rate_rolls_back():
    decision = analyze(window(errors=5), window(errors=50), RULES)
    assert decision.action == "rollback"
    assert "error rate 5.00%" in decision.reason
    assert decision.details["error_rate_p_value"] < 0.05


def test_errors_the_stable_version_makes_too_do_not_roll_back():
    # bad input hits both versions alike: the candidate is over budget but not worse
    assert decide(window(errors=50), window(errors=52), RULES) == "advance"


def test_a_few_unlucky_errors_are_not_proof():
    # 2 % observed against a 1 % budget, but 2 of 100 is well within chance
    decision = analyze(window(errors=0), window(requests=100, errors=2), RULES)
    assert decision.action == "promote"
    assert decision.details["candidate_error_rate_low"] < RULES.max_error_rate


def test_without_stable_traffic_the_budget_alone_decides():
    no_stable = window(requests=0)
    assert decide(no_stable, window(errors=100), RULES) == "rollback"
    assert decide(no_stable, window(errors=3), RULES) == "advance"


def test_slower_candidate_rolls_back():
    decision = analyze(window(latency_s=0.010), window(latency_s=0.025), RULES)
    assert decision.action == "rollback"
    assert "p99 latency" in decision.reason and decision.details["p99_ratio"] > 1.5


def test_slightly_slower_candidate_is_fine():
    decision = analyze(window(latency_s=0.010), window(latency_s=0.012), RULES)
    assert decision.action == "promote" and decision.details["p99_ratio"] < 1.5


def test_latency_ratios_under_the_floor_are_ignored():
    # 0.5 ms vs 0.1 ms is a 5x ratio of noise
    assert decide(window(latency_s=0.0001), window(latency_s=0.0005), RULES) == "advance"


def test_absolute_p99_limit_applies_without_a_baseline():
    rules = Rules(max_p99_s=0.1)
    assert decide(window(requests=0), window(latency_s=0.3), rules) == "rollback"
    assert decide(window(requests=0), window(latency_s=0.05), rules) == "advance"


def test_less_accurate_candidate_rolls_back():
    rules = Rules(metric="accuracy")
    stable = window(labeled=500, metric=0.90)
    decision = analyze(stable, window(labeled=500, metric=0.80), rules)
    assert decision.action == "rollback" and "accuracy" in decision.reason
    assert decide(stable, window(labeled=500, metric=0.895), rules) == "advance"
    assert decide(stable, window(labeled=500, metric=0.95), rules) == "advance"


def test_lower_is_better_metrics_compare_the_other_way():
    rules = Rules(metric="rmse")
    stable = window(labeled=500, metric=10.0)
    assert decide(stable, window(labeled=500, metric=12.0), rules) == "rollback"
    assert decide(stable, window(labeled=500, metric=8.0), rules) == "advance"


def test_missing_labels_skip_the_metric_or_hold_when_required():
    stable = window(labeled=500, metric=0.9)
    candidate = window(labeled=20, metric=0.1)
    assert decide(stable, candidate, Rules(metric="accuracy")) == "advance"
    held = analyze(stable, candidate, Rules(metric="accuracy", require_labels=True))
    assert held.action == "hold" and "20 of 100 labels" in held.reason


def test_shadow_disagreement_rolls_back():
    low = window(compared=1000, agreed=800)
    assert decide(window(), low, RULES) == "rollback"
    assert "agreement 80.0%" in analyze(window(), low, RULES).reason
    assert decide(window(), window(compared=1000, agreed=960), RULES) == "advance"
    # too few comparisons: not judged
    assert decide(window(), window(compared=50, agreed=10), RULES) == "advance"
    assert decide(window(), low, Rules(min_agreement=None)) == "advance"


def test_every_failure_is_reported():
    bad = window(errors=100, latency_s=0.1, labeled=500, metric=0.5)
    decision = analyze(window(labeled=500, metric=0.9), bad, Rules(metric="accuracy"))
    assert decision.action == "rollback" and len(decision.reasons) == 3


def test_rules_from_spec_and_round_trip():
    rules = Rules.from_spec(RolloutSpec(max_error_rate=0.05, min_requests=10), metric="f1")
    assert (rules.max_error_rate, rules.min_requests, rules.metric) == (0.05, 10, "f1")
    assert Rules.from_dict(rules.to_dict()) == rules
    assert Rules.from_dict(None) == Rules()


@pytest.mark.parametrize("data,words", [
    ({"max_eror_rate": 0.1}, "unknown rollout rule"),
    ({"max_error_rate": 2}, "max_error_rate"),
    ({"max_error_rate": "x"}, "max_error_rate"),
    ({"min_requests": 0}, "min_requests"),
    ({"max_p99_ratio": 0}, "max_p99_ratio"),
    ({"metric": "nope"}, "unknown metric"),
])
def test_bad_rules_are_config_errors(data, words):
    with pytest.raises(ConfigError, match=words):
        Rules.from_dict(data)


def test_wilson_interval_and_proportion_test():
    low, high = wilson_interval(0, 100, 1.645)
    assert low == 0 and 0.02 < high < 0.03
    low, high = wilson_interval(50, 100, 1.96)
    assert low == pytest.approx(0.404, abs=1e-3) and high == pytest.approx(0.596, abs=1e-3)
    assert wilson_interval(0, 0, 1.96) == (0.0, 1.0)
    assert worse_proportion_p(50, 1000, 5, 1000) < 1e-6
    assert worse_proportion_p(5, 1000, 50, 1000) > 0.99
    assert worse_proportion_p(0, 1000, 0, 1000) == 1.0


def test_a_metric_gap_within_chance_does_not_roll_back_and_a_clear_one_does():
    rules = Rules(metric="f1", min_labels=40, min_requests=10)
    stable = WindowStats(requests=100, labeled=45, metric_value=0.47, metric_se=0.09)
    noisy = WindowStats(requests=100, labeled=41, metric_value=0.45, metric_se=0.10)
    decision = analyze(stable, noisy, rules, step=0, n_steps=3)
    assert decision.action == "advance", decision.reasons
    assert "within chance" in " ".join(decision.reasons)
    clear = WindowStats(requests=100, labeled=400, metric_value=0.30, metric_se=0.02)
    sure = WindowStats(requests=100, labeled=400, metric_value=0.47, metric_se=0.02)
    decision = analyze(sure, clear, rules, step=0, n_steps=3)
    assert decision.action == "rollback" and "f1 0.3 is" in decision.reasons[0]
    # without standard errors (older servers) the relative limit alone decides
    bare = WindowStats(requests=100, labeled=45, metric_value=0.45)
    assert analyze(WindowStats(requests=100, labeled=45, metric_value=0.47), bare, rules,
                   step=0, n_steps=3).action == "rollback"


def test_windows_round_trip_and_merge_the_metric_error():
    a = WindowStats(requests=10, labeled=100, metric_value=0.8, metric_se=0.04)
    b = WindowStats(requests=10, labeled=100, metric_value=0.6, metric_se=0.04)
    merged = a.merge(b)
    assert merged.metric_value == pytest.approx(0.7)
    assert merged.metric_se == pytest.approx(0.04 / 2**0.5)
    assert WindowStats.from_dict(a.to_dict()) == a


def test_one_slow_request_in_a_small_window_is_not_a_slow_candidate():
    from modelyard.rollout.analysis import tail_quantile

    assert tail_quantile(10_000) == 0.99 and tail_quantile(40) == pytest.approx(0.875)
    rules = Rules(min_requests=40)
    stable, candidate = WindowStats(), WindowStats()
    for _ in range(40):
        stable.observe(0.010)
        candidate.observe(0.011)
    candidate.observe(0.140)  # one GC pause
    decision = analyze(stable, candidate, rules, step=0, n_steps=3)
    assert decision.action == "advance", decision.reasons
    for _ in range(10):  # a real tail: a quarter of its requests are slow
        candidate.observe(0.140)
    assert analyze(stable, candidate, rules, step=0, n_steps=3).action == "rollback"


def busy_latency(rng: random.Random) -> float:
    """One request's latency on a machine whose core a busy loop shares: about 1 ms of work,
    often a wait for the hog's time slice, now and then a long stall (20-200 ms)."""
    latency = rng.lognormvariate(-7.0, 0.5)
    if rng.random() < 0.4:
        latency += rng.expovariate(1 / 0.004)
    if rng.random() < 0.05:
        latency += rng.uniform(0.02, 0.2)
    return latency


def busy_window(rng: random.Random, requests: int, extra_s: float = 0.0) -> WindowStats:
    w = WindowStats()
    for _ in range(requests):
        w.observe(busy_latency(rng) + extra_s)
    return w


SIZES = [(30, 30), (40, 800), (200, 200), (1000, 1000)]  # (candidate, stable) requests


@pytest.mark.parametrize("candidate_n,stable_n", SIZES)
def test_an_identical_candidate_on_a_busy_machine_is_never_rolled_back(candidate_n, stable_n):
    # one noisy ratio of tail quantiles rolled back about a quarter of these; only a
    # difference chance cannot explain counts
    rules = Rules(min_requests=20)
    for seed in range(40):
        rng = random.Random(seed)
        stable, candidate = busy_window(rng, stable_n), busy_window(rng, candidate_n)
        decision = analyze(stable, candidate, rules, step=0, n_steps=2)
        assert decision.action == "advance", (seed, decision.reasons)


@pytest.mark.parametrize("candidate_n,stable_n", SIZES)
def test_a_candidate_50_ms_slower_on_a_busy_machine_is_always_rolled_back(candidate_n,
                                                                         stable_n):
    # the stalls made the p99 of both versions about 200 ms: the p99 ratio missed 50 ms
    rules = Rules(min_requests=20)
    for seed in range(40):
        rng = random.Random(seed)
        stable, slower = busy_window(rng, stable_n), busy_window(rng, candidate_n, 0.050)
        decision = analyze(stable, slower, rules, step=0, n_steps=2)
        assert decision.action == "rollback", (seed, decision.details)
        assert "typical latency" in decision.reason
        assert decision.details["latency_ratio_low"] > rules.max_latency_ratio


def test_latency_ratio_estimates_the_typical_slowdown_with_a_lower_bound():
    rng = random.Random(3)
    stable = WindowStats()
    doubled = WindowStats()
    for _ in range(500):
        latency = rng.uniform(0.004, 0.006)
        stable.observe(latency)
        doubled.observe(2 * rng.uniform(0.004, 0.006))
    estimate, low = latency_ratio(stable, doubled, 0.95)
    assert 1.8 < estimate < 2.2 and low is not None and 1.6 < low <= estimate
    same_estimate, same_low = latency_ratio(stable, stable, 0.95)
    assert same_estimate == 1.0 and same_low is not None and same_low < 1.0
    assert latency_ratio(WindowStats(), stable, 0.95) is None
    tiny = WindowStats()
    tiny.observe(0.005)
    assert latency_ratio(tiny, tiny, 0.95) == (1.0, None)  # one pair proves nothing


def test_a_heavier_tail_needs_more_slow_requests_not_just_longer_ones():
    rng = random.Random(5)
    stable = busy_window(rng, 2000)
    same = busy_window(rng, 2000)
    p_value, share, stable_share = tail_excess_p(stable, same, 1.5, 0.99)
    assert p_value > 0.5 and share < 1.5 * stable_share + 0.01
    stalls = busy_window(rng, 1900)
    for _ in range(100):  # 5 % more requests stall for half a second
        stalls.observe(0.5)
    p_value, share, stable_share = tail_excess_p(stable, stalls, 1.5, 0.99)
    assert p_value < 0.001 and share > 3 * stable_share


def test_a_step_where_stable_has_too_few_requests_waits_instead_of_judging_blind():
    """With fewer stable requests than min_requests the latency comparison was skipped, so a
    50 ms slower canary advanced whenever stable's count lagged the candidate's."""
    rules = Rules(min_requests=30)
    stable, slower = window(requests=29, latency_s=0.001), window(requests=40, latency_s=0.051)
    held = analyze(stable, slower, rules, step=0, n_steps=2, baseline=True)
    assert held.action == "hold" and "stable has 29 of the 30 requests" in held.reason
    # a step where stable gets no traffic (direct, blue-green, 100 %) has only absolute limits
    assert analyze(stable, slower, rules, step=0, n_steps=2, baseline=False).action == "advance"
    # a failing check still rolls back at once
    broken = window(requests=40, errors=40, latency_s=0.051)
    assert analyze(stable, broken, rules, step=0, n_steps=2, baseline=True).action == "rollback"


def test_a_permutation_p_value_decides_the_metric_where_it_is_known():
    rules = Rules(metric="f1", min_labels=40, min_requests=10)
    stable = WindowStats(requests=100, labeled=400, metric_value=0.47, metric_se=0.02)
    # the same gap: by the standard errors alone it is certain, by the p-value it is chance
    chance = WindowStats(requests=100, labeled=400, metric_value=0.30, metric_se=0.02,
                         metric_p=0.2)
    decision = analyze(stable, chance, rules, step=0, n_steps=3)
    assert decision.action == "advance" and "within chance on 400 labels (p 0.2)" in \
        " ".join(decision.reasons)
    sure = WindowStats(requests=100, labeled=400, metric_value=0.30, metric_p=0.004)
    decision = analyze(stable, sure, rules, step=0, n_steps=3)
    assert decision.action == "rollback" and "p 0.004" in decision.reasons[0]
    assert decision.details["metric_p"] == 0.004
    assert WindowStats.from_dict(sure.to_dict()) == sure
