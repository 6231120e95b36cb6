"""a process version's origin when it is an earlier version deployed again (a rollback):
the version whose diagram and forms it carries, so the versions list says so

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bpm_process_version") as batch:
        batch.add_column(sa.Column("redeployed_from", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bpm_process_version") as batch:
        batch.drop_column("redeployed_from")
