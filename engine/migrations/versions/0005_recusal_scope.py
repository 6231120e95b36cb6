"""recusal scope: an exclusion hides the whole case only when its task says so

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bpm_task_exclusion") as batch:
        batch.add_column(sa.Column("case_wide", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Every exclusion written so far hid the case (the only behaviour there was): keep it so.
    op.execute("UPDATE bpm_task_exclusion SET case_wide = TRUE")


def downgrade() -> None:
    with op.batch_alter_table("bpm_task_exclusion") as batch:
        batch.drop_column("case_wide")
