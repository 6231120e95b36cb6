"""Days, moments and SLA targets far outside any plausible range are refused by the engine's
services themselves (whichever adapter calls them), with the reason, instead of overflowing
date arithmetic."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select

from engine.brokerage import figures
from engine.calendars import SHANGHAI, BusinessCalendar, Unit, check_target, seed_days
from engine.errors import InvalidInput
from engine.models import CalendarDay
from engine.sla import admin as sla_admin
from engine.timers import firing

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)
FAR = [date(1, 1, 1), date(1989, 12, 31), date(2100, 1, 1), date(9999, 12, 31)]


@pytest.mark.sqlite
@pytest.mark.parametrize("day", FAR)
def test_a_calendar_day_outside_1990_to_2099_is_refused_and_not_stored(db, people, day):
    with db.transaction() as s, pytest.raises(InvalidInput, match="must lie between 1990-01-01 and 2099-12-31"):
        sla_admin.set_day(s, day=day, working=True, trading=None, name=None, actor=people.owner, now=NOW)
    with db.transaction() as s:
        assert s.execute(select(CalendarDay).where(CalendarDay.day == day)).first() is None


@pytest.mark.store_independent
@pytest.mark.parametrize("day", FAR)
def test_a_figure_period_outside_1990_to_2099_is_refused(day):
    with pytest.raises(InvalidInput, match="must lie between"):
        figures.period(day, None, now=NOW)
    with pytest.raises(InvalidInput, match="must lie between"):
        figures.period(None, day, now=NOW)


@pytest.mark.sqlite
@pytest.mark.parametrize("moment", ["9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "2100-01-01T00:00:00Z"])
def test_a_timer_cannot_be_moved_outside_1990_to_2099(db, rt, people, moment):
    """Refused before the timer is even looked up: the CLI's ``bpm timer reschedule`` and
    the API reach the same check."""
    with db.transaction() as s, pytest.raises(InvalidInput, match="due_at must lie between"):
        firing.reschedule(s, rt, timer_id=1, due_at=datetime.fromisoformat(moment), actor=people.supervisor)


@pytest.mark.store_independent
@pytest.mark.parametrize(("amount", "unit"), [
    (Decimal("1000000000"), "WD"), (Decimal("1e9"), "CD"), (1e9, "CH"), (121, "CM"), (2501, "TD"),
    (Decimal("NaN"), "WD"), (Decimal("Infinity"), "CD"), (0, "WD"), (-1, "CD"),
])
def test_an_sla_target_beyond_ten_years_or_not_positive_is_refused(amount, unit):
    with pytest.raises(InvalidInput, match="SLA target"):
        check_target(amount, unit)


@pytest.mark.store_independent
def test_the_calendar_refuses_a_target_it_could_not_compute_instead_of_overflowing():
    calendar = BusinessCalendar(seed_days(date(2026, 1, 1), date(2026, 12, 31)))
    with pytest.raises(InvalidInput, match="at most 3660"):
        calendar.add(NOW, Decimal("1e9"), Unit.CALENDAR_DAYS)
    assert calendar.add(NOW, 3660, Unit.CALENDAR_DAYS).at == NOW + timedelta(days=3660)


@pytest.mark.sqlite
def test_a_policy_with_a_target_of_a_billion_working_days_is_refused(db, rt, people):
    with db.transaction() as s, pytest.raises(InvalidInput, match="at most 2500"):
        sla_admin.upsert_policy(s, rt, data={"key": "huge", "name": "太长", "target_amount": "1000000000",
                                             "target_unit": "WD"}, actor=people.owner)
