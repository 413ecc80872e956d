"""Named leases in the registry database: one holder at a time, until the lease expires.

A scheduler takes ``retrain:<model>`` before it retrains, so two schedulers sharing a registry
never train the same model at once, and a scheduler that dies leaves a lease that simply runs
out::

    leases = Leases(registry)
    if leases.acquire("retrain:fraud", holder="host-1:4242", ttl_s=3900):
        try:
            ...
        finally:
            leases.release("retrain:fraud", "host-1:4242")

Every call is one short transaction on the ``leases`` table: a conditional UPDATE (take it when
it expired or is already ours), else an INSERT that does nothing on conflict. On PostgreSQL the
row lock makes a second taker re-check the condition after the first commits; on SQLite writers
are serialised by ``BEGIN IMMEDIATE``. Either way, of several racing takers exactly one wins.
Expiry uses the callers' clocks, which must agree (NTP) to well within the leases' lifetimes.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from modelyard.errors import ConfigError
from modelyard.registry.client import Registry
from modelyard.registry.rows import now
from modelyard.registry.tables import LeaseRow

_LEASES: Table = LeaseRow.__table__  # type: ignore[assignment]


def _insert_postgresql(s: Session, values: dict[str, Any]) -> bool:
    # psycopg reports no rowcount for this INSERT; RETURNING says whether a row went in
    return s.scalar(postgresql.insert(_LEASES).values(values)
                    .on_conflict_do_nothing(index_elements=["name"])
                    .returning(_LEASES.c.name)) is not None


def _insert_sqlite(s: Session, values: dict[str, Any]) -> bool:
    # no RETURNING: SQLite before 3.35 lacks it; the rowcount is exact there
    created = s.execute(sqlite.insert(_LEASES).values(values)
                        .on_conflict_do_nothing(index_elements=["name"]))
    return bool(created.rowcount == 1)  # type: ignore[attr-defined]


#: INSERT ... ON CONFLICT DO NOTHING by dialect: whether the row was inserted.
_INSERTS: dict[str, Callable[[Session, dict[str, Any]], bool]] = {
    "postgresql": _insert_postgresql,
    "sqlite": _insert_sqlite,
}
_MAX_NAME = 200


class Leases:
    """Acquire, renew, release and inspect named leases in ``registry``'s database."""

    def __init__(self, registry: Registry, *, clock: Callable[[], datetime] = now) -> None:
        self.registry = registry
        self._clock = clock  # tests pass a fake clock to let leases expire

    def acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take ``name`` for ``ttl_s`` seconds if it is free, expired or already ``holder``'s.

        Returns whether ``holder`` now holds it. Taking a lease one already holds extends it.
        """
        _check(name, holder, ttl_s)
        at = self._clock()
        expires = at + timedelta(seconds=ttl_s)
        db = self.registry.db
        with db.session(write=True) as s:
            taken = s.execute(
                update(_LEASES)
                .where(_LEASES.c.name == name,
                       (_LEASES.c.expires_at <= at) | (_LEASES.c.holder == holder))
                .values(holder=holder, acquired_at=at, expires_at=expires)
            )
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                return True
            insert = _INSERTS.get(db.dialect)
            if insert is None:
                raise ConfigError(f"leases need SQLite or PostgreSQL, not {db.dialect}")
            return insert(s, {"name": name, "holder": holder, "acquired_at": at,
                              "expires_at": expires})

    def renew(self, name: str, holder: str, ttl_s: float) -> bool:
        """Extend ``holder``'s lease to ``ttl_s`` from now; False if someone else has it now.

        A lease that expired but that no one else took is still ``holder``'s to renew.
        """
        _check(name, holder, ttl_s)
        at = self._clock()
        with self.registry.db.session(write=True) as s:
            renewed = s.execute(
                update(_LEASES)
                .where(_LEASES.c.name == name, _LEASES.c.holder == holder)
                .values(expires_at=at + timedelta(seconds=ttl_s))
            )
            return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]

    def release(self, name: str, holder: str) -> None:
        """Give ``name`` up, if ``holder`` holds it (someone else's lease is left alone)."""
        with self.registry.db.session(write=True) as s:
            s.execute(delete(_LEASES).where(_LEASES.c.name == name, _LEASES.c.holder == holder))

    def holder(self, name: str) -> str | None:
        """Who holds ``name`` now, or None when it is free or expired."""
        with self.registry.db.session() as s:
            return s.scalar(select(_LEASES.c.holder)
                            .where(_LEASES.c.name == name, _LEASES.c.expires_at > self._clock()))


def _check(name: str, holder: str, ttl_s: float) -> None:
    if not name or len(name) > _MAX_NAME or not holder or len(holder) > _MAX_NAME:
        raise ConfigError(f"a lease name and holder take 1 to {_MAX_NAME} characters; "
                          f"got name {name!r} and holder {holder!r}")
    if not ttl_s > 0:
        raise ConfigError(f"a lease's ttl_s must be above 0 seconds, not {ttl_s!r}")


__all__ = ["Leases"]
