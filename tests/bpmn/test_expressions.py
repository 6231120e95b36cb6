"""The safe evaluator on its own: what diagram text may compute, and what it may not."""

from __future__ import annotations

import re
import time
from datetime import UTC, date, datetime, timedelta

import pytest

from engine.bpmn.date_functions import CalendarSnapshot, DateFunctions
from engine.bpmn.expressions import SafeEvaluator, json_safe, unwrap
from engine.calendars import SHANGHAI, BusinessCalendar, DayInfo, seed_days
from engine.errors import ExpressionError
from engine.process import deployments
from tests.support.bpmn import bundle_of, flow, linear, process, user_task

NAMES = {
    "amount": 60000,
    "client": {"tier": "VIP", "branch": {"code": "HZ01"}, "tags": ["新客户", "高净值"]},
    "name": "Zhang San",
    "items": list(range(99)),
    "empty": [],
}


@pytest.fixture
def ev():
    return SafeEvaluator(timeout_ms=200)


@pytest.mark.parametrize(("text", "body"), [
    ("${amount > 50000}", "amount > 50000"),
    ("  #{ amount }  ", "amount"),
    ("${ {'a': 1}['a'] }", "{'a': 1}['a']"),
    ("amount", "amount"),
    ("${a}${b}", "a}${b"),  # one wrapper only; the rest is the body (and a syntax error later)
])
def test_unwrap(text, body):
    assert unwrap(text) == body


@pytest.mark.parametrize(("expression", "value"), [
    ("${amount > 50000}", True),
    ("amount * 2 + 1", 120001),
    ("${client.tier}", "VIP"),
    ("${client.branch.code}", "HZ01"),
    ("client['branch']['code']", "HZ01"),
    ("client.get('missing', 'none')", "none"),
    ("len(client.tags)", 2),
    ("'高净值' in client.tags", True),
    ("name.lower().startswith('zhang')", True),
    ("name.replace('San', 'Si')", "Zhang Si"),
    ("max(items) if items else 0", 98),
    ("sum([1, 2.5, 3])", 6.5),
    ("sorted(client.tags)[0]", "新客户"),
    ("2 ** 10", 1024),
    ("[x * 2 for x in [1, 2, 3]]", [2, 4, 6]),
    ("date('2026-11-25').year", None),  # attribute access on a date is refused (see below)
], ids=lambda v: str(v)[:40])
def test_allowed_expressions(ev, expression, value):
    if value is None:
        with pytest.raises(ExpressionError):
            ev.evaluate(expression, NAMES)
        return
    assert ev.evaluate(expression, NAMES) == value


def test_time_helpers_are_timezone_aware(ev):
    due = ev.evaluate("datetime('2026-12-01T09:00:00+08:00') + days(15)", {})
    assert due == datetime(2026, 12, 16, 1, 0, tzinfo=UTC)
    assert ev.evaluate("hours(4) + minutes(30)", {}) == timedelta(hours=4, minutes=30)
    with pytest.raises(ExpressionError, match="no UTC offset"):
        ev.evaluate("datetime('2026-12-01T09:00:00')", {})


@pytest.mark.parametrize("expression", [
    "amount.__class__",
    "().__class__.__base__.__subclasses__()",
    "client.__getitem__('tier')",
    "name._private",
    "__import__('os').system('id')",
    "__builtins__",
    "[c for c in ().__class__.__mro__]",
], ids=lambda v: v[:40])
def test_dunder_and_private_access_is_refused(ev, expression):
    with pytest.raises(ExpressionError, match=r"not allowed|not available"):
        ev.check(expression)
    with pytest.raises(ExpressionError):
        ev.evaluate(expression, NAMES)


@pytest.mark.parametrize("expression", [
    "open('/etc/passwd')",
    "eval('1 + 1')",
    "exec('x = 1')",
    "getattr(amount, 'real')",
    "type(amount)",
    "globals()",
    "compile('1', 'x', 'eval')",
    "print('x')",
], ids=lambda v: v.split("(")[0])
def test_functions_outside_the_list_are_refused_before_and_at_run_time(ev, expression):
    with pytest.raises(ExpressionError, match="not available"):
        ev.check(expression)  # what deploy lint runs
    with pytest.raises(ExpressionError):
        ev.evaluate(expression, NAMES)


