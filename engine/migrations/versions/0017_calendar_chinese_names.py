"""The seeded holidays by their Chinese names (元旦, 春节, …): the calendar package names
them in English, and people read the calendar in Chinese.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

# Written out rather than imported: a migration keeps what it did when it was written.
HOLIDAY_NAMES = {"New Year's Day": "元旦", "Spring Festival": "春节", "Tomb-sweeping Day": "清明节",
                 "Labour Day": "劳动节", "Dragon Boat Festival": "端午节", "National Day": "国庆节",
                 "Mid-autumn Festival": "中秋节", "Anti-Fascist 70th Day": "抗战胜利纪念日"}
_SEEDED = "chinese-calendar"
_DAYS = sa.table("bpm_calendar_day", sa.column("name", sa.String), sa.column("source", sa.String))


def upgrade() -> None:
    for english, chinese in HOLIDAY_NAMES.items():
        op.execute(_DAYS.update().where(_DAYS.c.name == english, _DAYS.c.source == _SEEDED).values(name=chinese))


def downgrade() -> None:
    for english, chinese in HOLIDAY_NAMES.items():
        op.execute(_DAYS.update().where(_DAYS.c.name == chinese, _DAYS.c.source == _SEEDED).values(name=english))
