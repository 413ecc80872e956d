"""Where the prediction log is kept, and how it is read back: the :class:`LogStore` s.

Stores, chosen by ``MODELYARD_PREDICTION_LOG`` (:func:`open_store`):

``db`` (default)        the ``predictions`` table of the registry database (SQLite/PostgreSQL)
``parquet:FOLDER``      Parquet files ``FOLDER/model=NAME/date=YYYY-MM-DD/*.parquet``
``off``                 nothing is logged

Each writes a :class:`LogBatch` (the log's writer thread calls :meth:`LogStore.write`), reads a
model's requests back by time window and version (metrics, drift), finds them by request id
(lookups, feedback) and deletes those older than a cutoff (retention).
"""

from __future__ import annotations

import contextlib
import heapq
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from modelyard.errors import ConfigError, StorageError
from modelyard.monitoring.chunk import Chunk, id_hashes, json_part, to_us
from modelyard.monitoring.requestid import issued_ms

if TYPE_CHECKING:
    from modelyard.registry import Registry

#: requests the writer packs at a time (at most one chunk each), and its pause after each: the
#: log's work is spread out rather than taking the core for a whole batch at once (a slice costs
#: well under a millisecond).
CHUNK = 250
PAUSE_S = 0.001
ENV = "MODELYARD_PREDICTION_LOG"
_IDS_PER_QUERY = 500
#: how long after a server made a request id its answer can have been logged: the request
#: timeout (``modelyard serve --timeout``, 60 s by default) with ample room. A request answered
#: later than this is not found by its id (its predictions still count in monitoring).
ANSWER_WITHIN = timedelta(minutes=15)
#: the longest a chunk spans, first to last answer, with room: the writer packs what queued in
#: about a second.
_CHUNK_SPAN = timedelta(hours=1)
#: an id's time is in whole milliseconds; answers are stamped in microseconds.
_CLOCK_STEP = timedelta(seconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: chunks one ``INSERT`` writes at most (10 parameters each: well under SQLite's 32,766).
_ROWS_PER_INSERT = 500


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
    """Logged requests as a store writes them: :class:`~modelyard.monitoring.chunk.Chunk` s,
    each the requests of one version and variant with their inputs and outputs packed.

    A database keeps a row per chunk; :meth:`columns` gives the requests one by one (inputs and
    outputs as JSON) for a store that keeps rows, such as Parquet.
    """

    chunks: list[Chunk] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(c) for c in self.chunks)

    def add(self, chunk: Chunk) -> None:
        """Append a chunk (an empty one is left out)."""
        if len(chunk):
            self.chunks.append(chunk)

    def extend(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Append requests, each a tuple of values in :data:`LOG_COLUMNS` order (``at`` in
        seconds since the epoch, inputs and outputs JSON-ready values or JSON text), one chunk
        per model, version and variant."""
        self._extend(rows, _value)

    def _extend(self, rows: Iterable[tuple[Any, ...]], value: Any) -> None:
        """:meth:`extend`, inputs and outputs taken through ``value``."""
        groups: dict[tuple[str, int, str], list[tuple[Any, ...]]] = {}
        for row in rows:
            groups.setdefault((row[1], int(row[2]), row[3]), []).append(row)
        for (model, version, variant), group in groups.items():
            for start in range(0, len(group), CHUNK):
                columns = list(zip(*group[start:start + CHUNK], strict=True))
                self.add(Chunk.of(model, version, variant, list(columns[0]), columns[4],
                                  [ms / 1000.0 for ms in columns[5]], columns[6],
                                  json_part([value(v) for v in columns[7]]),
                                  json_part([value(v) for v in columns[8]])))

    def columns(self) -> tuple[list[Any], ...]:
        """The requests as columns in :data:`LOG_COLUMNS` order, inputs and outputs as JSON."""
        out: tuple[list[Any], ...] = tuple([] for _ in LOG_COLUMNS)
        for chunk in self.chunks:
            inputs, outputs = chunk.json_records()
            n = len(chunk)
            for column, values in zip(out, (
                    chunk.request_ids, [chunk.model] * n, [chunk.version] * n,
                    [chunk.variant] * n, (chunk.at_us / 1e6).tolist(),
                    chunk.latency_ms.tolist(), chunk.rows.tolist(), inputs, outputs),
                    strict=True):
                column.extend(values)
        return out

    @classmethod
    def of(cls, rows: Iterable[Mapping[str, Any]]) -> LogBatch:
        """A batch of rows given as mappings: ``at`` a datetime (naive means UTC), ``inputs``
        and ``outputs`` JSON-ready values (what :meth:`LoggedPrediction` reads back)."""
        batch = cls()
        batch._extend(((r["request_id"], r["model"], int(r["version"]), r["variant"],
                        _epoch(r["at"]), float(r["latency_ms"]), int(r["rows"]),
                        r["inputs"], r["outputs"]) for r in rows), _same)
        return batch

    def times(self) -> np.ndarray:
        """``at`` of every request, in order, as UTC ``datetime64[us]``."""
        if not self.chunks:
            return np.empty(0, dtype="datetime64[us]")
        return np.concatenate([c.at_us for c in self.chunks]).astype("datetime64[us]")


#: the columns of a request in a :class:`LogBatch` (:meth:`LogBatch.columns`).
LOG_COLUMNS = ("request_id", "model", "version", "variant", "at", "latency_ms", "rows", "inputs",
               "outputs")
_PARQUET_COLUMNS = tuple(c for c in LOG_COLUMNS if c != "model")  # the folder names the model
#: the ``predictions`` table's columns a write fills (one row per chunk).
_CHUNK_COLUMNS = ("model", "version", "variant", "first_at", "last_at", "size", "id_hashes",
                  "requests", "inputs", "outputs")


class LogStore(Protocol):
    """Where logged predictions are kept; ``write`` runs on the log's writer thread, which hands
    it at most ``batch_size`` entries at a time (when the store has that attribute)."""

    def write(self, batch: LogBatch) -> None: ...

    def read(self, model: str, *, since: datetime | None = None, until: datetime | None = None,
             versions: Sequence[int] | None = None, limit: int | None = None,
             with_inputs: bool = True) -> list[LoggedPrediction]: ...

    def find(self, model: str, request_ids: Sequence[str]) -> list[LoggedPrediction]: ...

    def delete_before(self, model: str, before: datetime) -> int: ...


class DatabaseStore:
    """The registry database's ``predictions`` table: one row per :class:`Chunk`."""

    #: entries a write takes at most: a chunk's worth (:data:`CHUNK`), half the burst of 500 for
    #: the same CPU a request; 100 gave a loaded server a lower p99 still but cost it 4-11 %
    #: more CPU (docs/architecture.md, "Where a request's CPU goes").
    batch_size = CHUNK

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def write(self, batch: LogBatch) -> None:
        """Insert ``batch``'s chunks, a row each, in one multi-row ``INSERT`` committed by itself.

        A row per chunk, not per request: the inputs, outputs and request columns go in as
        packed bytes (:mod:`~modelyard.monitoring.chunk`), times as naive UTC (in SQLite, text in
        the layout the registry's column type reads back). One statement on an autocommit
        connection is one round trip and no ORM session: on PostgreSQL that halves the write's
        CPU against ``executemany`` in a transaction (binary ``COPY`` gains nothing for the few
        rows a batch has). A batch of more rows than one statement takes (:meth:`LogBatch.of`
        of a large list) goes in one transaction of several.
        """
        from sqlalchemy.exc import OperationalError

        chunks = batch.chunks
        if not chunks:
            return
        db = self.registry.db
        mark = "?" if db.dialect == "sqlite" else "%s"
        row = f"({', '.join([mark] * len(_CHUNK_COLUMNS))})"
        parts = [chunks[i:i + _ROWS_PER_INSERT] for i in range(0, len(chunks), _ROWS_PER_INSERT)]
        statements = [(f"INSERT INTO predictions ({', '.join(_CHUNK_COLUMNS)}) VALUES "
                       f"{', '.join([row] * len(part))}",
                       tuple(value for c in part for value in _chunk_row(c, db.dialect)))
                      for part in parts]
        # PostgreSQL: one statement needs no BEGIN and COMMIT round trips; SQLite has none
        autocommit = db.dialect != "sqlite" and len(statements) == 1
        options = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
        try:
            with db.engine.connect().execution_options(**options) as conn:
                for sql, params in statements:
                    conn.exec_driver_sql(sql, params)
                if not autocommit:
                    conn.commit()
        except OperationalError as exc:
            raise StorageError(f"the prediction log could not write to {db.display_url}: "
                               f"{str(getattr(exc, 'orig', exc)).strip()}; check that the "
                               "database is reachable (MODELYARD_DB)") from None

    def read(self, model: str, *, since: datetime | None = None, until: datetime | None = None,
             versions: Sequence[int] | None = None, limit: int | None = None,
             with_inputs: bool = True) -> list[LoggedPrediction]:
        """Logged requests of ``model`` in ``[since, until)``, oldest first (newest ``limit``).

        Chunks are read newest first and no further once ``limit`` requests newer than the
        next chunk's are in hand.
        """
        from sqlalchemy import literal, select

        from modelyard.registry.tables import PredictionRow as P

        inputs = P.inputs if with_inputs else literal(None).label("inputs")
        query = select(P.id, P.version, P.variant, P.requests, inputs, P.outputs).where(
            P.model == model)
        if since is not None:
            query = query.where(P.last_at >= since)
        if until is not None:
            query = query.where(P.first_at < until)
        if versions is not None:
            query = query.where(P.version.in_(list(versions)))
        query = query.order_by(P.last_at.desc(), P.id.desc())
        window = (None if since is None else to_us(since), None if until is None else to_us(until))
        found = _Newest(limit)
        with self.registry.db.session() as s:
            for row in s.execute(query):
                chunk = Chunk.from_row(model, row[1], row[2], row[3], row[4], row[5])
                if found.complete_before(int(chunk.at_us.max())):
                    break
                found.add(row[0], chunk, _within(chunk.at_us, *window), with_inputs)
        return found.oldest_first()

    def find(self, model: str, request_ids: Sequence[str]) -> list[LoggedPrediction]:
        """The logged requests of ``model`` with these ids, oldest first (a shadow copy is
        logged under its request's id, so one id may have two).

        An id a server made (:func:`~modelyard.monitoring.requestid.issued_ms`) is looked for
        among the chunks answered within :data:`ANSWER_WITHIN` of its time only; any other id
        in all of the model's chunks. Either way the ids' CRC-32 are scanned (4 bytes a logged
        request), then the chunks that may hold one are read.
        """
        from sqlalchemy import select

        from modelyard.registry.tables import PredictionRow as P

        wanted = set(request_ids)
        if not wanted:
            return []
        found = _Newest(None)
        with self.registry.db.session() as s:
            candidates = _candidate_chunks(s, model, wanted)
            for start in range(0, len(candidates), _IDS_PER_QUERY):
                query = select(P.id, P.version, P.variant, P.requests, P.inputs,
                               P.outputs).where(
                    P.id.in_(candidates[start:start + _IDS_PER_QUERY]))
                for row in s.execute(query):
                    chunk = Chunk.from_row(model, row[1], row[2], row[3], row[4], row[5])
                    keep = np.fromiter((r in wanted for r in chunk.request_ids), bool,
                                       len(chunk))
                    found.add(row[0], chunk, keep, True)
        return found.oldest_first()

    def delete_before(self, model: str, before: datetime, *, batch: int = 5000) -> int:
        """Delete ``model``'s requests logged before ``before``; how many went.

        Whole chunks ``batch`` at a time per transaction, so the log's writer (and, on SQLite,
        every other writer) waits for one short delete at most; then the few chunks that
        straddle ``before`` are rewritten with their newer requests only.
        """
        from sqlalchemy import delete, select

        from modelyard.registry.tables import PredictionRow as P

        total = 0
        while True:
            with self.registry.db.session(write=True) as s:
                old = s.execute(select(P.id, P.size).where(P.model == model, P.last_at < before)
                                .limit(batch)).all()
                if old:
                    s.execute(delete(P).where(P.id.in_([row[0] for row in old])),
                              execution_options={"synchronize_session": False})
            total += sum(row[1] for row in old)
            if len(old) < batch:
                break
        return total + self._cut(model, before)

    def _cut(self, model: str, before: datetime) -> int:
        """Drop the requests before ``before`` from the chunks that straddle it; how many."""
        from sqlalchemy import select, update

        from modelyard.registry.tables import PredictionRow as P

        cutoff = to_us(before)
        total = 0
        with self.registry.db.session(write=True) as s:
            straddling = s.execute(select(P.id, P.version, P.variant, P.requests, P.inputs,
                                          P.outputs).where(P.model == model, P.first_at < before,
                                                           P.last_at >= before)).all()
            for row in straddling:
                chunk = Chunk.from_row(model, row[1], row[2], row[3], row[4], row[5])
                keep = chunk.at_us >= cutoff
                if keep.all():
                    continue
                part = chunk.take(keep)
                total += len(chunk) - len(part)
                s.execute(update(P).where(P.id == row[0]).values(
                    first_at=part.times()[0], size=len(part),
                    id_hashes=part.id_hashes(), requests=part.requests(), inputs=part.inputs,
                    outputs=part.outputs))
        return total


class _Newest:
    """Logged requests gathered from chunks; with a ``limit``, knows when no older chunk can
    add one of the newest ``limit``."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.found: list[tuple[int, int, int, LoggedPrediction]] = []
        self._heap: list[int] = []  # the newest ``limit`` times seen, oldest on top

    def complete_before(self, newest_us: int) -> bool:
        """Whether ``limit`` requests newer than ``newest_us`` are in hand already."""
        return (self.limit is not None and len(self._heap) >= self.limit
                and self._heap[0] > newest_us)

    def add(self, chunk_id: int, chunk: Chunk, keep: np.ndarray, with_inputs: bool) -> None:
        """The requests of ``chunk`` where ``keep``."""
        if not keep.any():
            return
        inputs, outputs = chunk.records(with_inputs=with_inputs)
        times = chunk.times()
        at_us, latency, rows = (chunk.at_us.tolist(), chunk.latency_ms.tolist(),
                                chunk.rows.tolist())
        for i in np.flatnonzero(keep).tolist():
            self.found.append((at_us[i], chunk_id, i, LoggedPrediction(
                chunk.request_ids[i], chunk.model, chunk.version, chunk.variant, times[i],
                latency[i], rows[i], inputs[i], outputs[i])))
            if self.limit is not None:
                heapq.heappush(self._heap, at_us[i])
                if len(self._heap) > self.limit:
                    heapq.heappop(self._heap)

    def oldest_first(self) -> list[LoggedPrediction]:
        """What was gathered, by time then by the order it was written; the newest ``limit``."""
        self.found.sort(key=lambda item: item[:3])
        kept = (self.found if self.limit is None
                else self.found[max(0, len(self.found) - self.limit):])
        return [item[3] for item in kept]


def _within(at_us: np.ndarray, since: int | None, until: int | None) -> np.ndarray:
    keep = np.ones(len(at_us), dtype=bool)
    if since is not None:
        keep &= at_us >= since
    if until is not None:
        keep &= at_us < until
    return keep


def _candidate_chunks(s: Any, model: str, wanted: set[str]) -> list[int]:
    """Ids of ``model``'s chunks that may hold one of ``wanted``: by time for the ids a server
    made, by a scan of every chunk for the rest."""
    from sqlalchemy import select

    from modelyard.registry.tables import PredictionRow as P

    issued = {rid: issued_ms(rid) for rid in wanted}
    chunks: set[int] = set()
    for since, until, ids in time_windows({r: ms for r, ms in issued.items() if ms is not None}):
        # last_at's upper bound keeps the index range short: a chunk spans seconds, not hours
        rows = s.execute(select(P.id, P.id_hashes).where(
            P.model == model, P.last_at >= since, P.last_at < until + _CHUNK_SPAN,
            P.first_at < until))
        chunks.update(_candidates(rows, id_hashes(ids)))
    others = [rid for rid, ms in issued.items() if ms is None]
    if others:
        rows = s.execute(select(P.id, P.id_hashes).where(P.model == model))
        chunks.update(_candidates(rows, id_hashes(others)))
    return sorted(chunks)


def time_windows(issued: Mapping[str, int]) -> list[tuple[datetime, datetime, list[str]]]:
    """``(since, until, ids)``: when the requests of these ids (made at ``issued`` ms) can have
    been answered, overlapping windows merged, oldest first."""
    out: list[tuple[datetime, datetime, list[str]]] = []
    for rid, ms in sorted(issued.items(), key=lambda item: item[1]):
        since = _EPOCH + timedelta(milliseconds=ms) - _CLOCK_STEP
        until = since + _CLOCK_STEP + ANSWER_WITHIN
        if out and since <= out[-1][1]:
            out[-1][2].append(rid)
            out[-1] = (out[-1][0], until, out[-1][2])
        else:
            out.append((since, until, [rid]))
    return out


def _candidates(rows: Iterable[Any], keys: np.ndarray) -> list[int]:
    """The chunk ids whose id hashes include one of ``keys``, from ``(id, id_hashes)`` rows."""
    out: list[int] = []
    ids: list[int] = []
    blobs: list[bytes] = []

    def scan() -> None:
        hashes = np.frombuffer(b"".join(blobs), "<u4")
        owners = np.repeat(np.asarray(ids, dtype=np.int64), [len(b) // 4 for b in blobs])
        out.extend(np.unique(owners[np.isin(hashes, keys)]).tolist())
        ids.clear()
        blobs.clear()

    for chunk_id, blob in rows:
        ids.append(chunk_id)
        blobs.append(bytes(blob))
        if len(ids) >= 5000:
            scan()
    if ids:
        scan()
    return out


def _chunk_row(chunk: Chunk, dialect: str) -> tuple[Any, ...]:
    """A chunk's values in :data:`_CHUNK_COLUMNS` order, as the driver takes them."""
    return (chunk.model, chunk.version, chunk.variant, _db_time(int(chunk.at_us.min()), dialect),
            _db_time(int(chunk.at_us.max()), dialect), len(chunk), chunk.id_hashes(),
            chunk.requests(), chunk.inputs, chunk.outputs)


def _db_time(us: int, dialect: str) -> Any:
    """µs since the epoch as the driver takes a naive UTC time (SQLite: the registry's text)."""
    at = datetime(1970, 1, 1) + timedelta(microseconds=us)
    return at.isoformat(" ", "microseconds") if dialect == "sqlite" else at


class ParquetStore:
    """Parquet files, one per written batch and model: ``FOLDER/model=NAME/date=DAY/*.parquet``.

    Each file is written under a temporary name and renamed, so a reader never sees half a file.
    """

    #: entries a write (a file per model and day) takes at most: fewer, larger files.
    batch_size = 500

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def write(self, batch: LogBatch) -> None:
        """Write ``batch`` as one file per model and day (UTC)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        (request_id, models, version, variant, _, latency_ms, rows, inputs,
         outputs) = batch.columns()
        times = batch.times()
        table = pa.table({
            "request_id": request_id,
            "version": pa.array(version, pa.int32()),
            "variant": variant,
            "at": pa.array(times, pa.timestamp("us", tz="UTC")),
            "latency_ms": pa.array(latency_ms, pa.float64()),
            "rows": pa.array(rows, pa.int32()),
            "inputs": inputs,
            "outputs": outputs,
        })
        groups: dict[tuple[str, Any], list[int]] = {}
        days = times.astype("datetime64[D]").tolist()
        for i, key in enumerate(zip(models, days, strict=True)):
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

        found: list[LoggedPrediction] = []
        columns = None if with_inputs else [c for c in _PARQUET_COLUMNS if c != "inputs"]
        first_day = None if since is None else since.astimezone(UTC).strftime("%Y-%m-%d")
        for day in self._days(model):
            if first_day is not None and day.name[5:] < first_day:
                continue  # a whole day before the window
            for file in sorted(day.glob("*.parquet")):
                for rec in pq.read_table(file, columns=columns).to_pylist():
                    at = rec["at"]
                    if ((since is not None and at < since) or (until is not None and at >= until)
                            or (versions is not None and rec["version"] not in versions)):
                        continue
                    found.append(_logged(model, rec, with_inputs))
        found.sort(key=lambda p: p.at)
        return found[-limit:] if limit is not None else found

    def find(self, model: str, request_ids: Sequence[str]) -> list[LoggedPrediction]:
        """The logged requests of ``model`` with these ids, oldest first.

        Reads the ``request_id`` column of every file of the model, then the rows of the files
        that hold one: a lookup costs a scan of the ids, not of the whole log.
        """
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        wanted = pa.array(list(dict.fromkeys(request_ids)), pa.string())
        found: list[LoggedPrediction] = []
        for day in self._days(model):
            for file in sorted(day.glob("*.parquet")):
                with contextlib.suppress(FileNotFoundError):  # removed by retention meanwhile
                    ids = pq.read_table(file, columns=["request_id"]).column(0)
                    if not pc.any(pc.is_in(ids, value_set=wanted)).as_py():
                        continue
                    table = pq.read_table(file)
                    hits = table.filter(pc.is_in(table.column("request_id"), value_set=wanted))
                    found.extend(_logged(model, rec, True) for rec in hits.to_pylist())
        found.sort(key=lambda p: p.at)
        return found

    def delete_before(self, model: str, before: datetime) -> int:
        """Delete ``model``'s files of the UTC days that ended by ``before``; how many requests
        went. Whole days only: a day's requests go once the last of them is old enough."""
        import pyarrow.parquet as pq

        last_day = before.astimezone(UTC).strftime("%Y-%m-%d")
        total = 0
        for day in self._days(model):
            if day.name[5:] >= last_day:
                continue
            for file in day.glob("*.parquet"):
                with contextlib.suppress(FileNotFoundError):  # another server got there first
                    total += pq.ParquetFile(file).metadata.num_rows
                    file.unlink()
            shutil.rmtree(day, ignore_errors=True)  # and what a crashed write left behind
        return total

    def _days(self, model: str) -> list[Path]:
        """The model's ``date=YYYY-MM-DD`` folders, oldest first."""
        root = self.folder / f"model={model}"
        return sorted(root.glob("date=*")) if root.is_dir() else []


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


def _logged(model: str, rec: Mapping[str, Any], with_inputs: bool) -> LoggedPrediction:
    """A Parquet row as read back (inputs left out unless ``with_inputs``)."""
    return LoggedPrediction(rec["request_id"], model, rec["version"], rec["variant"], rec["at"],
                            rec["latency_ms"], rec["rows"],
                            orjson.loads(rec["inputs"]) if with_inputs else {},
                            orjson.loads(rec["outputs"]))


def _same(value: Any) -> Any:
    return value


def _value(value: Any) -> Any:
    """A JSON-ready value, from itself or from its JSON text."""
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


__all__ = ["CHUNK", "ENV", "LOG_COLUMNS", "PAUSE_S", "DatabaseStore", "LogBatch", "LogStore",
           "LoggedPrediction", "ParquetStore", "open_store"]
