"""Usage ledger: one row per routed request, from agents (once per agent and seq) and the gateway.

Revision ID: c4e7a2d95b10
Revises: 9d4b2f6e8a13
Create Date: 2026-11-28 16:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate spells string columns sqlmodel.sql.sqltypes.AutoString
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "c4e7a2d95b10"
down_revision: str | Sequence[str] | None = "9d4b2f6e8a13"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        # 64-bit on PostgreSQL; SQLite autoincrements only a column typed exactly INTEGER.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sqlmodel.sql.sqltypes.AutoString(length=10), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("team", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("role", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("level", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("route", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("target", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.Column("detectors", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("cost_nanos", sa.BigInteger(), nullable=False),
        sa.Column("policy_digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('ok', 'refused', 'failed')", name=op.f("ck_usage_records_outcome")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
        sa.UniqueConstraint("source", "seq", name="uq_usage_records_source_seq"),
    )
    op.create_index(op.f("ix_usage_records_at"), "usage_records", ["at"], unique=False)
    op.create_index(op.f("ix_usage_records_team_at"), "usage_records", ["team", "at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_usage_records_team_at"), table_name="usage_records")
    op.drop_index(op.f("ix_usage_records_at"), table_name="usage_records")
    op.drop_table("usage_records")
