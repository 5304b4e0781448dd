"""Inference keys: callers' keys (sha256 only) with a routing role and a team.

Revision ID: 3f9a1c7e5d21
Revises: 674629b12444
Create Date: 2026-11-28 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate spells string columns sqlmodel.sql.sqltypes.AutoString
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "3f9a1c7e5d21"
down_revision: str | Sequence[str] | None = "674629b12444"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inference_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("prefix", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("key_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("routing_role", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("team", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inference_keys")),
    )
    op.create_index(op.f("ix_inference_keys_key_hash"), "inference_keys", ["key_hash"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_inference_keys_key_hash"), table_name="inference_keys")
    op.drop_table("inference_keys")
