"""Model registry: registered models (by sha256) and their assignments to agents, sites, labels.

Revision ID: fd06867631a0
Revises: 42b6bd321efd
Create Date: 2026-11-27 10:40:11.442376
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # autogenerate spells string columns sqlmodel.sql.sqltypes.AutoString
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "fd06867631a0"
down_revision: str | Sequence[str] | None = "42b6bd321efd"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("chunk_sha256", sa.JSON(), nullable=False),
        sa.Column("gguf", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("name", "version", name=op.f("uq_models_name_version")),
    )
    op.create_index(op.f("ix_models_sha256"), "models", ["sha256"], unique=False)

    op.create_table(
        "model_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("target_kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("target", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("alias", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=False),
        sa.Column("gpu_layers", sa.Integer(), nullable=False),
        sa.Column("threads", sa.Integer(), nullable=False),
        sa.Column("queue_depth", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_assignments_model_id_models")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_assignments")),
        sa.UniqueConstraint(
            "target_kind",
            "target",
            "alias",
            name=op.f("uq_model_assignments_target_kind_target_alias"),
        ),
    )
    op.create_index(
        op.f("ix_model_assignments_model_id"), "model_assignments", ["model_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_model_assignments_model_id"), table_name="model_assignments")
    op.drop_table("model_assignments")
    op.drop_index(op.f("ix_models_sha256"), table_name="models")
    op.drop_table("models")
