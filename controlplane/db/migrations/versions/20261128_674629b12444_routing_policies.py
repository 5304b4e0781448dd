"""Routing policies: every applied version of the policy document; the highest is live.

Revision ID: 674629b12444
Revises: b5d2e8f41c07
Create Date: 2026-11-28 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate spells string columns sqlmodel.sql.sqltypes.AutoString
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "674629b12444"
down_revision: str | Sequence[str] | None = "b5d2e8f41c07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "routing_policies",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_routing_policies")),
    )
    op.create_index(
        op.f("ix_routing_policies_digest"), "routing_policies", ["digest"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_routing_policies_digest"), table_name="routing_policies")
    op.drop_table("routing_policies")
