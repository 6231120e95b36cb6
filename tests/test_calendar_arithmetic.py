"""The calendar's arithmetic at its edges: each unit, each boundary of business hours (the
opening minute, the closing minute, the lunch break), holidays and make-up days, days the
calendar does not know, time zones, and the bounds on what it accepts. Pure functions over
2025's official days, so every figure can be checked against a wall calendar.

2025 as the State Council set it: 元旦 Wed 01-01; 春节 Tue 01-28 to Tue 02-04 with make-up
working days Sun 01-26 and Sat 02-08; 清明 Fri 04-04; 劳动节 make-up Sun 04-27; 国庆 Wed 10-01 to
Wed 10-08 with make-up Sun 09-28 and Sat 10-11. A make-up day is a working day, never a trading
day. 2025-06-13 is a Friday."""

from __future__ import annotations

import time as systime
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest

from engine.calendars import (
    MAX_TARGET,
    SHANGHAI,
    BusinessCalendar,
    BusinessHours,
    DayInfo,
    Due,
    Unit,
    check_plausible,
    check_target,
    ensure_aware_due,
    seed_days,
)
from engine.errors import InvalidInput

LUNCH = BusinessHours(periods=((time(9), time(11, 30)), (time(13), time(17))))
ALL_DAY = BusinessHours(periods=((time(0), time(23, 59)),))


# Built for each test, not once per module: the mutation run (docs/mutation.md) credits a
# function to the tests that call it, and a fixture made once is credited to one test only.
@pytest.fixture
def days() -> dict[date, DayInfo]:
    return seed_days(date(2025, 1, 1), date(2025, 12, 31))


@pytest.fixture
def cal(days) -> BusinessCalendar:
    return BusinessCalendar(days)


def closed_for_years(*, but: date | None = None) -> BusinessCalendar:
    """Ten closed years on each side of 2025, open only on ``but``: a calendar nobody keeps,
    to show the searches end."""
    first, days = date(2015, 1, 1), {}
    for n in range(7700):
        day = first + timedelta(days=n)
        days[day] = DayInfo(working=day == but, trading=day == but)
    return BusinessCalendar(days)


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


# -- what the calendar accepts -------------------------------------------------------------------
def test_a_day_is_plausible_from_1990_to_2099_inclusive():
    for fine in (date(1990, 1, 1), date(2099, 12, 31), sh(2099, 12, 31, 23)):
        check_plausible(fine, name="day")
    for wrong in (date(1989, 12, 31), date(2100, 1, 1), sh(2100, 1, 1, 0)):
        with pytest.raises(InvalidInput) as refused:
            check_plausible(wrong, name="the holiday")
        assert str(refused.value.message) == \
            f"the holiday must lie between 1990-01-01 and 2099-12-31, got {wrong.isoformat()}"


@pytest.mark.parametrize("unit", list(Unit))
def test_a_target_is_positive_and_at_most_its_units_longest(unit):
    check_target(MAX_TARGET[unit], unit)
    check_target(Decimal("0.5"), unit.value)
    with pytest.raises(InvalidInput, match=f"at most {MAX_TARGET[unit]}, got {MAX_TARGET[unit] + 1}"):
        check_target(MAX_TARGET[unit] + 1, unit)
    for wrong in (0, -1, Decimal("NaN"), float("inf")):
        with pytest.raises(InvalidInput, match="must be a positive number"):
            check_target(wrong, unit)


def test_the_longest_targets_are_about_ten_years_in_each_unit():
    assert MAX_TARGET == {Unit.CALENDAR_DAYS: 3660, Unit.CALENDAR_HOURS: 87840, Unit.CALENDAR_MINUTES: 5270400,
                          Unit.CALENDAR_MONTHS: 120, Unit.WORKING_DAYS: 2500, Unit.TRADING_DAYS: 2500,
                          Unit.WORKING_HOURS: 20000}


