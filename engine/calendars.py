"""Business calendars: working days (工作日), trading days (交易日), business hours.

Semantics (the frequent confusion in peers' trackers is "is one day 24 hours or one
working day?"; here the unit says which):

* ``CD``/``CH``/``CMIN``: calendar days, hours, minutes. One CD is 24 hours.
* ``CM``: calendar months: the same local date and time N months later, clamped to the
  month's last day (Jan 31 + 1 CM = Feb 28/29). Used for regulatory "1个月".
* ``WD``: working days. The clock starts at ``t`` if ``t`` is within business hours of a
  working day, otherwise at the next opening. The due time is the same local time of day on
  the Nth following working day. So 3 WD from Friday 18:00 is Thursday 09:00 (the clock
  starts Monday 09:00), and 1 WD from Monday 10:30 is Tuesday 10:30.
* ``TD``: the same with trading days: working days that fall Monday–Friday. The exchanges
  stay closed on 调休 make-up weekends, so a make-up Sunday is a WD but not a TD.
* ``WH``: working hours: only minutes inside business hours of working days count.

Pausing ("waiting for client") excludes the paused time from the target in the target's
own terms (:meth:`BusinessCalendar.paused_time`, :meth:`BusinessCalendar.extend`): for
``WD`` and ``WH`` the business hours of working days inside the pause, for ``TD`` those of
trading days, for the calendar units the wall-clock time. A part-day pause of a ``WD``
target counts as that many working hours, as a fractional milestone does, rather than
being rounded to whole days: rounding down would ignore up to a day of waiting, rounding up
would count ten minutes as a day. So a pause from Friday 16:00 to Monday 10:00 moves a
``WD``, ``TD`` or ``WH`` due date by two working hours (Friday 16–17, Monday 9–10), and a
``CD`` due date by 66 hours. Moved ``WD``/``TD`` due dates keep the rule that they fall
inside business hours: one that would land on a closing time is the next opening instead.

Days come from the ``bpm_calendar_day`` table (seeded from the ``chinese-calendar``
package, editable by administrators because next year's holidays are announced each
November). A computation that needs a day outside the known range still returns a date,
treating Monday–Friday as working and trading days, and says ``incomplete=True`` so the
task is flagged ``calendar_incomplete`` instead of silently trusting a guess.
"""

from __future__ import annotations

import calendar as pycalendar
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from zoneinfo import ZoneInfo

from engine.clock import ensure_aware
from engine.errors import InvalidInput

SHANGHAI = ZoneInfo("Asia/Shanghai")
MAX_SCAN_DAYS = 3660

# The days the engine accepts from people and systems (calendar entries, timer moves,
# figure periods): the exchanges opened in December 1990, and nothing the brokerage plans
# reaches past this century. Year 1 or 9999 is a typo or a probe, and date arithmetic next
# to those ends overflows.
EARLIEST_DAY = date(1990, 1, 1)
LATEST_DAY = date(2099, 12, 31)


class Unit(StrEnum):
    CALENDAR_DAYS = "CD"
    CALENDAR_HOURS = "CH"
    CALENDAR_MINUTES = "CMIN"
    CALENDAR_MONTHS = "CM"
    WORKING_DAYS = "WD"
    TRADING_DAYS = "TD"
    WORKING_HOURS = "WH"


# Units counted in business time; the others are calendar (wall-clock) units.
BUSINESS_UNITS = frozenset((Unit.WORKING_DAYS, Unit.TRADING_DAYS, Unit.WORKING_HOURS))

# The longest target in each unit: about ten years, as far as a due date is ever searched
# for (MAX_SCAN_DAYS); a regulatory deadline is weeks, the longest callback cycle a year.
MAX_TARGET: dict[Unit, int] = {
    Unit.CALENDAR_DAYS: MAX_SCAN_DAYS, Unit.CALENDAR_HOURS: MAX_SCAN_DAYS * 24,
    Unit.CALENDAR_MINUTES: MAX_SCAN_DAYS * 24 * 60, Unit.CALENDAR_MONTHS: 120,
    Unit.WORKING_DAYS: 2500, Unit.TRADING_DAYS: 2500, Unit.WORKING_HOURS: 20000,
}


def check_plausible(value: date, *, name: str) -> None:
    """Refuse a day (or a moment, on its own calendar date) outside
    :data:`EARLIEST_DAY`..:data:`LATEST_DAY`."""
    day = value.date() if isinstance(value, datetime) else value
    if not EARLIEST_DAY <= day <= LATEST_DAY:
        raise InvalidInput(f"{name} must lie between {EARLIEST_DAY} and {LATEST_DAY}, got {value.isoformat()}")


def check_target(amount: int | float | Decimal, unit: Unit | str) -> None:
    """Refuse an SLA target that is not positive or beyond :data:`MAX_TARGET` for its unit."""
    unit = Unit(unit)
    if not Decimal(str(amount)).is_finite() or not amount > 0:
        raise InvalidInput(f"an SLA target must be a positive number, got {amount}")
    if amount > MAX_TARGET[unit]:
        raise InvalidInput(f"an SLA target in {unit.value} may be at most {MAX_TARGET[unit]}, got {amount}")


