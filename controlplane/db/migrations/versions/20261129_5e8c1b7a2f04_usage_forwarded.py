"""Usage ledger: rows of requests answered by forwarding to another agent are marked.

Revision ID: 5e8c1b7a2f04
Revises: c4e7a2d95b10
Create Date: 2026-11-29 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes  # noqa: F401 - every revision imports it (the test checks)
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "5e8c1b7a2f04"
down_revision: str | Sequence[str] | None = "c4e7a2d95b10"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(
            sa.Column("forwarded", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("forwarded")
