"""Calendar-aware date functions for diagram expressions (timers, conditions, due dates).

BPMN timers count calendar time; the exchange does not. These functions put the business
calendar (:mod:`engine.calendars`, the same days SLA due dates use, administrators'
corrections included) into the safe evaluator, so a diagram can say "the exchange's result
by 10:00 on the next trading day" in a ``timeDate``. Times are Asia/Shanghai. Results are
ISO 8601 text with ``+08:00``, to the second: what a ``timeDate`` needs, and text that
compares correctly with other results of these functions.

``now()``
    The engine's clock when the expression is evaluated. Where an element starts (a timer
    starts waiting, a task is created) that is "when this step happened".
``is_working_day(d)`` / ``is_trading_day(d)``
    Whether the Shanghai date of ``d`` is a working day (工作日, 调休 make-up days included)
    / a trading day (交易日: a working day Monday–Friday; a make-up weekend day is not one).
``add_working_days(moment, n, at=None, cutoff=None)`` / ``add_trading_days(...)``
    Day T is the Shanghai date of ``moment`` when that is an open day and ``moment`` is
    before ``cutoff`` (a time of day; no cutoff: any time counts), else the next open day.
    The result is the ``n``-th open day after T (``n`` = 0: T itself), at ``at``, or at
    ``moment``'s time of day. So ``add_trading_days(submitted_at, 1, at='10:00',
    cutoff='15:00')`` is T+1 10:00, where T is the day of submission if it was a trading day
    before the 15:00 close, else the next trading day. As with SLA targets, a moment on a
    closed day starts the count on the next open day: Saturday + 1 TD is Tuesday.
``next_working_day_at(moment, at)`` / ``next_trading_day_at(moment, at)``
    The first ``at`` on an open day strictly after ``moment`` (the same as
    ``add_…_days(moment, 0, at=at, cutoff=at)``): ``next_trading_day_at(t, '15:00')`` is the
    close a request that became ready at ``t`` must meet.
``working_days_before(moment, n, at=None)``
    The ``n``-th working day before the Shanghai date of ``moment`` (``n`` = 0: that date if
    it is a working day, else the working day before it), at ``at`` or at ``moment``'s time
    of day: ``working_days_before('2025-08-01T00:00:00+08:00', 10)`` is 2025-07-18 00:00, so
    the ten working days from 07-18 to 07-31 lie between the two.
``next_working_slot(moment, after, hours=None)``
    The first moment at least ``after`` (an ISO 8601 duration in days, hours, minutes,
    seconds: ``'PT4H'``) after ``moment`` that lies within ``hours`` of a working day and in
    another half-day than ``moment`` (the morning ends at 12:00). ``hours`` are periods
    ``'09:00-12:00,13:00-20:00'``; none: the calendar's business hours. A call retried four
    hours after one at 18:28 is therefore offered at the next working day's opening, not at
    22:28, and one retried after a 10:00 call is offered in the afternoon.

Arguments: ``moment``/``d`` are timezone-aware datetimes or ISO 8601 text with an offset
(``Z`` too); a date alone (``'2025-10-01'``) is that day from 00:00 in Shanghai. A
date-time without an offset is refused: it is ambiguous by eight hours. ``at``/``cutoff``
are ``'HH:MM'`` or ``'HH:MM:SS'``; ``n`` is a whole number from 0 to :data:`MAX_DAYS`.
:func:`check_call` holds literal arguments to the same rules at deploy.

Beyond the calendar's known data (next year's holidays are announced each November)
Monday–Friday count as working and trading days, as :meth:`BusinessCalendar.day` says; the
evaluation records the days it had to guess (:attr:`DateFunctions.unknown_days`) so the
caller can flag the result, as an SLA due date is flagged ``calendar_incomplete``.

Deterministic: the calendar functions depend on their arguments and the calendar revision
only. :class:`CalendarSnapshot` fixes that revision for a unit of work.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

from engine.calendars import MAX_SCAN_DAYS, SHANGHAI, BusinessCalendar
from engine.errors import ExpressionError

# Open days one call may count: about four years of trading days, far beyond any business
# deadline, and a bounded amount of work inside the evaluator's time budget.
MAX_DAYS = 1000
ONE_DAY = timedelta(days=1)
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):[0-5]\d(:[0-5]\d)?$")
_DURATION = re.compile(r"^P(?!$)(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")
_PERIOD = re.compile(r"^\s*(\d\d:\d\d)\s*-\s*(\d\d:\d\d)\s*$")
NOON = time(12)


class CalendarSnapshot:
    """The calendar one unit of work computes with, and its clock.

    The runtime builds one per loaded workflow, from the revision its transaction read
    (the instance lock brings it, see ``sla.REVISION_COLUMNS``). ``calendar`` may be a
    function: it is called once, on the first date function an expression uses, so a step
    that uses none costs nothing. Never shared between transactions."""

    def __init__(self, calendar: BusinessCalendar | Callable[[], BusinessCalendar], *,
                 clock: Callable[[], datetime]) -> None:
        self._calendar = calendar
        self.clock = clock

    def calendar(self) -> BusinessCalendar:
        if not isinstance(self._calendar, BusinessCalendar):
            self._calendar = self._calendar()
        return self._calendar


def _names_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """Errors name the function they come from (a condition may call several)."""
    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ExpressionError as exc:
            raise ExpressionError(f"{function.__name__}(): {exc.message}") from None
    return call


class DateFunctions:
    """The date functions bound to a snapshot, for one evaluation, and what they saw."""

    def __init__(self, snapshot: CalendarSnapshot) -> None:
        self.snapshot = snapshot
        # Days the functions looked at that the calendar does not know: the answer assumed
        # Monday–Friday for them and may change when the year's holidays are entered.
        self.unknown_days: set[date] = set()

    @property
    def incomplete(self) -> bool:
        return bool(self.unknown_days)

    def prepare(self) -> None:
        """Resolve the snapshot now (before the evaluator's time budget starts)."""
        self.snapshot.calendar()

    def bound(self) -> dict[str, Callable[..., Any]]:
        return {name: getattr(self, name) for name in NAMES}

    # -- the functions (their parameter names are checked by check_call) ------------------
    @_names_errors
    def now(self) -> str:
        return _iso(self.snapshot.clock())

    @_names_errors
    def is_working_day(self, d: Any) -> bool:
        return self._open(_moment(d, "d").date(), trading=False)

    @_names_errors
    def is_trading_day(self, d: Any) -> bool:
        return self._open(_moment(d, "d").date(), trading=True)

    @_names_errors
    def add_working_days(self, moment: Any, n: Any, at: Any = None, cutoff: Any = None) -> str:
        return self._add(moment, n, at, cutoff, trading=False)

    @_names_errors
    def add_trading_days(self, moment: Any, n: Any, at: Any = None, cutoff: Any = None) -> str:
        return self._add(moment, n, at, cutoff, trading=True)

    @_names_errors
    def next_working_day_at(self, moment: Any, at: Any) -> str:
        return self._add(moment, 0, at, at, trading=False)

    @_names_errors
    def next_trading_day_at(self, moment: Any, at: Any) -> str:
        return self._add(moment, 0, at, at, trading=True)

    @_names_errors
    def working_days_before(self, moment: Any, n: Any, at: Any = None) -> str:
        local = _moment(moment, "moment")
        count = _count(n, "n")
        at_time = None if at is None else _time_of_day(at, "at")
        day = local.date()
        for _ in range(MAX_SCAN_DAYS):
            if self._open(day, trading=False):
                break
            day -= ONE_DAY
        for _ in range(count):
            day -= ONE_DAY
            for _ in range(MAX_SCAN_DAYS):
                if self._open(day, trading=False):
                    break
                day -= ONE_DAY
        return _iso(datetime.combine(day, at_time if at_time is not None else local.time(), SHANGHAI))

    @_names_errors
    def next_working_slot(self, moment: Any, after: Any, hours: Any = None) -> str:
        local = _moment(moment, "moment")
        gap = _duration(after, "after")
        calendar = self.snapshot.calendar()
        periods = calendar.hours.periods if hours is None else _periods(hours, "hours")
        earliest = (local + gap).astimezone(SHANGHAI)
        day = earliest.date()
        for _ in range(MAX_SCAN_DAYS):
            if self._open(day, trading=False):
                for begin, end in periods:
                    start = max(datetime.combine(day, begin, SHANGHAI), earliest)
                    if day == local.date():
                        # Not the half-day of the moment itself: a client who did not answer
                        # in the morning is tried in the afternoon or on another day.
                        if local.time() >= NOON:
                            break
                        start = max(start, datetime.combine(day, NOON, SHANGHAI))
                    if start < datetime.combine(day, end, SHANGHAI):
                        return _iso(start)
            day += ONE_DAY
        raise ExpressionError("the calendar has no working day within ten years")

    # -- arithmetic --------------------------------------------------------------------------
    def _open(self, day: date, *, trading: bool) -> bool:
        info, known = self.snapshot.calendar().day(day)
        if not known:
            self.unknown_days.add(day)
        return info.trading if trading else info.working

    def _first_open(self, day: date, *, trading: bool) -> date:
        for _ in range(MAX_SCAN_DAYS):
            if self._open(day, trading=trading):
                return day
            day += ONE_DAY
        raise ExpressionError("the calendar has no open day within ten years")

    def _add(self, moment: Any, n: Any, at: Any, cutoff: Any, *, trading: bool) -> str:
        local = _moment(moment, "moment")
        count = _count(n, "n")
        at_time = None if at is None else _time_of_day(at, "at")
        cutoff_time = None if cutoff is None else _time_of_day(cutoff, "cutoff")
        day = local.date()
        if cutoff_time is not None and local.time() >= cutoff_time:
            day += ONE_DAY  # at or after the cut-off the moment counts from the next day
        day = self._first_open(day, trading=trading)
        for _ in range(count):
            day = self._first_open(day + ONE_DAY, trading=trading)
        return _iso(datetime.combine(day, at_time if at_time is not None else local.time(), SHANGHAI))


NAMES = ("now", "is_working_day", "is_trading_day", "add_working_days", "add_trading_days",
         "next_working_day_at", "next_trading_day_at", "next_working_slot", "working_days_before")
# What each gives: a timer's timeDate needs a date-time, never a truth value.
RETURNS_MOMENT = frozenset(NAMES) - {"is_working_day", "is_trading_day"}


def _unbound(name: str) -> Callable[..., Any]:
    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise ExpressionError(
            f"{name}() needs the business calendar, which only a process instance's expressions have "
            "(timers, gateway conditions, due dates, service parameters)")
    return unavailable


# Registered with the evaluator under these names when no snapshot is at hand (deploy lint,
# candidate groups, correlation keys): the names are known, calling one says why it fails.
UNBOUND: dict[str, Callable[..., Any]] = {name: _unbound(name) for name in NAMES}


# -- arguments -----------------------------------------------------------------------------
def _iso(moment: datetime) -> str:
    return moment.astimezone(SHANGHAI).replace(microsecond=0).isoformat()


def _moment(value: Any, name: str) -> datetime:
    """A moment in Shanghai time from an aware datetime, ISO text with an offset, or a date."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        return datetime.combine(value, time.min, SHANGHAI)
    elif isinstance(value, str):
        text = value.strip()
        try:
            if len(text) <= 10:
                return datetime.combine(date.fromisoformat(text), time.min, SHANGHAI)
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ExpressionError(f"{name} {value!r} is not an ISO 8601 date or date-time") from None
    else:
        raise ExpressionError(f"{name} must be a date-time (ISO 8601 text with an offset), "
                              f"got {type(value).__name__} {value!r}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ExpressionError(f"{name} {value!r} has no UTC offset: write it with +08:00 (or Z)")
    return parsed.astimezone(SHANGHAI)


def _count(value: Any, name: str) -> int:
    if type(value) is not int:
        raise ExpressionError(f"{name} must be a whole number of days, got {value!r}")
    if not 0 <= value <= MAX_DAYS:
        raise ExpressionError(f"{name} must be between 0 and {MAX_DAYS}, got {value}")
    return value


def _time_of_day(value: Any, name: str) -> time:
    if not isinstance(value, str) or not _TIME_OF_DAY.match(value.strip()):
        raise ExpressionError(f"{name} must be a time of day 'HH:MM' (00:00 to 23:59), got {value!r}")
    return time.fromisoformat(value.strip())


def _duration(value: Any, name: str) -> timedelta:
    match = _DURATION.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ExpressionError(f"{name} must be an ISO 8601 duration in days, hours, minutes or seconds "
                              f"such as 'PT4H', got {value!r}")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    gap = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if gap > timedelta(days=MAX_DAYS):
        raise ExpressionError(f"{name} may be at most {MAX_DAYS} days, got {value!r}")
    return gap


def _periods(value: Any, name: str) -> tuple[tuple[time, time], ...]:
    """``'09:00-12:00,13:00-20:00'``: increasing, non-overlapping periods of a day."""
    if not isinstance(value, str) or not value.strip():
        raise ExpressionError(f"{name} must be periods of the day such as '09:00-12:00,13:00-20:00', got {value!r}")
    periods = []
    previous = time.min
    for item in value.split(","):
        match = _PERIOD.match(item)
        if match is None:
            raise ExpressionError(f"{name}: {item.strip()!r} is not a period such as '09:00-12:00'")
        begin, end = (_time_of_day(part, name) for part in match.groups())
        if not previous <= begin < end:
            raise ExpressionError(f"{name}: periods must be increasing and non-overlapping, got {value!r}")
        periods.append((begin, end))
        previous = end
    return tuple(periods)


_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "d": _moment, "moment": _moment, "n": _count, "at": _time_of_day, "cutoff": _time_of_day,
    "after": _duration, "hours": _periods,
}
_SIGNATURES = {name: inspect.signature(getattr(DateFunctions, name)) for name in NAMES}


def check_call(node: ast.Call) -> None:
    """Deploy-time check of a call to one of :data:`NAMES`: the arguments bind to the
    function's parameters, and each literal argument passes the rule it meets at run time.
    Arguments computed from data are checked when the expression runs."""
    assert isinstance(node.func, ast.Name)
    name = node.func.id
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        raise ExpressionError(f"{name}(): write the arguments out (no * or **)")
    try:
        bound = _SIGNATURES[name].bind(None, *node.args, **{k.arg: k.value for k in node.keywords if k.arg})
    except TypeError as exc:
        raise ExpressionError(f"{name}(): {exc}; expected {name}{_shown(name)}") from None
    for parameter, argument in bound.arguments.items():
        literal = _literal(argument)
        if parameter == "self" or literal is _NOT_LITERAL:
            continue
        if literal is None and _SIGNATURES[name].parameters[parameter].default is None:
            continue  # an optional argument written out as None
        try:
            _CHECKS[parameter](literal, parameter)
        except ExpressionError as exc:
            raise ExpressionError(f"{name}(): {exc.message}") from None


def _shown(name: str) -> str:
    """``(moment, n, at=None, cutoff=None)``: the signature as a diagram author writes it."""
    parameters = [p.replace(annotation=inspect.Parameter.empty)
                  for p in list(_SIGNATURES[name].parameters.values())[1:]]
    return str(inspect.Signature(parameters))


_NOT_LITERAL = object()


def _literal(node: Any) -> Any:
    """The value of a constant argument (``-1`` included), else :data:`_NOT_LITERAL`."""
    if isinstance(node, ast.Constant) or (isinstance(node, ast.UnaryOp) and isinstance(node.operand, ast.Constant)):
        try:
            return ast.literal_eval(node)
        except ValueError:
            return _NOT_LITERAL
    return _NOT_LITERAL


def calls(tree: ast.AST) -> set[str]:
    """The date functions an expression calls."""
    return {node.func.id for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in NAMES}
