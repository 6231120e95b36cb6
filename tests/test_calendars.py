"""Business-calendar arithmetic against the examples of the domain brief (§4.5)."""

from __future__ import annotations

from datetime import date, datetime, time

import pytest
from sqlalchemy import select

from engine.bpmn.date_functions import DateFunctions
from engine.calendars import SHANGHAI, BusinessCalendar, BusinessHours, DayInfo, Unit, seed_days
from engine.errors import InvalidInput
from engine.models import Task
from engine.process import deployments, instances, tasks
from engine.sla import admin as sla_admin
from engine.sla import calendar_store
from tests.support.bpmn import bundle_of, linear, process, user_task


@pytest.fixture(scope="module")
def cal() -> BusinessCalendar:
    return BusinessCalendar(seed_days(date(2024, 1, 1), date(2026, 12, 31)))


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def test_twenty_working_days_count_the_make_up_sunday_and_skip_qingming(cal):
    # Brief §4.5, CB-20250401-0107: due 2025-04-29; 04-04 is 清明, Sunday 04-27 is a 调休 working day.
    due = cal.add(sh(2025, 4, 1, 9), 20, Unit.WORKING_DAYS)
    assert due.at == sh(2025, 4, 29, 9) and not due.incomplete


def test_trading_days_skip_the_make_up_sunday(cal):
    assert cal.add(sh(2025, 4, 1, 9), 20, Unit.TRADING_DAYS).at == sh(2025, 4, 30, 9)


def test_thirty_working_days_from_a_complaint_on_june_12(cal):
    assert cal.add(sh(2025, 6, 12, 10), 30, "WD").at == sh(2025, 7, 24, 10)  # brief: CMP-20250612-0001


def test_two_trading_days_for_a_risk_disclosure_callback(cal):
    assert cal.add(sh(2025, 6, 12, 10), 2, "TD").at == sh(2025, 6, 16, 10)  # brief: CB-20250612-0044


def test_outside_business_hours_the_clock_starts_at_the_next_opening(cal):
    # Friday 18:00: the clock starts Monday 09:00, so 3 WD end Thursday 09:00.
    assert cal.add(sh(2025, 6, 13, 18), 3, "WD").at == sh(2025, 6, 19, 9)
    assert cal.add(sh(2025, 6, 16, 7, 30), 1, "WD").at == sh(2025, 6, 17, 9)


def test_a_calendar_day_is_24_hours_whatever_the_weekday(cal):
    assert cal.add(sh(2025, 6, 13, 18), 1, "CD").at == sh(2025, 6, 14, 18)


def test_calendar_months_clamp_to_the_end_of_a_short_month(cal):
    assert cal.add(sh(2025, 1, 31, 10), 1, "CM").at == sh(2025, 2, 28, 10)
    assert cal.add(sh(2025, 6, 3, 10), 1, "CM").at == sh(2025, 7, 3, 10)  # brief: CB-20250603-0031


def test_working_hours_skip_nights_and_weekends(cal):
    assert cal.add(sh(2025, 6, 13, 16), 4, "WH").at == sh(2025, 6, 16, 12)


def test_working_hours_skip_the_lunch_break():
    hours = BusinessHours(periods=((time(9), time(11, 30)), (time(13), time(17))))
    cal = BusinessCalendar({}, hours)
    assert cal.add(sh(2026, 3, 2, 11), 1, "WH").at == sh(2026, 3, 2, 13, 30)


def test_beyond_the_known_data_the_date_is_computed_and_flagged(cal):
    due = cal.add(sh(2026, 12, 28, 10), 5, "WD")
    assert due.incomplete
    assert due.at == sh(2027, 1, 4, 10)  # weekends only: 2027's holidays are not known yet


def test_an_administrator_correction_changes_the_answer():
    days = seed_days(date(2026, 3, 1), date(2026, 3, 31))
    days[date(2026, 3, 3)] = DayInfo(working=False, trading=False, name="临时休市")
    cal = BusinessCalendar(days)
    assert cal.add(sh(2026, 3, 2, 10), 1, "WD").at == sh(2026, 3, 4, 10)


def test_naive_datetimes_and_negative_targets_are_refused(cal):
    with pytest.raises(ValueError):
        cal.add(datetime(2026, 3, 2, 10), 1, "WD")
    with pytest.raises(InvalidInput):
        cal.add(sh(2026, 3, 2, 10), -1, "WD")


# -- the calendar diagram date functions see (engine/date_functions.py) --------------------------
@pytest.mark.sqlite
def test_diagram_date_functions_see_an_administrators_correction_once_the_revision_moves(db, rt, people):
    expression = "add_trading_days('2025-06-13T16:00:00+08:00', 1, at='10:00')"

    def evaluate(session, snapshot=None):
        snapshot = snapshot or rt.calendar_snapshot(session)
        return rt.evaluator.evaluate(expression, {}, dates=DateFunctions(snapshot)), snapshot

    with db.transaction() as s:
        before, held = evaluate(s)
        revision = calendar_store.revisions(s)["calendar_revision"]
    assert before == "2025-06-16T10:00:00+08:00"
    with db.transaction() as s:  # the exchanges stay closed on Monday 06-16
        sla_admin.set_day(s, day=date(2025, 6, 16), working=False, trading=False, name="临时休市", actor=people.owner,
                    now=rt.now())
    with db.transaction() as s:
        assert calendar_store.revisions(s)["calendar_revision"] != revision
        after, _ = evaluate(s)
        again, _ = evaluate(s, held)
    assert after == "2025-06-17T10:00:00+08:00"
    # A snapshot is one revision: what a unit of work already computed with does not change under it.
    assert again == before


@pytest.mark.sqlite
def test_a_step_computes_with_the_corrected_calendar_though_a_step_before_the_correction_loaded_it(
        db, rt, people):
    """The statement that locks a case brings the calendar's revision along (the shared cache
    is reloaded when it moved). A first step's due date is computed as the case starts; the
    second's as the first is completed, under the case's lock."""
    due = "camunda:dueDate=\"${add_trading_days('2025-06-13T16:00:00+08:00', 1, at='10:00')}\""
    xml = process(linear(("first", user_task("first", extra=due)), ("second", user_task("second", extra=due))),
                  key="dated")
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)
        cases = [instances.start(s, rt, process_key="dated", business_key=key, actor=people.clerk, data={}).id
                 for key in ("D-1", "D-2")]

    def open_task(instance_id):
        with db.transaction() as s:
            return s.execute(select(Task).where(Task.instance_id == instance_id, Task.status == "open")).scalar_one()

    def complete_first(instance_id):
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=open_task(instance_id).id, actor=people.clerk, data={})
        return open_task(instance_id)

    assert [open_task(c).due_at for c in cases] == [sh(2025, 6, 16, 10)] * 2
    assert complete_first(cases[1]).due_at == sh(2025, 6, 16, 10)  # a step before the correction
    with db.transaction() as s:  # the exchanges stay closed on Monday 06-16
        sla_admin.set_day(s, day=date(2025, 6, 16), working=False, trading=False, name="临时休市",
                          actor=people.owner, now=rt.now())
    second = complete_first(cases[0])
    assert second.element_id == "second" and second.due_at == sh(2025, 6, 17, 10)
