"""token expiry: every API token expires; the ones issued without an expiry get one

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The lifetime `bpm user token` gives a token by default (engine.access.identity.API_TOKEN_TTL),
# counted from the upgrade: a script's or an outside system's token keeps working for that
# long, time enough to issue it a new one, instead of stopping at the upgrade.
GRACE = timedelta(days=90)


def upgrade() -> None:
    expires = datetime.now(UTC) + GRACE
    # SQLite keeps UTC datetimes as naive text (engine.db.UTCDateTime), PostgreSQL with the offset.
    value = expires.replace(tzinfo=None) if op.get_bind().dialect.name == "sqlite" else expires
    tokens = sa.table("bpm_api_token", sa.column("expires_at", sa.DateTime(timezone=True)))
    op.execute(tokens.update().where(tokens.c.expires_at.is_(None)).values(expires_at=value))
    with op.batch_alter_table("bpm_api_token") as batch:
        batch.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("bpm_api_token") as batch:
        batch.alter_column("expires_at", existing_type=sa.DateTime(timezone=True), nullable=True)