def test_business_hours_are_increasing_periods_that_may_touch_or_start_at_midnight():
    assert BusinessHours(periods=((time(0), time(8)),)).opening == time(0)
    assert BusinessHours(periods=((time(9), time(12)), (time(12), time(17)))).opening == time(9)
    assert LUNCH.opening == time(9)
    with pytest.raises(InvalidInput) as refused:
        BusinessHours(periods=())
    assert refused.value.message == "business hours need at least one period"
    for wrong in (((time(9), time(9)),), ((time(10), time(9)),), ((time(9), time(12)), (time(11), time(17)))):
        with pytest.raises(InvalidInput) as refused:
            BusinessHours(periods=wrong)
        assert refused.value.message == "business-hour periods must be increasing and non-overlapping"


def test_a_due_date_must_carry_its_time_zone():
    assert ensure_aware_due(sh(2025, 6, 13, 10)) == sh(2025, 6, 13, 10)
    with pytest.raises(ValueError, match=r"^due date must be timezone-aware"):
        ensure_aware_due(datetime(2025, 6, 13, 10))


# -- days ------------------------------------------------------------------------------------------
def test_the_calendar_knows_the_range_of_its_data(days):
    cal = BusinessCalendar(days)
    assert (cal.known_from, cal.known_until) == (date(2025, 1, 1), date(2025, 12, 31))
    assert cal.hours == BusinessHours()
    empty = BusinessCalendar({}, LUNCH)
    assert (empty.known_from, empty.known_until, empty.hours) == (None, None, LUNCH)


def test_a_day_outside_the_data_is_a_weekday_guess_and_says_so(cal):
    assert cal.day(date(2025, 10, 1)) == (DayInfo(working=False, trading=False, name="国庆节"), True)
    assert cal.day(date(2026, 1, 2)) == (DayInfo(working=True, trading=True), False)  # a Friday
    assert cal.day(date(2026, 1, 3)) == (DayInfo(working=False, trading=False), False)  # a Saturday


def test_seeded_days_carry_make_up_days_and_chinese_names(days):
    assert len(days) == 365 and min(days) == date(2025, 1, 1) and max(days) == date(2025, 12, 31)
    assert days[date(2025, 1, 1)] == DayInfo(working=False, trading=False, name="元旦")
    assert days[date(2025, 1, 26)] == DayInfo(working=True, trading=False, name="春节")  # make-up Sunday
    assert days[date(2025, 2, 8)] == DayInfo(working=True, trading=False, name="春节")  # make-up Saturday
    assert days[date(2025, 4, 4)] == DayInfo(working=False, trading=False, name="清明节")
    assert days[date(2025, 6, 13)] == DayInfo(working=True, trading=True, name=None)
    assert days[date(2025, 6, 14)] == DayInfo(working=False, trading=False, name=None)


def test_a_date_only_deadline_closes_at_the_end_of_that_working_day_or_the_one_before(cal):
    assert cal.close_of_working_day(date(2025, 6, 13)) == sh(2025, 6, 13, 17)
    assert cal.close_of_working_day(date(2025, 6, 15)) == sh(2025, 6, 13, 17)  # Sunday: Friday
    assert cal.close_of_working_day(date(2025, 10, 5)) == sh(2025, 9, 30, 17)  # inside 国庆
    assert cal.close_of_working_day(date(2025, 9, 28)) == sh(2025, 9, 28, 17)  # a make-up Sunday works
    assert BusinessCalendar(cal.days, LUNCH).close_of_working_day(date(2025, 6, 13)) == sh(2025, 6, 13, 17)
    late = BusinessHours(periods=((time(9), time(11, 30)), (time(13), time(18, 30))))
    assert BusinessCalendar(cal.days, late).close_of_working_day(date(2025, 6, 14)) == sh(2025, 6, 13, 18, 30)


