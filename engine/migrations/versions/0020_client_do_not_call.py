"""a client's do-not-call flag (拒绝回访/免打扰): set when the client asks during a callback
that nobody call them for marketing again, with the moment it was set

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bpm_client") as batch:
        batch.add_column(sa.Column("dnc_marketing", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("dnc_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bpm_client") as batch:
        batch.drop_column("dnc_since")
        batch.drop_column("dnc_marketing")
