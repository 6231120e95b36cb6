"""SLA pause intervals (paused business time is excluded per unit); notification claims

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Pauses before this revision stay known only by their wall-clock total
    # (sla_paused_seconds); engine.sla keeps moving due dates by that total for them.
    with op.batch_alter_table("bpm_task") as batch:
        batch.add_column(sa.Column("sla_pauses", sa.JSON(), nullable=True))
    with op.batch_alter_table("bpm_notification") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("claimed_by", sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bpm_notification") as batch:
        batch.drop_column("claimed_by")
        batch.drop_column("claimed_at")
    with op.batch_alter_table("bpm_task") as batch:
        batch.drop_column("sla_pauses")
