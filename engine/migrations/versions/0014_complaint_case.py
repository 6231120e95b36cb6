"""case clocks: one deadline for a whole case (a complaint's 限时办结), beside its steps' own;
an escalation task names the step it escalates, so it closes when that step is done

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
    with op.batch_alter_table("bpm_task") as batch:
        batch.add_column(sa.Column("escalated_task_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                   nullable=True))
    escalations = sa.text("escalated_task_id IS NOT NULL")
    op.create_index("ix_task_escalated", "bpm_task", ["escalated_task_id"], postgresql_where=escalations,
                    sqlite_where=escalations)


def downgrade() -> None:
    op.drop_index("ix_task_escalated", "bpm_task")
    with op.batch_alter_table("bpm_task") as batch:
        batch.drop_column("escalated_task_id")
    op.drop_index("ix_case_clock_due", "bpm_case_clock")
    op.drop_table("bpm_case_clock")
