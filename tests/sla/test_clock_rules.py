"""The SLA clock's own rules, as pure functions over in-memory rows: which policy times a
task, where an anchored clock starts, the state shown on a task at each boundary, and how a
pause moves a moment. No database: every object is built in the test (one per test, so the
mutation run of docs/mutation.md credits each test that calls the function)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pytest

from engine.calendars import SHANGHAI, BusinessCalendar, BusinessHours, DayInfo, Unit
from engine.models import SlaPolicy, Task, TaskStatus
from engine.sla import clock as sla_clock


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def _policy(key: str, **fields: Any) -> SlaPolicy:
    defaults: dict[str, Any] = {"active": True, "process_key": None, "element_id": None, "lane": None,
                                "min_priority": None, "match_data": None, "target_amount": Decimal(1),
                                "target_unit": "WD", "business_hours": "default", "milestones": [],
                                "anchor_variable": None}
    return SlaPolicy(key=key, name=key, position=10, **{**defaults, **fields})


def _task(**fields: Any) -> Task:
    defaults: dict[str, Any] = {"process_key": "review", "element_id": "register", "lane": "clerks",
                                "priority": 50, "sla_policy_key": None, "status": TaskStatus.OPEN}
    return Task(**{**defaults, **fields})


# -- which policy times a task --------------------------------------------------------------------
def test_a_policy_without_rules_matches_any_task():
    assert sla_clock.first_match([_policy("any")], _task(), {}).key == "any"


@pytest.mark.parametrize(("rule", "task_fields"), [
    ({"process_key": "complaint"}, {}),
    ({"element_id": "approve"}, {}),
    ({"lane": "managers"}, {}),
    ({"min_priority": 51}, {}),
    ({"match_data": {"severity": "regulator"}}, {}),
    ({"active": False}, {}),
])
def test_each_rule_of_a_policy_that_the_task_fails_passes_it_to_the_next(rule, task_fields):
    policies = [_policy("strict", **rule), _policy("fallback")]
    assert sla_clock.first_match(policies, _task(**task_fields), {"severity": "general"}).key == "fallback"


def test_a_policy_whose_every_rule_holds_matches_before_the_next():
    strict = _policy("strict", process_key="review", element_id="register", lane="clerks", min_priority=50,
                     match_data={"severity": "regulator", "amount": 5})
    policies = [strict, _policy("fallback")]
    # The priority bound is inclusive; case variables compare as text (5 and "5").
    assert sla_clock.first_match(policies, _task(), {"severity": "regulator", "amount": "5"}).key == "strict"
    assert sla_clock.first_match(policies, _task(priority=49), {"severity": "regulator", "amount": "5"}
                                 ).key == "fallback"
    assert sla_clock.first_match(policies, _task(), {"severity": "regulator"}).key == "fallback"


def test_no_policy_matches_a_task_no_rule_fits():
    assert sla_clock.first_match([_policy("other", process_key="complaint")], _task(), {}) is None


def test_a_step_naming_an_active_policy_is_timed_by_it_whatever_its_rules_and_order():
    named = _policy("named", element_id="approve_big")
    policies = [_policy("first"), _policy("other"), named]
    assert sla_clock.first_match(policies, _task(sla_policy_key="named"), {}) is named


def test_a_step_naming_an_inactive_or_unknown_policy_falls_back_to_the_matching_rules():
    policies = [_policy("named", active=False), _policy("fallback", process_key="review")]
    assert sla_clock.first_match(policies, _task(sla_policy_key="named"), {}).key == "fallback"
    assert sla_clock.first_match(policies, _task(sla_policy_key="gone"), {}).key == "fallback"


# -- where an anchored clock starts ------------------------------------------------------------
NOW = sh(2025, 6, 10, 10, 30)


def _anchored(value: Any) -> datetime:
    return sla_clock._anchor(_policy("p", anchor_variable="opened_at"), {"opened_at": value}, NOW)


def test_an_earlier_aware_moment_starts_the_clock():
    assert _anchored("2025-06-05T15:30:00+08:00") == sh(2025, 6, 5, 15, 30)
    assert _anchored(sh(2025, 6, 5, 15, 30)) == sh(2025, 6, 5, 15, 30)
    assert _anchored(NOW) == NOW


def test_a_date_alone_starts_the_clock_that_day_at_the_time_it_is_now_in_beijing():
    # 10:30 Beijing time is 02:30 UTC: the time of day is taken in Beijing, whatever zone now is in.
    assert _anchored("2025-06-03") == sh(2025, 6, 3, 10, 30)
    assert sla_clock._anchor(_policy("p", anchor_variable="opened_at"), {"opened_at": "2025-06-03"},
                             NOW.astimezone(UTC)) == sh(2025, 6, 3, 10, 30)
    assert _anchored("2025-06-10") == NOW  # the day itself changes nothing
    # At 07:00 in Beijing it is still the day before in UTC: the day is Beijing's all the same.
    early = sh(2025, 6, 10, 7).astimezone(UTC)
    assert sla_clock._anchor(_policy("p", anchor_variable="opened_at"), {"opened_at": "2025-06-03"},
                             early) == sh(2025, 6, 3, 7)


@pytest.mark.parametrize("value", [None, "", "not a date", "2025-06-03T10:00:00", "2025-06-03T10:00",
                                   "2025-06-11", "2025-06-10T10:30:01+08:00", datetime(2025, 6, 3, 10)])
def test_an_unusable_anchor_starts_the_clock_now(value):
    # Missing, unparseable, without an offset (a date and time without a zone is not a date
    # alone, whatever its length) or in the future: late, never early.
    assert _anchored(value) == NOW


def test_a_policy_without_an_anchor_or_no_policy_starts_the_clock_now():
    data = {"opened_at": "2025-06-03", "None": "2025-06-03"}
    assert sla_clock._anchor(_policy("p"), data, NOW) == NOW
    assert sla_clock._anchor(None, data, NOW) == NOW


# -- the state shown on a task ------------------------------------------------------------------
DUE = sh(2026, 3, 4, 9)
AT_RISK = sh(2026, 3, 3, 13, 48)


def _timed(**fields: Any) -> Task:
    return _task(**{"due_at": DUE, "at_risk_at": AT_RISK, "breached_at": None, "sla_paused_at": None, **fields})


def test_a_task_without_a_due_date_has_no_sla():
    assert sla_clock.state(_task(due_at=None), DUE) == (sla_clock.NO_SLA, None)


def test_an_open_task_is_on_track_until_its_at_risk_moment_and_at_risk_from_it():
    task = _timed()
    before = AT_RISK - timedelta(seconds=1)
    assert sla_clock.state(task, before) == (sla_clock.ON_TRACK, (DUE - before).total_seconds())
    assert sla_clock.state(task, AT_RISK) == (sla_clock.AT_RISK, (DUE - AT_RISK).total_seconds())
    assert sla_clock.state(_timed(status=TaskStatus.CLAIMED), AT_RISK)[0] == sla_clock.AT_RISK


def test_a_task_without_an_at_risk_moment_stays_on_track_until_the_breach():
    task = _task(due_at=DUE, at_risk_at=None, breached_at=None, sla_paused_at=None)
    assert sla_clock.state(task, DUE - timedelta(seconds=1)) == (sla_clock.ON_TRACK, 1.0)


def test_a_task_breaches_after_its_due_moment_not_at_it():
    task = _timed()
    assert sla_clock.state(task, DUE) == (sla_clock.AT_RISK, 0.0)
    assert sla_clock.state(task, DUE + timedelta(seconds=1)) == (sla_clock.BREACHED, -1.0)


def test_a_recorded_breach_stays_even_with_time_left():
    # A pause resumed after the breach moves the due date later; the breach is not undone.
    task = _timed(breached_at=DUE)
    early = AT_RISK - timedelta(hours=1)
    assert sla_clock.state(task, early) == (sla_clock.BREACHED, (DUE - early).total_seconds())


def test_a_paused_task_shows_the_time_it_had_left_at_the_pause():
    paused_at = AT_RISK - timedelta(hours=1)
    task = _timed(sla_paused_at=paused_at)
    assert sla_clock.state(task, DUE + timedelta(days=3)) == (sla_clock.PAUSED, (DUE - paused_at).total_seconds())


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.CANCELLED])
def test_a_finished_task_is_closed_or_breached_with_nothing_left(status):
    assert sla_clock.state(_timed(status=status), AT_RISK) == (sla_clock.CLOSED, None)
    assert sla_clock.state(_timed(status=status, breached_at=DUE), AT_RISK) == (sla_clock.BREACHED, None)


# -- pause arithmetic ---------------------------------------------------------------------------
NINE_TO_FIVE = BusinessHours(periods=((time(9), time(17)),))


def _calendar() -> BusinessCalendar:
    # Friday 13 and Monday 16 June 2025 known; the weekend between them known closed.
    days = {date(2025, 6, 13): DayInfo(working=True, trading=True),
            date(2025, 6, 14): DayInfo(working=False, trading=False),
            date(2025, 6, 15): DayInfo(working=False, trading=False),
            date(2025, 6, 16): DayInfo(working=True, trading=True)}
    return BusinessCalendar(days, NINE_TO_FIVE)


def test_paused_time_adds_up_every_interval_in_the_targets_terms():
    # Friday 16–17 and Monday 9–10 (two working hours) and Monday 11:00–11:30.
    paused = sla_clock.PausedTime(_calendar(), "WH", [(sh(2025, 6, 13, 16), sh(2025, 6, 16, 10)),
                                                       (sh(2025, 6, 16, 11), sh(2025, 6, 16, 11, 30))])
    assert paused.total == timedelta(hours=2, minutes=30) and not paused.incomplete
    assert paused.unit is Unit.WORKING_HOURS
    assert paused(sh(2025, 6, 16, 12)) == sh(2025, 6, 16, 14, 30)
    assert not paused.incomplete


def test_no_pause_moves_nothing():
    paused = sla_clock.PausedTime(_calendar(), "WD", [])
    assert paused.total == timedelta() and not paused.incomplete
    assert paused(sh(2025, 6, 16, 12)) == sh(2025, 6, 16, 12)


def test_a_pause_over_unknown_days_or_a_move_onto_them_flags_the_result():
    over_unknown = sla_clock.PausedTime(_calendar(), "WH", [(sh(2025, 6, 16, 16), sh(2025, 6, 17, 10))])
    assert over_unknown.total == timedelta(hours=2) and over_unknown.incomplete
    # One guess taints the whole, whichever pause made it; a later move over known days keeps the flag.
    before_known = sla_clock.PausedTime(_calendar(), "WH", [(sh(2025, 6, 12, 16), sh(2025, 6, 12, 17)),
                                                             (sh(2025, 6, 16, 10), sh(2025, 6, 16, 11))])
    assert before_known.total == timedelta(hours=2) and before_known.incomplete
    assert before_known(sh(2025, 6, 13, 10)) == sh(2025, 6, 13, 12)
    assert before_known.incomplete
    onto_unknown = sla_clock.PausedTime(_calendar(), "WH", [(sh(2025, 6, 16, 10), sh(2025, 6, 16, 12))])
    assert not onto_unknown.incomplete
    assert onto_unknown(sh(2025, 6, 16, 16)) == sh(2025, 6, 17, 10)
    assert onto_unknown.incomplete


def test_a_legacy_total_moves_every_moment_by_the_wall_clock_on_top():
    paused = sla_clock.PausedTime(_calendar(), "WH", [(sh(2025, 6, 16, 10), sh(2025, 6, 16, 11))],
                                  legacy=timedelta(hours=3))
    assert paused(sh(2025, 6, 16, 12)) == sh(2025, 6, 16, 16)
    # Without intervals, only the legacy total: a moment moves by it even outside business hours.
    assert sla_clock.PausedTime(_calendar(), "WH", [], legacy=timedelta(hours=3))(
        sh(2025, 6, 16, 16)) == sh(2025, 6, 16, 19)


def test_the_kept_intervals_are_read_back_as_moments():
    task = _task(sla_pauses=[["2025-06-13T16:00:00+08:00", "2025-06-16T10:00:00+08:00"]])
    assert sla_clock.pauses(task) == [(sh(2025, 6, 13, 16), sh(2025, 6, 16, 10))]
    assert sla_clock.pauses(_task(sla_pauses=None)) == []


def test_the_legacy_pause_is_the_total_the_kept_intervals_do_not_account_for():
    intervals = [["2025-06-13T16:00:00+08:00", "2025-06-13T17:00:00+08:00"],
                 ["2025-06-16T09:00:00+08:00", "2025-06-16T09:30:00+08:00"]]
    assert sla_clock.legacy_pause(_task(sla_paused_seconds=7200, sla_pauses=intervals)) == timedelta(minutes=30)
    assert sla_clock.legacy_pause(_task(sla_paused_seconds=5400, sla_pauses=intervals)) == timedelta()
    assert sla_clock.legacy_pause(_task(sla_paused_seconds=3600, sla_pauses=None)) == timedelta(hours=1)
    assert sla_clock.legacy_pause(_task(sla_paused_seconds=None, sla_pauses=None)) == timedelta()
    # A total smaller than the intervals (never written so, but not negative if it were).
    assert sla_clock.legacy_pause(_task(sla_paused_seconds=60, sla_pauses=intervals)) == timedelta()
