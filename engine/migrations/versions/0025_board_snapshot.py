"""the supervisors' board counted once for the whole firm at a moment (a snapshot), so a board
page sums a few thousand counted rows instead of reading every open task; the tasks closed in a
period found by an index instead of a read of every task ever completed; a candidate row says
whether its task is claimed, so a group's queue of unclaimed tasks is read from its own rows

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
OPEN = "status IN ('open', 'claimed')"

# The task's trigger (0024's) now also keeps ``claimed``: whether someone holds the task.
PG_SYNC = f"""
CREATE OR REPLACE FUNCTION bpm_task_candidate_active() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}), priority = NEW.priority, due_at = NEW.due_at,
                                  claimed = (NEW.assignee IS NOT NULL)
    WHERE task_id = NEW.id AND (active IS DISTINCT FROM (NEW.{OPEN}) OR priority IS DISTINCT FROM NEW.priority
                                OR due_at IS DISTINCT FROM NEW.due_at
                                OR claimed IS DISTINCT FROM (NEW.assignee IS NOT NULL));
    RETURN NULL;
END $$
"""
PG_SYNC_TRIGGER = """
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status, priority, due_at, assignee ON bpm_task
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.priority IS DISTINCT FROM NEW.priority
                   OR OLD.due_at IS DISTINCT FROM NEW.due_at OR OLD.assignee IS DISTINCT FROM NEW.assignee)
EXECUTE FUNCTION bpm_task_candidate_active()
"""
PG_FILL = """
CREATE OR REPLACE FUNCTION bpm_task_candidate_fill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT priority, due_at, assignee IS NOT NULL INTO NEW.priority, NEW.due_at, NEW.claimed
    FROM bpm_task WHERE id = NEW.task_id;
    RETURN NEW;
END $$
"""
SQLITE_SYNC_TRIGGER = f"""
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status, priority, due_at, assignee ON bpm_task
FOR EACH ROW WHEN OLD.status IS NOT NEW.status OR OLD.priority IS NOT NEW.priority
                  OR OLD.due_at IS NOT NEW.due_at OR OLD.assignee IS NOT NEW.assignee BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}), priority = NEW.priority, due_at = NEW.due_at,
                                  claimed = (NEW.assignee IS NOT NULL)
    WHERE task_id = NEW.id;
END
"""
SQLITE_FILL_TRIGGER = """
CREATE TRIGGER tr_task_candidate_fill AFTER INSERT ON bpm_task_candidate
FOR EACH ROW WHEN NEW.priority IS NULL BEGIN
    UPDATE bpm_task_candidate SET priority = (SELECT priority FROM bpm_task WHERE id = NEW.task_id),
                                  due_at = (SELECT due_at FROM bpm_task WHERE id = NEW.task_id),
                                  claimed = (SELECT assignee IS NOT NULL FROM bpm_task WHERE id = NEW.task_id)
    WHERE task_id = NEW.task_id AND group_key = NEW.group_key;
END
"""
# 0024's, put back by the downgrade.
PG_SYNC_0024 = f"""
CREATE OR REPLACE FUNCTION bpm_task_candidate_active() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}), priority = NEW.priority, due_at = NEW.due_at
    WHERE task_id = NEW.id AND (active IS DISTINCT FROM (NEW.{OPEN}) OR priority IS DISTINCT FROM NEW.priority
                                OR due_at IS DISTINCT FROM NEW.due_at);
    RETURN NULL;
END $$
"""
PG_SYNC_TRIGGER_0024 = """
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status, priority, due_at ON bpm_task
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.priority IS DISTINCT FROM NEW.priority
                   OR OLD.due_at IS DISTINCT FROM NEW.due_at)
EXECUTE FUNCTION bpm_task_candidate_active()
"""
PG_FILL_0024 = """
CREATE OR REPLACE FUNCTION bpm_task_candidate_fill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT priority, due_at INTO NEW.priority, NEW.due_at FROM bpm_task WHERE id = NEW.task_id;
    RETURN NEW;