@dataclass(frozen=True)
class DayInfo:
    working: bool
    trading: bool
    name: str | None = None


@dataclass(frozen=True)
class BusinessHours:
    """Opening periods of a working day in a time zone, e.g. 09:00–11:30 and 13:00–17:00."""

    periods: tuple[tuple[time, time], ...] = ((time(9), time(17)),)
    tz: ZoneInfo = SHANGHAI

    def __post_init__(self) -> None:
        if not self.periods:
            raise InvalidInput("business hours need at least one period")
        previous = time.min
        for start, end in self.periods:
            if not (previous <= start < end):
                raise InvalidInput("business-hour periods must be increasing and non-overlapping")
            previous = end

    @property
    def opening(self) -> time:
        return self.periods[0][0]


@dataclass(frozen=True)
class Due:
    at: datetime
    incomplete: bool  # some day needed lies outside the calendar's known data


class BusinessCalendar:
    def __init__(self, days: Mapping[date, DayInfo], hours: BusinessHours | None = None) -> None:
        self.days = days
        self.hours = hours or BusinessHours()
        self.known_from = min(days) if days else None
        self.known_until = max(days) if days else None

    # -- days ------------------------------------------------------------------------------
    def day(self, d: date) -> tuple[DayInfo, bool]:
        """The day's kind, and whether it came from known data."""
        info = self.days.get(d)
        if info is not None:
            return info, True
        weekday = d.weekday() < 5
        return DayInfo(working=weekday, trading=weekday), False

    def _is_open_day(self, d: date, trading: bool) -> tuple[bool, bool]:
        info, known = self.day(d)
        return (info.trading if trading else info.working), known

    def close_of_working_day(self, d: date) -> datetime:
        """The end of business on ``d``, or on the working day before it when ``d`` is not one:
        a deadline given as a date only ("2027-01-08") is met by the end of that working day,
        and never falls later than the day it names."""
        for _ in range(366):
            if self._is_open_day(d, False)[0]:
                break
            d -= timedelta(days=1)
        return datetime.combine(d, self.hours.periods[-1][1], tzinfo=self.hours.tz)

    # -- arithmetic ------------------------------------------------------------------------
    def add(self, start: datetime, amount: int | float | Decimal, unit: Unit | str) -> Due:
        ensure_aware(start, name="start")
        unit = Unit(unit)
        if amount < 0:
            raise InvalidInput("an SLA target cannot be negative")
        if amount > MAX_TARGET[unit]:
            raise InvalidInput(f"an SLA target in {unit.value} may be at most {MAX_TARGET[unit]}, got {amount}")
        if unit is Unit.CALENDAR_DAYS:
            return Due(start + timedelta(days=float(amount)), False)
        if unit is Unit.CALENDAR_HOURS:
            return Due(start + timedelta(hours=float(amount)), False)
        if unit is Unit.CALENDAR_MINUTES:
            return Due(start + timedelta(minutes=float(amount)), False)
        if unit is Unit.CALENDAR_MONTHS:
            return Due(self._add_months(start, int(amount)), False)
        if unit is Unit.WORKING_HOURS:
            return self._add_working_minutes(start, Decimal(str(amount)) * 60)
        return self._add_days(start, int(amount), trading=unit is Unit.TRADING_DAYS)

    def _add_months(self, start: datetime, months: int) -> datetime:
        local = start.astimezone(self.hours.tz)
        index = local.month - 1 + months
        year, month = local.year + index // 12, index % 12 + 1
        day = min(local.day, pycalendar.monthrange(year, month)[1])
        return local.replace(year=year, month=month, day=day).astimezone(start.tzinfo)

    def clock_start(self, moment: datetime, *, trading: bool = False) -> tuple[datetime, bool]:
        """``moment`` if inside business hours of an open day, else the next opening."""
        local = moment.astimezone(self.hours.tz)
        d, complete = local.date(), True
        for _ in range(MAX_SCAN_DAYS):
            is_open, known = self._is_open_day(d, trading)
            complete &= known
            if is_open:
                for begin, end in self.hours.periods:
                    begin_at = datetime.combine(d, begin, self.hours.tz)
                    end_at = datetime.combine(d, end, self.hours.tz)
                    if local < begin_at:
                        return begin_at, complete
                    if begin_at <= local < end_at:
                        return local, complete
            d += timedelta(days=1)
            local = datetime.combine(d, time.min, self.hours.tz)
        raise InvalidInput("no open business day within ten years")

    def _add_days(self, start: datetime, days: int, *, trading: bool) -> Due:
        begin, complete = self.clock_start(start, trading=trading)
        d, remaining = begin.date(), days
        for _ in range(MAX_SCAN_DAYS):
            if remaining == 0:
                due = datetime.combine(d, begin.timetz().replace(tzinfo=None), self.hours.tz)
                return Due(due.astimezone(start.tzinfo), not complete)
            d += timedelta(days=1)
            is_open, known = self._is_open_day(d, trading)
            complete &= known
            if is_open:
                remaining -= 1
        raise InvalidInput("the target is more than ten years away")

    def _add_working_minutes(self, start: datetime, minutes: Decimal) -> Due:
        return self.add_business_time(start, timedelta(minutes=float(minutes)))

    def add_business_time(self, start: datetime, duration: timedelta, *, trading: bool = False) -> Due:
        """``start`` plus ``duration`` counted only inside business hours of working days
        (trading days with ``trading=True``). A sum that ends exactly at a closing time is
        that closing time."""
        ensure_aware(start, name="start")
        local, complete = self.clock_start(start, trading=trading)
        remaining = duration
        d = local.date()
        for _ in range(MAX_SCAN_DAYS):
            is_open, known = self._is_open_day(d, trading)
            complete &= known
            if is_open:
                for begin, end in self.hours.periods:
                    begin_at = datetime.combine(d, begin, self.hours.tz)
                    end_at = datetime.combine(d, end, self.hours.tz)
                    if end_at <= local:
                        continue
                    segment_start = max(begin_at, local)
                    available = end_at - segment_start
                    if remaining <= available:
                        return Due((segment_start + remaining).astimezone(start.tzinfo), not complete)
                    remaining -= available
            d += timedelta(days=1)
            local = datetime.combine(d, time.min, self.hours.tz)
        raise InvalidInput("the target is more than ten years away")

    def business_time(self, start: datetime, end: datetime, *, trading: bool = False) -> tuple[timedelta, bool]:
        """Time inside business hours of working days (trading days with ``trading=True``)
        between ``start`` and ``end``, and whether every day it looked at was known data."""
        ensure_aware(start, name="start")
        ensure_aware(end, name="end")
        total, complete = timedelta(), True
        if end <= start:
            return total, complete
        local_start, local_end = start.astimezone(self.hours.tz), end.astimezone(self.hours.tz)
        d = local_start.date()
        while d <= local_end.date():
            is_open, known = self._is_open_day(d, trading)
            complete &= known
            if is_open:
                for begin, close in self.hours.periods:
                    a = max(datetime.combine(d, begin, self.hours.tz), local_start)
                    b = min(datetime.combine(d, close, self.hours.tz), local_end)
                    if b > a:
                        total += b - a
            d += timedelta(days=1)
        return total, complete

    def paused_time(self, start: datetime, end: datetime, unit: Unit | str) -> tuple[timedelta, bool]:
        """How much of a target in ``unit`` a pause from ``start`` to ``end`` holds back
        (see the module's notes on pausing), and whether every day needed was known."""
        unit = Unit(unit)
        if unit in BUSINESS_UNITS:
            return self.business_time(start, end, trading=unit is Unit.TRADING_DAYS)
        return max(end - start, timedelta()), True

    def extend(self, moment: datetime, paused: timedelta, unit: Unit | str) -> Due:
        """``moment`` of an unpaused clock moved later by ``paused`` (a result of
        :meth:`paused_time` for the same unit): where it falls once the pause is excluded."""
        ensure_aware(moment, name="moment")
        unit = Unit(unit)
        if paused <= timedelta():
            return Due(moment, False)
        if unit not in BUSINESS_UNITS:
            return Due(moment + paused, False)
        trading = unit is Unit.TRADING_DAYS
        due = self.add_business_time(moment, paused, trading=trading)
        if unit is Unit.WORKING_HOURS:
            return due
        # A WD/TD due date is a moment inside business hours (the same time of day as the
        # clock's start); a closing time is the same business instant as the next opening.
        at, complete = self.clock_start(due.at, trading=trading)
        return Due(at.astimezone(moment.tzinfo), due.incomplete or not complete)

    def elapsed_fraction(self, start: datetime, due: datetime, now: datetime) -> float:
        """How much of the target has elapsed, in wall-clock terms (for milestones)."""
        total = (due - start).total_seconds()
        if total <= 0:
            return 1.0
        return max(0.0, (now - start).total_seconds() / total)


