"""Federated fine-tuning jobs and their rounds; agents' reported capabilities.

Revision ID: 8b1f4d6c2a95
Revises: e2b6f0c93d17
Create Date: 2026-11-30 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate spells string columns sqlmodel.sql.sqltypes.AutoString
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "8b1f4d6c2a95"
down_revision: str | Sequence[str] | None = "e2b6f0c93d17"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = "state IN ('pending', 'running', 'evaluating', 'succeeded', 'failed', 'cancelled')"


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(
            sa.Column("capabilities", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
    op.create_table(
        "fl_jobs",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.JSON(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("state", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("current_round", sa.Integer(), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=1000), nullable=False),
        sa.Column("adapter_model_id", sa.Integer(), nullable=True),
        sa.Column("flower_run_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(STATES, name=op.f("ck_fl_jobs_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fl_jobs")),
    )
    op.create_index(op.f("ix_fl_jobs_created_at"), "fl_jobs", ["created_at"], unique=False)
    op.create_index(op.f("ix_fl_jobs_model_id"), "fl_jobs", ["model_id"], unique=False)
    op.create_index(op.f("ix_fl_jobs_state"), "fl_jobs", ["state"], unique=False)
    op.create_table(
        "fl_rounds",
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=36), nullable=False),
        sa.Column("round", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("phase", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("dropped", sa.JSON(), nullable=False),
        sa.Column("sites", sa.JSON(), nullable=False),
        sa.Column("bytes_down", sa.BigInteger(), nullable=False),
        sa.Column("bytes_up", sa.BigInteger(), nullable=False),
        sa.Column("wall_s", sa.Float(), nullable=False),
        sa.Column("train_s", sa.Float(), nullable=False),
        sa.Column("aggregate", sa.JSON(), nullable=False),
        sa.CheckConstraint("phase IN ('train', 'evaluate')", name=op.f("ck_fl_rounds_phase")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["fl_jobs.id"], name=op.f("fk_fl_rounds_job_id_fl_jobs")
        ),
        sa.PrimaryKeyConstraint("job_id", "round", "phase", name=op.f("pk_fl_rounds")),
    )


def downgrade() -> None:
    op.drop_table("fl_rounds")
    op.drop_index(op.f("ix_fl_jobs_state"), table_name="fl_jobs")
    op.drop_index(op.f("ix_fl_jobs_model_id"), table_name="fl_jobs")
    op.drop_index(op.f("ix_fl_jobs_created_at"), table_name="fl_jobs")
    op.drop_table("fl_jobs")
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("capabilities")
