"""One input row of a precompute population by its key, for ``GET .../precomputed/{key}``.

When the answer for a key is missing or stale, the server can still answer live if it can read
that key's input row: a ``sql:`` input is queried again with the key as a bound parameter (never
pasted into the SQL). Files cannot be searched by key cheaply; then the caller is told to POST
the inputs.
"""

from __future__ import annotations

from typing import Any

from modelyard.errors import StorageError
from modelyard.spec import PrecomputeSpec

#: the name the precompute query is wrapped under
_ALIAS = "modelyard_q"


def key_query(query: str, key: str) -> str:
    """The SQL that reads the rows of ``query`` whose ``key`` column, as text, is ``:key``.

    ``key`` is a column name the spec validated (letters, digits, ``_``); the value is bound.
    """
    body = query.strip().rstrip(";")
    return (f"SELECT * FROM ({body}) AS {_ALIAS} "
            f"WHERE CAST({_ALIAS}.{key} AS TEXT) = :key LIMIT 1")


class RowReader:
    """Reads one row by key from a ``sql:`` precompute input (an engine per database URL)."""

    def __init__(self) -> None:
        self._engines: dict[str, Any] = {}

    def readable(self, section: PrecomputeSpec) -> bool:
        """Whether rows of this section's input can be read by key."""
        return section.sql_query is not None and section.url is not None

    def row(self, section: PrecomputeSpec, key: str) -> dict[str, Any] | None:
        """The input row of ``key`` (blocking), None when there is none."""
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        query, url = section.sql_query, section.url
        if query is None or url is None:
            return None
        try:
            with self._engine(url).connect() as conn:
                found = conn.execute(text(key_query(query, section.key)), {"key": key}).first()
        except SQLAlchemyError as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StorageError(f"cannot read the precompute input by key: {first[:300]}"
                               ) from None
        return None if found is None else dict(found._mapping)

    def _engine(self, url: str) -> Any:
        if url not in self._engines:
            from sqlalchemy import create_engine

            from modelyard.registry.database import normalize_url

            self._engines[url] = create_engine(normalize_url(url), pool_size=2,
                                               pool_pre_ping=True) \
                if not url.startswith("sqlite") else create_engine(normalize_url(url))
        return self._engines[url]

    def close(self) -> None:
        """Release every engine."""
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


__all__ = ["RowReader", "key_query"]
