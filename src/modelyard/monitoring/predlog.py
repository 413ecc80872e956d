"""The prediction log: sampled predictions, written in batches off the request path.

On the request path :meth:`PredictionLog.record` (and :meth:`~PredictionLog.record_error` for a
failed request, kept as its status so monitoring knows the error rate) only appends a tuple to a
bounded queue: no serialisation, no I/O, no lock beyond the deque's own. A writer thread wakes
every ``flush_interval_s`` (or once ``batch_size`` entries wait) and turns the entries into
a :class:`LogBatch` a chunk at a time: the inputs of one version summarised together
(:func:`modelyard.monitoring.summary.summarize_many`, sensitive fields dropped or hashed), its
outputs stacked (:func:`outputs_many`), both encoded as JSON at once, so a batch waiting for its
store holds a few strings per request rather than thousands of small objects for the garbage
collector to walk. It hands the batch to a :class:`LogStore`. When the queue is full or the store
fails, entries are dropped and counted (``dropped``), never retried into unbounded memory, and no
request ever waits for or fails because of the log.

Stores, chosen by ``MODELYARD_PREDICTION_LOG`` (:func:`open_store`):

``db`` (default)        the ``predictions`` table of the registry database (SQLite/PostgreSQL)
``parquet:FOLDER``      Parquet files ``FOLDER/model=NAME/date=YYYY-MM-DD/*.parquet``
``off``                 nothing is logged

Both read back through :meth:`LogStore.read`, which monitoring uses for metrics and drift.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.predictor import Prediction
    from modelyard.registry import Registry
    from modelyard.schema import Signature

log = logging.getLogger(__name__)

#: entries summarised (or inserted) at a time, about 1 ms of work, and the pause after each: the
#: writer's work is spread out rather than taking the core for a whole batch at once, and it
#: still keeps up with over 15,000 entries a second.
_CHUNK = 64
_PAUSE_S = 0.001
#: outputs with more values than this (masks, long sequences) are logged as their shape only.
MAX_OUTPUT_VALUES = 10_000
ENV = "MODELYARD_PREDICTION_LOG"
KEY_ENV = "MODELYARD_LOG_KEY"
#: the hash key when ``MODELYARD_LOG_KEY`` is unset: public, so it hides nothing from a guesser.
BUILTIN_KEY = b"modelyard-default-log-key"


@dataclass(frozen=True)
class LoggedPrediction:
    """One logged request as read back: who answered, what went in and came out."""

    request_id: str
    model: str
    version: int
    variant: str
    at: datetime
    latency_ms: float
    rows: int
    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class LogBatch:
    """Logged requests as a store writes them: one list per column, inputs and outputs as JSON.

    Columns, not rows: the writer appends to them, a database takes ``zip`` of them and Parquet
    takes them as they are.
    """

    request_id: list[str] = field(default_factory=list)
    model: list[str] = field(default_factory=list)
    version: list[int] = field(default_factory=list)
    variant: list[str] = field(default_factory=list)
    #: when each was answered, in seconds since the epoch (``time.time()``).
    at: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.request_id)

    def extend(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Append requests, each a tuple of values in :data:`LOG_COLUMNS` order."""
        for column, values in zip(self.columns(), zip(*rows, strict=True), strict=False):
            column.extend(values)

    def columns(self) -> tuple[list[Any], ...]:
        """The columns, in :data:`LOG_COLUMNS` order."""
        return (self.request_id, self.model, self.version, self.variant, self.at,
                self.latency_ms, self.rows, self.inputs, self.outputs)

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> LogBatch:
        """A batch of rows given as mappings: ``at`` a datetime (naive means UTC), ``inputs``
        and ``outputs`` JSON-ready values (what :meth:`LoggedPrediction` reads back)."""
        batch = cls()
        batch.extend((r["request_id"], r["model"], int(r["version"]), r["variant"],
                      _epoch(r["at"]), float(r["latency_ms"]), int(r["rows"]),
                      _json(r["inputs"]), _json(r["outputs"])) for r in rows)
        return batch

    def times(self) -> np.ndarray:
        """``at`` as UTC ``datetime64[us]``."""
        return (np.asarray(self.at, dtype=np.float64) * 1e6).round().astype("datetime64[us]")


