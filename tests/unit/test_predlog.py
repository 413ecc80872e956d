"""The prediction log: batched asynchronous writes, bounded memory, drop-and-count, both stores."""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from modelyard.config import Settings
from modelyard.errors import ConfigError
from modelyard.monitoring import logstore
from modelyard.monitoring.logstore import ANSWER_WITHIN, time_windows
from modelyard.monitoring.predlog import (
    BATCH_SIZE,
    LOG_COLUMNS,
    DatabaseStore,
    LogBatch,
    LogPolicy,
    ParquetStore,
    PredictionLog,
    open_store,
    outputs_many,
    outputs_of,
)
from modelyard.monitoring.requestid import RequestIds, issued_ms
from modelyard.predictor import Prediction
from modelyard.registry import Registry
from modelyard.schema import Signature
from modelyard.threads import BACKGROUND_NICE

X = pd.DataFrame({"amount": [10.0, 20.0], "card": ["4111", "5500"]})
SIGNATURE = Signature.infer(X, np.array([0, 1]))


def policy(rate: float = 1.0, sensitive: dict[str, str] | None = None) -> LogPolicy:
    return LogPolicy("fraud", 3, rate, sensitive or {}, SIGNATURE, None)


def answer() -> Prediction:
    return Prediction(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), (0, 1))


class ListStore:
    """An in-memory store that can be told to fail (the sink being down)."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.failing = False
        self.gate = threading.Event()
        self.gate.set()

    def write(self, rows: LogBatch) -> None:
        self.gate.wait(10)
        if self.failing:
            raise ConnectionError("store down")
        self.batches.append([{**dict(zip(LOG_COLUMNS, row, strict=True)),
                              "inputs": orjson.loads(row[-2]), "outputs": orjson.loads(row[-1])}
                             for row in zip(*rows.columns(), strict=True)])

    def read(self, *args: Any, **kw: Any) -> list[Any]:
        return []


def wait_for(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_each_write_takes_at_most_the_stores_batch_size() -> None:
    """A store says how much one write should take (the database: a chunk's 250, so the writer
    takes the core for shorter bursts; Parquet: 500, fewer files); a store that does not say
    gets 500, and an explicit ``batch_size`` wins."""
    sized = ListStore()
    sized.batch_size = 7  # type: ignore[attr-defined]
    assert PredictionLog(ListStore()).batch_size == BATCH_SIZE == 500
    assert PredictionLog(sized, batch_size=3).batch_size == 3
    assert DatabaseStore.batch_size == 250 and ParquetStore.batch_size == 500
    log = PredictionLog(sized)
    for i in range(20):
        log.record(policy(), f"r{i}", "production", 0.002, X, 2, answer())
    log.flush()
    assert [len(b) for b in sized.batches] == [7, 7, 6]
    assert [r["request_id"] for b in sized.batches for r in b] == [f"r{i}" for i in range(20)]


def test_entries_are_written_in_batches_by_the_writer_thread() -> None:
    store = ListStore()
    log = PredictionLog(store, batch_size=50, flush_interval_s=0.05)
    log.start()
    try:
        for i in range(120):
            log.record(policy(), f"r{i}", "production", 0.002, X, 2, answer())
        wait_for(lambda: log.written == 120)
    finally:
        log.stop()
    rows = [r for b in store.batches for r in b]
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(120)]
    assert all(len(b) <= 50 for b in store.batches)
    first = rows[0]
    assert first["model"] == "fraud" and first["version"] == 3 and first["rows"] == 2
    assert first["latency_ms"] == pytest.approx(2.0)
    assert first["outputs"]["predictions"] == [0, 1]
    assert first["outputs"]["classes"] == [0, 1]
    assert first["inputs"]["columns"]["amount"] == [10.0, 20.0]
    assert abs(first["at"] - time.time()) < 60  # seconds since the epoch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_the_writer_runs_below_the_event_loops_priority() -> None:
    """The writer's bursts must not hold the core while requests wait: it runs niced."""
    store = ListStore()
    store.gate.clear()  # hold the writer inside its first write
    log = PredictionLog(store, batch_size=1, flush_interval_s=0.05)
    log.start()
    try:
        log.record(policy(), "r0", "production", 0.002, X, 2, answer())
        writer = next(t for t in threading.enumerate() if t.name == "modelyard-predlog")
        assert writer.native_id is not None
        wait_for(lambda: os.getpriority(os.PRIO_PROCESS, writer.native_id) == BACKGROUND_NICE)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < BACKGROUND_NICE
    finally:
        store.gate.set()
        log.stop()
    assert log.written == 1


