"""The registry database: engine set-up for SQLite and PostgreSQL, sessions, and migrations."""

from __future__ import annotations

import contextlib
import fcntl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from modelyard.errors import ConfigError, StorageError
from modelyard.registry.audit_chain import append_pending

_MIGRATIONS = Path(__file__).parent / "migrations"
_PG_MIGRATION_LOCK = 7_318_042_991  # advisory lock key: one migrator at a time
_head_lock = threading.Lock()
_head: str | None = None


def normalize_url(url: str) -> str:
    """Accept ``postgres://`` and ``postgresql://`` as PostgreSQL through psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


class Database:
    """One registry database: an engine, read and write sessions, and schema migrations."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        try:
            parsed = make_url(self.url)
        except (ArgumentError, ValueError):  # ValueError: a port that is not a number
            raise ConfigError(
                f"registry database URL {url!r} is not a valid URL; "
                "use sqlite:///path/registry.db or postgresql://user@host/db"
            ) from None
        self.dialect = parsed.get_backend_name()
        self.display_url = parsed.render_as_string(hide_password=True)
        self.engine = self._create_engine(parsed)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _create_engine(self, parsed: Any) -> Engine:
        if self.dialect == "sqlite":
            if parsed.database and parsed.database != ":memory:":
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                parsed, connect_args={"timeout": 60, "check_same_thread": False},
                json_serializer=_json_dumps,
            )
            _tune_sqlite(engine)
            return engine
        connect_args = {"connect_timeout": 5} if self.dialect == "postgresql" else {}
        try:
            return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args,
                                 json_serializer=_json_dumps)
        except (ImportError, SQLAlchemyError) as exc:
            raise ConfigError(
                f"cannot use registry database {self.display_url}: {exc}; "
                "for PostgreSQL: pip install 'modelyard[postgres]'"
            ) from None

    @contextlib.contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A session in one transaction, committed on success and rolled back on error.

        ``write=True`` takes SQLite's write lock at the start (``BEGIN IMMEDIATE``) so two
        writers queue instead of failing halfway; PostgreSQL uses row locks instead.
        """
        try:
            with self._sessions() as session:
                if write and self.dialect == "sqlite":
                    session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
                yield session
                append_pending(session)  # the audit chain's appends, last, under their lock
                session.commit()
        except OperationalError as exc:
            raise StorageError(
                f"registry database {self.display_url} failed: {_first_line(exc)}; "
                "check that it is reachable (MODELYARD_DB)"
            ) from None

    def migrate(self) -> None:
        """Bring the schema to the newest migration; safe when several processes start at once."""
        try:
            with self.engine.connect() as conn:
                if _current_revision(conn) == head_revision():
                    return
            with self._migration_lock(), self.engine.begin() as conn:
                if _current_revision(conn) != head_revision():
                    _upgrade(conn)
        except OperationalError as exc:
            raise StorageError(
                f"cannot reach the registry database {self.display_url}: {_first_line(exc)}; "
                "check MODELYARD_DB and that the server is running"
            ) from None

    def revision(self) -> str | None:
        """The schema revision the database is at now; ``None`` for an empty database."""
        try:
            with self.engine.connect() as conn:
                return _current_revision(conn)
        except OperationalError as exc:
            raise StorageError(
                f"cannot reach the registry database {self.display_url}: {_first_line(exc)}; "
                "check MODELYARD_DB and that the server is running"
            ) from None

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        if self.dialect == "sqlite":
            database = self.engine.url.database
            if not database or database == ":memory:":
                yield
                return
            with open(f"{database}.migrate.lock", "w") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
        elif self.dialect == "postgresql":
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATION_LOCK})
                    conn.commit()
        else:
            yield

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


def head_revision() -> str:
    """The newest migration's revision id (read once per process)."""
    global _head
    with _head_lock:
        if _head is None:
            from alembic.script import ScriptDirectory

            _head = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
        return str(_head)


def _current_revision(conn: Any) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def _upgrade(conn: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, emit BEGIN, so we can choose BEGIN IMMEDIATE.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _json_dumps(value: Any) -> str:
    """JSON columns through orjson: several times faster than ``json.dumps`` (the prediction
    log writes thousands of rows a second); numpy values and non-string keys are accepted, and
    NaN becomes null rather than invalid JSON."""
    import orjson

    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
                        ).decode()


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    return str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__


__all__ = ["Database", "head_revision", "normalize_url"]
