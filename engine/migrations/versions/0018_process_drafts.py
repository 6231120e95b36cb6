"""process drafts: the diagram a process owner is editing in the browser, one per process,
with a revision counter the pages use as the ETag

Revision ID: 0018
Revises: 0013
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bpm_process_draft",
        sa.Column("process_key", sa.String(length=128), primary_key=True),
        sa.Column("based_on_version", sa.Integer(), nullable=False),
        sa.Column("bpmn_xml", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("saved_by", sa.String(length=64), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bpm_process_draft")
