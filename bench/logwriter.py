"""The prediction log writer's own CPU per request: the 0004 encoding against today's, side by side.

Run: ``python bench/predlog.py --writer-only`` (or this file; PostgreSQL is used when
``MODELYARD_BENCH_PG`` names a server URL, by default ``postgresql://postgres@127.0.0.1:5432``;
the script creates and drops a database of its own there).

For W1 (20 float64 features, a classifier's label and 2 scores) and W2 (a 256-float32 vector,
a label and 10 scores), one row a request, :data:`ENTRIES` queued predictions are written by

- ``old``: the writer as it was up to migration 0004, kept here only: each chunk of 64 requests
  summarised to JSON-ready records (``summarize_many``), outputs to lists, both encoded as JSON
  per request, then a row per request inserted into a ``predictions_old`` table laid out as
  0004's (its two indexes included);
- ``new``: :class:`~modelyard.monitoring.predlog.PredictionLog` as it is, into the
  ``predictions`` table: a row per chunk, numbers packed as arrays.

Both run on the calling thread, and its CPU time (``time.thread_time``: user and system, not the
1 ms pauses) divided by the requests written is the figure printed, the best of interleaved
rounds. Every request is checked to be in its table afterwards: a log that drops is not fast.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

ENTRIES = 4000
ROUNDS = 5
GOALS_US = {"W1": 5.0, "W2": 10.0}
PG_ENV = "MODELYARD_BENCH_PG"
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432"
OLD_COLUMNS = ("request_id", "model", "version", "variant", "at", "latency_ms", "rows",
               "inputs", "outputs")


def main(rounds: int = ROUNDS) -> int:
    """Measure both writers on SQLite and (if reachable) PostgreSQL; print the table."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results: list[tuple[str, str, str, float, int]] = []
    for db, url in _databases():
        with _registry(url) as registry:
            print(f"{db}: registering the models ...", flush=True)
            policies = _policies(registry)
            _create_old_table(registry)
            for workload, (policy, make) in policies.items():
                entries = make(policy)
                best = {"old": float("inf"), "new": float("inf")}
                for round_ in range(rounds + 1):  # interleaved: a busy moment hits both
                    for path in ("old", "new"):
                        us = _measure(registry, path, entries)
                        if round_:  # the first round warms up
                            best[path] = min(best[path], us)
                for path in ("old", "new"):
                    written = _written(registry, path, policy.model)
                    results.append((db, workload, path, best[path], written))
                    print(f"  {workload} {path}: {best[path]:.1f} us per request", flush=True)
    _report(results, rounds)
    return 0


def _report(results: list[tuple[str, str, str, float, int]], rounds: int) -> None:
    print()
    print(f"prediction log writer, CPU us per request (thread time, best of {rounds} rounds of "
          f"{ENTRIES} requests)")
    head = f"{'database':10} {'workload':8} {'old':>7} {'new':>7} {'ratio':>6} {'goal':>5}"
    print(head)
    print("-" * len(head))
    table: dict[tuple[str, str], dict[str, float]] = {}
    for db, workload, path, us, _ in results:
        table.setdefault((db, workload), {})[path] = us
    for (db, workload), got in table.items():
        goal = GOALS_US[workload]
        verdict = "met" if got["new"] <= goal else "NOT met"
        print(f"{db:10} {workload:8} {got['old']:>7.1f} {got['new']:>7.1f} "
              f"{got['old'] / got['new']:>5.1f}x {goal:>5.0f}  {verdict}")
    expected = {(db, w, p): n for db, w, p, _, n in results}
    missing = [f"{db} {w} {p}: {n} rows" for (db, w, p), n in expected.items()
               if n != ENTRIES * (rounds + 1)]
    print("every request written" if not missing else f"NOT all written: {missing}")


# -- set-up ---------------------------------------------------------------------------------------
def _databases() -> Iterator[tuple[str, str | None]]:
    yield "sqlite", None
    base = os.environ.get(PG_ENV, PG_DEFAULT).rstrip("/")
    try:
        import psycopg

        name = f"modelyard_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no server: SQLite alone
        print(f"PostgreSQL at {base} is not usable ({exc}); SQLite only")
        return
    try:
        yield "postgresql", f"{base}/{name}"
    finally:
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def _registry(url: str | None) -> Iterator[Any]:
    from modelyard.config import Settings
    from modelyard.registry import Registry

    with tempfile.TemporaryDirectory(prefix="modelyard-bench-logwriter-") as home, \
            Registry.open(Settings.from_env(home=Path(home), db_url=url, actor="bench")) as reg:
        yield reg


def _policies(registry: Any) -> dict[str, tuple[Any, Any]]:
    """W1 and W2 as the server logs them: the registered versions' signatures and profiles."""
    from modelyard.monitoring.predlog import LogPolicy
    from modelyard.testing import register_hgb, register_mlp

    register_hgb(registry, "w1", max_iter=5, n_features=20)
    register_mlp(registry, "w2", sizes=(256, 16, 10))
    out = {}
    for workload, name, make in (("W1", "w1", _w1), ("W2", "w2", _w2)):
        version = registry.get_version(name, 1)
        policy = LogPolicy(name, 1, 1.0, {}, version.get_signature(), version.reference_stats)
        out[workload] = (policy, make)
    return out


def _w1(policy: Any) -> list[tuple[Any, ...]]:
    return _entries(policy, 20, np.float64, 2)


def _w2(policy: Any) -> list[tuple[Any, ...]]:
    return _entries(policy, 256, np.float32, 10)


