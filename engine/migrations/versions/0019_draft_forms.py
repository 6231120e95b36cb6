"""draft forms: a process draft keeps its own JSON Schema forms once an owner edits or
imports one (NULL: the based-on version's forms)

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bpm_process_draft") as batch:
        batch.add_column(sa.Column("forms", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bpm_process_draft") as batch:
        batch.drop_column("forms")
