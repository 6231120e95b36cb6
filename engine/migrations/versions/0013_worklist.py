"""worklist: comments on cases, form drafts, saved inbox views, a user's language, notifications
read; the open tasks by due date and tasks by who completed them, for the inbox

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bpm_comment",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("instance_id", sa.BigInteger(), sa.ForeignKey("bpm_process_instance.id"), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_comment_instance", "bpm_comment", ["instance_id", "id"])
    op.create_table(
        "bpm_task_draft",
        sa.Column("task_id", sa.BigInteger(), sa.ForeignKey("bpm_task.id"), primary_key=True),
        sa.Column("username", sa.String(length=64), primary_key=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "bpm_saved_view",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("query", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("username", "name", name="uq_saved_view_name"),
    )
    with op.batch_alter_table("bpm_user") as batch:
        batch.add_column(sa.Column("locale", sa.String(length=16), nullable=True))
    with op.batch_alter_table("bpm_notification") as batch:
        batch.add_column(sa.Column("read_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_notification_recipient", "bpm_notification", ["recipient", "id"])
    # The inbox reads open tasks nearest deadline first: with this index a page of 50 reads
    # about 50 rows however many tasks are open. (SQLite has no NULLS LAST in an index.)
    open_only = sa.text("status IN ('open', 'claimed')")
    due = sa.text("due_at NULLS LAST") if op.get_bind().dialect.name == "postgresql" else "due_at"
    op.create_index("ix_task_open_due", "bpm_task", [due, "id"], postgresql_where=open_only, sqlite_where=open_only)
    # 已关注 (the cases a person took part in) starts from the steps they completed.
    done_by = sa.text("completed_by IS NOT NULL")
    op.create_index("ix_task_completed_by", "bpm_task", ["completed_by"], postgresql_where=done_by,
                    sqlite_where=done_by)


def downgrade() -> None:
    op.drop_index("ix_task_completed_by", "bpm_task")
    op.drop_index("ix_task_open_due", "bpm_task")
    op.drop_index("ix_notification_recipient", "bpm_notification")
    with op.batch_alter_table("bpm_notification") as batch:
        batch.drop_column("read_at")
    with op.batch_alter_table("bpm_user") as batch:
        batch.drop_column("locale")
    op.drop_table("bpm_saved_view")
    op.drop_table("bpm_task_draft")
    op.drop_index("ix_comment_instance", "bpm_comment")
    op.drop_table("bpm_comment")
