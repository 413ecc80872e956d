"""Online stores of precomputed answers: the contract and its registered implementations.

An answer is stored under (model, version, key), so answers of one version are never read as
another's. Two stores are registered by URL scheme in :data:`STORES`:

- the **registry database** (``store: registry``; SQLite or PostgreSQL): table ``precomputed``
  (migration 0008), one row per (model, version, key) with the encoded answer and the time it
  was written, upserted a chunk at a time (``INSERT ... ON CONFLICT DO UPDATE``, one statement
  per chunk); the batch manifest in ``precomputed_manifests``;
- **Redis** (``redis://``, ``rediss://``, ``unix://``; redis-py): one string per answer under
  ``<prefix><model>:<version>:<key>`` (prefix ``modelyard:precomputed:`` unless the URL's
  ``prefix`` query parameter says otherwise), holding the time it was written and the answer,
  set with ``EX`` from the TTL in one pipeline per chunk; the manifest under
  ``<prefix><model>:<version>#manifest``.

Every failure to reach a store is a :class:`~modelyard.errors.StorageError` naming it; the
server turns one into a live answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from modelyard.errors import ConfigError, StorageError
from modelyard.precompute.freshness import Stored
from modelyard.registry.tables import PrecomputedManifestRow, PrecomputedRow

REGISTRY = "registry"
ANSWERS_TABLE = "precomputed"
MANIFESTS_TABLE = "precomputed_manifests"
DEFAULT_PREFIX = "modelyard:precomputed:"
_READ_KEYS = 500  # keys per SELECT: well under SQLite's limit on bound parameters
#: a DBAPI driver's placeholder by its paramstyle (sqlite3: qmark; psycopg: pyformat)
_MARKS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


class OnlineStore(Protocol):
    """Precomputed answers by (model, version, key), and the batch manifest of each version."""

    #: where answers go, for messages and the run record (no password)
    description: str

    def write(self, model: str, version: int, rows: Sequence[tuple[str, bytes]],
              written_at: float, ttl_s: float) -> None:
        """Store ``(key, answer)`` rows, replacing older answers of the same keys."""
        ...

    def read(self, model: str, version: int, keys: Sequence[str]) -> dict[str, Stored]:
        """The stored answers of those keys that have one."""
        ...

    def read_manifest(self, model: str, version: int) -> bytes | None:
        """The batch manifest the last precompute run of the version left, if any."""
        ...

    def write_manifest(self, model: str, version: int, manifest: bytes | None) -> None:
        """Replace the version's manifest (None: remove it)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


#: how a store is opened from its URL: ``factory(url, engine=...)``; ``engine`` is the
#: registry's own SQLAlchemy engine when the caller has one (the server), else None.
StoreFactory = Callable[..., OnlineStore]
STORES: dict[str, StoreFactory] = {}


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Make ``store: SCHEME://...`` open through ``factory``."""
    STORES[scheme] = factory


def open_store(url: str, *, engine: Any = None) -> OnlineStore:
    """The store ``url`` names: a SQLAlchemy URL (the registry database) or a Redis URL."""
    scheme = url.split(":", 1)[0].split("+", 1)[0]
    factory = STORES.get(scheme)
    if factory is None:
        raise ConfigError(f"precompute.store {_safe(url)!r}: no online store for {scheme!r}; "
                          f"known: registry, {', '.join(sorted(STORES))}")
    return factory(url, engine=engine)


def store_url(store: str, registry_url: str) -> str:
    """The URL a spec's ``store`` names: ``registry`` is the registry's database."""
    return registry_url if store == REGISTRY else store


def _safe(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


# -- the registry database ----------------------------------------------------------------------
_ANSWERS: Any = PrecomputedRow.__table__
_MANIFESTS: Any = PrecomputedManifestRow.__table__


def _upsert(dialect: str) -> Any:
    """``INSERT ... ON CONFLICT (model, version, key) DO UPDATE`` for the dialect."""
    from sqlalchemy.dialects import postgresql, sqlite

    inserts: dict[str, Any] = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}
    insert = inserts.get(dialect)
    if insert is None:
        raise ConfigError(f"precompute.store registry: the registry database is {dialect}; "
                          "precomputed answers need SQLite or PostgreSQL (or use Redis)")
    stmt = insert(_ANSWERS)
    return stmt.on_conflict_do_update(
        index_elements=["model", "version", "key"],
        set_={"answer": stmt.excluded.answer, "written_at": stmt.excluded.written_at})


