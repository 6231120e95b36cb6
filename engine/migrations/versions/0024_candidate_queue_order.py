"""a queue read in its own order: an open task's candidate rows carry the task's due date and
priority, kept so by triggers, and are indexed per group in the inbox's two orders

A firm-wide group's queue (the call centre's 100,000 open tasks) was read by fetching every
task offered to the group and sorting them, or by walking every open task of the firm in the
list's order until enough of the group's turned up; either way the cost grew with the queue or
the firm. With the order on the candidate rows, a page of the queue is one index range of the
group: about a page of rows, however long the queue (docs/scale.md).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

OPEN = "status IN ('open', 'claimed')"

# The task's trigger now keeps the order columns as well as ``active`` (0021): every place that
# changes a task's due date or priority (an SLA recompute, an escalation, a pause, a migration)
# is covered without a line of its own.
PG_SYNC = f"""
CREATE OR REPLACE FUNCTION bpm_task_candidate_active() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}), priority = NEW.priority, due_at = NEW.due_at
    WHERE task_id = NEW.id AND (active IS DISTINCT FROM (NEW.{OPEN}) OR priority IS DISTINCT FROM NEW.priority
                                OR due_at IS DISTINCT FROM NEW.due_at);
    RETURN NULL;
END $$
"""
PG_SYNC_TRIGGER = """
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status, priority, due_at ON bpm_task
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.priority IS DISTINCT FROM NEW.priority
                   OR OLD.due_at IS DISTINCT FROM NEW.due_at)
EXECUTE FUNCTION bpm_task_candidate_active()
"""
# A candidate row written without the order (an escalation's, a migrated task's: the ORM's
# inserts) takes it from its task. The projection's hot path writes it itself and skips this.
PG_FILL = """
CREATE FUNCTION bpm_task_candidate_fill() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    SELECT priority, due_at INTO NEW.priority, NEW.due_at FROM bpm_task WHERE id = NEW.task_id;
    RETURN NEW;
END $$
"""
PG_FILL_TRIGGER = """
CREATE TRIGGER tr_task_candidate_fill BEFORE INSERT ON bpm_task_candidate
FOR EACH ROW WHEN (NEW.priority IS NULL) EXECUTE FUNCTION bpm_task_candidate_fill()
"""
SQLITE_SYNC_TRIGGER = f"""
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status, priority, due_at ON bpm_task
FOR EACH ROW WHEN OLD.status IS NOT NEW.status OR OLD.priority IS NOT NEW.priority
                  OR OLD.due_at IS NOT NEW.due_at BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}), priority = NEW.priority, due_at = NEW.due_at
    WHERE task_id = NEW.id;
END
"""
SQLITE_FILL_TRIGGER = """
CREATE TRIGGER tr_task_candidate_fill AFTER INSERT ON bpm_task_candidate
FOR EACH ROW WHEN NEW.priority IS NULL BEGIN
    UPDATE bpm_task_candidate SET priority = (SELECT priority FROM bpm_task WHERE id = NEW.task_id),
                                  due_at = (SELECT due_at FROM bpm_task WHERE id = NEW.task_id)
    WHERE task_id = NEW.task_id AND group_key = NEW.group_key;
END
"""
# The 0021 trigger, put back by the downgrade.
PG_SYNC_0021 = f"""
CREATE OR REPLACE FUNCTION bpm_task_candidate_active() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN})
    WHERE task_id = NEW.id AND active IS DISTINCT FROM (NEW.{OPEN});
    RETURN NULL;
END $$
"""
PG_SYNC_TRIGGER_0021 = """
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status ON bpm_task
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION bpm_task_candidate_active()
"""
SQLITE_SYNC_TRIGGER_0021 = f"""
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status ON bpm_task
FOR EACH ROW WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}) WHERE task_id = NEW.id;
END
"""


def _indexes(postgres: bool) -> None:
    due = sa.text("due_at NULLS LAST") if postgres else "due_at"
    priority = sa.text("priority DESC")
    active = sa.text("active")
    op.create_index("ix_task_candidate_queue_due", "bpm_task_candidate", ["group_key", due, priority, "task_id"],
                    postgresql_where=active, sqlite_where=active)
    op.create_index("ix_task_candidate_queue_priority", "bpm_task_candidate",
                    ["group_key", priority, due, "task_id"], postgresql_where=active, sqlite_where=active)


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    # Plain ADD COLUMN (nullable, no default): no table rewrite on PostgreSQL, and on SQLite no
    # batch copy, which would drop the task table's triggers.
    op.add_column("bpm_task_candidate", sa.Column("priority", sa.Integer(), nullable=True))
    op.add_column("bpm_task_candidate", sa.Column("due_at", sa.DateTime(timezone=True), nullable=True))
    # Only the open tasks' rows: the inbox reads no other, and the trigger fills a row whose
    # task changes.
    if postgres:
        op.execute("UPDATE bpm_task_candidate c SET priority = t.priority, due_at = t.due_at "
                   "FROM bpm_task t WHERE t.id = c.task_id AND c.active")
    else:
        op.execute("UPDATE bpm_task_candidate SET "
                   "priority = (SELECT priority FROM bpm_task WHERE id = task_id), "
                   "due_at = (SELECT due_at FROM bpm_task WHERE id = task_id) WHERE active")
    op.drop_index("ix_task_candidate_active", "bpm_task_candidate")
    _indexes(postgres)
    if postgres:
        op.execute("DROP TRIGGER tr_task_candidate_active ON bpm_task")
        op.execute(PG_SYNC)
        op.execute(PG_SYNC_TRIGGER)
        op.execute(PG_FILL)
        op.execute(PG_FILL_TRIGGER)
    else:
        op.execute("DROP TRIGGER tr_task_candidate_active")
        op.execute(SQLITE_SYNC_TRIGGER)
        op.execute(SQLITE_FILL_TRIGGER)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.execute("DROP TRIGGER tr_task_candidate_fill ON bpm_task_candidate")
        op.execute("DROP FUNCTION bpm_task_candidate_fill()")
        op.execute("DROP TRIGGER tr_task_candidate_active ON bpm_task")
        op.execute(PG_SYNC_0021)
        op.execute(PG_SYNC_TRIGGER_0021)
    else:
        op.execute("DROP TRIGGER tr_task_candidate_fill")
        op.execute("DROP TRIGGER tr_task_candidate_active")
        op.execute(SQLITE_SYNC_TRIGGER_0021)
    op.drop_index("ix_task_candidate_queue_priority", "bpm_task_candidate")
    op.drop_index("ix_task_candidate_queue_due", "bpm_task_candidate")
    op.create_index("ix_task_candidate_active", "bpm_task_candidate", ["group_key", "task_id"],
                    postgresql_where=sa.text("active"), sqlite_where=sa.text("active"))
    # SQLite 3.35+ drops a column in place (no batch copy, which would drop the triggers).
    op.drop_column("bpm_task_candidate", "due_at")
    op.drop_column("bpm_task_candidate", "priority")