# The ``chinese-calendar`` package names holidays in English; people see them in Chinese.
HOLIDAY_NAMES = {"New Year's Day": "元旦", "Spring Festival": "春节", "Tomb-sweeping Day": "清明节",
                 "Labour Day": "劳动节", "Dragon Boat Festival": "端午节", "National Day": "国庆节",
                 "Mid-autumn Festival": "中秋节", "Anti-Fascist 70th Day": "抗战胜利纪念日"}


def seed_days(first: date = date(2004, 1, 1), last: date = date(2026, 12, 31)) -> dict[date, DayInfo]:
    """Days from the ``chinese-calendar`` package (State Council notices, 调休 included), with
    the holidays' Chinese names (a make-up working day carries its holiday's name)."""
    import chinese_calendar

    days: dict[date, DayInfo] = {}
    d = first
    while d <= last:
        working = chinese_calendar.is_workday(d)
        _, name = chinese_calendar.get_holiday_detail(d)  # names holidays and 调休 days alike
        name = HOLIDAY_NAMES.get(name, name) if name else name
        days[d] = DayInfo(working=working, trading=working and d.weekday() < 5, name=name)
        d += timedelta(days=1)
    return days


def ensure_aware_due(value: datetime) -> datetime:
    return ensure_aware(value, name="due date")