#: the columns of a :class:`LogBatch` and of the ``predictions`` table.
LOG_COLUMNS = tuple(f.name for f in fields(LogBatch))
_PARQUET_COLUMNS = tuple(c for c in LOG_COLUMNS if c != "model")  # the folder names the model


class LogStore(Protocol):
    """Where logged predictions are kept; ``write`` runs on the log's writer thread."""

    def write(self, batch: LogBatch) -> None: ...

    def read(self, model: str, *, since: datetime | None = None, until: datetime | None = None,
             versions: Sequence[int] | None = None, limit: int | None = None,
             with_inputs: bool = True) -> list[LoggedPrediction]: ...


@dataclass(frozen=True)
class LogPolicy:
    """How one served version is logged: its sample rate, sensitive fields and input summary."""

    model: str
    version: int
    sample_rate: float
    sensitive: Mapping[str, str]
    signature: Signature
    reference: dict[str, Any] | None

    def sampled(self) -> bool:
        """Whether this request is one of the logged ones."""
        rate = self.sample_rate
        return rate >= 1.0 or (rate > 0.0 and random.random() < rate)


class PredictionLog:
    """Bounded, asynchronous, batched writer of predictions; ``start``/``stop`` its thread."""

    def __init__(self, store: LogStore, *, capacity: int = 10_000, batch_size: int = 500,
                 flush_interval_s: float = 1.0, hash_key: bytes | None = None) -> None:
        if capacity < 1 or batch_size < 1 or flush_interval_s <= 0:
            raise ConfigError("prediction log: capacity and batch_size >= 1, interval > 0")
        self.store = store
        self.capacity = capacity
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.hash_key = hash_key if hash_key is not None else _hash_key()
        #: entries written, and entries dropped (queue full, summary failed or store down).
        self.written = 0
        self.dropped = 0
        #: CPU seconds the writer spent converting and storing (what the log costs the server).
        self.cpu_s = 0.0
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

    @property
    def uses_builtin_key(self) -> bool:
        """Whether sensitive fields are hashed with the public built-in key (no
        ``MODELYARD_LOG_KEY``): their hashes can be matched against guessed values."""
        return self.hash_key == BUILTIN_KEY

    # -- the request path -----------------------------------------------------------------------
    def record(self, policy: LogPolicy, request_id: str, variant: str, latency_s: float,
               batch: Any, rows: int, prediction: Prediction) -> None:
        """Queue one answered request (call only for sampled requests; never raises)."""
        self._enqueue((policy, request_id, variant, time.time(), latency_s, batch, rows,
                       prediction))

    def record_error(self, policy: LogPolicy, request_id: str, variant: str, latency_s: float,
                     status: int) -> None:
        """Queue one failed request (a 5xx): counted in the error rate monitoring reports."""
        self._enqueue((policy, request_id, variant, time.time(), latency_s, None, 0, status))

    def _enqueue(self, entry: tuple[Any, ...]) -> None:
        queue = self._queue
        if len(queue) >= self.capacity:
            self.dropped += 1
            return
        queue.append(entry)
        if len(queue) >= self.batch_size:
            self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="modelyard-predlog",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Write what is queued and stop the writer thread (blocking)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout_s)
        self._thread = None

    def flush(self) -> None:
        """Write everything queued now, on the calling thread (tests and shutdown)."""
        while self._queue:
            self._write_batch()

    @property
    def pending(self) -> int:
        """Entries queued and not yet written."""
        return len(self._queue)

    # -- the writer -----------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            while len(self._queue) >= self.batch_size:
                self._write_batch()
            if self._queue:
                self._write_batch()
        self.flush()

    def _write_batch(self) -> None:
        started = time.thread_time()
        try:
            self._write_entries()
        finally:
            self.cpu_s += time.thread_time() - started

    def _write_entries(self) -> None:
        queue = self._queue
        entries = []
        for _ in range(min(self.batch_size, len(queue))):
            try:
                entries.append(queue.popleft())
            except IndexError:  # pragma: no cover - only one consumer
                break
        batch = LogBatch()
        for start in range(0, len(entries), _CHUNK):
            if start:
                time.sleep(_PAUSE_S)
            self._add(batch, entries[start:start + _CHUNK])
        if not batch:
            return
        try:
            self.store.write(batch)
        except Exception as exc:
            self.dropped += len(batch)
            self._warn("the prediction log store failed; dropped %d entries: %s", len(batch),
                       exc)
            return
        self.written += len(batch)

    def _add(self, batch: LogBatch, entries: list[tuple[Any, ...]]) -> None:
        """Add ``entries`` to ``batch``, in order; the answered requests of one version are
        summarised and their outputs converted together."""
        inputs: dict[int, str] = {}
        outputs: dict[int, str] = {}
        groups: dict[int, list[int]] = {}
        for i, entry in enumerate(entries):
            if isinstance(entry[7], int):  # a failed request: its status, nothing to summarise
                inputs[i] = "{}"
                outputs[i] = _json({"error": entry[7]})
            else:
                groups.setdefault(id(entry[0]), []).append(i)
        for members in groups.values():
            self._encode(entries, members, inputs, outputs)
        batch.extend((request_id, policy.model, policy.version, variant, at,
                      round(latency_s * 1000.0, 4), n, inputs[i], outputs[i])
                     for i, (policy, request_id, variant, at, latency_s, _, n, _)
                     in enumerate(entries)
                     if i in inputs)  # the others could not be converted: counted as dropped

    def _encode(self, entries: list[tuple[Any, ...]], members: list[int], inputs: dict[int, str],
                outputs: dict[int, str]) -> None:
        """JSON of the inputs and outputs of ``members``, answered requests of one version."""
        from modelyard.monitoring.summary import summarize, summarize_many

        policy = entries[members[0]][0]
        profile = (policy.signature, policy.reference)
        options = {"sensitive": policy.sensitive, "hash_key": self.hash_key}
        summaries = self._convert(lambda batches: summarize_many(batches, *profile, **options),
                                  lambda batch: summarize(batch, *profile, **options),
                                  [entries[i][5] for i in members], "summarised")
        answers = self._convert(outputs_many, outputs_of, [entries[i][7] for i in members],
                                "converted")
        for i, summary, answer in zip(members, summaries, answers, strict=True):
            if summary is None or answer is None:
                self.dropped += 1
            else:
                inputs[i] = summary
                outputs[i] = answer

    def _convert(self, many: Callable[[list[Any]], Iterable[Any]], one: Callable[[Any], Any],
                 items: list[Any], what: str) -> list[str | None]:
        """JSON of each of ``many(items)``, encoded as they come; where an odd item spoils that,
        of ``one`` of each (None where it fails)."""
        with contextlib.suppress(Exception):
            return [_json(value) for value in many(items)]
        out: list[str | None] = []
        for item in items:
            try:
                out.append(_json(one(item)))
            except Exception as exc:  # one odd request never stops the log
                out.append(None)
                self._warn("a prediction could not be %s for the log: %s", what, exc)
        return out

    def _warn(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last_warning > 30.0:  # a down store is one line per 30 s, not per batch
            self._last_warning = now
            log.warning(message, *args)


def outputs_of(prediction: Prediction) -> dict[str, Any]:
    """What the log keeps of a prediction: its values (and scores), or only its shape if big."""
    values = np.asarray(prediction.predictions)
    if values.size > MAX_OUTPUT_VALUES:
        return {"shape": list(values.shape), "truncated": True}
    out: dict[str, Any] = {"predictions": _plain(values)}
    scores = prediction.scores
    if scores is not None and np.asarray(scores).size <= MAX_OUTPUT_VALUES:
        out["scores"] = _plain(np.asarray(scores))
        if prediction.classes is not None:
            out["classes"] = [_scalar(c) for c in prediction.classes]
    return out


def outputs_many(answers: Sequence[Prediction]) -> Iterator[dict[str, Any]]:
    """:func:`outputs_of` of each answer, one at a time, converted together where they stack
    (one version's answers do): one conversion per chunk of the log instead of one per request."""
    first = answers[0]
    if (not _stack(answers) or any(a.predictions.size > MAX_OUTPUT_VALUES for a in answers)
            or any(a.scores is not None and a.scores.size > MAX_OUTPUT_VALUES for a in answers)):
        yield from (outputs_of(a) for a in answers)
        return
    predictions = _plain(np.concatenate([a.predictions for a in answers]))
    scores = None if first.scores is None else _plain(np.concatenate([a.scores for a in answers]))
    classes = None if first.classes is None else [_scalar(c) for c in first.classes]
    start = 0
    for answer in answers:
        end = start + len(answer.predictions)
        one: dict[str, Any] = {"predictions": predictions[start:end]}
        if scores is not None:
            one["scores"] = scores[start:end]
            if classes is not None:
                one["classes"] = classes
        yield one
        start = end


def _stack(answers: Sequence[Prediction]) -> bool:
    """Whether the answers' arrays concatenate: the same dtypes, row shapes and classes."""
    first = _layout(answers[0])
    return first is not None and all(_layout(a) == first for a in answers)


def _layout(answer: Prediction) -> tuple[Any, ...] | None:
    """An answer's dtypes, row shapes and classes; None when it has no rows to stack."""
    values, scores = answer.predictions, answer.scores
    if not isinstance(values, np.ndarray) or values.ndim == 0:
        return None
    if scores is None:
        return values.dtype, values.shape[1:], None, answer.classes
    if not isinstance(scores, np.ndarray) or scores.ndim == 0 or len(scores) != len(values):
        return None
    return values.dtype, values.shape[1:], (scores.dtype, scores.shape[1:]), answer.classes


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _plain(values: np.ndarray) -> Any:
    if values.dtype.kind == "f":
        values = np.where(np.isfinite(values), values, np.nan).round(6)
        return orjson.loads(orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY))
    if values.dtype.kind in "OUS":
        return [_scalar(v) for v in values.tolist()]
    return values.tolist()