@pytest.mark.parametrize("expression", [
    "'{0.__class__}'.format(name)",
    "'{}'.format(1)",
    "name.format_map({})",
    "name.encode()",
    "amount.bit_length()",
    "items.append(1)",
    "client.update({'tier': 'x'})",
    "client.tags.clear()",
], ids=lambda v: v[:30])
def test_methods_outside_the_short_list_are_refused(ev, expression):
    with pytest.raises(ExpressionError, match="not available"):
        ev.evaluate(expression, NAMES)
    assert NAMES["client"]["tier"] == "VIP" and len(NAMES["items"]) == 99


@pytest.mark.parametrize("expression", [
    "lambda: 1",
    "(x := 1)",
], ids=["lambda", "walrus"])
def test_constructs_that_define_things_are_refused(ev, expression):
    with pytest.raises(ExpressionError, match="not allowed"):
        ev.check(expression)


@pytest.mark.parametrize("expression", [
    "2 ** 100000",
    "10 ** 10 ** 10",
    "((10 ** 256) ** 256) ** 256",  # each exponent small, the result enormous
    "(2 ** 256) ** 200",
], ids=["huge_exponent", "tower", "repeated_power", "big_base"])
def test_huge_powers_are_refused_quickly(ev, expression):
    started = time.monotonic()
    with pytest.raises(ExpressionError):
        ev.evaluate(expression, {})
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("expression", [
    "[x for x in 'a' * 20000]",
    "[[a, b] for a in items for b in items for c in items]",
    "'a' * 200000",
    "items * 100000",
    "('a' * 100000).replace('a', 'a' * 100000)",  # one C call would build 10 GB
    "sum([[1] * 100000] * 300, [])",  # quadratic concatenation inside one C call
    "len([[1] * 100000] * 300)",  # 300 aliases of one list: 30 million elements to walk
    "str([[1] * 100000] * 300)",  # 30 million elements to print (10^10 with 100000 aliases)
    "sorted([[1] * 100000] * 300)",
    "str([s for s in ['a' * 100000] for i in 'a' * 300])",  # aliases built by a comprehension
], ids=["comprehension", "nested_comprehension", "string", "list", "replace", "sum_lists", "aliases",
        "print_aliases", "sort_aliases", "comprehension_aliases"])
def test_long_sequences_are_refused_quickly(ev, expression):
    started = time.monotonic()
    with pytest.raises(ExpressionError):
        ev.evaluate(expression, NAMES)
    assert time.monotonic() - started < 1


def test_an_expression_that_runs_too_long_is_stopped():
    heavy = "len([a * b for a in items for b in items if a != b])"
    assert SafeEvaluator(timeout_ms=5000).evaluate(heavy, NAMES) == 99 * 98  # finishes with time to spare
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="took too long"):
        SafeEvaluator(timeout_ms=1).evaluate(heavy, NAMES)
    assert time.monotonic() - started < 0.5


def test_overlong_text_is_refused_before_parsing(ev):
    with pytest.raises(ExpressionError, match="longer than"):
        ev.check("1 + " * 600 + "1")


@pytest.mark.parametrize(("expression", "error"), [
    ("amount >", "syntax error"),
    ("missing_name > 1", "not defined"),
    ("amount / 0", "ZeroDivisionError"),
    ("int('abc')", "ValueError"),
    ("client.nope", "not available"),
])
def test_ordinary_errors_become_expression_errors(ev, expression, error):
    with pytest.raises(ExpressionError, match=error):
        ev.evaluate(expression, NAMES)


# -- scripts (only when BPM_ALLOW_SCRIPT_TASKS is on) -------------------------------------
def test_a_script_is_assignments_evaluated_in_order(ev):
    data = {"amount": 60}
    ev.run_script("total = amount * 2\nlabel = 'big' if total > 100 else 'small'\n", data)
    assert data == {"amount": 60, "total": 120, "label": "big"}


