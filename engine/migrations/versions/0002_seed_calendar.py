"""seed the working/trading-day calendar (2004-2026) and default business hours

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from engine.calendars import seed_days

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

calendar_day = sa.table(
    "bpm_calendar_day",
    sa.column("day", sa.Date), sa.column("working", sa.Boolean), sa.column("trading", sa.Boolean),
    sa.column("name", sa.String), sa.column("source", sa.String), sa.column("updated_by", sa.String),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
business_hours = sa.table(
    "bpm_business_hours", sa.column("name", sa.String), sa.column("tz", sa.String), sa.column("periods", sa.JSON),
)
setting = sa.table("bpm_setting", sa.column("key", sa.String), sa.column("value", sa.String))


def upgrade() -> None:
    now = datetime.now(UTC)
    op.bulk_insert(calendar_day, [
        {"day": day, "working": info.working, "trading": info.trading, "name": info.name,
         "source": "chinese-calendar", "updated_by": None, "updated_at": now}
        for day, info in sorted(seed_days().items())
    ])
    op.bulk_insert(business_hours, [
        {"name": "default", "tz": "Asia/Shanghai", "periods": [["09:00", "17:00"]]},
        {"name": "trading", "tz": "Asia/Shanghai", "periods": [["09:30", "11:30"], ["13:00", "15:00"]]},
    ])
    op.bulk_insert(setting, [{"key": "calendar_revision", "value": "1"}])


def downgrade() -> None:
    op.execute(setting.delete().where(setting.c.key == "calendar_revision"))
    op.execute(business_hours.delete())
    op.execute(calendar_day.delete())