def _scalar(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _hash_key() -> bytes:
    key = os.environ.get(KEY_ENV)
    if key:
        return key.encode()
    # without a configured key, hashes are still stable across processes (joins work), but a
    # low-entropy value could be guessed by hashing candidates: set MODELYARD_LOG_KEY in production
    return BUILTIN_KEY


# -- stores -------------------------------------------------------------------------------------
class DatabaseStore:
    """The registry database's ``predictions`` table."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def write(self, batch: LogBatch) -> None:
        """Insert ``batch`` in one transaction, a driver-level executemany per chunk.

        The ORM and SQLAlchemy's per-value type processing cost more than the rest of the log
        together, so rows go to the driver as they are, times as naive UTC (in SQLite, text in
        the layout the registry's column type reads back). A pause between chunks spreads the
        insert out like the rest of the writer's work.
        """
        dialect = self.registry.db.dialect
        mark = "?" if dialect == "sqlite" else "%s"
        sql = (f"INSERT INTO predictions ({', '.join(LOG_COLUMNS)}) "
               f"VALUES ({', '.join([mark] * len(LOG_COLUMNS))})")
        times = batch.times()
        at = ([t.replace("T", " ") for t in np.datetime_as_string(times, unit="us").tolist()]
              if dialect == "sqlite" else times.tolist())
        columns = list(batch.columns())
        columns[LOG_COLUMNS.index("at")] = at
        params = list(zip(*columns, strict=True))
        with self.registry.db.session(write=True) as s:
            connection = s.connection()
            for start in range(0, len(params), _CHUNK):
                if start:
                    time.sleep(_PAUSE_S)
                connection.exec_driver_sql(sql, params[start:start + _CHUNK])

    def read(self, model: str, *, since: datetime | None = None, until: datetime | None = None,
             versions: Sequence[int] | None = None, limit: int | None = None,
             with_inputs: bool = True) -> list[LoggedPrediction]:
        """Logged requests of ``model`` in ``[since, until)``, oldest first (newest ``limit``)."""
        from sqlalchemy import literal, select

        from modelyard.registry.tables import PredictionRow as P

        inputs = P.inputs if with_inputs else literal(None).label("inputs")
        query = select(P.request_id, P.model, P.version, P.variant, P.at, P.latency_ms, P.rows,
                       inputs, P.outputs).where(P.model == model)
        if since is not None:
            query = query.where(P.at >= since)
        if until is not None:
            query = query.where(P.at < until)
        if versions is not None:
            query = query.where(P.version.in_(list(versions)))
        query = query.order_by(P.at.desc(), P.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self.registry.db.session() as s:
            found = [LoggedPrediction(*row) for row in s.execute(query)]
        found.reverse()
        return found


class ParquetStore:
    """Parquet files, one per written batch and model: ``FOLDER/model=NAME/date=DAY/*.parquet``.

    Each file is written under a temporary name and renamed, so a reader never sees half a file.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def write(self, batch: LogBatch) -> None:
        """Write ``batch`` as one file per model and day (UTC)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        times = batch.times()
        table = pa.table({
            "request_id": batch.request_id,
            "version": pa.array(batch.version, pa.int32()),
            "variant": batch.variant,
            "at": pa.array(times, pa.timestamp("us", tz="UTC")),
            "latency_ms": pa.array(batch.latency_ms, pa.float64()),
            "rows": pa.array(batch.rows, pa.int32()),
            "inputs": batch.inputs,
            "outputs": batch.outputs,
        })
        groups: dict[tuple[str, Any], list[int]] = {}
        days = times.astype("datetime64[D]").tolist()
        for i, key in enumerate(zip(batch.model, days, strict=True)):
            groups.setdefault(key, []).append(i)
        for (model, day), members in groups.items():
            part = table if len(groups) == 1 else table.take(members)
            date = day.isoformat()
            folder = self.folder / f"model={model}" / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}.parquet"
            partial = folder / f".{name}.tmp"
            pq.write_table(part, partial, compression="zstd")
            os.replace(partial, folder / name)

    def read(self, model: str, *, since: datetime | None = None, until: datetime | None = None,
             versions: Sequence[int] | None = None, limit: int | None = None,
             with_inputs: bool = True) -> list[LoggedPrediction]:
        """Logged requests of ``model`` in ``[since, until)``, oldest first (newest ``limit``)."""
        import pyarrow.parquet as pq

        root = self.folder / f"model={model}"
        if not root.is_dir():
            return []
        found: list[LoggedPrediction] = []
        for day in sorted(root.glob("date=*")):
            if since is not None and day.name[5:] < since.strftime("%Y-%m-%d"):
                continue  # a whole day before the window
            for file in sorted(day.glob("*.parquet")):
                columns = None if with_inputs else [c for c in _PARQUET_COLUMNS if c != "inputs"]
                for rec in pq.read_table(file, columns=columns).to_pylist():
                    at = rec["at"]
                    if ((since is not None and at < since) or (until is not None and at >= until)
                            or (versions is not None and rec["version"] not in versions)):
                        continue
                    found.append(LoggedPrediction(
                        rec["request_id"], model, rec["version"], rec["variant"], at,
                        rec["latency_ms"], rec["rows"],
                        orjson.loads(rec["inputs"]) if with_inputs else {},
                        orjson.loads(rec["outputs"])))
        found.sort(key=lambda p: p.at)
        return found[-limit:] if limit is not None else found


def open_store(registry: Registry, where: str | None = None) -> LogStore | None:
    """The store ``where`` (or ``MODELYARD_PREDICTION_LOG``) names; None when logging is off."""
    where = (where if where is not None else os.environ.get(ENV, "db")).strip()
    if where in ("", "db"):
        return DatabaseStore(registry)
    if where == "off":
        return None
    if where.startswith("parquet:") and len(where) > len("parquet:"):
        return ParquetStore(where.removeprefix("parquet:"))
    raise ConfigError(f"{ENV}={where!r} is not understood; use db, off or parquet:FOLDER")


__all__ = ["BUILTIN_KEY", "LOG_COLUMNS", "DatabaseStore", "LogBatch", "LogPolicy", "LogStore",
           "LoggedPrediction", "ParquetStore", "PredictionLog", "open_store", "outputs_many",
           "outputs_of"]
