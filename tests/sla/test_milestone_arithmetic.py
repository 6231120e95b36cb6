"""Where a milestone falls and what its notice says, as pure functions: shares of a policy's
target in its own terms, shares of a diagram's due date in working time, the reminder's
text in both languages, and which role a policy escalates to. No database: each calendar
and task is built in the test (one per test, so the mutation run of docs/mutation.md
credits each test that calls the function).

Days are 2025's official ones (chinese-calendar): 2025-06-13 is a Friday; National Day runs
1–8 October, Sunday 28 September is a make-up working day, on which the exchanges stay
closed."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.calendars import SHANGHAI, BusinessCalendar, BusinessHours, Due, seed_days
from engine.models import SlaPolicy, Task
from engine.sla import milestones

LUNCH = BusinessHours(periods=((time(9), time(11, 30)), (time(13), time(17))))


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def _calendar(hours: BusinessHours | None = None) -> BusinessCalendar:
    return BusinessCalendar(seed_days(date(2025, 1, 1), date(2025, 12, 31)), hours)


def _due(calendar: BusinessCalendar, start: datetime, amount: int, unit: str) -> Due:
    return calendar.add(start, amount, unit)


# -- shares of a policy's target -----------------------------------------------------------------
def test_the_whole_target_is_the_due_date_itself_whatever_the_arithmetic_would_say():
    calendar = _calendar()
    # A due date moved by a pause is no longer start + target: the 100 % milestone follows it.
    moved = Due(sh(2025, 6, 20, 11), False)
    # A diagram's due date may fall outside business hours: its 100 % is that moment, not the closing time.
    night = sh(2025, 6, 20, 20)
    for fraction in (1.0, 1.0 + 1e-12):
        assert milestones.milestone_due(calendar, sh(2025, 6, 12, 10), moved, Decimal(3), "WD", fraction) == moved.at
        assert milestones.diagram_milestone_due(calendar, sh(2025, 6, 12, 10), night, "WD", fraction) == night
    # Past the target, the share is counted on: 150 % of 2 WD from Thursday 10:00 is 3 WD later.
    start = sh(2025, 6, 12, 10)
    assert milestones.milestone_due(calendar, start, _due(calendar, start, 2, "WD"), Decimal(2), "WD",
                                    1.5) == sh(2025, 6, 17, 10)


def test_a_share_of_a_diagrams_due_date_past_the_whole_counts_on_in_working_time():
    """150 % of a due date the diagram set is after it (an escalation that goes out with the
    breach tells nobody anything new), counted in working time like the shares before it."""
    calendar = _calendar()
    start, due = sh(2025, 6, 12, 10), sh(2025, 6, 16, 10)  # Thursday 10:00 to Monday 10:00: 2 WD
    assert milestones.diagram_milestone_due(calendar, start, due, "WD", 1.5) == sh(2025, 6, 17, 10)
    assert milestones.diagram_milestone_due(calendar, start, due, "WD", 0.5) == sh(2025, 6, 13, 10)


def test_whole_working_days_then_the_rest_in_business_hours():
    calendar = _calendar()
    start = sh(2025, 6, 12, 10)  # Thursday
    due = _due(calendar, start, 3, "WD")
    # 80 % of 3 WD = 2 WD (Monday 10:00) and 0.4 of an 8-hour day (3 h 12).
    assert milestones.milestone_due(calendar, start, due, Decimal(3), "WD", 0.8) == sh(2025, 6, 16, 13, 12)
    # Exactly whole days: no rest added.
    assert milestones.milestone_due(calendar, start, due, Decimal(3), "WD", 2 / 3) == sh(2025, 6, 16, 10)


def test_a_share_below_one_day_counts_from_the_next_opening():
    calendar = _calendar()
    start = sh(2025, 6, 13, 18)  # Friday evening: the clock starts Monday 09:00
    due = _due(calendar, start, 1, "WD")
    assert milestones.milestone_due(calendar, start, due, Decimal(1), "WD", 0.5) == sh(2025, 6, 16, 13)


def test_the_rest_of_a_day_counts_the_days_own_business_hours_lunch_excluded():
    calendar = _calendar(LUNCH)  # 6.5 hours a day
    start = sh(2025, 6, 16, 9)  # Monday
    due = _due(calendar, start, 1, "WD")
    # Half of 6.5 h is 3 h 15: 09:00–11:30, then 45 minutes after lunch.
    assert milestones.milestone_due(calendar, start, due, Decimal(1), "WD", 0.5) == sh(2025, 6, 16, 13, 45)


def test_a_trading_days_share_is_never_on_a_make_up_sunday():
    calendar = _calendar()
    start = sh(2025, 9, 26, 14)  # Friday before the make-up Sunday 28 September
    due = _due(calendar, start, 1, "TD")
    assert due.at == sh(2025, 9, 29, 14)
    assert milestones.milestone_due(calendar, start, due, Decimal(1), "TD", 0.5) == sh(2025, 9, 29, 10)
    # From the make-up Sunday itself, the trading clock starts on Monday.
    sunday = sh(2025, 9, 28, 10)
    assert milestones.milestone_due(calendar, sunday, _due(calendar, sunday, 1, "TD"), Decimal(1), "TD",
                                    0.5) == sh(2025, 9, 29, 13)
    # A working day's share does count the make-up Sunday.
    assert milestones.milestone_due(calendar, start, _due(calendar, start, 1, "WD"), Decimal(1), "WD",
                                    0.5) == sh(2025, 9, 28, 10)
    # Whole trading days skip it too: 1.5 TD from Friday 14:00 is Monday 14:00 + 4 h = Tuesday 10:00.
    assert milestones.milestone_due(calendar, start, _due(calendar, start, 2, "TD"), Decimal(2), "TD",
                                    0.75) == sh(2025, 9, 30, 10)


def test_a_working_days_share_below_one_day_starts_on_the_make_up_sunday_after_a_closed_day():
    calendar = _calendar()
    saturday = sh(2025, 9, 27, 10)  # closed: the working clock starts on Sunday 28 September, the trading one on Monday
    assert milestones.milestone_due(calendar, saturday, _due(calendar, saturday, 1, "WD"), Decimal(1), "WD",
                                    0.5) == sh(2025, 9, 28, 13)
    assert milestones.milestone_due(calendar, saturday, _due(calendar, saturday, 1, "TD"), Decimal(1), "TD",
                                    0.5) == sh(2025, 9, 29, 13)


def test_a_share_of_working_hours_counts_business_hours():
    calendar = _calendar()
    start = sh(2025, 6, 13, 15)  # Friday
    due = _due(calendar, start, 10, "WH")
    # Half of 10 WH: Friday 15–17, then 3 h on Monday.
    assert milestones.milestone_due(calendar, start, due, Decimal(10), "WH", 0.5) == sh(2025, 6, 16, 12)


@pytest.mark.parametrize("unit", ["CD", "CH", "CMIN", "CM"])
def test_a_share_of_calendar_time_is_the_wall_clocks(unit):
    calendar = _calendar()
    start = sh(2025, 6, 13, 15)
    due = Due(start + timedelta(hours=100), False)
    assert milestones.milestone_due(calendar, start, due, Decimal(1), unit, 0.25) == start + timedelta(hours=25)


# -- shares of a diagram's due date ------------------------------------------------------------
def test_a_diagram_due_dates_share_is_counted_in_working_time_up_to_it():
    calendar = _calendar()
    start, due = sh(2025, 6, 12, 13), sh(2025, 6, 16, 13)  # Thursday 13:00 to Monday 13:00: 16 working hours
    assert milestones.diagram_milestone_due(calendar, start, due, "WD", 0.5) == sh(2025, 6, 13, 13)
    assert milestones.diagram_milestone_due(calendar, start, due, "WH", 0.25) == sh(2025, 6, 12, 17)


def test_a_diagram_due_dates_trading_share_skips_the_make_up_sunday():
    calendar = _calendar()
    start, due = sh(2025, 9, 26, 13), sh(2025, 9, 29, 13)  # Friday 13:00 to Monday 13:00
    # 8 trading hours (Friday 4, Monday 4): 75 % is Monday 11:00.
    assert milestones.diagram_milestone_due(calendar, start, due, "TD", 0.75) == sh(2025, 9, 29, 11)
    # 16 working hours (the Sunday counts): 75 % is Sunday 17:00.
    assert milestones.diagram_milestone_due(calendar, start, due, "WD", 0.75) == sh(2025, 9, 28, 17)


@pytest.mark.parametrize("unit", ["CD", "CM"])
def test_a_diagram_due_dates_share_under_a_calendar_unit_policy_is_the_wall_clocks(unit):
    calendar = _calendar()
    start, due = sh(2025, 6, 12, 13), sh(2025, 6, 16, 13)
    assert milestones.diagram_milestone_due(calendar, start, due, unit, 0.5) == sh(2025, 6, 14, 13)
    assert milestones.diagram_milestone_due(calendar, start, due, unit, 1.5) == sh(2025, 6, 18, 13)  # past it


def test_a_diagram_window_without_working_time_is_shared_by_the_wall_clock():
    calendar = _calendar()
    start, due = sh(2025, 6, 14, 9), sh(2025, 6, 15, 9)  # Saturday to Sunday
    assert milestones.diagram_milestone_due(calendar, start, due, "WD", 0.5) == sh(2025, 6, 14, 21)


def test_a_day_has_the_minutes_of_all_its_periods():
    assert milestones._minutes_per_day(LUNCH) == 390
    assert milestones._minutes_per_day(BusinessHours(periods=((time(9, 30), time(11, 30)),
                                                              (time(13), time(15))))) == 240


# -- the reminder's text ---------------------------------------------------------------------------
def _task(**fields: Any) -> Task:
    defaults: dict[str, Any] = {"name": "登记", "element_id": "register", "business_key": "R-1",
                                "due_at": datetime(2026, 3, 4, 1, tzinfo=UTC)}
    return Task(**{**defaults, **fields})


def test_a_reminder_says_how_much_of_the_time_is_used_with_the_due_date_in_beijing_time():
    assert milestones.message(_task(), 0.5, escalated=False, language="zh") == (
        "[R-1] 登记：已用时 50%", "任务「登记」（R-1）截止时间 2026-03-04 09:00（北京时间）；已用时 50%。")
    assert milestones.message(_task(), 0.8, escalated=False, language="en") == (
        "[R-1] 登记: 80% of the time allowed used",
        "Task 登记 (R-1) is due 2026-03-04 09:00 Beijing time; 80% of the time allowed used.")
    # The share is rounded down: 99.9 % is not yet the whole.
    assert milestones.message(_task(), 0.999, escalated=False, language="en")[0] == \
        "[R-1] 登记: 99% of the time allowed used"


def test_a_reminder_at_or_past_the_target_says_overdue():
    for fraction in (1.0, 1.5):
        assert milestones.message(_task(), fraction, escalated=False, language="zh") == (
            "[R-1] 登记：已超时", "任务「登记」（R-1）截止时间 2026-03-04 09:00（北京时间）；已超时。")
        assert milestones.message(_task(), fraction, escalated=False, language="en")[0] == "[R-1] 登记: overdue"


def test_an_escalation_notice_says_escalated_in_its_subject_and_how_late_in_its_body():
    assert milestones.message(_task(), 1.0, escalated=True, language="zh") == (
        "[R-1] 登记：已升级", "任务「登记」（R-1）截止时间 2026-03-04 09:00（北京时间）；已超时。")
    assert milestones.message(_task(), 0.5, escalated=True, language="en") == (
        "[R-1] 登记: escalated", "Task 登记 (R-1) is due 2026-03-04 09:00 Beijing time; 50% of the time allowed used.")


def test_a_reminder_for_a_step_without_name_or_due_date_says_so():
    task = _task(name=None, due_at=None)
    assert milestones.message(task, 0.5, escalated=False, language="zh")[1] == \
        "任务「register」（R-1）截止时间 未设截止时间（北京时间）；已用时 50%。"
    assert milestones.message(task, 0.5, escalated=False, language="en") == (
        "[R-1] register: 50% of the time allowed used",
        "Task register (R-1) is due no due date Beijing time; 50% of the time allowed used.")


# -- where a policy escalates to -----------------------------------------------------------------
def _policy(*steps: dict[str, Any]) -> SlaPolicy:
    return SlaPolicy(key="p", milestones=list(steps))


def test_a_policy_escalates_to_its_last_escalate_milestone_that_names_a_role():
    policy = _policy({"at": 0.5, "action": "notify", "to": "candidates"},
                     {"at": 1.0, "action": "escalate", "to": "branch:branch_head"},
                     {"at": 1.5, "action": "escalate", "to": "hq_complaint_dept"},
                     {"at": 2.0, "action": "escalate", "to": None},
                     {"at": 3.0, "action": "notify", "to": "compliance"})
    assert milestones.escalation_target(policy) == "hq_complaint_dept"


def test_a_policy_without_an_escalation_or_no_policy_escalates_nowhere():
    assert milestones.escalation_target(_policy({"at": 1.0, "action": "notify", "to": "managers"})) is None
    assert milestones.escalation_target(_policy({"at": 1.0, "action": "escalate"})) is None
    assert milestones.escalation_target(None) is None