# -- when the clock starts -------------------------------------------------------------------------
def test_the_clock_starts_at_once_inside_business_hours_and_at_the_next_opening_outside(cal):
    assert cal.clock_start(sh(2025, 6, 13, 9)) == (sh(2025, 6, 13, 9), True)  # the opening minute
    assert cal.clock_start(sh(2025, 6, 13, 16, 59)) == (sh(2025, 6, 13, 16, 59), True)
    assert cal.clock_start(sh(2025, 6, 13, 17)) == (sh(2025, 6, 16, 9), True)  # the closing minute
    assert cal.clock_start(sh(2025, 6, 13, 8, 59)) == (sh(2025, 6, 13, 9), True)
    assert cal.clock_start(sh(2025, 9, 30, 18)) == (sh(2025, 10, 9, 9), True)  # over 国庆


def test_the_clock_starts_after_the_lunch_break():
    lunch = BusinessCalendar({}, LUNCH)
    assert lunch.clock_start(sh(2025, 6, 13, 12)) == (sh(2025, 6, 13, 13), False)
    assert lunch.clock_start(sh(2025, 6, 13, 11, 30)) == (sh(2025, 6, 13, 13), False)
    assert lunch.clock_start(sh(2025, 6, 13, 11, 29)) == (sh(2025, 6, 13, 11, 29), False)


def test_a_make_up_sunday_starts_the_working_clock_but_not_the_trading_one(cal):
    assert cal.clock_start(sh(2025, 4, 27, 10)) == (sh(2025, 4, 27, 10), True)
    assert cal.clock_start(sh(2025, 4, 27, 10), trading=True) == (sh(2025, 4, 28, 9), True)


def test_the_clock_start_is_the_same_instant_whatever_the_zone_it_is_asked_in(cal):
    at, known = cal.clock_start(datetime(2025, 6, 13, 9, tzinfo=UTC))  # 17:00 in Beijing: closed
    assert (at, known) == (sh(2025, 6, 16, 9), True)
    assert cal.clock_start(datetime(2025, 12, 31, 10, tzinfo=UTC))[1] is False  # reaches 2026-01-01


# -- adding ----------------------------------------------------------------------------------------
def test_calendar_units_are_wall_clock_time(cal):
    start = sh(2025, 6, 13, 18)
    assert cal.add(start, Decimal("0.5"), "CD") == cal.add(start, 12, "CH")
    assert cal.add(start, 12, "CH").at == sh(2025, 6, 14, 6)
    assert cal.add(start, Decimal("1.5"), "CH").at == sh(2025, 6, 13, 19, 30)
    assert cal.add(start, 90, "CMIN") == Due(sh(2025, 6, 13, 19, 30), False)
    assert cal.add(start, 0, "CD") == Due(start, False)
    # Wall-clock time needs no day of the calendar, so it is never incomplete, even far out.
    assert cal.add(start, 3660, "CD") == Due(start + timedelta(days=3660), False)
    assert cal.add(start, 40, "CH") == Due(start + hours(40), False)


def test_calendar_months_count_in_beijing_and_keep_the_callers_zone(cal):
    assert cal.add(sh(2025, 12, 15, 10), 1, "CM").at == sh(2026, 1, 15, 10)
    assert cal.add(sh(2025, 1, 31, 10), 13, "CM").at == sh(2026, 2, 28, 10)
    assert cal.add(sh(2024, 1, 31, 10), 1, "CM").at == sh(2024, 2, 29, 10)
    assert cal.add(sh(2025, 11, 30, 10), 3, "CM") == Due(sh(2026, 2, 28, 10), False)  # beyond the data
    # 2025-01-30 17:00 UTC is 01-31 01:00 in Beijing: clamped to 02-28 01:00 there.
    assert cal.add(datetime(2025, 1, 30, 17, tzinfo=UTC), 1, "CM").at == sh(2025, 2, 28, 1)
    # 2025-01-31 17:00 UTC is 02-01 01:00 in Beijing: one month later is 03-01 01:00 there.
    due = cal.add(datetime(2025, 1, 31, 17, tzinfo=UTC), 1, "CM").at
    assert due == sh(2025, 3, 1, 1) and due.tzinfo is UTC


