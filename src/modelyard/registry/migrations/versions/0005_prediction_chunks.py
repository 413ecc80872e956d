"""predictions: one row per chunk of logged requests, inputs and outputs packed (not per request)

The rows logged before this revision are converted: each run of up to 256 consecutive rows of one
model, version and variant becomes a chunk whose inputs and outputs are JSON lists (the record
format ``MYL1`` of ``modelyard.monitoring.chunk``, written here by a frozen copy of its packer so
that this migration reads the same whatever the package becomes). A downgrade recreates the old,
empty table: the prediction log does not survive it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import zlib
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import orjson
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_RUN = 256
_PAGE = 5000
_EPOCH = datetime(1970, 1, 1)


def upgrade() -> None:
    op.create_table("predictions_new",
    sa.Column("id", _BIG_ID, nullable=False),
    sa.Column("model", sa.String(length=200), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("variant", sa.String(length=20), nullable=False),
    sa.Column("first_at", sa.DateTime(), nullable=False),
    sa.Column("last_at", sa.DateTime(), nullable=False),
    sa.Column("size", sa.Integer(), nullable=False),
    sa.Column("id_hashes", sa.LargeBinary(), nullable=False),
    sa.Column("requests", sa.LargeBinary(), nullable=False),
    sa.Column("inputs", sa.LargeBinary(), nullable=False),
    sa.Column("outputs", sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    _convert(op.get_bind())
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_request")
        batch_op.drop_index("ix_predictions_model_at")
    op.drop_table("predictions")
    op.rename_table("predictions_new", "predictions")
    if op.get_bind().dialect.name == "postgresql":  # the names a fresh database would have
        op.execute("ALTER SEQUENCE predictions_new_id_seq RENAME TO predictions_id_seq")
        op.execute("ALTER INDEX predictions_new_pkey RENAME TO predictions_pkey")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("ix_predictions_model_last_at", ["model", "last_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_model_last_at")
    op.drop_table("predictions")
    op.create_table("predictions",
    sa.Column("id", _BIG_ID, nullable=False),
    sa.Column("request_id", sa.String(length=100), nullable=False),
    sa.Column("model", sa.String(length=200), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("variant", sa.String(length=20), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    sa.Column("rows", sa.Integer(), nullable=False),
    sa.Column("inputs", sa.JSON(), nullable=False),
    sa.Column("outputs", sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("ix_predictions_model_at", ["model", "at"], unique=False)
        batch_op.create_index("ix_predictions_request", ["model", "request_id"], unique=False)


_OLD = sa.table("predictions", sa.column("id", sa.BigInteger()),
                sa.column("request_id", sa.String()), sa.column("model", sa.String()),
                sa.column("version", sa.Integer()), sa.column("variant", sa.String()),
                sa.column("at", sa.DateTime()), sa.column("latency_ms", sa.Float()),
                sa.column("rows", sa.Integer()), sa.column("inputs", sa.JSON()),
                sa.column("outputs", sa.JSON()))
_NEW = sa.table("predictions_new", sa.column("model", sa.String()),
                sa.column("version", sa.Integer()), sa.column("variant", sa.String()),
                sa.column("first_at", sa.DateTime()), sa.column("last_at", sa.DateTime()),
                sa.column("size", sa.Integer()), sa.column("id_hashes", sa.LargeBinary()),
                sa.column("requests", sa.LargeBinary()), sa.column("inputs", sa.LargeBinary()),
                sa.column("outputs", sa.LargeBinary()))


def _convert(conn: Any) -> None:
    """Every old row into a chunk, page by page of ids, a run of one version at a time."""
    last = None
    while True:
        query = sa.select(_OLD).order_by(_OLD.c.id).limit(_PAGE)
        if last is not None:
            query = query.where(_OLD.c.id > last)
        page = conn.execute(query).all()
        if not page:
            return
        last = page[-1].id
        runs: list[list[Any]] = []
        for row in page:
            key = (row.model, row.version, row.variant)
            if runs and runs[-1][0] == key and len(runs[-1][1]) < _RUN:
                runs[-1][1].append(row)
            else:
                runs.append([key, [row]])
        conn.execute(sa.insert(_NEW), [_chunk(key, rows) for key, rows in runs])


def _chunk(key: tuple[str, int, str], rows: list[Any]) -> dict[str, Any]:
    at_us = np.array([(r.at.replace(tzinfo=None) - _EPOCH) // timedelta(microseconds=1)
                      for r in rows], dtype="<i8")
    ids = [r.request_id for r in rows]
    return {
        "model": key[0], "version": key[1], "variant": key[2],
        "first_at": _EPOCH + timedelta(microseconds=int(at_us.min())),
        "last_at": _EPOCH + timedelta(microseconds=int(at_us.max())),
        "size": len(rows),
        "id_hashes": np.array([zlib.crc32(i.encode()) for i in ids], dtype="<u4").tobytes(),
        "requests": _pack({"ids": ids}, [
            at_us, np.array([r.latency_ms for r in rows], dtype="<f8"),
            np.array([r.rows for r in rows], dtype="<i8")]),
        "inputs": _pack({"kind": "json", "values": [_value(r.inputs) for r in rows]}, []),
        "outputs": _pack({"kind": "json", "values": [_value(r.outputs) for r in rows]}, []),
    }


def _value(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


def _pack(header: dict[str, Any], arrays: list[np.ndarray]) -> bytes:
    """Record format MYL1: magic, header length (4 bytes, little-endian), JSON header naming
    each array's dtype and shape, the arrays' bytes."""
    head = orjson.dumps({**header, "arrays": [[a.dtype.str, list(a.shape)] for a in arrays]})
    return b"".join([b"MYL1", len(head).to_bytes(4, "little"), head,
                     *(a.tobytes() for a in arrays)])
