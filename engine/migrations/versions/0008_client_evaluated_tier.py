"""client evaluated tier: the monthly evaluation's tier, beside the effective one the VIP case sets

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bpm_client") as batch:
        batch.add_column(sa.Column("evaluated_tier", sa.String(length=16), nullable=True))
    # Until now the evaluation wrote its tier straight into vip_tier, so for every client it
    # has evaluated that is also the tier it last granted. (A client in grace was evaluated
    # lower; the next evaluation records that, and starts nothing: a downgrade is pending.)
    op.execute("UPDATE bpm_client SET evaluated_tier = vip_tier WHERE classified_on IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("bpm_client") as batch:
        batch.drop_column("evaluated_tier")
