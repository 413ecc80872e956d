"""semantic version labels (unique per model) and the data each version was trained on

Versions registered before this revision have no label and no recorded sources: they read back
with ``semver`` None and no ``data_sources``; ``modelyard label`` can still give them a label.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # batch mode: SQLite cannot add a unique constraint in place (the table is copied)
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("semver", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("data_sources", sa.JSON(), nullable=True))
        batch_op.create_unique_constraint("uq_version_semver", ["model_id", "semver"])
    op.create_table(
        "data_sources",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version_id", sa.Integer(),
                  sa.ForeignKey("versions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("location", sa.String(length=1000), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=True),
    )
    op.create_index("ix_data_sources_location", "data_sources", ["kind", "location"])
    op.create_index("ix_data_sources_digest", "data_sources", ["digest"])
    op.create_index("ix_data_sources_version", "data_sources", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_data_sources_version", table_name="data_sources")
    op.drop_index("ix_data_sources_digest", table_name="data_sources")
    op.drop_index("ix_data_sources_location", table_name="data_sources")
    op.drop_table("data_sources")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_constraint("uq_version_semver", type_="unique")
        batch_op.drop_column("data_sources")
        batch_op.drop_column("semver")