class SqlStore:
    """Answers in the registry database's ``precomputed`` table (SQLite or PostgreSQL)."""

    def __init__(self, url: str, *, engine: Any = None) -> None:
        from sqlalchemy import create_engine
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        from modelyard.registry.database import normalize_url

        self._own = engine is None
        self.engine = engine if engine is not None else create_engine(
            normalize_url(url), poolclass=NullPool)
        self.description = "registry database " + make_url(normalize_url(url)).render_as_string(
            hide_password=True)
        self._upsert = _upsert(self.engine.dialect.name)
        style = self.engine.dialect.paramstyle
        if style not in _MARKS:
            raise ConfigError(f"precompute.store: the database driver's parameter style "
                              f"{style!r} is not supported; use SQLite or PostgreSQL")
        self._mark = _MARKS[style]

    def write(self, model: str, version: int, rows: Sequence[tuple[str, bytes]],
              written_at: float, ttl_s: float) -> None:
        if not rows:
            return
        values = [{"model": model, "version": version, "key": key, "answer": answer.decode(),
                   "written_at": written_at} for key, answer in rows]
        with self._failures("write"), self.engine.begin() as conn:
            conn.execute(self._upsert, values)

    def read(self, model: str, version: int, keys: Sequence[str]) -> dict[str, Stored]:
        # on the request path: one plain DBAPI statement on a pooled connection (SQLAlchemy's
        # statement building and execution cost several times the query itself)
        unique = list(dict.fromkeys(keys))
        out: dict[str, Stored] = {}
        with self._failures("read"):
            raw = self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                for start in range(0, len(unique), _READ_KEYS):  # bound parameters per query
                    batch = unique[start:start + _READ_KEYS]
                    cursor.execute(self._select(len(batch)), (model, version, *batch))
                    out.update((k, Stored(a.encode(), float(w))) for k, a, w in cursor.fetchall())
                cursor.close()
                raw.rollback()  # end the read transaction before the connection goes back
            finally:
                raw.close()
        return out

    def _select(self, n: int) -> str:
        """The read for ``n`` keys in the driver's own parameter style."""
        mark = self._mark
        return (f'SELECT "key", answer, written_at FROM {ANSWERS_TABLE} WHERE model = {mark} '
                f'AND version = {mark} AND "key" IN ({", ".join([mark] * n)})')

    def read_manifest(self, model: str, version: int) -> bytes | None:
        from sqlalchemy import select

        m = _MANIFESTS
        with self._failures("read"), self.engine.connect() as conn:
            found = conn.execute(select(m.c.manifest).where(
                m.c.model == model, m.c.version == version)).scalar()
        return None if found is None else str(found).encode()

    def write_manifest(self, model: str, version: int, manifest: bytes | None) -> None:
        from sqlalchemy import delete, insert

        m = _MANIFESTS
        with self._failures("write"), self.engine.begin() as conn:
            conn.execute(delete(m).where(m.c.model == model, m.c.version == version))
            if manifest is not None:
                conn.execute(insert(m).values(model=model, version=version,
                                              manifest=manifest.decode()))

    def close(self) -> None:
        if self._own:
            self.engine.dispose()

    def _failures(self, what: str) -> Any:
        return _translate(f"cannot {what} precomputed answers in {self.description}")


class _translate:
    """Turns a driver's error into one :class:`StorageError` line naming the store."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        if exc is None or isinstance(exc, StorageError):
            return
        if isinstance(exc, SQLAlchemyError | OSError) or _is_redis_error(exc):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StorageError(f"{self.message}: {first[:300]}") from None


def _raw(value: bytes | str) -> bytes:
    """A Redis value as bytes (the client is made without decode_responses)."""
    return value if isinstance(value, bytes) else value.encode()


def _is_redis_error(exc: BaseException) -> bool:
    return type(exc).__module__.startswith("redis")


# -- Redis --------------------------------------------------------------------------------------
class RedisStore:
    """Answers in Redis: one string per (model, version, key), expiring with the TTL."""

    def __init__(self, url: str, *, engine: Any = None) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError("precompute.store is a Redis URL but redis-py is not installed: "
                              "pip install 'modelyard[redis]'") from None
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        self.prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
        plain = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query
                                                           if k != "prefix"])))
        self.description = _safe(plain)
        try:
            self.client = redis.Redis.from_url(plain, socket_timeout=2.0,
                                               socket_connect_timeout=2.0)
        except ValueError as exc:
            raise ConfigError(f"precompute.store {self.description!r} is not a Redis URL: "
                              f"{exc}") from None

    def _name(self, model: str, version: int, key: str) -> str:
        return f"{self.prefix}{model}:{version}:{key}"

    def _manifest(self, model: str, version: int) -> str:
        return f"{self.prefix}{model}:{version}#manifest"  # never a key's name (no ':' after)

    def write(self, model: str, version: int, rows: Sequence[tuple[str, bytes]],
              written_at: float, ttl_s: float) -> None:
        expire = max(1, math.ceil(ttl_s))
        stamp = f"{written_at:.6f} ".encode()
        with self._failures("write"):
            pipe = self.client.pipeline(transaction=False)
            for key, answer in rows:
                pipe.set(self._name(model, version, key), stamp + answer, ex=expire)
            pipe.execute()

    def read(self, model: str, version: int, keys: Sequence[str]) -> dict[str, Stored]:
        if not keys:
            return {}
        unique = list(dict.fromkeys(keys))
        with self._failures("read"):
            values = self.client.mget([self._name(model, version, k) for k in unique])
        out: dict[str, Stored] = {}
        for key, value in zip(unique, values, strict=True):
            if value is None:
                continue
            stamp, _, answer = _raw(value).partition(b" ")
            try:
                out[key] = Stored(answer, float(stamp))
            except ValueError:
                continue  # not ours: the row goes live
        return out

    def read_manifest(self, model: str, version: int) -> bytes | None:
        with self._failures("read"):
            found = self.client.get(self._manifest(model, version))
        return None if found is None else _raw(found)

    def write_manifest(self, model: str, version: int, manifest: bytes | None) -> None:
        name = self._manifest(model, version)
        with self._failures("write"):
            if manifest is None:
                self.client.delete(name)
            else:
                self.client.set(name, manifest)

    def close(self) -> None:
        self.client.close()

    def _failures(self, what: str) -> Any:
        return _translate(f"cannot {what} precomputed answers in Redis {self.description}")


for _scheme in ("sqlite", "postgresql", "postgres"):
    register_store(_scheme, SqlStore)
for _scheme in ("redis", "rediss", "unix"):
    register_store(_scheme, RedisStore)

__all__ = ["ANSWERS_TABLE", "DEFAULT_PREFIX", "MANIFESTS_TABLE", "REGISTRY", "STORES",
           "OnlineStore", "RedisStore", "SqlStore", "StoreFactory", "open_store",
           "register_store", "store_url"]
