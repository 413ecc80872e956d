"""audit chain: every audit event carries its predecessor's hash and its own

Existing events are chained in id order by this migration (the first one's predecessor is 64
zeros), with the same canonical encoding as ``modelyard/registry/audit_chain.py``; it is copied
here so this revision stays what it was when later code changes.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_GENESIS = "0" * 64
_AUDIT = sa.table(
    "audit_events",
    sa.column("id", sa.Integer()), sa.column("at", sa.DateTime()),
    sa.column("actor", sa.String()), sa.column("action", sa.String()),
    sa.column("target", sa.String()), sa.column("details", sa.JSON()),
    sa.column("prev_hash", sa.String()), sa.column("hash", sa.String()),
)


def _hash(at: datetime, actor: str, action: str, target: str, details: Any, prev: str) -> str:
    when = (at if at.tzinfo else at.replace(tzinfo=UTC)).astimezone(UTC)
    body = json.dumps(
        {"at": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "actor": actor, "action": action,
         "target": target, "details": details, "prev": prev},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prev_hash", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    conn = op.get_bind()
    prev, last = _GENESIS, 0
    while True:  # a page at a time, so a long audit history needs little memory
        rows = conn.execute(
            sa.select(_AUDIT.c.id, _AUDIT.c.at, _AUDIT.c.actor, _AUDIT.c.action,
                      _AUDIT.c.target, _AUDIT.c.details)
            .where(_AUDIT.c.id > last).order_by(_AUDIT.c.id).limit(1000)
        ).all()
        if not rows:
            return
        batch = []
        for row_id, at, actor, action, target, details in rows:
            digest = _hash(at, actor, action, target, details, prev)
            batch.append({"rid": row_id, "p": prev, "h": digest})
            prev, last = digest, row_id
        _write(conn, batch)


def _write(conn: Any, batch: list[dict[str, Any]]) -> None:
    if batch:
        conn.execute(
            _AUDIT.update().where(_AUDIT.c.id == sa.bindparam("rid"))
            .values(prev_hash=sa.bindparam("p"), hash=sa.bindparam("h")),
            batch,
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_column("hash")
        batch_op.drop_column("prev_hash")
