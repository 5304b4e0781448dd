"""Telemetry storage: sample records (dedupe), raw points, minute rollups, per-agent counters.

Revision ID: 42b6bd321efd
Revises: 423333ca0f12
Create Date: 2026-11-27 09:35:14.481163
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate spells string columns sqlmodel.sql.sqltypes.AutoString
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "42b6bd321efd"
down_revision: str | Sequence[str] | None = "423333ca0f12"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "telemetry_samples",
        sa.Column("agent_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("collected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_telemetry_samples_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("agent_id", "seq", name=op.f("pk_telemetry_samples")),
    )
    op.create_index(
        op.f("ix_telemetry_samples_agent_id_collected_at"),
        "telemetry_samples",
        ["agent_id", "collected_at"],
        unique=False,
    )
    op.create_index(
        op.f("ix_telemetry_samples_collected_at"),
        "telemetry_samples",
        ["collected_at"],
        unique=False,
    )

    op.create_table(
        "metric_points",
        # 64-bit on PostgreSQL; SQLite autoincrements only a column typed exactly INTEGER.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("agent_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("labels_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_metric_points")),
    )
    op.create_index(
        op.f("ix_metric_points_agent_id_name_ts"),
        "metric_points",
        ["agent_id", "name", "ts"],
        unique=False,
    )
    op.create_index(op.f("ix_metric_points_ts"), "metric_points", ["ts"], unique=False)

    op.create_table(
        "metric_rollups",
        sa.Column("agent_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=128), nullable=False),
        sa.Column("labels_key", sqlmodel.sql.sqltypes.AutoString(length=512), nullable=False),
        sa.Column("minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("minimum", sa.Float(), nullable=False),
        sa.Column("maximum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint(
            "agent_id", "name", "labels_key", "minute", name=op.f("pk_metric_rollups")
        ),
    )
    op.create_index(op.f("ix_metric_rollups_minute"), "metric_rollups", ["minute"], unique=False)

    op.create_table(
        "telemetry_counters",
        sa.Column("agent_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("received", sa.BigInteger(), nullable=False),
        sa.Column("stored", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("dropped_by_agent", sa.BigInteger(), nullable=False),
        sa.Column("last_sample_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_telemetry_counters_agent_id_agents")
        ),
        sa.PrimaryKeyConstraint("agent_id", name=op.f("pk_telemetry_counters")),
    )


def downgrade() -> None:
    op.drop_table("telemetry_counters")
    op.drop_index(op.f("ix_metric_rollups_minute"), table_name="metric_rollups")
    op.drop_table("metric_rollups")
    op.drop_index(op.f("ix_metric_points_ts"), table_name="metric_points")
    op.drop_index(op.f("ix_metric_points_agent_id_name_ts"), table_name="metric_points")
    op.drop_table("metric_points")
    op.drop_index(op.f("ix_telemetry_samples_collected_at"), table_name="telemetry_samples")
    op.drop_index(
        op.f("ix_telemetry_samples_agent_id_collected_at"), table_name="telemetry_samples"
    )
    op.drop_table("telemetry_samples")
