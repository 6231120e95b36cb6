"""a task's own choice of SLA policy: the key its step names in the diagram (the slaPolicy
property), so a recompute after a policy change chooses as the task's creation did

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable with no default: PostgreSQL adds it without rewriting the task table, and SQLite
    # by its own ALTER TABLE (a batch copy of the table would drop its triggers, 0021's).
    op.add_column("bpm_task", sa.Column("sla_policy_key", sa.String(length=128), nullable=True))


def downgrade() -> None:
    # SQLite 3.35+ drops a column in place; a batch copy would drop the table's triggers.
    op.drop_column("bpm_task", "sla_policy_key")