def test_working_days_keep_the_time_of_day_and_skip_holidays(cal):
    assert cal.add(sh(2025, 9, 30, 10), 1, "WD") == cal.add(sh(2025, 9, 30, 10), 1, Unit.WORKING_DAYS)
    assert cal.add(sh(2025, 9, 30, 10), 1, "WD").at == sh(2025, 10, 9, 10)
    assert cal.add(sh(2025, 10, 10, 10), 1, "WD").at == sh(2025, 10, 11, 10)  # make-up Saturday
    assert cal.add(sh(2025, 10, 10, 10), 1, "TD").at == sh(2025, 10, 13, 10)
    assert cal.add(sh(2025, 6, 13, 10), 0, "WD").at == sh(2025, 6, 13, 10)
    assert cal.add(sh(2025, 6, 13, 18), 0, "WD").at == sh(2025, 6, 16, 9)
    assert cal.add(sh(2025, 6, 13, 9), 5, "WD").at == sh(2025, 6, 20, 9)


def test_working_days_answer_in_the_callers_zone_and_flag_unknown_days(cal):
    due = cal.add(datetime(2025, 6, 13, 2, tzinfo=UTC), 1, "WD")  # 10:00 in Beijing
    assert due.at == sh(2025, 6, 16, 10) and due.at.tzinfo is UTC and not due.incomplete
    assert cal.add(sh(2025, 12, 30, 10), 1, "WD") == cal.add(sh(2025, 12, 30, 10), 1, "WD")
    assert not cal.add(sh(2025, 12, 30, 10), 1, "WD").incomplete
    assert cal.add(sh(2025, 12, 31, 10), 1, "WD").incomplete  # 2026-01-01 is beyond the data
    assert cal.add(sh(2025, 12, 31, 10), 1, "TD").incomplete


def test_the_bounds_of_a_target_hold_for_adding_too(cal):
    with pytest.raises(InvalidInput) as negative:
        cal.add(sh(2025, 6, 13, 10), Decimal("-0.5"), "CH")
    assert negative.value.message == "an SLA target cannot be negative"
    with pytest.raises(ValueError, match=r"^start must be timezone-aware"):
        cal.add(datetime(2025, 6, 13, 10), 1, "CD")
    with pytest.raises(InvalidInput, match="in CD may be at most 3660, got 3661"):
        cal.add(sh(2025, 6, 13, 10), 3661, "CD")
    with pytest.raises(ValueError):
        cal.add(sh(2025, 6, 13, 10), 1, "days")


def test_working_hours_end_exactly_at_a_closing_time_rather_than_the_next_opening(cal):
    assert cal.add(sh(2025, 6, 13, 16), 1, "WH").at == sh(2025, 6, 13, 17)
    assert cal.add(sh(2025, 6, 13, 16), Decimal("1.5"), "WH").at == sh(2025, 6, 16, 9, 30)
    assert cal.add(sh(2025, 6, 13, 17, 30), 8, "WH").at == sh(2025, 6, 16, 17)
    assert cal.add(sh(2025, 6, 13, 10), 0, "WH").at == sh(2025, 6, 13, 10)


def test_business_time_is_added_period_by_period():
    lunch = BusinessCalendar({}, LUNCH)
    assert lunch.add_business_time(sh(2025, 6, 13, 11), hours(0.5)).at == sh(2025, 6, 13, 11, 30)
    assert lunch.add_business_time(sh(2025, 6, 13, 11), hours(1)).at == sh(2025, 6, 13, 13, 30)
    assert lunch.add_business_time(sh(2025, 6, 13, 14), hours(3)).at == sh(2025, 6, 13, 17)
    assert lunch.add_business_time(sh(2025, 6, 13, 14), hours(4)).at == sh(2025, 6, 16, 10)
    due = lunch.add_business_time(datetime(2025, 6, 13, 3, tzinfo=UTC), hours(1))  # 11:00 in Beijing
    assert due.at == sh(2025, 6, 13, 13, 30) and due.at.tzinfo is UTC and due.incomplete