@pytest.mark.parametrize("script", [
    "import os",
    "from os import system",
    "x = __import__('os')",
    "x = open('/etc/passwd')",
    "_hidden = 1",
    "a, b = 1, 2",
    "a = b = 1",
    "x += 1",
    "amount.real = 1",
    "if amount:\n    x = 1",
    "while True:\n    x = 1",
    "def f():\n    return 1",
    "class C:\n    pass",
    "print('x')",
    "x = 1\ndel x",
], ids=lambda v: v.split("\n")[0][:25])
def test_anything_else_in_a_script_is_refused(ev, script):
    data = {"amount": 1}
    with pytest.raises(ExpressionError):
        ev.run_script(script, data)
    assert set(data) <= {"amount", "x"}


def test_json_safe_turns_dates_into_text():
    value = {"at": datetime(2026, 1, 1, tzinfo=UTC), "wait": timedelta(hours=1), "n": [1, "二"]}
    assert json_safe(value) == {"at": "2026-01-01T00:00:00+00:00", "wait": 3600.0, "n": [1, "二"]}
    with pytest.raises(TypeError):
        json_safe({"x": object()})


# -- business-calendar date functions (engine/date_functions.py) -------------------------------
SEEDED = BusinessCalendar(seed_days(date(2024, 1, 1), date(2026, 12, 31)))
MONDAY_10 = datetime(2025, 6, 16, 10, tzinfo=SHANGHAI)


def dates(calendar: BusinessCalendar = SEEDED, now: datetime = MONDAY_10) -> DateFunctions:
    return DateFunctions(CalendarSnapshot(calendar, clock=lambda: now))


@pytest.mark.parametrize(("expression", "value"), [
    # A weekend: Friday 06-13, Monday 06-16.
    ("add_trading_days('2025-06-13T10:00:00+08:00', 1)", "2025-06-16T10:00:00+08:00"),
    ("add_trading_days('2025-06-13T16:00:00+08:00', 1, at='10:00', cutoff='15:00')", "2025-06-17T10:00:00+08:00"),
    ("add_working_days('2025-06-14', 1, at='09:00')", "2025-06-17T09:00:00+08:00"),  # Saturday: T is Monday
    ("add_trading_days('2025-06-14T11:00:00+08:00', 0)", "2025-06-16T11:00:00+08:00"),
    ("next_trading_day_at('2025-06-13T14:59:00+08:00', '15:00')", "2025-06-13T15:00:00+08:00"),
    ("next_trading_day_at('2025-06-13T15:00:00+08:00', '15:00')", "2025-06-16T15:00:00+08:00"),  # strictly after
    # National Day 2025: 10-01..10-08 closed; Sunday 09-28 and Saturday 10-11 are make-up working days.
    ("add_trading_days('2025-09-30T14:00:00+08:00', 1, at='10:00', cutoff='15:00')", "2025-10-09T10:00:00+08:00"),
    ("add_trading_days('2025-09-30T15:00:00+08:00', 1, at='10:00', cutoff='15:00')", "2025-10-10T10:00:00+08:00"),
    ("add_working_days('2025-09-30T16:00:00+08:00', 1)", "2025-10-09T16:00:00+08:00"),
    ("is_trading_day('2025-10-01T12:00:00+08:00') or is_working_day('2025-10-08')", False),
    ("add_working_days('2025-10-10T16:00:00+08:00', 1)", "2025-10-11T16:00:00+08:00"),  # make-up Saturday works…
    ("add_trading_days('2025-10-10T16:00:00+08:00', 1)", "2025-10-13T16:00:00+08:00"),  # …but does not trade
    # The make-up Sunday 09-28: a working day, not a trading day.
    ("[is_working_day('2025-09-28'), is_trading_day('2025-09-28')]", [True, False]),
    ("add_working_days('2025-09-26T10:00:00+08:00', 1)", "2025-09-28T10:00:00+08:00"),
    ("add_trading_days('2025-09-26T10:00:00+08:00', 1)", "2025-09-29T10:00:00+08:00"),
    ("next_trading_day_at('2025-09-28T10:00:00+08:00', '15:00')", "2025-09-29T15:00:00+08:00"),
    ("next_working_day_at('2025-09-27T10:00:00+08:00', '09:00')", "2025-09-28T09:00:00+08:00"),
    # Instants in other offsets are read in Shanghai time; results carry +08:00, to the second.
    ("add_trading_days('2025-06-16T07:30:00.250Z', 1)", "2025-06-17T15:30:00+08:00"),
    ("is_trading_day('2025-06-15T16:30:00Z')", True),  # Sunday in UTC, Monday 00:30 in Shanghai
    ("add_trading_days(datetime('2025-06-13T10:00:00+08:00'), 1)", "2025-06-16T10:00:00+08:00"),
    ("now()", "2025-06-16T10:00:00+08:00"),
    ("next_trading_day_at(now(), '15:00') > now()", True),  # results compare as text
], ids=lambda v: str(v)[:60])
def test_date_functions_count_on_the_business_calendar(ev, expression, value):
    assert ev.evaluate(expression, {}, dates=dates()) == value


