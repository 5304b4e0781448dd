"""Model assignments: the LoRA adapters served with the model (name -> registered adapter id).

Revision ID: b5d2e8f41c07
Revises: 7c1e5a9d3b20
Create Date: 2026-11-27 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401  (every revision imports it; see test_db_migrations)
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "b5d2e8f41c07"
down_revision: str | Sequence[str] | None = "7c1e5a9d3b20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_assignments") as batch:
        batch.add_column(
            sa.Column("adapters", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    with op.batch_alter_table("model_assignments") as batch:
        batch.drop_column("adapters")