def test_a_full_queue_drops_and_counts_instead_of_growing() -> None:
    store = ListStore()
    log = PredictionLog(store, capacity=10, batch_size=5)  # writer not started: nothing drains
    for i in range(25):
        log.record(policy(), f"r{i}", "production", 0.001, X, 2, answer())
    assert log.pending == 10
    assert log.dropped == 15
    log.flush()
    assert log.written == 10 and log.pending == 0


def test_a_failing_store_loses_its_batch_counts_it_and_the_log_keeps_going() -> None:
    store = ListStore()
    store.failing = True
    log = PredictionLog(store, batch_size=5, flush_interval_s=0.02)
    log.start()
    try:
        for i in range(5):
            log.record(policy(), f"lost{i}", "production", 0.001, X, 2, answer())
        wait_for(lambda: log.dropped == 5)
        store.failing = False
        log.record(policy(), "kept", "production", 0.001, X, 2, answer())
        wait_for(lambda: log.written == 1)
    finally:
        log.stop()
    assert [r["request_id"] for b in store.batches for r in b] == ["kept"]


def test_record_never_blocks_on_a_slow_store() -> None:
    store = ListStore()
    store.gate.clear()  # the store hangs
    log = PredictionLog(store, capacity=1000, batch_size=10, flush_interval_s=0.01)
    log.start()
    try:
        start = time.perf_counter()
        for i in range(500):
            log.record(policy(), f"r{i}", "production", 0.001, X, 2, answer())
        elapsed = time.perf_counter() - start
        assert elapsed < 1.0  # 500 appends; the hung store is never waited for
    finally:
        store.gate.set()
        log.stop()
    assert log.written + log.dropped == 500


def test_an_input_that_cannot_be_summarised_is_dropped_not_raised() -> None:
    store = ListStore()
    log = PredictionLog(store)
    log.record(policy(), "odd", "production", 0.001, object(), 1, answer())
    log.record(policy(), "fine", "production", 0.001, X, 2, answer())
    log.flush()
    assert log.dropped == 1 and log.written == 1


def test_sampling_follows_the_rate() -> None:
    assert not any(policy(0.0).sampled() for _ in range(1000))
    assert all(policy(1.0).sampled() for _ in range(1000))
    hits = sum(policy(0.2).sampled() for _ in range(20_000))
    assert 3600 < hits < 4400  # 4000 expected; 6 standard deviations either side


def test_sensitive_fields_are_hashed_or_dropped_before_they_are_stored() -> None:
    store = ListStore()
    log = PredictionLog(store, hash_key=b"k")
    log.record(policy(sensitive={"card": "hash"}), "h", "production", 0.001, X, 2, answer())
    log.record(policy(sensitive={"card": "drop"}), "d", "production", 0.001, X, 2, answer())
    log.flush()
    hashed, dropped = (r["inputs"] for r in store.batches[0])
    assert "4111" not in str(hashed) and "5500" not in str(hashed)
    assert len(set(hashed["columns"]["card"])) == 2
    assert "card" not in dropped["columns"]
    assert dropped["columns"]["amount"] == [10.0, 20.0]


def test_big_outputs_keep_their_shape_only() -> None:
    mask = Prediction(np.zeros((1, 200, 200)))
    assert outputs_of(mask) == {"shape": [1, 200, 200], "truncated": True}
    floats = outputs_of(Prediction(np.array([0.5, np.nan])))
    assert floats == {"predictions": [0.5, None]}


def test_answers_of_one_version_convert_together_as_each_would_alone() -> None:
    scored = [Prediction(np.array([1]), np.array([[0.25, 0.75]]), (0, 1)),
              Prediction(np.array([0, 0]), np.array([[0.9, 0.1], [1.0, np.nan]]), (0, 1))]
    plain = [Prediction(np.array([1.5])), Prediction(np.array([np.inf, 2.0]))]
    texts = [Prediction(np.array(["spam"], dtype=object)), Prediction(np.array(["ham", "eggs"]))]
    mixed = [scored[0], plain[0], Prediction(np.zeros((1, 200, 200))),
             Prediction(np.array([[1, 2]]))]
    for answers in (scored, plain, texts, mixed):
        assert list(outputs_many(answers)) == [outputs_of(a) for a in answers]
    assert list(outputs_many(scored))[1] == {
        "predictions": [0, 0], "scores": [[0.9, 0.1], [1.0, None]], "classes": [0, 1]}