def _entries(policy: Any, width: int, dtype: Any, classes: int) -> list[tuple[Any, ...]]:
    """Queue entries as :meth:`PredictionLog.record` makes them: one prepared row each."""
    from modelyard.predictor import Prediction

    rng = np.random.default_rng(0)
    labels = tuple(range(classes))
    out = []
    for _ in range(ENTRIES):
        batch, rows = policy.signature.prepare(rng.normal(size=(1, width)).astype(dtype))
        scores = rng.dirichlet(np.ones(classes), size=1).astype(dtype)
        answer = Prediction(scores.argmax(axis=1), scores, labels)
        out.append((policy, uuid.uuid4().hex, "production", time.time(), 0.0012, batch, rows,
                    answer))
    return out


# -- the measurement ------------------------------------------------------------------------------
def _measure(registry: Any, path: str, entries: list[tuple[Any, ...]]) -> float:
    """CPU us per request of writing ``entries`` by ``path``, a write's worth at a time (the
    store's ``batch_size``) as the writer drains its queue."""
    from modelyard.monitoring.predlog import DatabaseStore, PredictionLog

    log = PredictionLog(DatabaseStore(registry), capacity=len(entries) + 1)
    started = time.thread_time()
    if path == "new":
        log._queue.extend(entries)
        log.flush()
        assert log.dropped == 0, log.last_error
    else:
        for start in range(0, len(entries), log.batch_size):
            _old_write(registry, entries[start:start + log.batch_size], log.hash_key)
    return (time.thread_time() - started) / len(entries) * 1e6


def _written(registry: Any, path: str, model: str) -> int:
    sql = ("SELECT count(*) FROM predictions_old WHERE model = :m" if path == "old" else
           "SELECT coalesce(sum(size), 0) FROM predictions WHERE model = :m")
    from sqlalchemy import text

    with registry.db.session() as s:
        return int(s.execute(text(sql), {"m": model}).scalar() or 0)


# -- the writer as it was (migration 0004), for comparison only -----------------------------------
def _create_old_table(registry: Any) -> None:
    import sqlalchemy as sa

    meta = sa.MetaData()
    sa.Table("predictions_old", meta,
             sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                       primary_key=True),
             sa.Column("request_id", sa.String(100), nullable=False),
             sa.Column("model", sa.String(200), nullable=False),
             sa.Column("version", sa.Integer(), nullable=False),
             sa.Column("variant", sa.String(20), nullable=False),
             sa.Column("at", sa.DateTime(), nullable=False),
             sa.Column("latency_ms", sa.Float(), nullable=False),
             sa.Column("rows", sa.Integer(), nullable=False),
             sa.Column("inputs", sa.JSON(), nullable=False),
             sa.Column("outputs", sa.JSON(), nullable=False),
             sa.Index("ix_predictions_old_model_at", "model", "at"),
             sa.Index("ix_predictions_old_request", "model", "request_id"))
    meta.create_all(registry.db.engine)


def _old_write(registry: Any, entries: list[tuple[Any, ...]], hash_key: bytes) -> None:
    """0004's ``_write_entries`` and ``DatabaseStore.write``: JSON per request, a row each."""
    from modelyard.monitoring.summary import summarize_many

    rows: list[tuple[Any, ...]] = []
    for start in range(0, len(entries), 64):
        if start:
            time.sleep(0.001)
        chunk = entries[start:start + 64]
        policy = chunk[0][0]
        summaries = summarize_many([e[5] for e in chunk], policy.signature, policy.reference,
                                   sensitive=policy.sensitive, hash_key=hash_key)
        answers = _old_outputs_many([e[7] for e in chunk])
        rows.extend((e[1], policy.model, policy.version, e[2], e[3], round(e[4] * 1000.0, 4),
                     e[6], _json(s), _json(a))
                    for e, s, a in zip(chunk, summaries, answers, strict=True))
    dialect = registry.db.dialect
    mark = "?" if dialect == "sqlite" else "%s"
    sql = (f"INSERT INTO predictions_old ({', '.join(OLD_COLUMNS)}) "
           f"VALUES ({', '.join([mark] * len(OLD_COLUMNS))})")
    times = (np.asarray([r[4] for r in rows]) * 1e6).round().astype("datetime64[us]")
    at = ([t.replace("T", " ") for t in np.datetime_as_string(times, unit="us").tolist()]
          if dialect == "sqlite" else times.tolist())
    params = [(*r[:4], a, *r[5:]) for r, a in zip(rows, at, strict=True)]
    with registry.db.session(write=True) as s:
        connection = s.connection()
        for start in range(0, len(params), 64):
            if start:
                time.sleep(0.001)
            connection.exec_driver_sql(sql, params[start:start + 64])


def _old_outputs_many(answers: list[Any]) -> Iterator[dict[str, Any]]:
    """0004's ``outputs_many`` for stacking answers: one conversion to lists, then slices."""
    predictions = _old_plain(np.concatenate([a.predictions for a in answers]))
    scores = _old_plain(np.concatenate([a.scores for a in answers]))
    classes = list(answers[0].classes)
    start = 0
    for answer in answers:
        end = start + len(answer.predictions)
        yield {"predictions": predictions[start:end], "scores": scores[start:end],
               "classes": classes}
        start = end


def _old_plain(values: np.ndarray) -> Any:
    if values.dtype.kind == "f":
        values = np.where(np.isfinite(values), values, np.nan).round(6)
        return orjson.loads(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
    return values.tolist()


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


if __name__ == "__main__":
    raise SystemExit(main())
