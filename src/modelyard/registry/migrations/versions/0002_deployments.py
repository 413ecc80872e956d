"""deployments and their transition history

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("deployments",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.Integer(), nullable=False),
    sa.Column("stable_version", sa.Integer(), nullable=True),
    sa.Column("candidate_version", sa.Integer(), nullable=False),
    sa.Column("strategy", sa.String(length=20), nullable=False),
    sa.Column("steps", sa.JSON(), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("every_s", sa.Float(), nullable=False),
    sa.Column("rules", sa.JSON(), nullable=False),
    sa.Column("key", sa.String(length=200), nullable=True),
    sa.Column("state", sa.String(length=20), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("step_started_at", sa.DateTime(), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("created_by", sa.String(length=200), nullable=False),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index("ix_deployments_model", ["model_id", "id"], unique=False)
        batch_op.create_index("ix_deployments_updated", ["updated_at"], unique=False)

    op.create_table("deployment_events",
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("deployment_id", sa.Integer(), nullable=False),
    sa.Column("action", sa.String(length=20), nullable=False),
    sa.Column("from_state", sa.String(length=20), nullable=True),
    sa.Column("to_state", sa.String(length=20), nullable=False),
    sa.Column("step", sa.Integer(), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    sa.Column("actor", sa.String(length=200), nullable=False),
    sa.Column("reason", sa.Text(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    sa.Column("at", sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("id")
    )
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.create_index("ix_deployment_events_deployment", ["deployment_id", "id"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deployment_events", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_events_deployment")

    op.drop_table("deployment_events")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_deployments_updated")
        batch_op.drop_index("ix_deployments_model")

    op.drop_table("deployments")
