"""client account status: dormant and suspended accounts leave the periodic callback quota

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Every client imported so far was treated as active (there was no status): keep it so.
    with op.batch_alter_table("bpm_client") as batch:
        batch.add_column(sa.Column("account_status", sa.String(length=16), nullable=False,
                                   server_default="active"))


def downgrade() -> None:
    with op.batch_alter_table("bpm_client") as batch:
        batch.drop_column("account_status")
