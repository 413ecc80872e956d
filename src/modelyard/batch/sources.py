"""Where a batch job reads: files (Parquet, CSV, JSON lines) on disk or any fsspec URL, or SQL.

Every source yields its rows in a fixed order as chunks of exactly ``chunk_rows`` rows (the last
one shorter), so chunk N is the same rows on every run and a rerun can skip the chunks a killed
run finished. Files are streamed through pyarrow datasets a record batch at a time, a SQL query
through a server-side cursor: memory holds a chunk or two, whatever the input's size.

CSV columns the model reads are read as text and converted here, value by value where a
column holds something that is not a number, so one bad cell is one bad row (with its reason),
not a failed read. JSON lines are parsed line by line like request bodies: a line that is not a
JSON object is a bad row too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import numpy as np
import orjson
import pyarrow as pa

from modelyard.batch.columns import Columns, from_arrow, from_values
from modelyard.errors import ConfigError, ModelyardError, StorageError
from modelyard.registry.database import normalize_url

_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json",
            ".ndjson": "json", ".json": "json"}
#: the column a bad JSON line reports its reason in (the line itself cannot be read)
LINE_ERROR = "__line_error__"


class Source(Protocol):
    """Rows to score, in a fixed order, a chunk at a time."""

    @property
    def description(self) -> str:
        """What it reads, for messages and the run record."""
        ...

    def columns(self) -> list[str]:
        """The column names the input has."""
        ...

    def fingerprint(self) -> str:
        """A digest that changes when the input changes (what a resume checks)."""
        ...

    def count_rows(self) -> int | None:
        """The number of rows, when that is cheap to know (a progress bar's total)."""
        ...

    def chunks(self, columns: Sequence[str], chunk_rows: int, skip: int = 0
               ) -> Generator[Columns, None, None]:
        """``columns`` in chunks of ``chunk_rows`` rows, the first ``skip`` chunks left out."""
        ...


class SourceFactory(Protocol):
    """Builds a source from the part of ``--input`` after its scheme (``sql:SELECT ...``)."""

    def __call__(self, target: str, /, *, sql_url: str | None) -> Source: ...


#: sources by the scheme that starts a lone ``--input`` (``sql:``); anything else is files
SOURCES: dict[str, SourceFactory] = {}


def register_source(scheme: str, factory: SourceFactory) -> None:
    """Make ``--input SCHEME:TARGET`` read through ``factory``."""
    SOURCES[scheme] = factory


def open_source(spec: str | Sequence[str], *, sql_url: str | None = None,
                file_format: str | None = None) -> Source:
    """The source ``spec`` names: a registered scheme (``sql:SELECT ...`` with ``sql_url``), or
    files, folders and globs (paths or fsspec URLs)."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    if not specs:
        raise ConfigError("give --input: files, globs, an fsspec URL or sql:SELECT ...")
    scheme, _, target = specs[0].partition(":")
    factory = SOURCES.get(scheme) if len(specs) == 1 else None
    if factory is not None:
        return factory(target.strip(), sql_url=sql_url)
    return FileSource.open(specs, file_format)


# -- files --------------------------------------------------------------------------------------
@dataclass
class FileSource:
    """Files on one filesystem (local or fsspec), read in sorted path order."""

    fs: Any
    paths: list[str]
    file_format: str
    description: str

    @classmethod
    def open(cls, specs: Sequence[str], file_format: str | None = None) -> FileSource:
        """Expand ``specs`` (paths, folders, globs, URLs) into the files they name."""
        import fsspec

        fs, _ = fsspec.core.url_to_fs(specs[0])
        found: list[str] = []
        for spec in specs:
            found.extend(_expand(fs, spec))
        if not found:
            raise ConfigError(f"--input {' '.join(specs)} matches no file")
        paths = sorted(set(found))
        fmt = file_format or _format_of(paths)
        return cls(fs, paths, fmt, " ".join(specs))

    def columns(self) -> list[str]:
        if self.file_format == "json":
            with self.fs.open(self.paths[0], "rb") as f:
                for line in f:  # the first object's fields (a bad line is a bad row, later)
                    first = _record(line) if line.strip() else None
                    if isinstance(first, dict):
                        return list(first)
            return []
        return list(self._dataset(None).schema.names)

    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.file_format.encode())
        for path in self.paths:
            info = self.fs.info(path)
            stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or \
                info.get("LastModified") or info.get("created")
            digest.update(orjson.dumps([path, info.get("size"), str(stamp)]))
        return digest.hexdigest()

    def count_rows(self) -> int | None:
        if self.file_format != "parquet":
            return None  # counting would read it all once more
        return int(self._dataset(None).count_rows())

    def chunks(self, columns: Sequence[str], chunk_rows: int, skip: int = 0
               ) -> Generator[Columns, None, None]:
        if self.file_format == "json":
            yield from _json_chunks(self.fs, self.paths, columns, chunk_rows, skip)
            return
        dataset = self._dataset(columns)
        # pyarrow's readers run ahead of a slower consumer (the model) up to whole files,
        # unless both readaheads are one and they read on this thread: then memory holds a
        # batch or two, whatever the input's size (bench/batch.py measures it)
        batches = dataset.to_batches(columns=list(columns), batch_size=chunk_rows,
                                     use_threads=False, batch_readahead=1,
                                     fragment_readahead=1)
        tables = rechunk(batches, chunk_rows, skip * chunk_rows)
        while True:
            try:
                table = next(tables)
            except StopIteration:
                return
            except (pa.ArrowException, OSError) as exc:  # a corrupt or vanished file
                raise ConfigError(f"cannot read --input {self.description}: "
                                  f"{str(exc).splitlines()[0]}") from None
            yield {name: self._convert(table.column(name)) for name in columns}

    def _convert(self, column: pa.ChunkedArray) -> np.ndarray:
        if self.file_format == "csv" and pa.types.is_string(column.type):
            return _parse_text(column)
        return from_arrow(column)

    def _dataset(self, text_columns: Sequence[str] | None) -> Any:
        import pyarrow.dataset as ds

        fmt: Any = self.file_format
        if self.file_format == "parquet":
            # pre-buffering reads a file's column chunks ahead of the scan, up to whole files
            scan = ds.ParquetFragmentScanOptions(pre_buffer=False)
            fmt = ds.ParquetFileFormat(default_fragment_scan_options=scan)
        if self.file_format == "csv" and text_columns is not None:
            import pyarrow.csv as pacsv

            # numbers are converted here, cell by cell, so one bad cell is one bad row
            convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in text_columns},
                                           strings_can_be_null=True)
            fmt = ds.CsvFileFormat(convert_options=convert)
        try:
            return ds.dataset(self.paths, format=fmt, filesystem=_arrow_fs(self.fs))
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"cannot read --input {self.description}: {exc}") from None


def _expand(fs: Any, spec: str) -> list[str]:
    path = fs._strip_protocol(spec)
    if any(ch in path for ch in "*?["):
        return [p for p in fs.glob(path) if fs.isfile(p)]
    if fs.isdir(path):
        return [p for p in fs.find(path) if _suffix(p) in _FORMATS
                and not p.rsplit("/", 1)[-1].startswith((".", "_"))]
    if not fs.exists(path):
        raise ConfigError(f"--input {spec} does not exist")
    return [path]


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _format_of(paths: Sequence[str]) -> str:
    formats = {_FORMATS.get(_suffix(p)) for p in paths}
    if None in formats:
        odd = next(p for p in paths if _suffix(p) not in _FORMATS)
        raise ConfigError(f"cannot tell the format of {odd} from its name; give --format "
                          "parquet, csv or json")
    if len(formats) > 1:
        raise ConfigError("--input mixes formats (" + ", ".join(sorted(map(str, formats)))
                          + "); score each kind in its own run")
    return str(formats.pop())


def _arrow_fs(fs: Any) -> Any:
    """The filesystem pyarrow reads through: its own for local files, fsspec's otherwise."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return PyFileSystem(FSSpecHandler(fs))


def rechunk(batches: Any, chunk_rows: int, skip_rows: int = 0) -> Iterator[pa.Table]:
    """Tables of exactly ``chunk_rows`` rows (the last one shorter) from record batches of any
    size, after leaving out the first ``skip_rows`` rows."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        if skip_rows:
            dropped = min(skip_rows, batch.num_rows)
            skip_rows -= dropped
            batch = batch.slice(dropped)
        if not batch.num_rows:
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, held = rest.to_batches(), rest.num_rows
    if held:
        yield pa.Table.from_batches(pending)


def _parse_text(column: pa.ChunkedArray) -> np.ndarray:
    """A CSV column read as text: numbers where every cell is one, else each cell as a number
    where it parses and as its text where it does not (validation names it)."""
    import pyarrow.compute as pc

    if column.null_count == 0:
        for target in (pa.int64(), pa.float64()):
            try:
                return np.asarray(pc.cast(column, target).to_numpy())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    return from_values([_number(v) for v in column.to_pylist()])


def _number(text: str | None) -> Any:
    if text is None:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            continue
    return text


# -- JSON lines ---------------------------------------------------------------------------------
def _record(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"line is not valid JSON: {exc}"


def _json_chunks(fs: Any, paths: Sequence[str], columns: Sequence[str], chunk_rows: int,
                 skip: int) -> Generator[Columns, None, None]:
    """JSON objects, one a line, as columns: a missing field or a line that is not an object
    gives ``None`` in every column plus its reason in :data:`LINE_ERROR`."""
    records: list[Any] = []
    index = 0
    for path in paths:
        with fs.open(path, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                records.append(line)
                if len(records) == chunk_rows:
                    if index >= skip:
                        yield _json_columns(records, columns)
                    index += 1
                    records = []
    if records and index >= skip:
        yield _json_columns(records, columns)


def _json_columns(lines: list[bytes], columns: Sequence[str]) -> Columns:
    parsed = [_record(line) for line in lines]
    reasons = [r if isinstance(r, str) else None if isinstance(r, dict) else
               "line is not a JSON object" for r in parsed]
    rows = [r if isinstance(r, dict) else {} for r in parsed]
    out = {name: from_values([r.get(name) for r in rows]) for name in columns}
    out[LINE_ERROR] = from_values(reasons) if any(reasons) else np.full(len(rows), None)
    return out


# -- SQL ----------------------------------------------------------------------------------------
def sql_failure(what: str, exc: Exception, *, connecting: bool = False) -> ModelyardError:
    """A database error as one line: failing to connect is a :class:`StorageError`, a
    statement that fails (a bad query, a missing table) a :class:`ConfigError`."""
    from sqlalchemy.exc import DBAPIError

    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if connecting:
        return StorageError(f"{what}: cannot connect to the database: {text}")
    return ConfigError(f"{what} failed: {text}")


def _sql_columns(rows: Sequence[Any], columns: Sequence[str], where: Sequence[int]) -> Columns:
    """Query rows as columns; ``NUMERIC`` values (``Decimal``) become floats, the number a JSON
    client would have sent."""
    out: Columns = {}
    for name, i in zip(columns, where, strict=True):
        values = [r[i] for r in rows]
        if any(isinstance(v, Decimal) for v in values[:1000]):
            values = [float(v) if isinstance(v, Decimal) else v for v in values]
        out[name] = from_values(values)
    return out


def _sql_source(query: str, *, sql_url: str | None) -> Source:
    if not sql_url:
        raise ConfigError("--input sql:... needs --sql-db URL (a SQLAlchemy database URL)")
    return SqlSource(sql_url, query.rstrip(";"))


@dataclass
class SqlSource:
    """The rows of one SQL query (ordered as the query orders them: add ORDER BY to resume)."""

    url: str
    query: str

    @property
    def description(self) -> str:
        return f"sql:{self.query}"

    def columns(self) -> list[str]:
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        engine = self._engine()
        what = f"--input sql:{self.query}"
        try:
            conn = engine.connect()
        except SQLAlchemyError as exc:
            raise sql_failure(what, exc, connecting=True) from None
        try:
            with conn:  # the names only: no row is fetched
                return list(conn.execute(text(f"SELECT * FROM ({self.query}) AS q LIMIT 0"))
                            .keys())
        except SQLAlchemyError as exc:
            raise sql_failure(what, exc) from None
        finally:
            engine.dispose()

    def fingerprint(self) -> str:
        from sqlalchemy.engine import make_url

        safe = make_url(self.url).render_as_string(hide_password=True)
        return hashlib.sha256(orjson.dumps([safe, self.query])).hexdigest()

    def count_rows(self) -> int | None:
        return None

    def chunks(self, columns: Sequence[str], chunk_rows: int, skip: int = 0
               ) -> Generator[Columns, None, None]:
        engine = self._engine()
        if engine.dialect.name == "sqlite":
            yield from self._pages(engine, columns, chunk_rows, skip)
            return
        try:
            with engine.connect() as conn:
                result = conn.execution_options(stream_results=True,
                                                yield_per=chunk_rows).execute(self._text())
                try:
                    names = list(result.keys())
                    where = [names.index(c) for c in columns]
                    index = 0
                    while rows := result.fetchmany(chunk_rows):
                        if index >= skip:
                            yield _sql_columns(rows, columns, where)
                        index += 1
                finally:
                    result.close()  # the server-side cursor, also when the run stops mid-way
        finally:
            engine.dispose()

    def _pages(self, engine: Any, columns: Sequence[str], chunk_rows: int, skip: int
               ) -> Generator[Columns, None, None]:
        """SQLite: a page per chunk, each read in its own short transaction, because a reader
        left open would lock out the writes of an output in the same file."""
        from sqlalchemy import text

        paged = text(f"SELECT * FROM ({self.query}) AS q LIMIT :limit OFFSET :offset")
        index = skip
        try:
            while True:
                with engine.connect() as conn:
                    result = conn.execute(paged, {"limit": chunk_rows,
                                                  "offset": index * chunk_rows})
                    where = [list(result.keys()).index(c) for c in columns]
                    rows = result.fetchall()
                if not rows:
                    return
                yield _sql_columns(rows, columns, where)
                index += 1
        finally:
            engine.dispose()

    def _text(self) -> Any:
        from sqlalchemy import text

        return text(self.query)

    def _engine(self) -> Any:
        from sqlalchemy import create_engine
        from sqlalchemy.exc import ArgumentError
        from sqlalchemy.pool import NullPool

        try:
            return create_engine(normalize_url(self.url), poolclass=NullPool)
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"--sql-db {self.url!r} is not a usable database URL: {exc}") \
                from None


register_source("sql", _sql_source)

__all__ = ["LINE_ERROR", "SOURCES", "FileSource", "Source", "SourceFactory", "SqlSource",
           "open_source", "rechunk", "register_source", "sql_failure"]
