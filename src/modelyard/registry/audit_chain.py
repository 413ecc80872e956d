"""The audit chain: every audit event carries the hash of the one before it, so an edited,
deleted, inserted or reordered event is detected by re-walking the chain.

``hash = sha256(canonical(event) )`` where the canonical encoding is the UTF-8 of::

    json.dumps({"at": "2026-12-06T10:15:48.123456Z", "actor": ..., "action": ..., "target": ...,
                "details": {...}, "prev": <hash of the previous event>},
               sort_keys=True, separators=(",", ":"))   # Python's json, ensure_ascii on

The first event's ``prev`` is 64 zeros. There is one chain per registry database, in ``id``
order. Appends are serialized so the chain never forks: the events a transaction audits are
queued on its session and appended just before it commits, under a lock held to the commit
(PostgreSQL: a transaction-level advisory lock; SQLite: its single writer lock, taken by the
insert). A transaction therefore holds the lock only for its last few statements and never
waits for another lock while holding it.

Verifying is pure (:func:`verify`): it takes rows and returns the first bad one, if any.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Connection, CursorResult, Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from modelyard.registry.tables import AuditRow

GENESIS = "0" * 64
_PENDING = "modelyard.audit.pending"
_PG_AUDIT_LOCK = 7_318_042_992  # advisory lock key: one audit appender at a time
_INSERT = insert(cast(Table, AuditRow.__table__))
_TABLE = cast(Table, AuditRow.__table__)
_COLUMNS = (AuditRow.id, AuditRow.at, AuditRow.actor, AuditRow.action, AuditRow.target,
            AuditRow.details, AuditRow.prev_hash, AuditRow.hash)


def canonical(at: datetime, actor: str, action: str, target: str, details: Any,
              prev: str) -> bytes:
    """The bytes an event's hash covers (see the module docstring; a SIEM recomputes these)."""
    return json.dumps(
        {"at": stamp(at), "actor": actor, "action": action, "target": target,
         "details": details, "prev": prev},
        sort_keys=True, separators=(",", ":"),
    ).encode()


def event_hash(at: datetime, actor: str, action: str, target: str, details: Any,
               prev: str) -> str:
    """The sha256 (hex) of an event chained to the hash ``prev`` of the event before it."""
    return hashlib.sha256(canonical(at, actor, action, target, details, prev)).hexdigest()