def test_a_failed_request_is_logged_with_its_status() -> None:
    store = ListStore()
    log = PredictionLog(store)
    log.record_error(policy(), "boom", "canary", 0.004, 503)
    log.record(policy(), "fine", "canary", 0.001, X, 2, answer())
    log.flush()
    failed, fine = store.batches[0]
    assert failed["request_id"] == "boom" and failed["outputs"] == {"error": 503}
    assert failed["inputs"] == {} and failed["rows"] == 0
    assert fine["outputs"]["predictions"] == [0, 1]


def rows(n: int, start: datetime, model: str = "fraud") -> LogBatch:
    naive = start.astimezone(UTC).replace(tzinfo=None)  # naive times are taken as UTC
    return LogBatch.of({"request_id": f"r{i}", "model": model, "version": 1 + i % 2,
                        "variant": "production", "at": naive + timedelta(seconds=i),
                        "latency_ms": 1.5, "rows": 1, "inputs": {"columns": {"amount": [float(i)]}},
                        "outputs": {"predictions": [i % 2]}} for i in range(n))


@pytest.mark.parametrize("kind", ["db", "parquet",
                                  pytest.param("postgres", marks=pytest.mark.integration)])
def test_stores_read_back_what_they_wrote_by_window_and_version(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db_url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else None
    settings = Settings.from_env(home=tmp_path / "home", db_url=db_url, actor="t")
    with Registry.open(settings) as registry:
        store = open_store(registry, f"parquet:{tmp_path / 'log'}" if kind == "parquet" else "db")
        assert isinstance(store, ParquetStore if kind == "parquet" else DatabaseStore)
        t0 = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
        store.write(rows(10, t0))
        store.write(rows(3, t0, model="other"))
        got = store.read("fraud")
        assert [p.request_id for p in got] == [f"r{i}" for i in range(10)]
        assert got[4].inputs == {"columns": {"amount": [4.0]}} and got[4].at == t0 + timedelta(
            seconds=4)
        window = store.read("fraud", since=t0 + timedelta(seconds=3),
                            until=t0 + timedelta(seconds=7), versions=[2])
        assert [p.request_id for p in window] == ["r3", "r5"]
        assert [p.request_id for p in store.read("fraud", limit=2)] == ["r8", "r9"]
        assert store.read("fraud", limit=1, with_inputs=False)[0].inputs in ({}, None)
        assert store.read("nobody") == []
    if kind == "parquet":
        assert not list((tmp_path / "log").rglob("*.tmp"))  # written under a temporary name


def test_open_store_names_what_it_understands(tmp_path: Path) -> None:
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="t")) as registry:
        assert open_store(registry, "off") is None
        with pytest.raises(ConfigError, match="db, off or parquet:FOLDER"):
            open_store(registry, "kafka://x")


@pytest.mark.parametrize("kind", ["db", "parquet",
                                  pytest.param("postgres", marks=pytest.mark.integration)])
