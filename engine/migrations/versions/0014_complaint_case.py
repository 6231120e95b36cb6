"""case clocks: one deadline for a whole case (a complaint's 限时办结), beside its steps' own

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bpm_case_clock",
        sa.Column("instance_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.ForeignKey("bpm_process_instance.id"), primary_key=True),
        sa.Column("policy", sa.String(length=128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("base_due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("milestones", sa.JSON(), nullable=False),
        sa.Column("extended_by", sa.String(length=32), nullable=True),
        sa.Column("extended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("breached_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_case_clock_due", "bpm_case_clock", ["due_at"])


def downgrade() -> None:
    op.drop_index("ix_case_clock_due", "bpm_case_clock")
    op.drop_table("bpm_case_clock")