def test_beyond_the_known_calendar_weekdays_count_and_the_evaluation_says_so(ev):
    guessed = dates()
    # 2027's holidays are not known: Friday 2027-01-01 counts as a trading day, flagged.
    assert ev.evaluate("add_trading_days('2026-12-31T10:00:00+08:00', 1)", {}, dates=guessed) == \
        "2027-01-01T10:00:00+08:00"
    assert guessed.incomplete and sorted(guessed.unknown_days) == [date(2027, 1, 1)]
    known = dates()
    assert ev.evaluate("add_trading_days('2026-12-30T10:00:00+08:00', 1)", {}, dates=known) == \
        "2026-12-31T10:00:00+08:00"
    assert not known.incomplete


def test_a_corrected_calendar_gives_a_corrected_answer(ev):
    days = dict(SEEDED.days)
    days[date(2025, 6, 16)] = DayInfo(working=False, trading=False, name="临时休市")
    expression = "add_trading_days('2025-06-13T10:00:00+08:00', 1)"
    assert ev.evaluate(expression, {}, dates=dates(SEEDED)) == "2025-06-16T10:00:00+08:00"
    assert ev.evaluate(expression, {}, dates=dates(BusinessCalendar(days))) == "2025-06-17T10:00:00+08:00"


@pytest.mark.parametrize(("expression", "value"), [
    # Business hours 09:00-17:00. A call at 10:00 is retried in the afternoon, four hours on.
    ("next_working_slot('2025-06-16T10:00:00+08:00', 'PT4H')", "2025-06-16T14:00:00+08:00"),
    # Four hours after 18:28 is 22:28: the next working day's opening instead.
    ("next_working_slot('2025-06-16T18:28:00+08:00', 'PT4H')", "2025-06-17T09:00:00+08:00"),
    # An afternoon call is not retried that afternoon, even when there is time left.
    ("next_working_slot('2025-06-16T12:30:00+08:00', 'PT1H')", "2025-06-17T09:00:00+08:00"),
    # A morning call an hour before noon is retried no earlier than noon.
    ("next_working_slot('2025-06-16T09:30:00+08:00', 'PT1H')", "2025-06-16T12:00:00+08:00"),
    # Friday afternoon: Monday morning. The eve of National Day 2025: after the holiday.
    ("next_working_slot('2025-06-13T15:00:00+08:00', 'PT4H')", "2025-06-16T09:00:00+08:00"),
    ("next_working_slot('2025-09-30T16:00:00+08:00', 'PT4H')", "2025-10-09T09:00:00+08:00"),
    # The make-up Saturday 10-11 is a working day, so calls are made on it.
    ("next_working_slot('2025-10-10T16:00:00+08:00', 'PT4H')", "2025-10-11T09:00:00+08:00"),
    # Given hours win over the calendar's; the lunch break is no calling time.
    ("next_working_slot('2025-06-16T08:00:00+08:00', 'PT4H', '09:00-12:00,13:00-20:00')",
     "2025-06-16T13:00:00+08:00"),
    ("next_working_slot('2025-06-16T08:00:00+08:00', 'PT4H')", "2025-06-16T12:00:00+08:00"),
    ("next_working_slot('2025-06-16T10:00:00+08:00', 'P1DT2H', hours='09:00-20:00')",
     "2025-06-17T12:00:00+08:00"),
], ids=lambda v: str(v)[:70])
def test_the_next_working_slot_is_in_business_hours_and_another_half_day(ev, expression, value):
    assert ev.evaluate(expression, {}, dates=dates()) == value