def test_stores_find_requests_by_id_and_delete_the_old_ones(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    db_url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else None
    settings = Settings.from_env(home=tmp_path / "home", db_url=db_url, actor="t")
    with Registry.open(settings) as registry:
        store = open_store(registry, f"parquet:{tmp_path / 'log'}" if kind == "parquet" else "db")
        assert store is not None
        t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
        for day in range(4):  # r0..r4 on each of four days
            store.write(rows(5, t0 + timedelta(days=day)))
        store.write(rows(2, t0, model="other"))
        found = store.find("fraud", ["r3", "nope", "r3"])
        assert [(p.request_id, p.at) for p in found] == [
            ("r3", t0 + timedelta(days=day, seconds=3)) for day in range(4)]
        assert found[0].inputs == {"columns": {"amount": [3.0]}}
        assert store.find("fraud", []) == [] and store.find("nobody", ["r1"]) == []

        # everything before day 2 goes; Parquet deletes whole days, the table any row
        assert store.delete_before("fraud", t0 + timedelta(days=2)) == 10
        assert {p.at.date() for p in store.read("fraud")} == {
            (t0 + timedelta(days=d)).date() for d in (2, 3)}
        assert store.delete_before("fraud", t0 + timedelta(days=2)) == 0  # nothing left to do
        assert len(store.read("other")) == 2  # another model's log is its own
    if kind == "parquet":
        assert sorted(p.name for p in (tmp_path / "log" / "model=fraud").iterdir()) == [
            "date=2026-11-22", "date=2026-11-23"]


def answered(ids: list[str], at: datetime) -> LogBatch:
    naive = at.astimezone(UTC).replace(tzinfo=None)
    return LogBatch.of({"request_id": rid, "model": "fraud", "version": 1,
                        "variant": "production", "at": naive, "latency_ms": 1.0, "rows": 1,
                        "inputs": {"columns": {"amount": [1.0]}},
                        "outputs": {"predictions": [0]}} for rid in ids)


@pytest.mark.parametrize("kind", ["db", pytest.param("postgres", marks=pytest.mark.integration)])
def test_an_id_a_server_made_is_looked_for_among_its_own_minutes_not_the_whole_log(
        kind: str, tmp_path: Path, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    db_url = str(request.getfixturevalue("pg_url")) if kind == "postgres" else None
    settings = Settings.from_env(home=tmp_path / "home", db_url=db_url, actor="t")
    made = [RequestIds().new() for _ in range(3)]
    issued = datetime.fromtimestamp(min(map(issued_ms, made)) / 1000, UTC)  # type: ignore[arg-type]
    scanned: list[int] = []
    real = logstore._candidates

    def counting(rows: Any, keys: Any) -> list[int]:
        rows = list(rows)
        scanned.append(len(rows))
        return real(rows, keys)

    monkeypatch.setattr(logstore, "_candidates", counting)
    with Registry.open(settings) as registry:
        store = DatabaseStore(registry)
        store.write(answered([f"old{i}" for i in range(600)] + ["client-7"],
                             issued - timedelta(days=1)))  # three chunks a day earlier
        store.write(answered(made, issued + timedelta(milliseconds=300)))
        store.write(answered(["late"], issued + timedelta(hours=2)))
        found = store.find("fraud", [made[1], "client-7"])
        assert {p.request_id for p in found} == {made[1], "client-7"}
        # the server's id: the one chunk of its minutes; the client's: every chunk
        assert scanned == [1, 5]


def test_time_windows_merge_ids_made_close_together() -> None:
    base = 1_790_000_000_000
    windows = time_windows({"a": base, "b": base + 60_000, "c": base + 3_600_000})
    assert [ids for _, _, ids in windows] == [["a", "b"], ["c"]]
    since, until, _ = windows[0]
    assert since <= datetime.fromtimestamp(base / 1000, UTC) and until - since > ANSWER_WITHIN


def test_the_database_store_deletes_in_batches(tmp_path: Path) -> None:
    with Registry.open(Settings.from_env(home=tmp_path / "home", actor="t")) as registry:
        store = DatabaseStore(registry)
        t0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
        store.write(rows(25, t0))
        assert store.delete_before("fraud", t0 + timedelta(seconds=23), batch=10) == 23
        assert [p.request_id for p in store.read("fraud")] == ["r23", "r24"]


def test_health_says_when_the_log_drops_more_than_it_writes_and_logs_it_once(
        caplog: pytest.LogCaptureFixture) -> None:
    store = ListStore()
    log = PredictionLog(store)
    assert not log.health().dropping and log.health().last_error is None
    store.failing = True
    for round_ in range(3):
        log.record(policy(), f"lost{round_}", "production", 0.001, X, 2, answer())
        log.flush()
        log._tick()  # what the writer does after each wake
    health = log.health()
    assert health.dropping and (health.written, health.dropped) == (0, 3)
    assert health.last_error == "store failed: ConnectionError: store down"
    assert health.describe().startswith("prediction log dropping: 3 dropped, 0 written")
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "not being logged" in errors[0].getMessage()

    store.failing = False
    for i in range(4):
        log.record(policy(), f"kept{i}", "production", 0.001, X, 2, answer())
    log.flush()
    log._tick()
    assert not log.health().dropping  # wrote more than it dropped in the window
    assert any("writes again" in r.getMessage() for r in caplog.records)
