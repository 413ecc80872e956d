"""initial registry schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("audit_events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=False),
    sa.Column("action", sa.String(length=100), nullable=False),
    sa.Column("target", sa.String(length=300), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_target", ["target", "at"], unique=False)

    op.create_table("models",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(length=200), nullable=False),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("latest_version", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("name")
    )
    op.create_table("runs",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("model_name", sa.String(length=200), nullable=False),
    sa.Column("status", sa.String(length=20), nullable=False),
    sa.Column("trigger", sa.String(length=100), nullable=False),
    sa.Column("started_at", sa.DateTime(), nullable=False),
    sa.Column("ended_at", sa.DateTime(), nullable=True),
    sa.Column("duration_s", sa.Float(), nullable=True),
    sa.Column("version", sa.Integer(), nullable=True),
    sa.Column("promoted", sa.Boolean(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("gate", sa.JSON(), nullable=False),
    sa.Column("logs", sa.Text(), nullable=False),
    sa.Column("failure_reason", sa.Text(), nullable=True),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_model", ["model_name", "started_at"], unique=False)

    op.create_table("alias_events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("alias", sa.String(length=100), nullable=False),
    sa.Column("version", sa.Integer(), nullable=True),
    sa.Column("previous_version", sa.Integer(), nullable=True),
    sa.Column("action", sa.String(length=20), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.create_index("ix_alias_events_lookup", ["model_id", "alias", "at"], unique=False)

    op.create_table("aliases",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("alias", sa.String(length=100), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("model_id", "alias", name="uq_alias")
    )
    op.create_table("versions",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("version", sa.Integer(), nullable=False),
    sa.Column("flavor", sa.String(length=50), nullable=False),
    sa.Column("artifact_digest", sa.String(length=64), nullable=False),
    sa.Column("artifact_size", sa.BigInteger(), nullable=False),
    sa.Column("meta", sa.JSON(), nullable=False),
    sa.Column("signature", sa.JSON(), nullable=False),
    sa.Column("metrics", sa.JSON(), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("data_fingerprint", sa.String(length=64), nullable=True),
    sa.Column("code_ref", sa.JSON(), nullable=False),
    sa.Column("environment", sa.JSON(), nullable=False),
    sa.Column("reference_stats", sa.JSON(), nullable=True),
    sa.Column("run_id", sa.String(length=36), nullable=True),
    sa.Column("description", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("model_id", "version", name="uq_version_number")
    )


def downgrade() -> None:
    op.drop_table("versions")
    op.drop_table("aliases")
    with op.batch_alter_table("alias_events", schema=None) as batch_op:
        batch_op.drop_index("ix_alias_events_lookup")

    op.drop_table("alias_events")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_model")

    op.drop_table("runs")
    op.drop_table("models")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_target")

    op.drop_table("audit_events")
