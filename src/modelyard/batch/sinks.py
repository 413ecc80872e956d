"""Where a batch job writes: a Parquet folder (local or any fsspec URL) or a SQL table.

A sink commits one chunk at a time, its answers, its bad rows and the job's
:class:`~modelyard.batch.plan.Manifest`, so that a reader never sees half a chunk and a rerun
knows where to go on:

- **Parquet folder**: ``part-000042.parquet`` per chunk, bad rows in ``_errors/`` and the manifest
  in ``_manifest.json``. Each file is written whole, under a temporary name and then renamed on a
  local disk, or in a single PUT on an object store, which publishes it atomically. The part is
  written before the manifest that counts it, so a kill in between rewrites the same part (a
  fixed name) on the rerun: never a duplicate, never a gap. Readers of the folder (pandas,
  pyarrow, Spark) skip names starting with ``_`` or ``.``, so they see the parts only.
- **SQL table**: the chunk's rows, its bad rows (table ``<table>_errors``) and the manifest (table
  ``modelyard_batch_manifests``) in one transaction.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from modelyard.batch.plan import Manifest, Start, part_name
from modelyard.batch.sources import sql_failure
from modelyard.errors import ConfigError
from modelyard.registry.database import normalize_url

if TYPE_CHECKING:
    from modelyard.registry.records import ModelVersion

MANIFEST = "_manifest.json"
ERRORS = "_errors"
MANIFEST_TABLE = "modelyard_batch_manifests"
_TEMP_MARK = ".tmp-"


class Sink(Protocol):
    """Scored chunks, committed one at a time with the manifest that counts them."""

    #: where the answers go, for messages and the run record
    description: str
    #: where the bad rows go
    errors_location: str

    def read_manifest(self) -> Manifest | None:
        """The manifest an earlier run left, if any."""
        ...

    def begin(self, start: Start) -> None:
        """Get ready to write: clear an earlier run's output when ``start`` says so, and remove
        temporary files a killed run left."""
        ...

    def commit(self, index: int, scored: pa.Table, errors: pa.Table, manifest: Manifest
               ) -> None:
        """Publish chunk ``index`` (its answers and bad rows), then ``manifest``."""
        ...

    def finish(self, manifest: Manifest) -> None:
        """Record the job complete."""
        ...


@dataclass(frozen=True)
class SinkOwner:
    """Whose answers a sink receives: the version being scored and the registry's database
    URL (an online store keys answers by version; ``precomputed:registry`` writes there)."""

    version: ModelVersion
    registry_url: str


class SinkFactory(Protocol):
    """Builds a sink from the part of ``--output`` after its scheme (``sql:TABLE`` -> TABLE)."""

    def __call__(self, target: str, /, *, sql_url: str | None) -> Sink: ...


class OwnedSinkFactory(Protocol):
    """Builds a sink that also needs to know whose answers it receives (an online store)."""

    def __call__(self, target: str, /, *, sql_url: str | None, owner: SinkOwner) -> Sink: ...


#: sinks by the scheme that starts ``--output`` (``sql:``); anything else is a Parquet folder
SINKS: dict[str, SinkFactory] = {}


#: sinks by scheme whose factories are also told the version and registry (``precomputed:``)
OWNED_SINKS: dict[str, OwnedSinkFactory] = {}


def register_sink(scheme: str, factory: SinkFactory) -> None:
    """Make ``--output SCHEME:TARGET`` write through ``factory`` (an online store, say)."""
    SINKS[scheme] = factory


def register_owned_sink(scheme: str, factory: OwnedSinkFactory) -> None:
    """Like :func:`register_sink`, for a factory that is also given the :class:`SinkOwner`."""
    OWNED_SINKS[scheme] = factory


def open_sink(spec: str, *, sql_url: str | None = None, owner: SinkOwner | None = None) -> Sink:
    """The sink ``spec`` names: a registered scheme (``sql:TABLE`` with ``sql_url``), else a
    folder path or fsspec URL of Parquet parts."""
    scheme, _, target = spec.partition(":")
    owned = OWNED_SINKS.get(scheme)
    if owned is not None:
        if owner is None:
            raise ConfigError(f"--output {scheme}: is written by a batch job of a registered "
                              "version")
        return owned(target.strip(), sql_url=sql_url, owner=owner)
    factory = SINKS.get(scheme)
    if factory is None:
        return ParquetSink(spec)
    return factory(target.strip(), sql_url=sql_url)


# -- Parquet ------------------------------------------------------------------------------------
class ParquetSink:
    """A folder of Parquet parts on any filesystem fsspec reaches."""

    def __init__(self, url: str) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        self.description = url
        self.fs, self.root = fsspec.core.url_to_fs(url)
        self.root = self.root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        self.errors_location = f"{url.rstrip('/')}/{ERRORS}"

    def read_manifest(self) -> Manifest | None:
        path = f"{self.root}/{MANIFEST}"
        if not self.fs.exists(path):
            return None
        return Manifest.from_dict(orjson.loads(self.fs.cat_file(path)))

    def begin(self, start: Start) -> None:
        if start.clear:
            for path in self._ours():
                self.fs.rm(path)
        self.fs.makedirs(self.root, exist_ok=True)
        for path in self._ours():
            if _TEMP_MARK in path.rsplit("/", 1)[-1]:
                self.fs.rm(path)  # a write a killed run never finished

    def commit(self, index: int, scored: pa.Table, errors: pa.Table, manifest: Manifest
               ) -> None:
        if errors.num_rows:
            self._put(f"{self.root}/{ERRORS}/{part_name(index)}", _parquet(errors))
        if scored.num_rows:
            self._put(f"{self.root}/{part_name(index)}", _parquet(scored))
        self._put_manifest(manifest)

    def finish(self, manifest: Manifest) -> None:
        self._put_manifest(manifest)

    def _put_manifest(self, manifest: Manifest) -> None:
        self._put(f"{self.root}/{MANIFEST}",
                  orjson.dumps(manifest.to_dict(), option=orjson.OPT_INDENT_2))

    def _put(self, path: str, data: bytes) -> None:
        """Publish ``data`` at ``path`` whole or not at all."""
        if not self.local:
            self.fs.pipe_file(path, data)  # one PUT: an object appears complete or not at all
            return
        folder, name = path.rsplit("/", 1)
        temp = f"{folder}/.{name}{_TEMP_MARK}{uuid.uuid4().hex[:8]}"
        os.makedirs(folder, exist_ok=True)  # _errors/ appears with the first bad row
        try:
            with open(temp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise

    def _ours(self) -> list[str]:
        """Files this sink writes: parts, bad rows, the manifest and temporary files."""
        if not self.fs.exists(self.root):
            return []
        mine = {self.root, f"{self.root}/{ERRORS}"}  # not parts of folders nested further down
        found = []
        for path in self.fs.find(self.root):
            folder, _, name = path.rpartition("/")
            if folder in mine and name.lstrip(".").startswith(("part-", MANIFEST)):
                found.append(path)
        return found


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


# -- SQL ----------------------------------------------------------------------------------------
def _sql_sink(table: str, *, sql_url: str | None) -> Sink:
    if not sql_url:
        raise ConfigError("--output sql:TABLE needs --sql-db URL (a SQLAlchemy database URL)")
    if not table.replace("_", "").isalnum() or len(table) > 100:
        raise ConfigError(f"--output sql:{table}: a table name is letters, digits and _")
    return SqlSink(sql_url, table)


class SqlSink:
    """A SQL table (created from the first chunk's columns), its ``_errors`` table and the
    manifest row, written in one transaction per chunk (a connection per transaction, none
    held between chunks or left open by a run that stops)."""

    def __init__(self, url: str, table: str) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError
        from sqlalchemy.pool import NullPool

        try:
            self.engine = create_engine(normalize_url(url), poolclass=NullPool)
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"--sql-db {url!r} is not a usable database URL: {exc}") from None
        safe = make_url(url).render_as_string(hide_password=True)
        self.table = table
        self.description = f"{safe} table {table}"
        self.errors_location = f"{safe} table {table}_errors"
        self._tables: dict[str, Any] = {}

    def read_manifest(self) -> Manifest | None:
        from sqlalchemy import inspect, select
        from sqlalchemy.exc import SQLAlchemyError

        try:
            known = inspect(self.engine).has_table(MANIFEST_TABLE)
        except SQLAlchemyError as exc:  # the first contact with the database
            raise sql_failure(f"--output sql:{self.table}", exc, connecting=True) from None
        if not known:
            return None
        manifests = _manifest_table()
        with self.engine.connect() as conn:
            found = conn.execute(select(manifests.c.manifest)
                                 .where(manifests.c.output == self.table)).scalar()
        return None if found is None else Manifest.from_dict(orjson.loads(found))

    def begin(self, start: Start) -> None:
        from sqlalchemy import MetaData, Table, delete

        manifests = _manifest_table()
        with self.engine.begin() as conn:
            manifests.create(conn, checkfirst=True)
            if start.clear:
                for name in (self.table, f"{self.table}_errors"):
                    Table(name, MetaData()).drop(conn, checkfirst=True)
                conn.execute(delete(manifests).where(manifests.c.output == self.table))

    def commit(self, index: int, scored: pa.Table, errors: pa.Table, manifest: Manifest
               ) -> None:
        with self.engine.begin() as conn:
            for name, rows in ((self.table, scored), (f"{self.table}_errors", errors)):
                if rows.num_rows:
                    conn.execute(self._table(conn, name, rows.schema).insert(), rows.to_pylist())
            self._write_manifest(conn, manifest)

    def finish(self, manifest: Manifest) -> None:
        with self.engine.begin() as conn:
            self._write_manifest(conn, manifest)
        self.engine.dispose()

    def _write_manifest(self, conn: Any, manifest: Manifest) -> None:
        from sqlalchemy import delete, insert

        manifests = _manifest_table()
        conn.execute(delete(manifests).where(manifests.c.output == self.table))
        conn.execute(insert(manifests).values(output=self.table,
                                              manifest=orjson.dumps(manifest.to_dict()).decode()))

    def _table(self, conn: Any, name: str, schema: pa.Schema) -> Any:
        from sqlalchemy import Column, MetaData, Table

        if name not in self._tables:
            table = Table(name, MetaData(), *(Column(f.name, _sql_type(f.type)) for f in schema))
            table.create(conn, checkfirst=True)
            self._tables[name] = table
        return self._tables[name]


def _manifest_table() -> Any:
    from sqlalchemy import Column, MetaData, String, Table, Text

    return Table(MANIFEST_TABLE, MetaData(), Column("output", String(100), primary_key=True),
                 Column("manifest", Text, nullable=False))


def _sql_type(kind: pa.DataType) -> Any:
    from sqlalchemy import JSON, BigInteger, Boolean, Float, Text

    if pa.types.is_boolean(kind):
        return Boolean()
    if pa.types.is_integer(kind):
        return BigInteger()
    if pa.types.is_floating(kind):
        return Float()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        return Text()
    return JSON()


register_sink("sql", _sql_sink)

__all__ = ["ERRORS", "MANIFEST", "MANIFEST_TABLE", "OWNED_SINKS", "SINKS", "OwnedSinkFactory",
           "ParquetSink", "Sink", "SinkFactory", "SinkOwner", "SqlSink", "open_sink",
           "register_owned_sink", "register_sink"]