def test_trading_time_skips_a_make_up_weekend_working_time_does_not(cal):
    friday = sh(2025, 2, 7, 16)
    assert cal.add_business_time(friday, hours(2)) == cal.add_business_time(friday, hours(2), trading=False)
    assert cal.add_business_time(friday, hours(2)).at == sh(2025, 2, 8, 10)
    assert cal.add_business_time(friday, hours(2), trading=True).at == sh(2025, 2, 10, 10)
    assert not cal.add_business_time(friday, hours(2), trading=True).incomplete
    assert cal.add_business_time(sh(2025, 12, 31, 16), hours(2)).incomplete
    with pytest.raises(ValueError, match=r"^start must be timezone-aware"):
        cal.add_business_time(datetime(2025, 6, 13, 10), hours(1))


# -- measuring business time -------------------------------------------------------------------------
def test_business_time_between_two_moments_counts_only_open_hours(cal):
    assert cal.business_time(sh(2025, 6, 13, 10), sh(2025, 6, 13, 12)) == (hours(2), True)
    assert cal.business_time(sh(2025, 6, 13, 16), sh(2025, 6, 16, 10)) == (hours(2), True)
    assert cal.business_time(sh(2025, 6, 13, 7), sh(2025, 6, 13, 20)) == (hours(8), True)
    assert cal.business_time(sh(2025, 6, 13, 17), sh(2025, 6, 16, 9)) == (timedelta(), True)
    assert cal.business_time(sh(2025, 9, 30, 16), sh(2025, 10, 9, 10)) == (hours(2), True)


def test_business_time_backwards_or_empty_is_nothing(cal):
    assert cal.business_time(sh(2025, 6, 13, 12), sh(2025, 6, 13, 10)) == (timedelta(), True)
    assert cal.business_time(sh(2025, 6, 13, 12), sh(2025, 6, 13, 12)) == (timedelta(), True)


def test_business_time_takes_out_the_lunch_break_and_any_zone():
    lunch = BusinessCalendar({}, LUNCH)
    assert lunch.business_time(sh(2025, 6, 13, 11), sh(2025, 6, 13, 14)) == (hours(1.5), False)
    # 02:00 to 06:00 UTC is 10:00 to 14:00 in Beijing.
    start, end = datetime(2025, 6, 13, 2, tzinfo=UTC), datetime(2025, 6, 13, 6, tzinfo=UTC)
    assert lunch.business_time(start, end) == (hours(2.5), False)


def test_business_time_on_a_make_up_sunday_counts_for_working_days_only(cal):
    saturday, monday = sh(2025, 4, 26, 12), sh(2025, 4, 28, 10)
    assert cal.business_time(saturday, monday) == (hours(9), True)
    assert cal.business_time(saturday, monday, trading=True) == (hours(1), True)
    # 2026-01-01 is beyond the data: guessed a working Thursday (it is 元旦), and flagged.
    assert cal.business_time(sh(2025, 12, 31, 16), sh(2026, 1, 2, 10)) == (hours(10), False)
    with pytest.raises(ValueError, match=r"^end must be timezone-aware"):
        cal.business_time(saturday, datetime(2025, 4, 28, 10))
    with pytest.raises(ValueError, match=r"^start must be timezone-aware"):
        cal.business_time(datetime(2025, 4, 26, 12), monday)


# -- pausing -----------------------------------------------------------------------------------------
def test_a_pause_holds_back_business_time_for_business_units_and_wall_time_otherwise(cal):
    start, end = sh(2025, 4, 25, 16), sh(2025, 4, 28, 10)  # Friday 16:00 to Monday 10:00, over 04-27
    assert cal.paused_time(start, end, "WD") == (hours(10), True)  # Fri 1 h, Sunday 8 h, Mon 1 h
    assert cal.paused_time(start, end, Unit.WORKING_HOURS) == (hours(10), True)
    assert cal.paused_time(start, end, "TD") == (hours(2), True)
    assert cal.paused_time(start, end, "CD") == (hours(66), True)
    assert cal.paused_time(start, end, "CM") == (hours(66), True)
    assert cal.paused_time(end, start, "CH") == (timedelta(), True)
    assert cal.paused_time(sh(2025, 12, 31, 16), sh(2026, 1, 2, 10), "WD") == (hours(10), False)