def stamp(at: datetime) -> str:
    """An event time as the chain encodes it: UTC, microseconds, ``Z``."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def normalized(details: dict[str, Any]) -> Any:
    """``details`` as the database will give it back (numpy values, NaN and non-string keys
    become plain JSON), so the hash computed now matches the row read later."""
    import orjson

    return json.loads(orjson.dumps(
        details, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))


def queue(s: Session, event: dict[str, Any]) -> None:
    """Queue an audit event on ``s``; :func:`append_pending` writes it before the commit."""
    s.info.setdefault(_PENDING, []).append(event)


# Built once with bound parameters: a statement built per call costs more in SQLAlchemy's
# cache-key generation than the query itself (these run on every audited transaction).
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:k)")
_PREVIOUS = (select(AuditRow.hash).where(AuditRow.id < bindparam("first"))
             .order_by(AuditRow.id.desc()).limit(1))
_SET_HASH = (update(_TABLE).where(_TABLE.c.id == bindparam("rid"))
             .values(prev_hash=bindparam("p"), hash=bindparam("h")))


def _lock_postgresql(conn: Connection) -> None:
    conn.execute(_PG_LOCK, {"k": _PG_AUDIT_LOCK})


def _lock_by_insert(conn: Connection) -> None:
    """SQLite (one writer at a time): the first insert takes the write lock; read after it."""


_LOCKS: dict[str, Callable[[Connection], None]] = {"postgresql": _lock_postgresql}


def append_pending(s: Session) -> None:
    """Append the events queued on ``s`` to the chain (called just before ``s`` commits)."""
    events: list[dict[str, Any]] = s.info.pop(_PENDING, [])
    if not events:
        return
    s.flush()
    conn = s.connection()  # Core from here: the ORM adds nothing to four plain statements
    _LOCKS.get(conn.dialect.name, _lock_by_insert)(conn)
    ids = [_inserted_id(conn.execute(_INSERT, event)) for event in events]
    prev = conn.execute(_PREVIOUS, {"first": ids[0]}).scalar() or GENESIS
    hashes = []
    for row_id, event in zip(ids, events, strict=True):
        digest = event_hash(event["at"], event["actor"], event["action"], event["target"],
                            event["details"], prev)
        hashes.append({"rid": row_id, "p": prev, "h": digest})
        prev = digest
    conn.execute(_SET_HASH, hashes)


def _inserted_id(result: Any) -> int:
    key = cast(CursorResult[Any], result).inserted_primary_key
    assert key is not None  # a single-row insert of a table with an integer primary key
    return int(key[0])


@dataclass(frozen=True)
class ChainReport:
    """What :func:`verify` found: how many events were checked, the head, the first bad one."""

    events: int
    head: str
    bad_id: int | None = None
    reason: str = ""
    #: whether a head recorded earlier (``verify(anchor=...)``) is still in the chain
    anchor_found: bool | None = None

    @property
    def intact(self) -> bool:
        return self.bad_id is None and self.anchor_found is not False


#: one audit row as the chain sees it: id, at, actor, action, target, details, prev, hash
ChainRow = tuple[int, datetime, str, str, str, Any, "str | None", "str | None"]


def verify(rows: Iterable[ChainRow], *, anchor: str | None = None) -> ChainReport:
    """Walk ``rows`` in id order and name the first one that breaks the chain.

    ``anchor``, a head hash recorded earlier (by a SIEM, say), must still be in the chain:
    that catches events deleted from the end, which a chain alone cannot tell.
    """
    prev, count, last_id = GENESIS, 0, None
    found = None if anchor is None else anchor == GENESIS
    for row_id, at, actor, action, target, details, prev_hash, digest in rows:
        reason = _row_problem(at, actor, action, target, details, prev_hash, digest, prev,
                              last_id)
        if reason:
            return ChainReport(count, prev, row_id, reason, found)
        prev, count, last_id = cast(str, digest), count + 1, row_id
        if anchor is not None and digest == anchor:
            found = True
    return ChainReport(count, prev, anchor_found=found)


def _row_problem(at: datetime, actor: str, action: str, target: str, details: Any,
                 prev_hash: str | None, digest: str | None, prev: str,
                 last_id: int | None) -> str:
    if digest is None or prev_hash is None:
        return "it has no hash: it was written outside modelyard (or by a version before the chain)"
    after = f"event {last_id}" if last_id is not None else "the start of the chain"
    if prev_hash != prev:
        return (f"its previous-hash does not match {after}: an event between them was deleted "
                "or inserted, or the events were reordered")
    if event_hash(at, actor, action, target, details, prev_hash) != digest:
        return "its content does not match its hash: it was edited"
    return ""


def chain_rows(s: Session, *, after_id: int = 0) -> Generator[ChainRow, None, None]:
    """Every audit row with ``id > after_id`` in chain order, streamed (bounded memory)."""
    query = (select(*_COLUMNS).where(AuditRow.id > after_id).order_by(AuditRow.id)
             .execution_options(yield_per=1000))
    result = s.execute(query)
    try:
        for row in result:
            yield cast(ChainRow, tuple(row))
    finally:
        result.close()  # a server-side cursor on PostgreSQL: closed even when left early


def verify_session(s: Session, *, anchor: str | None = None) -> ChainReport:
    """:func:`verify` over every audit row of the database ``s`` reads."""
    rows = chain_rows(s)
    try:
        return verify(rows, anchor=anchor)
    finally:
        rows.close()


def export_record(row: ChainRow) -> dict[str, Any]:
    """One row as a SIEM receives it (``audit export``): the content and both hashes."""
    row_id, at, actor, action, target, details, prev_hash, digest = row
    return {"id": row_id, "at": stamp(at), "actor": actor, "action": action, "target": target,
            "details": details, "prev_hash": prev_hash, "hash": digest}


__all__ = ["GENESIS", "ChainReport", "ChainRow", "append_pending", "canonical", "chain_rows",
           "event_hash", "export_record", "normalized", "queue", "stamp", "verify",
           "verify_session"]