@pytest.mark.parametrize(("expression", "value"), [
    ("working_days_before('2025-08-01T00:00:00+08:00', 10)", "2025-07-18T00:00:00+08:00"),
    ("working_days_before('2025-08-01T00:00:00+08:00', 0)", "2025-08-01T00:00:00+08:00"),
    # Saturday 2025-11-01 is not a working day: n = 0 is the Friday before.
    ("working_days_before('2025-11-01', 0, at='09:00')", "2025-10-31T09:00:00+08:00"),
    # Back over National Day 2025 (10-01..10-08) and the make-up Sunday 09-28, which counts.
    ("working_days_before('2025-10-10T10:00:00+08:00', 3)", "2025-09-29T10:00:00+08:00"),
    ("working_days_before('2025-10-10T10:00:00+08:00', 4)", "2025-09-28T10:00:00+08:00"),
], ids=lambda v: str(v)[:70])
def test_working_days_before_counts_back_on_the_working_day_calendar(ev, expression, value):
    assert ev.evaluate(expression, {}, dates=dates()) == value


@pytest.mark.parametrize(("expression", "words"), [
    ("add_business_days(now(), 1)", "function 'add_business_days' is not available"),
    ("add_trading_days(now())", "add_trading_days(): missing a required argument: 'n'"),
    ("add_trading_days(now(), 1, '10:00', '15:00', 2)", "too many positional arguments"),
    ("add_trading_days(now(), 1, when='10:00')", "unexpected keyword argument 'when'"),
    ("add_trading_days(now(), -1)", "n must be between 0 and 1000, got -1"),
    ("add_working_days(now(), 1001)", "n must be between 0 and 1000"),
    ("add_trading_days(now(), 1.5)", "n must be a whole number of days"),
    ("add_trading_days(now(), True)", "n must be a whole number of days"),
    ("add_trading_days(now(), 1, at='25:00')", "at must be a time of day 'HH:MM'"),
    ("add_trading_days(now(), 1, cutoff='3pm')", "cutoff must be a time of day"),
    ("next_trading_day_at('2025-06-16T10:00:00', '15:00')", "has no UTC offset"),
    ("is_trading_day('16/06/2025')", "is not an ISO 8601 date or date-time"),
    ("is_trading_day(20250616)", "d must be a date-time"),
    ("now('Asia/Shanghai')", "now(): too many positional arguments"),
    ("add_trading_days(*moments)", "no * or **"),
    ("next_working_slot(now(), 'P1M')", "after must be an ISO 8601 duration"),
    ("next_working_slot(now(), 4)", "after must be an ISO 8601 duration"),
    ("next_working_slot(now(), 'PT4H', '9-17')", "'9-17' is not a period"),
    ("next_working_slot(now(), 'PT4H', '13:00-17:00,09:00-12:00')", "increasing and non-overlapping"),
], ids=lambda v: v[:45])
def test_the_deploy_check_refuses_unknown_date_functions_and_bad_arguments(ev, expression, words):
    with pytest.raises(ExpressionError, match=re.escape(words)):
        ev.check(expression)


def test_arguments_computed_from_data_are_checked_when_the_expression_runs(ev):
    ev.check("add_trading_days(submitted_at, days_allowed, at=chase_time)")  # nothing literal to check
    names = {"submitted_at": "2025-06-16T10:30:00", "t": "10"}
    with pytest.raises(ExpressionError, match=r"add_trading_days\(\): moment .* has no UTC offset"):
        ev.evaluate("add_trading_days(submitted_at, 1)", names, dates=dates())
    with pytest.raises(ExpressionError, match=r"next_trading_day_at\(\): at must be a time of day"):
        ev.evaluate("next_trading_day_at(now(), t)", names, dates=dates())


def test_without_an_instance_calendar_a_date_function_says_why_it_cannot_run(ev):
    ev.check("is_trading_day(now())")  # known to the deploy check…
    with pytest.raises(ExpressionError, match="needs the business calendar"):
        ev.evaluate("is_trading_day(now())", {})  # …but a candidate-group expression has no calendar