def test_an_extended_due_date_excludes_the_pause_in_the_targets_own_terms(cal):
    friday = sh(2025, 6, 13, 15)
    assert cal.extend(friday, hours(2), "WH").at == sh(2025, 6, 13, 17)
    # A working-day due date on a closing time is the next opening: the same business instant.
    assert cal.extend(friday, hours(2), "WD").at == sh(2025, 6, 16, 9)
    assert cal.extend(friday, hours(3), "WD").at == sh(2025, 6, 16, 10)
    assert cal.extend(sh(2025, 2, 7, 16), hours(2), "TD").at == sh(2025, 2, 10, 10)
    assert cal.extend(sh(2025, 2, 7, 16), hours(2), "WD").at == sh(2025, 2, 8, 10)
    assert cal.extend(friday, hours(66), "CD") == cal.extend(friday, hours(66), Unit.CALENDAR_DAYS)
    assert cal.extend(friday, hours(66), "CD") == Due(sh(2025, 6, 16, 9), False)
    # A trading-day due date that lands on a closing time before a make-up Saturday moves to
    # the next trading day's opening, not to the Saturday.
    assert cal.extend(sh(2025, 2, 7, 15), hours(2), "TD") == Due(sh(2025, 2, 10, 9), False)
    assert cal.extend(sh(2025, 2, 7, 15), hours(2), "WD") == Due(sh(2025, 2, 8, 9), False)
    assert cal.extend(friday, hours(66), "CMIN").at == sh(2025, 6, 16, 9)


def test_no_pause_leaves_the_due_date_as_it_was(cal):
    friday = sh(2025, 6, 13, 17)  # even a closing time stays where it is
    for unit in ("WD", "CD", "WH"):
        assert cal.extend(friday, timedelta(), unit) == cal.extend(friday, timedelta(seconds=-1), unit)
        assert cal.extend(friday, timedelta(), unit) == Due(friday, False)
    with pytest.raises(ValueError, match=r"^moment must be timezone-aware"):
        cal.extend(datetime(2025, 6, 13, 17), hours(1), "WD")


def test_an_extension_keeps_the_callers_zone_and_flags_unknown_days(cal):
    moment = datetime(2025, 6, 13, 7, tzinfo=UTC)  # 15:00 in Beijing
    due = cal.extend(moment, hours(2), "WD")
    assert due.at == sh(2025, 6, 16, 9) and due.at.tzinfo is UTC and not due.incomplete
    assert cal.extend(moment, hours(2), "CD").at.tzinfo is UTC
    assert not cal.extend(moment, hours(2), "CD").incomplete
    assert cal.extend(sh(2025, 12, 31, 16), hours(2), "WD").incomplete
    assert cal.extend(sh(2025, 12, 31, 16), hours(2), "WH").incomplete
    # Landing on 2025's last closing time, the next opening is in the unknown 2026.
    assert cal.extend(sh(2025, 12, 31, 15), hours(2), "WD").incomplete
    assert not cal.extend(sh(2025, 12, 31, 15), hours(2), "WH").incomplete


# -- milestones --------------------------------------------------------------------------------------
def test_the_elapsed_fraction_is_wall_clock_time_over_the_whole_target(cal):
    start, due = sh(2025, 6, 13, 9), sh(2025, 6, 13, 17)
    assert cal.elapsed_fraction(start, due, sh(2025, 6, 13, 13)) == 0.5
    assert cal.elapsed_fraction(start, due, sh(2025, 6, 13, 21)) == 1.5
    assert cal.elapsed_fraction(start, due, start) == 0.0
    assert cal.elapsed_fraction(start, due, sh(2025, 6, 13, 8)) == 0.0  # before it starts: nothing
    assert cal.elapsed_fraction(start, start, sh(2025, 6, 13, 8)) == 1.0  # no time allowed: all used
    assert cal.elapsed_fraction(due, start, due) == 1.0
    one_second = start + timedelta(seconds=1)
    assert cal.elapsed_fraction(start, one_second, start) == 0.0
    assert cal.elapsed_fraction(start, start + timedelta(seconds=2), one_second) == 0.5