END $$
"""
SQLITE_SYNC_TRIGGER_0024 = f"""
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status, priority, due_at ON bpm_task
FOR EACH ROW WHEN OLD.status IS NOT NEW.status OR OLD.priority IS NOT NEW.priority
                  OR OLD.due_at IS NOT NEW.due_at BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}), priority = NEW.priority, due_at = NEW.due_at
    WHERE task_id = NEW.id;
END
"""
SQLITE_FILL_TRIGGER_0024 = """
CREATE TRIGGER tr_task_candidate_fill AFTER INSERT ON bpm_task_candidate
FOR EACH ROW WHEN NEW.priority IS NULL BEGIN
    UPDATE bpm_task_candidate SET priority = (SELECT priority FROM bpm_task WHERE id = NEW.task_id),
                                  due_at = (SELECT due_at FROM bpm_task WHERE id = NEW.task_id)
    WHERE task_id = NEW.task_id AND group_key = NEW.group_key;
END
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # A plain ADD COLUMN: on SQLite a batch copy would drop the task table's triggers. Only the
    # open tasks' rows are set: the inbox reads no other, and the trigger keeps them from now on.
    op.add_column("bpm_task_candidate", sa.Column("claimed", sa.Boolean(), nullable=False,
                                                  server_default=sa.false()))
    op.execute("UPDATE bpm_task_candidate SET claimed = true WHERE active AND task_id IN "
               f"(SELECT id FROM bpm_task WHERE assignee IS NOT NULL AND {OPEN})")
    if postgres:
        op.execute("DROP TRIGGER tr_task_candidate_active ON bpm_task")
        op.execute(PG_SYNC)
        op.execute(PG_SYNC_TRIGGER)
        op.execute(PG_FILL)
    else:
        op.execute("DROP TRIGGER tr_task_candidate_active")
        op.execute("DROP TRIGGER tr_task_candidate_fill")
        op.execute(SQLITE_SYNC_TRIGGER)
        op.execute(SQLITE_FILL_TRIGGER)
    # Only completed and cancelled tasks have a completion time: the open ones stay out of it.
    op.create_index("ix_task_completed_at", "bpm_task", ["completed_at"],
                    postgresql_where=sa.text("completed_at IS NOT NULL"),
                    sqlite_where=sa.text("completed_at IS NOT NULL"))
    # A person's steps done by when: 已办 and 已关注 read a period of them, not a whole career.
    op.create_index("ix_task_completed_by_at", "bpm_task", ["completed_by", "completed_at"],
                    postgresql_where=sa.text("completed_by IS NOT NULL"),
                    sqlite_where=sa.text("completed_by IS NOT NULL"))
    op.drop_index("ix_task_completed_by", table_name="bpm_task")
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
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP TRIGGER tr_task_candidate_active ON bpm_task")
        op.execute(PG_SYNC_0024)
        op.execute(PG_SYNC_TRIGGER_0024)
        op.execute(PG_FILL_0024)
    else:
        op.execute("DROP TRIGGER tr_task_candidate_active")
        op.execute("DROP TRIGGER tr_task_candidate_fill")
        op.execute(SQLITE_SYNC_TRIGGER_0024)
        op.execute(SQLITE_FILL_TRIGGER_0024)
    # SQLite 3.35+ drops a column in place (no batch copy, which would drop the triggers).
    op.drop_column("bpm_task_candidate", "claimed")
    op.drop_table("bpm_board_week")
    op.drop_index("ix_board_cell_read", table_name="bpm_board_cell")
    op.drop_table("bpm_board_cell")
    op.drop_index("ix_board_snapshot_as_of", table_name="bpm_board_snapshot")
    op.drop_table("bpm_board_snapshot")
    op.drop_index("ix_task_exclusion_principal", table_name="bpm_task_exclusion")
    op.drop_index("ix_task_completed_at", table_name="bpm_task")
    op.create_index("ix_task_completed_by", "bpm_task", ["completed_by"],
                    postgresql_where=sa.text("completed_by IS NOT NULL"),
                    sqlite_where=sa.text("completed_by IS NOT NULL"))
    op.drop_index("ix_task_completed_by_at", table_name="bpm_task")
