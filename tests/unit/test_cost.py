"""Cost per model: the report and savings logic, reading /metrics text, and the per-batch
accounting of a real runner."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from modelyard.cputime import ACCOUNTING_ENV, accounting_enabled, gpu_timer, timed
from modelyard.monitoring.cost import (
    GIB,
    Prices,
    RunUsage,
    ServingUsage,
    build_report,
)
from modelyard.monitoring.cost_sources import largest_batch, serving_usage
from modelyard.serving.cost_metrics import LoadedCost
from modelyard.serving.metrics import ServerMetrics

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


PRICES = Prices(0.1, 0.01)


def _report(serving: list[ServingUsage], runs: tuple[RunUsage, ...] | list[RunUsage] = (), *,
            since: datetime = NOW - DAY, started: float | None = None, prices: Prices = PRICES):
    started = (NOW - DAY).timestamp() if started is None else started
    return build_report(serving, runs, prices, since=since, until=NOW, server_started=started)


def test_costs_add_serving_training_and_batch_cpu_and_memory_per_model():
    busy = ServingUsage("a", "1", cpu_s=7200, loaded=True, memory_bytes=GIB,
                        memory_byte_s=GIB * 24 * 3600, requests=10_000,
                        last_request=NOW.timestamp() - 60)
    runs = [RunUsage("a", "train", NOW - timedelta(hours=2), 3600),
            RunUsage("a", "batch", NOW - timedelta(hours=1), 1800),
            RunUsage("a", "train", NOW - 3 * DAY, 99_999),  # before the window: not counted
            RunUsage("b", "batch", NOW - timedelta(hours=3), 360)]
    report = _report([busy], runs)
    a, b = report.models
    assert (a.model, a.serving_cpu_s, a.train_cpu_s, a.batch_cpu_s, a.runs) == \
        ("a", 7200, 3600, 1800, 2)
    assert a.memory_gib_hours == pytest.approx(24)
    assert a.cost == pytest.approx((7200 + 3600 + 1800) / 3600 * 0.1 + 24 * 0.01)
    assert (b.model, b.batch_cpu_s, b.cost) == ("b", 360, pytest.approx(0.01))
    assert report.savings == []  # used all day, 10k requests: nothing to save
    assert report.notes == []


def test_a_server_older_than_the_window_is_prorated_and_said_so():
    v = ServingUsage("a", "1", cpu_s=1000, memory_byte_s=GIB * 3600 * 10, requests=400,
                     loaded=True, memory_bytes=GIB, last_request=NOW.timestamp())
    report = _report([v], started=(NOW - 4 * DAY).timestamp())
    (a,) = report.models
    assert a.serving_cpu_s == pytest.approx(250) and a.requests == pytest.approx(100)
    assert a.memory_gib_hours == pytest.approx(2.5)
    assert "prorated" in report.notes[0] and "25%" in report.notes[0]


def test_without_a_server_only_runs_count():
    report = build_report([], [RunUsage("a", "train", NOW - timedelta(hours=1), 60)],
                          Prices(), since=NOW - DAY, until=NOW, server_started=None)
    assert [m.train_cpu_s for m in report.models] == [60]
    assert "--server" in report.notes[0]


def test_savings_idle_low_traffic_oversized_and_gpu_cheapest_first():
    recent = NOW.timestamp() - 60
    idle = ServingUsage("idle", "3", loaded=True, memory_bytes=2 * GIB,
                        last_request=(NOW - 2 * DAY).timestamp())  # used, but before the window
    never = ServingUsage("never", "1", loaded=True, memory_bytes=GIB // 2)
    rare = ServingUsage("rare", "1", loaded=True, memory_bytes=GIB, requests=48,
                        last_request=recent)  # 2 an hour
    wide = ServingUsage("wide", "2", loaded=True, memory_bytes=GIB, requests=1e6,
                        last_request=recent, max_batch_size=256, largest_batch=16)
    gpu = ServingUsage("gpu", "1", loaded=True, on_gpu=True, gpu_s=600, requests=1e6,
                       memory_bytes=GIB, last_request=recent)
    unloaded = ServingUsage("gone", "1", loaded=False, cpu_s=5)  # unloaded: nothing held
    report = _report([gpu, wide, rare, never, idle, unloaded])
    found = [(s.model, s.kind) for s in report.savings]
    assert found == [("idle", "idle"), ("rare", "low-traffic"), ("never", "idle"),
                     ("gpu", "gpu-underused"), ("wide", "oversized-batch")]
    first = report.savings[0]
    assert first.saves == pytest.approx(2 * 24 * 0.01) and first.saves_gib_hours == 48
    assert "--idle-unload" in first.advice
    assert "set serving.batching.max_batch_size to 16" in report.savings[-1].advice
    assert "busy 0.7%" in report.savings[-2].advice


def test_batches_near_the_limit_and_busy_gpus_are_not_flagged():
    recent = NOW.timestamp()
    fine = ServingUsage("ok", "1", loaded=True, requests=1e6, last_request=recent,
                        max_batch_size=32, largest_batch=16, on_gpu=True, gpu_s=0.5 * 86400)
    assert _report([fine]).savings == []


def test_unpriced_savings_rank_by_memory():
    small = ServingUsage("small", "1", loaded=True, memory_bytes=GIB)
    big = ServingUsage("big", "1", loaded=True, memory_bytes=4 * GIB)
    report = _report([small, big], prices=Prices())
    assert [s.model for s in report.savings] == ["big", "small"]
    assert all(s.saves is None for s in report.savings)
    assert not report.prices.priced


@pytest.mark.parametrize(("pairs", "expected"), [
    ([], None),
    ([(1, 0), (2, 0), (float("inf"), 0)], None),
    ([(1, 3), (2, 5), (4, 9), (8, 9), (float("inf"), 9)], 4),
    ([(1, 0), (1024, 2), (float("inf"), 3)], 1024),  # past the last bound: that bound
])
def test_largest_batch_from_histogram_buckets(pairs, expected):
    assert largest_batch(pairs) == expected


def test_serving_usage_reads_what_server_metrics_export():
    metrics = ServerMetrics()
    busy = metrics.for_version("busy", "2")
    busy.charge(0.25)
    busy.charge(0.5, 0.125)  # within a second of the first: waits for a flush
    busy.flush()  # what a scrape does (the catalog flushes every loaded version)
    busy.observe_batch(12, [0.0])
    metrics.for_version("quiet", "1")
    metrics.count_request("busy", "2", "rest", 200)
    metrics.count_request("busy", "2", "v2", 200)
    metrics.set_loaded([("busy", "2", 1000), ("quiet", "1", 500)])
    t0 = 1_000_000.0
    metrics.cost.report([LoadedCost("busy", "2", 1000, t0, 64, t0 + 5),
                         LoadedCost("quiet", "1", 500, t0, 32, None)], now=t0 + 10)
    metrics.cost.report([LoadedCost("busy", "2", 1000, t0, 64, t0 + 5),
                         LoadedCost("quiet", "1", 500, t0 + 15, 32, None)], now=t0 + 20)
    found, started = serving_usage(metrics.render().decode())
    assert started is not None and started > t0
    by = {(v.model, v.version): v for v in found}
    b, q = by[("busy", "2")], by[("quiet", "1")]
    assert (b.cpu_s, b.gpu_s, b.on_gpu, b.requests) == (0.75, 0.125, True, 2)
    assert (b.loaded, b.memory_bytes, b.memory_byte_s) == (True, 1000, 1000 * 20)
    assert (b.max_batch_size, b.largest_batch, b.last_request) == (64, 16, t0 + 5)
    # reloaded at t0+15: charged from its load, not from the previous scrape
    assert (q.cpu_s, q.on_gpu, q.memory_byte_s, q.last_request) == (0, False, 500 * 15, None)


def test_serving_usage_refuses_text_that_is_not_metrics():
    from modelyard.errors import ConfigError

    with pytest.raises(ConfigError, match="modelyard server"):
        serving_usage("<html>{{not metrics")


def test_timed_charges_the_threads_cpu_and_no_gpu_off_cuda(monkeypatch):
    value, cpu_s, gpu_s = timed(lambda: sum(i * i for i in range(300_000)))
    assert value > 0 and cpu_s > 0 and gpu_s == 0.0
    assert gpu_timer("torch", "cpu") is None and gpu_timer("sklearn", "cuda:0") is None
    monkeypatch.setenv(ACCOUNTING_ENV, "0")
    assert not accounting_enabled()
    monkeypatch.setenv(ACCOUNTING_ENV, "1")
    assert accounting_enabled()


def test_a_runner_charges_once_a_batch_not_once_a_request():
    from sklearn.linear_model import LogisticRegression

    from modelyard.adapters import get_adapter
    from modelyard.predictor import Predictor
    from modelyard.serving.batching import BatchPolicy
    from modelyard.serving.runner import Runner

    X = np.random.default_rng(0).normal(size=(200, 3))
    y = (X[:, 0] > 0).astype(np.int64)
    model = LogisticRegression().fit(X, y)
    adapter = get_adapter("sklearn")
    predictor = Predictor("m", 1, "sklearn", model, adapter, adapter.infer_signature(model, X, y))
    runner = Runner(predictor, BatchPolicy(max_batch_size=8))
    charged: list[tuple[float, float]] = []
    runner.account = lambda cpu, gpu: charged.append((cpu, gpu))

    async def go() -> None:
        payloads = [runner.prepare([{"f0": 0.1, "f1": 0.2, "f2": 0.3}] * 4)[0] for _ in range(4)]
        await asyncio.gather(*(runner.predict(p, 4) for p in payloads))
        await runner.close()

    asyncio.run(go())
    assert len(charged) == 2  # 16 rows in batches of 8: two charges, not one a request
    assert all(cpu > 0 and gpu == 0 for cpu, gpu in charged)


def test_charges_from_a_batch_thread_and_scrapes_are_each_counted_once():
    import threading

    metrics = ServerMetrics()
    vm = metrics.for_version("m", "1")
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            vm.flush()

    scraper = threading.Thread(target=scrape)
    scraper.start()
    for _ in range(20_000):
        vm.charge(0.5, 0.25)  # exact in binary: any loss or double count shows
    stop.set()
    scraper.join()
    vm.flush()
    text = metrics.render().decode()
    assert "modelyard_model_cpu_seconds_total{model=\"m\",version=\"1\"} 10000.0" in text
    assert "modelyard_model_gpu_seconds_total{model=\"m\",version=\"1\"} 5000.0" in text


def test_run_cpu_by_model_and_kind_reaches_metrics():
    from modelyard.monitoring.cost import run_cpu

    runs = [RunUsage("a", "train", NOW - timedelta(hours=1), 30.0),
            RunUsage("a", "train", NOW - timedelta(hours=2), 12.0),
            RunUsage("a", "batch", NOW - timedelta(hours=2), 4.5),
            RunUsage("b", "train", NOW - 40 * DAY, 99.0)]  # too old
    cpu = run_cpu(runs, NOW - 30 * DAY)
    assert cpu == {("a", "train"): 42.0, ("a", "batch"): 4.5}
    metrics = ServerMetrics()
    metrics.set_run_cpu(cpu)
    text = metrics.render().decode()
    assert 'modelyard_run_cpu_seconds{kind="train",model="a"} 42.0' in text
    assert 'modelyard_run_cpu_seconds{kind="batch",model="a"} 4.5' in text