# -- days the calendar does not know, and calendars nobody keeps ------------------------------------
def test_a_computation_that_starts_on_an_unknown_day_is_flagged_even_when_it_ends_on_known_ones(cal):
    new_year_eve = sh(2024, 12, 31, 18)  # before the data; 2025-01-01 is a known holiday
    assert cal.clock_start(new_year_eve) == (sh(2025, 1, 2, 9), False)
    assert cal.add(new_year_eve, 1, "WD") == Due(sh(2025, 1, 3, 9), True)
    assert cal.add(sh(2024, 12, 31, 10), 1, "WD") == Due(sh(2025, 1, 2, 10), True)
    assert cal.add(new_year_eve, 2, "WH") == Due(sh(2025, 1, 2, 11), True)
    assert cal.add_business_time(sh(2024, 12, 31, 16), hours(2)) == Due(sh(2025, 1, 2, 10), True)
    assert cal.business_time(sh(2024, 12, 31, 16), sh(2025, 1, 2, 10)) == (hours(2), False)
    # A span of no time needs no day at all, known or not.
    assert cal.business_time(sh(2024, 12, 31, 10), sh(2024, 12, 31, 10)) == (timedelta(), True)


def test_trading_days_start_their_clock_on_a_trading_day(cal):
    sunday = sh(2025, 4, 27, 10)  # a make-up working Sunday: the exchanges stay closed
    assert cal.add(sunday, 1, "TD") == Due(sh(2025, 4, 29, 9), False)
    assert cal.add(sunday, 1, "WD") == Due(sh(2025, 4, 28, 10), False)


def test_business_time_near_midnight_counts_each_beijing_day():
    late = BusinessCalendar({}, ALL_DAY)
    assert late.business_time(sh(2025, 6, 16, 0), sh(2025, 6, 16, 7)) == (hours(7), False)
    assert late.business_time(sh(2025, 6, 13, 20), sh(2025, 6, 13, 23)) == (hours(3), False)


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "America/Los_Angeles", "UTC"])
def test_the_answers_do_not_depend_on_the_servers_own_time_zone(monkeypatch, days, zone):
    """A server set to another zone computes in Beijing time all the same."""
    monkeypatch.setenv("TZ", zone)
    systime.tzset()
    try:
        cal, late = BusinessCalendar(days), BusinessCalendar(days, ALL_DAY)
        assert late.business_time(sh(2025, 6, 13, 20), sh(2025, 6, 13, 23)) == (hours(3), True)
        assert late.business_time(sh(2025, 6, 16, 0), sh(2025, 6, 16, 7)) == (hours(7), True)
        assert cal.add(sh(2025, 1, 31, 1), 1, "CM").at == sh(2025, 2, 28, 1)
        assert cal.add(sh(2025, 6, 13, 20), 1, "WD").at == sh(2025, 6, 17, 9)
        assert cal.clock_start(sh(2025, 6, 13, 23, 30)) == (sh(2025, 6, 16, 9), True)
    finally:
        monkeypatch.undo()
        systime.tzset()


def test_the_searches_end_when_no_day_opens_for_ten_years():
    never = closed_for_years()
    with pytest.raises(InvalidInput) as refused:
        never.clock_start(sh(2025, 6, 13, 10))
    assert refused.value.message == "no open business day within ten years"
    # A date-only deadline looks back one year at most for a working day.
    assert never.close_of_working_day(date(2025, 6, 13)) == sh(2024, 6, 12, 17)
    once = closed_for_years(but=date(2025, 6, 13))
    for compute in (lambda: once.add(sh(2025, 6, 13, 10), 1, "WD"),
                    lambda: once.add_business_time(sh(2025, 6, 13, 10), hours(9))):
        with pytest.raises(InvalidInput) as refused:
            compute()
        assert refused.value.message == "the target is more than ten years away"
    assert once.add_business_time(sh(2025, 6, 13, 10), hours(7)) == Due(sh(2025, 6, 13, 17), False)
