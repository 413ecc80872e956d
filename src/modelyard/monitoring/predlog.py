"""The prediction log: sampled predictions, written in batches off the request path.

On the request path :meth:`PredictionLog.record` (and :meth:`~PredictionLog.record_error` for a
failed request, kept as its status so monitoring knows the error rate) only appends a tuple to a
bounded queue: no
serialisation, no I/O, no lock beyond the deque's own. A writer thread wakes every
``flush_interval_s`` (or once ``batch_size`` entries wait), turns each entry into a row (inputs
summarised by :func:`modelyard.monitoring.summary.summarize`, sensitive fields dropped or hashed)
and hands the batch to a :class:`LogStore`. When the queue is full or the store fails, entries
are dropped and counted (``dropped``), never retried into unbounded memory, and no request ever
waits for or fails because of the log.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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

#: entries summarised between two yields of the GIL (a chunk holds it for well under 1 ms).
_CHUNK = 64
#: outputs with more values than this (masks, long sequences) are logged as their shape only.
MAX_OUTPUT_VALUES = 10_000
ENV = "MODELYARD_PREDICTION_LOG"
_PARQUET_COLUMNS = ("request_id", "version", "variant", "at", "latency_ms", "rows", "inputs",
                    "outputs")
KEY_ENV = "MODELYARD_LOG_KEY"


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


class LogStore(Protocol):
    """Where logged predictions are kept; ``write`` runs on the log's writer thread."""

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None: ...

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
        self._queue: deque[tuple[Any, ...]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._last_warning = 0.0

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
        queue = self._queue
        entries = []
        for _ in range(min(self.batch_size, len(queue))):
            try:
                entries.append(queue.popleft())
            except IndexError:  # pragma: no cover - only one consumer
                break
        rows: list[dict[str, Any]] = []
        for start in range(0, len(entries), _CHUNK):
            rows.extend(self._rows(entries[start:start + _CHUNK]))
            time.sleep(0)  # hand the GIL to the event loop between chunks: no latency spikes
        if not rows:
            return
        try:
            self.store.write(rows)
        except Exception as exc:
            self.dropped += len(rows)
            self._warn("the prediction log store failed; dropped %d entries: %s", len(rows), exc)
            return
        self.written += len(rows)

    def _rows(self, entries: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
        """Log rows of ``entries``; the answered requests of one version are summarised together
        (:func:`~modelyard.monitoring.summary.summarize_many`)."""
        inputs: dict[int, dict[str, Any]] = {}
        groups: dict[int, list[int]] = {}
        for i, entry in enumerate(entries):
            if isinstance(entry[7], int):  # a failed request: its status, nothing to summarise
                inputs[i] = {}
            else:
                groups.setdefault(id(entry[0]), []).append(i)
        for members in groups.values():
            inputs.update(self._summaries(entries, members))
        rows = []
        for i, (policy, request_id, variant, at, latency_s, _, n, answer) in enumerate(entries):
            if i not in inputs:
                continue  # its summary failed: counted as dropped
            try:
                outputs = {"error": answer} if isinstance(answer, int) else outputs_of(answer)
            except Exception as exc:
                self.dropped += 1
                self._warn("a prediction could not be kept in the log: %s", exc)
                continue
            rows.append({
                "request_id": request_id, "model": policy.model, "version": policy.version,
                "variant": variant, "at": datetime.fromtimestamp(at, UTC),
                "latency_ms": round(latency_s * 1000.0, 4), "rows": n,
                "inputs": inputs[i], "outputs": outputs,
            })
        return rows

    def _summaries(self, entries: list[tuple[Any, ...]],
                   members: list[int]) -> dict[int, dict[str, Any]]:
        from modelyard.monitoring.summary import summarize, summarize_many

        policy = entries[members[0]][0]
        options = {"sensitive": policy.sensitive, "hash_key": self.hash_key}
        with contextlib.suppress(Exception):  # an odd input spoils a stacked batch: one by one
            found = summarize_many([entries[i][5] for i in members], policy.signature,
                                   policy.reference, **options)
            return dict(zip(members, found, strict=True))
        out = {}
        for i in members:
            try:
                out[i] = summarize(entries[i][5], policy.signature, policy.reference, **options)
            except Exception as exc:  # one odd input never stops the log
                self.dropped += 1
                self._warn("a prediction could not be summarised for the log: %s", exc)
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
    return b"modelyard-default-log-key"


# -- stores -------------------------------------------------------------------------------------
class DatabaseStore:
    """The registry database's ``predictions`` table."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert ``rows`` in one transaction: one driver-level executemany.

        The ORM and SQLAlchemy's per-value type processing cost more than the rest of the log
        together, so rows go to the driver as tuples: JSON already encoded (orjson), times as
        naive UTC (text in SQLite's layout, which the registry's column type reads back).
        """
        dialect = self.registry.db.dialect
        mark = "?" if dialect == "sqlite" else "%s"
        sql = (f"INSERT INTO predictions ({', '.join(_COLUMNS)}) "
               f"VALUES ({', '.join([mark] * len(_COLUMNS))})")
        when = _sqlite_time if dialect == "sqlite" else _naive_utc
        params = [(r["request_id"], r["model"], r["version"], r["variant"], when(r["at"]),
                   r["latency_ms"], r["rows"], orjson.dumps(r["inputs"]).decode(),
                   orjson.dumps(r["outputs"]).decode()) for r in rows]
        with self.registry.db.session(write=True) as s:
            s.connection().exec_driver_sql(sql, params)

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

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Write ``rows`` as one file per model and day."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for row in rows:
            groups.setdefault((row["model"], row["at"].strftime("%Y-%m-%d")), []).append(row)
        for (model, day), group in groups.items():
            table = pa.table({
                "request_id": [r["request_id"] for r in group],
                "version": pa.array([r["version"] for r in group], pa.int32()),
                "variant": [r["variant"] for r in group],
                "at": pa.array([r["at"] for r in group], pa.timestamp("us", tz="UTC")),
                "latency_ms": [float(r["latency_ms"]) for r in group],
                "rows": pa.array([r["rows"] for r in group], pa.int32()),
                "inputs": [orjson.dumps(r["inputs"]).decode() for r in group],
                "outputs": [orjson.dumps(r["outputs"]).decode() for r in group],
            })
            folder = self.folder / f"model={model}" / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex[:8]}.parquet"
            partial = folder / f".{name}.tmp"
            pq.write_table(table, partial, compression="zstd")
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


_COLUMNS = ("request_id", "model", "version", "variant", "at", "latency_ms", "rows", "inputs",
            "outputs")


def _naive_utc(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(tzinfo=None)


def _sqlite_time(at: datetime) -> str:
    return _naive_utc(at).strftime("%Y-%m-%d %H:%M:%S.%f")


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


__all__ = ["DatabaseStore", "LogPolicy", "LogStore", "LoggedPrediction", "ParquetStore",
           "PredictionLog", "open_store", "outputs_of"]
