"""Window statistics: counting, p99, merging windows from several processes."""

from __future__ import annotations

import json

import pytest

from modelyard.rollout.stats import WindowStats, bucket_of, bucket_upper_s


def test_observe_counts_errors_and_latency():
    w = WindowStats()
    for i in range(1000):
        w.observe(0.001 * (i + 1), error=i % 100 == 0)
    assert (w.requests, w.errors, w.error_rate) == (1000, 10, 0.01)
    p99 = w.p99_s
    assert p99 is not None and 0.99 <= p99 <= 0.99 * 1.11  # exact to one 10 % bucket
    assert WindowStats().p99_s is None and WindowStats().error_rate == 0.0


def test_buckets_cover_fast_and_slow_requests():
    assert bucket_of(0.0) == 0 and bucket_of(1e-5) == 0
    assert bucket_of(1e6) == bucket_of(1e9)  # the last bucket holds everything slower
    for latency in (2e-4, 0.01, 1.0, 30.0):
        index = bucket_of(latency)
        assert bucket_upper_s(index - 1) < latency <= bucket_upper_s(index) * (1 + 1e-12)


def test_merge_adds_counts_and_weights_the_metric():
    a, b = WindowStats(labeled=100, metric_value=0.9), WindowStats(labeled=300, metric_value=0.5)
    a.observe(0.01)
    b.observe(0.01, error=True)
    b.observe(0.5)
    a.compare(True)
    b.compare(False)
    m = a.merge(b)
    assert (m.requests, m.errors, m.compared, m.agreed, m.labeled) == (3, 1, 2, 1, 400)
    assert m.metric_value == pytest.approx(0.6)
    assert m.agreement == 0.5
    assert sum(m.latency_buckets.values()) == 3
    assert WindowStats().merge(WindowStats()).metric_value is None
    assert WindowStats().merge(b).metric_value == 0.5


def test_json_round_trip():
    w = WindowStats(labeled=3, metric_value=0.7)
    for latency in (0.001, 0.002, 0.5):
        w.observe(latency)
    w.compare(True)
    assert WindowStats.from_dict(json.loads(json.dumps(w.to_dict()))) == w
