"""scale: the inbox's and the board's reads at a brokerage's size (docs/scale.md)

A candidate row says whether its task is still open (``active``), kept so by a trigger on the
task's status, and the inbox reads only the active ones (a partial index): the completed tasks'
candidate rows stay for the figures (work closed late by group) but no inbox reads them. The
open tasks get an index per branch in due order (a branch head's list and board) and one on
the owner (a delegated task's owner still sees it).

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

OPEN = "status IN ('open', 'claimed')"

# One trigger, in the database, rather than a line in each of the six places that close a
# task (complete, cancel by the projection, cancel of an instance, an escalation's end …):
# a place added later cannot forget it.
PG_FUNCTION = f"""
CREATE FUNCTION bpm_task_candidate_active() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN})
    WHERE task_id = NEW.id AND active IS DISTINCT FROM (NEW.{OPEN});
    RETURN NULL;
END $$
"""
PG_TRIGGER = """
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status ON bpm_task
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION bpm_task_candidate_active()
"""
SQLITE_TRIGGER = f"""
CREATE TRIGGER tr_task_candidate_active AFTER UPDATE OF status ON bpm_task
FOR EACH ROW WHEN OLD.status IS NOT NEW.status BEGIN
    UPDATE bpm_task_candidate SET active = (NEW.{OPEN}) WHERE task_id = NEW.id;
END
"""


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table("bpm_task_candidate") as batch:
        batch.add_column(sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.execute(f"UPDATE bpm_task_candidate SET active = false WHERE task_id IN "
               f"(SELECT id FROM bpm_task WHERE NOT ({OPEN}))")
    op.create_index("ix_task_candidate_active", "bpm_task_candidate", ["group_key", "task_id"],
                    postgresql_where=sa.text("active"), sqlite_where=sa.text("active"))
    due = sa.text("due_at NULLS LAST") if postgres else "due_at"
    # The lists' order exactly (due, then priority, then id): a batch job opens thousands of
    # tasks with one due time, and an index in due order alone then sorts every one of them.
    priority = sa.text("priority DESC")
    op.drop_index("ix_task_open_due", "bpm_task")
    op.create_index("ix_task_open_due", "bpm_task", [due, priority, "id"],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    op.create_index("ix_task_open_branch_due", "bpm_task", ["branch_code", due, priority, "id"],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    op.create_index("ix_task_open_priority", "bpm_task", [priority, due, "id"],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    op.create_index("ix_task_open_branch_priority", "bpm_task", ["branch_code", priority, due, "id"],
                    postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))
    # The tasks tied to no branch (every branch head sees them) in both orders, on their own:
    # "branch_code IS NULL" gives no order on the branch indexes, and the planner then walked
    # the whole firm's index looking for them (2.5 s for a branch head sorting by priority).
    unbranched = sa.text(f"branch_code IS NULL AND {OPEN}")
    op.create_index("ix_task_open_unbranched_due", "bpm_task", [due, priority, "id"],
                    postgresql_where=unbranched, sqlite_where=unbranched)
    op.create_index("ix_task_open_unbranched_priority", "bpm_task", [priority, due, "id"],
                    postgresql_where=unbranched, sqlite_where=unbranched)
    # A case is looked up by its business key (the case page, the archive): without an index
    # that read every case ever opened (230 ms at 2.5 million cases).
    op.create_index("ix_instance_business_key", "bpm_process_instance", ["business_key"])
    op.create_index("ix_task_open_owner", "bpm_task", ["owner"],
                    postgresql_where=sa.text(f"owner IS NOT NULL AND {OPEN}"),
                    sqlite_where=sa.text(f"owner IS NOT NULL AND {OPEN}"))
    if postgres:
        op.execute(PG_FUNCTION)
        op.execute(PG_TRIGGER)
        # A firm-wide queue's rows are all active, a branch group's mostly completed: without
        # statistics of the pair the planner takes them as independent, guesses a quarter of the
        # call centre's 100,000 open tasks and picks a hash join over all of them.
        op.execute("CREATE STATISTICS st_task_candidate_group_active (mcv) ON group_key, active "
                   "FROM bpm_task_candidate")
    else:
        op.execute(SQLITE_TRIGGER)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS tr_task_candidate_active" +
               (" ON bpm_task" if op.get_bind().dialect.name == "postgresql" else ""))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS bpm_task_candidate_active()")
        op.execute("DROP STATISTICS IF EXISTS st_task_candidate_group_active")
    op.drop_index("ix_task_open_owner", "bpm_task")
    op.drop_index("ix_instance_business_key", "bpm_process_instance")
    op.drop_index("ix_task_open_unbranched_priority", "bpm_task")
    op.drop_index("ix_task_open_unbranched_due", "bpm_task")
    op.drop_index("ix_task_open_branch_priority", "bpm_task")
    op.drop_index("ix_task_open_priority", "bpm_task")
    op.drop_index("ix_task_open_branch_due", "bpm_task")
    op.drop_index("ix_task_open_due", "bpm_task")
    due = sa.text("due_at NULLS LAST") if op.get_bind().dialect.name == "postgresql" else "due_at"
    op.create_index("ix_task_open_due", "bpm_task", [due, "id"], postgresql_where=sa.text(OPEN),
                    sqlite_where=sa.text(OPEN))
    op.drop_index("ix_task_candidate_active", "bpm_task_candidate")
    with op.batch_alter_table("bpm_task_candidate") as batch:
        batch.drop_column("active")
