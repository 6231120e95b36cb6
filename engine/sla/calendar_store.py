"""The reference data every due date is computed with, cached per process by revision.

Calendar days, business hours and the active SLA policies change rarely (an
administrator's edit) and are read on every new task. Each has a revision token in
``bpm_setting``; an edit writes a fresh token, and every process reloads its cache the
next time it reads a token that differs from the one its cache was built at. The tokens
are read once per transaction, usually by the statement that locks the instance.
"""

from __future__ import annotations

import threading
from datetime import time
from typing import Any
from uuid import uuid4
from zoneinfo import ZoneInfo

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from engine.calendars import BusinessCalendar, BusinessHours, DayInfo
from engine.errors import InvalidInput
from engine.models import BusinessHoursRow, CalendarDay, Setting, SlaPolicy

CALENDAR_REVISION, SLA_REVISION = "calendar_revision", "sla_revision"


class CalendarCache:
    """Days and business hours by calendar revision; an administrator's edit bumps the
    revision, so every process sees it on its next computation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revision: str | None = None
        self._days: dict[Any, DayInfo] = {}
        self._hours: dict[str, BusinessHours] = {}

    def get(self, session: Session, hours_name: str) -> BusinessCalendar:
        revision = revisions(session).get(CALENDAR_REVISION)
        if revision != self._revision:
            days = {row.day: DayInfo(row.working, row.trading, row.name)
                    for row in session.execute(select(CalendarDay)).scalars()}
            hours = {row.name: _hours(row) for row in session.execute(select(BusinessHoursRow)).scalars()}
            with self._lock:
                self._days, self._hours, self._revision = days, hours, revision
        if hours_name not in self._hours:
            raise InvalidInput(f"no business hours named {hours_name!r}")
        return BusinessCalendar(self._days, self._hours[hours_name])


def _hours(row: BusinessHoursRow) -> BusinessHours:
    periods = tuple((time.fromisoformat(a), time.fromisoformat(b)) for a, b in row.periods)
    return BusinessHours(periods=periods, tz=ZoneInfo(row.tz))


CALENDARS = CalendarCache()

_REVISIONS_KEY = "bpm_revisions"
_REVISIONS = select(Setting.key, Setting.value).where(Setting.key.in_((CALENDAR_REVISION, SLA_REVISION)))


# The same two values as columns, so the statement that locks an instance brings them along
# and a step that creates tasks needs no round trip of its own to check its caches.
REVISION_COLUMNS = tuple(
    select(Setting.value).where(Setting.key == key).scalar_subquery().label(key)
    for key in (CALENDAR_REVISION, SLA_REVISION)
)


def remember_revisions(session: Session, calendar_revision: str | None, sla_revision: str | None) -> None:
    """Values read by a statement with :data:`REVISION_COLUMNS`."""
    if _REVISIONS_KEY not in session.info:
        session.info[_REVISIONS_KEY] = {k: v for k, v in ((CALENDAR_REVISION, calendar_revision),
                                                         (SLA_REVISION, sla_revision)) if v is not None}


def revisions(session: Session) -> dict[str, str]:
    """Revisions of the reference data processes cache (calendar, SLA policies), read once
    per transaction and on the connection, so asking does not flush the session."""
    cached: dict[str, str] | None = session.info.get(_REVISIONS_KEY)
    if cached is None:
        cached = {key: value for key, value in session.connection().execute(_REVISIONS).all()}
        session.info[_REVISIONS_KEY] = cached
    return cached


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_revisions(session: Session) -> None:
    session.info.pop(_REVISIONS_KEY, None)


def _bump_revision(session: Session, key: str) -> None:
    # A fresh random token, not a counter: two concurrent edits must not both write "n+1"
    # and leave other processes trusting a cache of the first edit.
    token = uuid4().hex
    setting = session.get(Setting, key)
    if setting is None:
        session.add(Setting(key=key, value=token))
    else:
        setting.value = token
    revisions(session)[key] = token


def bump_calendar_revision(session: Session) -> None:
    _bump_revision(session, CALENDAR_REVISION)


# A policy as cached: a plain row (attribute access like the model), never an ORM object,
# which a rollback in the session that loaded it would expire under every other user.
PolicyRow = Any
_ACTIVE_POLICIES = (select(SlaPolicy.__table__).where(SlaPolicy.__table__.c.active.is_(True))
                    .order_by(SlaPolicy.__table__.c.position, SlaPolicy.__table__.c.id))


class PolicyCache:
    """Active policies by SLA revision: matching a new task costs no query (every task
    creation would otherwise read the policy table). One per Runtime."""

    def __init__(self) -> None:
        self._revision: str | None = None
        self._policies: list[PolicyRow] = []

    def active(self, session: Session) -> list[PolicyRow]:
        revision = revisions(session).get(SLA_REVISION, "")
        if revision != self._revision:
            session.flush()  # a policy saved in this transaction is part of it
            self._policies = list(session.connection().execute(_ACTIVE_POLICIES).all())
            self._revision = revision
        return self._policies


def bump_sla_revision(session: Session) -> None:
    _bump_revision(session, SLA_REVISION)