def test_date_functions_run_inside_the_time_budget_and_are_stopped_by_it():
    # The largest count a call may make scans four years of days, well inside the budget…
    assert SafeEvaluator(timeout_ms=100).evaluate("add_trading_days('2025-01-02', 1000)", {}, dates=dates()) == \
        "2028-12-22T00:00:00+08:00"
    # …and a loop of such calls is stopped like any other long evaluation.
    started = time.monotonic()
    with pytest.raises(ExpressionError, match="took too long"):
        SafeEvaluator(timeout_ms=20).evaluate("[add_trading_days('2025-01-02', 1000) for i in items for j in items]",
                                              NAMES, dates=dates())
    assert time.monotonic() - started < 1


def test_loading_the_calendar_is_not_charged_to_the_expression():
    def slow_load() -> BusinessCalendar:
        spent = time.thread_time() + 0.2  # CPU, as reading a new revision's rows is
        while time.thread_time() < spent:
            pass
        return SEEDED

    snapshot = CalendarSnapshot(slow_load, clock=lambda: MONDAY_10)
    value = SafeEvaluator(timeout_ms=50).evaluate("is_trading_day(now())", {}, dates=DateFunctions(snapshot))
    assert value is True


# -- what the deploy lint says about them ---------------------------------------------------------
def _timer(kind: str, value: str) -> str:
    return linear(("wait", f'    <bpmn:intermediateCatchEvent id="wait" name="等待"><bpmn:timerEventDefinition>'
                           f"<bpmn:{kind}>{value}</bpmn:{kind}></bpmn:timerEventDefinition>"
                           "</bpmn:intermediateCatchEvent>\n"))


@pytest.mark.parametrize(("body", "words"), [
    (_timer("timeDate", "${add_business_days(submitted_at, 1)}"), "function 'add_business_days' is not available"),
    (_timer("timeDate", "${add_trading_days(submitted_at, 1, at='10h')}"), "at must be a time of day"),
    (_timer("timeDate", "${add_trading_days(submitted_at)}"), "missing a required argument: 'n'"),
    (_timer("timeDate", "${add_trading_days(submitted_at, }"), "syntax error"),
    (_timer("timeDuration", "${add_trading_days(submitted_at, 1)}"), "put it in a timeDate timer"),
    (_timer("timeDate", "${is_trading_day(now())}"), "gives true or false, not a time"),
    (linear(("ask", user_task("ask", groups="${'a' if is_trading_day(now()) else 'b'}"))),
     "candidate group: is_trading_day(), now() cannot be used here"),
    (linear(("ask", user_task("ask", extra="camunda:dueDate=\"${next_trading_day_at(now(), '3pm')}\""))),
     "camunda:dueDate: next_trading_day_at(): at must be a time of day"),
], ids=["unknown_function", "bad_time", "missing_argument", "syntax", "in_a_duration", "truth_value", "candidate_group",
        "due_date"])
def test_deploy_lint_refuses_date_functions_it_could_not_run(rt, body, words):
    _, problems = deployments.check(None, rt, bundle_of(process(body)))
    assert [p.element_id for p in problems] == [("wait" if "wait" in body else "ask")], problems
    assert words in problems[0].message


def test_deploy_lint_accepts_date_functions_where_the_calendar_is_available(rt):
    body = ('    <bpmn:startEvent id="start"/>\n' + flow("start", "ask")
            + user_task("ask", extra="camunda:dueDate=\"${next_trading_day_at(now(), '15:00')}\"")
            + flow("ask", "wait") + '    <bpmn:intermediateCatchEvent id="wait"><bpmn:timerEventDefinition>'
            "<bpmn:timeDate>${add_trading_days(submitted_at, 1, at='10:00', cutoff='15:00')}</bpmn:timeDate>"
            "</bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>\n" + flow("wait", "gw")
            + '    <bpmn:exclusiveGateway id="gw" default="f_gw_later"/>\n'
            + flow("gw", "now_end", condition="${is_trading_day(now())}") + flow("gw", "later", flow_id="f_gw_later")
            + '    <bpmn:endEvent id="now_end"/>\n    <bpmn:endEvent id="later"/>\n')
    _, problems = deployments.check(None, rt, bundle_of(process(body)))
    assert problems == []
