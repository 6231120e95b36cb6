"""per-period client figures (snapshot) for the service-group assessment

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bpm_client_snapshot",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("branch_code", sa.String(length=32), nullable=False),
        sa.Column("service_group_key", sa.String(length=64), nullable=True),
        sa.Column("assets_start", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("assets_end", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("net_inflow", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("traded_amount", sa.Numeric(precision=20, scale=2), nullable=False),
        sa.Column("avg_assets", sa.Numeric(precision=18, scale=2), nullable=False),
        sa.Column("referrals", sa.Integer(), nullable=False),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("imported_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("period_start", "period_end", "client_id", name="uq_client_snapshot_period"),
    )
    with op.batch_alter_table("bpm_client_snapshot", schema=None) as batch_op:
        batch_op.create_index("ix_client_snapshot_scope",
                              ["period_start", "period_end", "branch_code", "service_group_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("bpm_client_snapshot", schema=None) as batch_op:
        batch_op.drop_index("ix_client_snapshot_scope")
    op.drop_table("bpm_client_snapshot")
