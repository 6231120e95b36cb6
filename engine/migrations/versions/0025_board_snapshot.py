"""the supervisors' board counted once for the whole firm at a moment (a snapshot), so a board
page sums a few thousand counted rows instead of reading every open task; the tasks closed in a
period found by an index instead of a read of every task ever completed

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Only completed and cancelled tasks have a completion time: the open ones stay out of it.
    op.create_index("ix_task_completed_at", "bpm_task", ["completed_at"],
                    postgresql_where=sa.text("completed_at IS NOT NULL"),
                    sqlite_where=sa.text("completed_at IS NOT NULL"))
    # The tasks recusing one person: the board takes them out of a snapshot's counts.
    op.create_index("ix_task_exclusion_principal", "bpm_task_exclusion", ["principal"])
    op.create_table(
        "bpm_board_snapshot",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("as_of", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("took_ms", sa.Integer(), nullable=False),
    )
    op.create_index("ix_board_snapshot_as_of", "bpm_board_snapshot", ["as_of"])
    op.create_table(
        "bpm_board_cell",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("snapshot_id", BigId, sa.ForeignKey("bpm_board_snapshot.id"), nullable=False),
        sa.Column("dimension", sa.String(8), nullable=False),
        sa.Column("branch_code", sa.String(32), nullable=False),
        sa.Column("process_key", sa.String(128), nullable=False),
        sa.Column("key", sa.String(320), nullable=False),
        sa.Column("name", sa.String(256), nullable=True),
        *(sa.Column(name, sa.Integer(), nullable=False) for name in (
            "open", "breached", "at_risk", "paused", "undated", "overdue", "late_at_risk", "closed_late",
            "regulatory")),
        sa.Column("oldest_breach", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ageing", sa.JSON(), nullable=True),
    )
    op.create_index("ix_board_cell_read", "bpm_board_cell", ["snapshot_id", "dimension", "branch_code"])
    op.create_table(
        "bpm_board_week",
        sa.Column("snapshot_id", BigId, sa.ForeignKey("bpm_board_snapshot.id"), primary_key=True),
        sa.Column("branch_code", sa.String(32), primary_key=True),
        sa.Column("week_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("breached", sa.Integer(), nullable=False),
        sa.Column("completed", sa.Integer(), nullable=False),
        sa.Column("on_time", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bpm_board_week")
    op.drop_index("ix_board_cell_read", table_name="bpm_board_cell")
    op.drop_table("bpm_board_cell")
    op.drop_index("ix_board_snapshot_as_of", table_name="bpm_board_snapshot")
    op.drop_table("bpm_board_snapshot")
    op.drop_index("ix_task_exclusion_principal", table_name="bpm_task_exclusion")
    op.drop_index("ix_task_completed_at", table_name="bpm_task")
