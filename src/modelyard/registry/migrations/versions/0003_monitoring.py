"""monitoring: prediction log, labels, drift reports, monitor events, leases, rollout windows

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table("deployment_windows",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("deployment_id", sa.Integer(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("process", sa.String(length=200), nullable=False),
    sa.Column("stats", sa.JSON(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("deployment_id", "revision", "process", name="uq_deployment_window")
    )

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

    op.create_table("labels",
    sa.Column("id", _BIG_ID, nullable=False),
    sa.Column("model", sa.String(length=200), nullable=False),
    sa.Column("request_id", sa.String(length=100), nullable=False),
    sa.Column("label", sa.JSON(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("model", "request_id", name="uq_label_request")
    )
    with op.batch_alter_table("labels", schema=None) as batch_op:
        batch_op.create_index("ix_labels_model_at", ["model", "at"], unique=False)

    op.create_table("drift_reports",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model", sa.String(length=200), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("window_start", sa.DateTime(), nullable=True),
    sa.Column("window_end", sa.DateTime(), nullable=True),
    sa.Column("rows", sa.Integer(), nullable=False),
    sa.Column("share", sa.Float(), nullable=False),
    sa.Column("drifted", sa.Boolean(), nullable=False),
    sa.Column("report", sa.JSON(), nullable=False),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("drift_reports", schema=None) as batch_op:
        batch_op.create_index("ix_drift_reports_model", ["model", "at"], unique=False)

    op.create_table("monitor_events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("model", sa.String(length=200), nullable=False),
    sa.Column("kind", sa.String(length=50), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("severity", sa.String(length=20), nullable=False),
    sa.Column("message", sa.Text(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("monitor_events", schema=None) as batch_op:
        batch_op.create_index("ix_monitor_events_model", ["model", "at"], unique=False)

    op.create_table("leases",
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("holder", sa.String(length=200), nullable=False),
    sa.Column("acquired_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint("name")
    )


def downgrade() -> None:
    op.drop_table("leases")
    for table, index in (("monitor_events", "ix_monitor_events_model"),
                         ("drift_reports", "ix_drift_reports_model"),
                         ("labels", "ix_labels_model_at")):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(index)
        op.drop_table(table)
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_request")
        batch_op.drop_index("ix_predictions_model_at")
    op.drop_table("predictions")
    op.drop_table("deployment_windows")
