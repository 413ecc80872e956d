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
import os
import shutil
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import orjson

from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.registry import Registry

#: rows inserted at a time, and the pause after each chunk: the log's work is spread out rather
#: than taking the core for a whole batch at once (the writer summarises in chunks this size too).
CHUNK = 64
PAUSE_S = 0.001
ENV = "MODELYARD_PREDICTION_LOG"
_IDS_PER_QUERY = 500


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

    def find(self, model: str, request_ids: Sequence[str]) -> list[LoggedPrediction]: ...

    def delete_before(self, model: str, before: datetime) -> int: ...


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
            for start in range(0, len(params), CHUNK):
                if start:
                    time.sleep(PAUSE_S)
                connection.exec_driver_sql(sql, params[start:start + CHUNK])

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

    def find(self, model: str, request_ids: Sequence[str]) -> list[LoggedPrediction]:
        """The logged requests of ``model`` with these ids, oldest first (a shadow copy is
        logged under its request's id, so one id may have two)."""
        from sqlalchemy import select

        from modelyard.registry.tables import PredictionRow as P

        wanted = list(dict.fromkeys(request_ids))
        found: list[tuple[Any, LoggedPrediction]] = []
        with self.registry.db.session() as s:
            for start in range(0, len(wanted), _IDS_PER_QUERY):
                query = select(P.id, P.request_id, P.model, P.version, P.variant, P.at,
                               P.latency_ms, P.rows, P.inputs, P.outputs).where(
                    P.model == model, P.request_id.in_(wanted[start:start + _IDS_PER_QUERY]))
                found.extend(((row[5], row[0]), LoggedPrediction(*row[1:]))
                             for row in s.execute(query))
        found.sort(key=lambda pair: pair[0])  # by time, then by the order they were written
        return [p for _, p in found]

    def delete_before(self, model: str, before: datetime, *, batch: int = 5000) -> int:
        """Delete ``model``'s requests logged before ``before``; how many went.

        ``batch`` rows per transaction, so the log's writer (and, on SQLite, every other
        writer) waits for one short delete at most, never for the whole sweep.
        """
        from sqlalchemy import delete, select

        from modelyard.registry.tables import PredictionRow as P

        old = select(P.id).where(P.model == model, P.at < before).limit(batch)
        total = 0
        while True:
            with self.registry.db.session(write=True) as s:
                result = s.execute(delete(P).where(P.id.in_(old)),
                                   execution_options={"synchronize_session": False})
                deleted = int(getattr(result, "rowcount", 0) or 0)
            total += deleted
            if deleted < batch:
                return total


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


def _epoch(at: datetime) -> float:
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).timestamp()


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


__all__ = ["CHUNK", "ENV", "LOG_COLUMNS", "PAUSE_S", "DatabaseStore", "LogBatch", "LogStore",
           "LoggedPrediction", "ParquetStore", "open_store"]
