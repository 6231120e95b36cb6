"""Pausing an SLA clock ("waiting for client") excludes the paused time in the target's own
terms: business hours of working days for WD and WH, of trading days for TD, wall-clock
time for CD. The due date and the held milestone timers move together; milestones that
fired before the pause stay where they were.

Business hours are the seeded default, 09:00–17:00 Asia/Shanghai; days are the seeded
2025 calendar (chinese-calendar): National Day runs 1–8 October, Sunday 28 September is a
make-up working day (调休) on which the exchanges stay closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

import pytest
import time_machine
from sqlalchemy import select, update

from engine.calendars import SHANGHAI, BusinessCalendar, BusinessHours, DayInfo
from engine.models import AuditEvent, ProcessInstance, Task, Timer
from engine.process import instances
from engine.sla import admin as sla_admin
from engine.sla import clock as sla_clock
from engine.timers import firing

MILESTONES = [
    {"at": 0.5, "action": "notify", "to": "assignee"},
    {"at": 0.8, "action": "notify", "to": "candidates"},
    {"at": 1.0, "action": "escalate", "to": "managers"},
]


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


@dataclass(frozen=True)
class Case:
    unit: str
    amount: int
    start: datetime
    pause: datetime
    resume: datetime
    fired: datetime  # the 50 % milestone, due before the pause
    at_80: tuple[datetime, datetime]  # before the pause, after the resume
    due: tuple[datetime, datetime]
    counted: timedelta  # the pause in the target's terms


# Friday 16:00 → Monday 10:00 on an ordinary weekend.
WEEKEND = dict(start=sh(2025, 6, 12, 10), pause=sh(2025, 6, 13, 16), resume=sh(2025, 6, 16, 10))
# Tuesday 30 September 16:00 → Thursday 9 October 10:00, across the National Day holiday.
HOLIDAY = dict(start=sh(2025, 9, 29, 10), pause=sh(2025, 9, 30, 16), resume=sh(2025, 10, 9, 10))
# Friday 26 September 16:00 → Monday 29 September 10:00, across the make-up Sunday.
MAKE_UP = dict(start=sh(2025, 9, 25, 10), pause=sh(2025, 9, 26, 16), resume=sh(2025, 9, 29, 10))

CASES = {
    # 3 WD from Thursday 10:00 is Tuesday 10:00; 80 % is 2.4 WD (Monday 10:00 + 3 h 12).
    # Paused: Friday 16–17 and Monday 9–10, two working hours.
    "WD-weekend": Case("WD", 3, **WEEKEND, fired=sh(2025, 6, 13, 14),
                       at_80=(sh(2025, 6, 16, 13, 12), sh(2025, 6, 16, 15, 12)),
                       due=(sh(2025, 6, 17, 10), sh(2025, 6, 17, 12)), counted=timedelta(hours=2)),
    "TD-weekend": Case("TD", 3, **WEEKEND, fired=sh(2025, 6, 13, 14),
                       at_80=(sh(2025, 6, 16, 13, 12), sh(2025, 6, 16, 15, 12)),
                       due=(sh(2025, 6, 17, 10), sh(2025, 6, 17, 12)), counted=timedelta(hours=2)),
    # 20 WH from Thursday 10:00: 7 h Thursday, 8 h Friday, 5 h Monday.
    "WH-weekend": Case("WH", 20, **WEEKEND, fired=sh(2025, 6, 13, 12),
                       at_80=(sh(2025, 6, 16, 10), sh(2025, 6, 16, 12)),
                       due=(sh(2025, 6, 16, 14), sh(2025, 6, 16, 16)), counted=timedelta(hours=2)),
    # Calendar days keep wall-clock pausing: 66 hours.
    "CD-weekend": Case("CD", 2, **WEEKEND, fired=sh(2025, 6, 13, 10),
                       at_80=(sh(2025, 6, 14, 0, 24), sh(2025, 6, 16, 18, 24)),
                       due=(sh(2025, 6, 14, 10), sh(2025, 6, 17, 4)), counted=timedelta(hours=66)),
    # 3 WD from Monday 29 September 10:00: 30 September, 9 and 10 October. Paused: two
    # working hours (30 September 16–17, 9 October 9–10); the eight holidays count nothing.
    "WD-holiday": Case("WD", 3, **HOLIDAY, fired=sh(2025, 9, 30, 14),
                       at_80=(sh(2025, 10, 9, 13, 12), sh(2025, 10, 9, 15, 12)),
                       due=(sh(2025, 10, 10, 10), sh(2025, 10, 10, 12)), counted=timedelta(hours=2)),
    "TD-holiday": Case("TD", 3, **HOLIDAY, fired=sh(2025, 9, 30, 14),
                       at_80=(sh(2025, 10, 9, 13, 12), sh(2025, 10, 9, 15, 12)),
                       due=(sh(2025, 10, 10, 10), sh(2025, 10, 10, 12)), counted=timedelta(hours=2)),
    # 20 WH from Monday 10:00: 7 h Monday, 8 h Tuesday, 5 h on 9 October.
    "WH-holiday": Case("WH", 20, **HOLIDAY, fired=sh(2025, 9, 30, 12),
                       at_80=(sh(2025, 10, 9, 10), sh(2025, 10, 9, 12)),
                       due=(sh(2025, 10, 9, 14), sh(2025, 10, 9, 16)), counted=timedelta(hours=2)),
    # Wall-clock: 8 days 18 hours.
    "CD-holiday": Case("CD", 2, **HOLIDAY, fired=sh(2025, 9, 30, 10),
                       at_80=(sh(2025, 10, 1, 0, 24), sh(2025, 10, 9, 18, 24)),
                       due=(sh(2025, 10, 1, 10), sh(2025, 10, 10, 4)), counted=timedelta(days=8, hours=18)),
    # The make-up Sunday is a working day: a WD clock loses it to the pause (10 working
    # hours paused), a TD clock never counted it (2 trading hours paused). Both had 14 h of
    # their 24 h target left at the pause and both are due Tuesday 12:00.
    "WD-make-up-Sunday": Case("WD", 3, **MAKE_UP, fired=sh(2025, 9, 26, 14),
                              at_80=(sh(2025, 9, 28, 13, 12), sh(2025, 9, 29, 15, 12)),
                              due=(sh(2025, 9, 29, 10), sh(2025, 9, 30, 12)), counted=timedelta(hours=10)),
    "TD-make-up-Sunday": Case("TD", 3, **MAKE_UP, fired=sh(2025, 9, 26, 14),
                              at_80=(sh(2025, 9, 29, 13, 12), sh(2025, 9, 29, 15, 12)),
                              due=(sh(2025, 9, 30, 10), sh(2025, 9, 30, 12)), counted=timedelta(hours=2)),
}


def _policy(db, rt, people, unit: str, amount: int) -> None:
    data = {"key": "review.register", "name": "登记", "position": 10, "process_key": "review",
            "element_id": "register", "target_amount": amount, "target_unit": unit, "milestones": MILESTONES}
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=data, actor=people.owner)


def _start(db, rt, people) -> int:
    with db.transaction() as s:
        return instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                               data={"priority": 50, "due_at": None}).id


def _task_id(db) -> int:
    with db.transaction() as s:
        return s.execute(select(Task.id).where(Task.element_id == "register")).scalar_one()


def _pause(db, rt, people, instance_id: int, task_id: int) -> None:
    with db.transaction() as s:
        sla_clock.pause(s, rt, task=s.get(Task, task_id), instance=s.get(ProcessInstance, instance_id),
                  actor=people.clerk, reason="等待客户补充材料")


def _resume(db, rt, people, instance_id: int, task_id: int) -> None:
    with db.transaction() as s:
        sla_clock.resume(s, rt, task=s.get(Task, task_id), instance=s.get(ProcessInstance, instance_id),
                   actor=people.clerk)


def _milestones(db) -> list[tuple[float, str, datetime]]:
    """Milestone rows not cancelled (a recompute cancels and re-creates them), by fraction."""
    with db.transaction() as s:
        rows = s.execute(select(Timer).where(Timer.kind == "sla", Timer.status != "cancelled")).scalars()
        return sorted((row.payload["at"], row.status, row.due_at) for row in rows)


def _paused_and_resumed(db, rt, people, case: Case) -> tuple[int, int]:
    """Start under the case's policy, let the 50 % milestone fire, pause, resume."""
    _policy(db, rt, people, case.unit, case.amount)
    with time_machine.travel(case.start, tick=False) as clock:
        instance_id = _start(db, rt, people)
        task_id = _task_id(db)
        clock.move_to(case.pause)
        assert firing.fire_due(db, rt) == 1  # the 50 % reminder, before the pause
        assert _milestones(db) == [(0.5, "fired", case.fired), (0.8, "waiting", case.at_80[0]),
                                   (1.0, "waiting", case.due[0])]
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(case.resume)
        assert firing.fire_due(db, rt) == 0  # held while paused
        _resume(db, rt, people, instance_id, task_id)
    return instance_id, task_id


@pytest.mark.sqlite
@pytest.mark.parametrize("name", list(CASES))
def test_resuming_moves_the_due_date_and_held_milestones_by_the_paused_time_in_the_targets_unit(
        db, rt, people, review, name):
    case = CASES[name]
    _paused_and_resumed(db, rt, people, case)
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.element_id == "register")).scalar_one()
        resumed = s.execute(select(AuditEvent.data).where(AuditEvent.kind == "sla.resumed")).scalar_one()
    assert (task.due_at, task.at_risk_at) == (case.due[1], case.at_80[1])
    assert not task.calendar_incomplete
    assert _milestones(db) == [(0.5, "fired", case.fired), (0.8, "waiting", case.at_80[1]),
                               (1.0, "waiting", case.due[1])]
    assert resumed["paused_seconds"] == (case.resume - case.pause).total_seconds()  # wall-clock, as before
    assert (resumed["counted_seconds"], resumed["unit"]) == (case.counted.total_seconds(), case.unit)


@pytest.mark.sqlite
def test_moved_milestones_fire_at_their_new_times(db, rt, people, review):
    case = CASES["WD-weekend"]
    _paused_and_resumed(db, rt, people, case)
    with time_machine.travel(case.at_80[0] + timedelta(seconds=1), tick=False) as clock:
        assert firing.fire_due(db, rt) == 0  # where the 80 % reminder was before the pause
        clock.move_to(case.at_80[1] + timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
        clock.move_to(case.due[1] + timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
    with db.transaction() as s:
        assert s.execute(select(Task.breached_at).where(Task.element_id == "register")).scalar_one() == \
            case.due[1] + timedelta(seconds=1)


@pytest.mark.sqlite
def test_a_recompute_after_the_resume_keeps_the_pause_excluded_in_business_time(db, rt, people, review):
    case = CASES["WD-holiday"]
    _paused_and_resumed(db, rt, people, case)
    with time_machine.travel(case.resume + timedelta(minutes=5), tick=False):
        _policy(db, rt, people, case.unit, case.amount)  # saving a policy recomputes open tasks
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.element_id == "register")).scalar_one()
    assert (task.due_at, task.at_risk_at) == (case.due[1], case.at_80[1])
    # The reminder sent before the pause is not re-armed; the others are where resume put them.
    assert _milestones(db) == [(0.5, "fired", case.fired), (0.8, "waiting", case.at_80[1]),
                               (1.0, "waiting", case.due[1])]


def _paused_after_the_reminder(db, rt, people, case: Case, clock) -> tuple[int, int]:
    """Start a case, let its 50 % reminder fire at the case's pause moment, then pause it."""
    instance_id, task_id = _start_as(db, rt, people, "R-1")
    clock.move_to(case.pause)
    assert firing.fire_due(db, rt) == 1  # the 50 % reminder, before the pause
    _pause(db, rt, people, instance_id, task_id)
    return instance_id, task_id


@pytest.mark.sqlite
def test_a_recompute_during_a_pause_holds_every_milestone_still_ahead_of_the_pause(db, rt, people, review):
    """Saving the policy while the clock is paused, after the moments where the 80 % and the
    target were due before the pause: both are re-armed held, none fires, and the resume
    moves them as usual."""
    case = CASES["WD-weekend"]
    _policy(db, rt, people, case.unit, case.amount)
    with time_machine.travel(case.start, tick=False) as clock:
        instance_id, task_id = _paused_after_the_reminder(db, rt, people, case, clock)
        clock.move_to(case.due[0] + timedelta(hours=1))
        rt.scheduler = told = _Told()
        _policy(db, rt, people, case.unit, case.amount)  # saving a policy recomputes open tasks
        assert _milestones(db) == [(0.5, "fired", case.fired), (0.8, "paused", case.at_80[0]),
                                   (1.0, "paused", case.due[0])]
        assert firing.fire_due(db, rt) == 0 and told.timers == []
        clock.move_to(case.due[0] + timedelta(hours=2))
        _resume(db, rt, people, instance_id, task_id)
    # Paused from Friday 16:00 to Tuesday 12:00: 1 + 8 + 3 working hours.
    assert _milestones(db) == [(0.5, "fired", case.fired), (0.8, "waiting", sh(2025, 6, 18, 9, 12)),
                               (1.0, "waiting", sh(2025, 6, 18, 14))]


@pytest.mark.sqlite
def test_a_recompute_measures_past_pauses_on_the_calendar_as_it_now_is(db, rt, people, review):
    """The pause intervals are kept, not only their length: a day an administrator closes
    afterwards (here the Friday the pause began on) neither counts towards the target nor
    as paused business time."""
    case = CASES["WD-weekend"]
    _paused_and_resumed(db, rt, people, case)
    with time_machine.travel(case.resume + timedelta(minutes=5), tick=False), db.transaction() as s:
        sla_admin.set_day(s, day=date(2025, 6, 13), working=False, trading=False, name="台风停业",
                    actor=people.owner, now=rt.now())
        assert sla_admin.recompute(s, rt, now=rt.now()) == 1
    with db.transaction() as s:
        due = s.execute(select(Task.due_at).where(Task.element_id == "register")).scalar_one()
    # 3 WD from Thursday 10:00 is now Wednesday 10:00; one working hour was paused (Monday 9–10).
    assert due == sh(2025, 6, 18, 11)


@pytest.mark.sqlite
def test_a_pause_recorded_only_as_a_total_before_intervals_were_kept_stays_wall_clock(db, rt, people, review):
    """Tasks resumed before migration 0007 have ``sla_paused_seconds`` and no intervals: a
    recompute keeps moving their due date by that wall-clock total, as resume did then."""
    _policy(db, rt, people, "WD", 3)
    with time_machine.travel(WEEKEND["start"], tick=False):
        _start(db, rt, people)
    with db.transaction() as s:
        s.execute(update(Task).values(sla_paused_seconds=3600, sla_pauses=None))
    with time_machine.travel(WEEKEND["start"] + timedelta(minutes=5), tick=False):
        _policy(db, rt, people, "WD", 3)
    with db.transaction() as s:
        due = s.execute(select(Task.due_at).where(Task.element_id == "register")).scalar_one()
    assert due == sh(2025, 6, 17, 11)


@pytest.mark.sqlite
def test_a_diagram_due_date_moves_by_the_working_time_paused(db, rt, people, review):
    """A diagram's own due date counts on the policy's calendar: its milestones are shares of
    the working time up to it, so a pause holds back the working time it spanned (Friday
    16–17 and Monday 9–10), not the weekend's 66 hours."""
    _policy(db, rt, people, "WD", 3)
    own_due = sh(2025, 6, 17, 17)
    with time_machine.travel(WEEKEND["start"], tick=False) as clock:
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                                          data={"priority": 50, "due_at": own_due.isoformat()}).id
        task_id = _task_id(db)
        clock.move_to(WEEKEND["pause"])
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(WEEKEND["resume"])
        _resume(db, rt, people, instance_id, task_id)
    with db.transaction() as s:
        assert s.get(Task, task_id).due_at == sh(2025, 6, 18, 11)


@pytest.mark.sqlite
def test_a_pause_over_days_the_calendar_does_not_know_yet_flags_the_task(db, rt, people, review):
    """The seeded calendar ends with 2026: 1 and 4 January 2027 are guessed working days."""
    _policy(db, rt, people, "WH", 4)
    with time_machine.travel(sh(2026, 12, 31, 10), tick=False) as clock:
        instance_id = _start(db, rt, people)
        task_id = _task_id(db)
        clock.move_to(sh(2026, 12, 31, 11))
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(sh(2027, 1, 4, 10))
        _resume(db, rt, people, instance_id, task_id)
    with db.transaction() as s:
        task = s.get(Task, task_id)
    # One of the four working hours ran before the pause: three more from Monday 10:00.
    assert task.due_at == sh(2027, 1, 4, 13) and task.calendar_incomplete


def _start_as(db, rt, people, key: str, due_at: datetime | None = None) -> tuple[int, int]:
    """A review case ``key``; its register task's (instance id, task id)."""
    with db.transaction() as s:
        instance = instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                                   data={"priority": 50, "due_at": due_at.isoformat() if due_at else None})
        task_id = s.execute(select(Task.id).where(Task.instance_id == instance.id,
                                                  Task.element_id == "register")).scalar_one()
        return instance.id, task_id


def _timer_states(db, task_id: int) -> set[str]:
    with db.transaction() as s:
        task_uuid = s.get(Task, task_id).task_uuid
        return set(s.execute(select(Timer.status).where(Timer.task_uuid == task_uuid)).scalars())


@pytest.mark.sqlite
def test_pausing_and_resuming_one_task_holds_and_releases_only_its_own_milestones(db, rt, people, review):
    _policy(db, rt, people, "WD", 3)
    with time_machine.travel(WEEKEND["start"], tick=False) as clock:
        first, second = _start_as(db, rt, people, "R-1"), _start_as(db, rt, people, "R-2")
        clock.move_to(WEEKEND["pause"])
        _pause(db, rt, people, *first)
        assert (_timer_states(db, first[1]), _timer_states(db, second[1])) == ({"paused"}, {"waiting"})
        _pause(db, rt, people, *second)
        clock.move_to(WEEKEND["resume"])
        _resume(db, rt, people, *first)
    assert (_timer_states(db, first[1]), _timer_states(db, second[1])) == ({"waiting"}, {"paused"})


class _Told:
    """A scheduler that remembers what it was told (the rq scheduler in production)."""

    def __init__(self) -> None:
        self.timers: list[tuple[int, datetime]] = []

    def timer_created(self, timer_id: int, due_at: datetime) -> None:
        self.timers.append((timer_id, due_at))


@pytest.mark.sqlite
def test_the_scheduler_is_told_where_resumed_milestones_now_fall(db, rt, people, review):
    case = CASES["WD-weekend"]
    _policy(db, rt, people, case.unit, case.amount)
    with time_machine.travel(case.start, tick=False) as clock:
        instance_id, task_id = _paused_after_the_reminder(db, rt, people, case, clock)
        clock.move_to(case.resume)
        rt.scheduler = told = _Told()
        _resume(db, rt, people, instance_id, task_id)
    # The two held milestones, each announced once, at its moved time.
    assert sorted(due for _, due in told.timers) == [case.at_80[1], case.due[1]]
    assert len({timer_id for timer_id, _ in told.timers}) == 2


@pytest.mark.sqlite
def test_the_scheduler_is_told_of_the_milestones_a_new_step_arms(db, rt, people, review):
    case = CASES["WD-weekend"]
    _policy(db, rt, people, case.unit, case.amount)
    rt.scheduler = told = _Told()
    with time_machine.travel(case.start, tick=False):
        _start_as(db, rt, people, "R-1")
    assert sorted(due for _, due in told.timers) == [due for _, _, due in _milestones(db)]
    assert len({timer_id for timer_id, _ in told.timers}) == 3


@pytest.mark.sqlite
def test_each_pause_and_resume_is_audited_with_who_which_task_and_the_new_due_date(db, rt, people, review):
    _policy(db, rt, people, "WH", 20)
    with time_machine.travel(WEEKEND["start"], tick=False) as clock:
        instance_id, task_id = _start_as(db, rt, people, "R-1")
        clock.move_to(sh(2025, 6, 12, 11))
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(sh(2025, 6, 12, 12))
        _resume(db, rt, people, instance_id, task_id)
        clock.move_to(sh(2025, 6, 13, 9))
        _pause(db, rt, people, instance_id, task_id)
        _pause(db, rt, people, instance_id, task_id)  # already paused: nothing more happens
        clock.move_to(sh(2025, 6, 13, 9, 30))
        _resume(db, rt, people, instance_id, task_id)
        _resume(db, rt, people, instance_id, task_id)  # already running: nothing more happens
    with db.transaction() as s:
        task = s.get(Task, task_id)
        events = s.execute(select(AuditEvent).where(AuditEvent.kind.in_(("sla.paused", "sla.resumed")))
                           .order_by(AuditEvent.id)).scalars().all()
        seen = [(e.kind, e.actor, e.task_uuid, {**e.data, **({"due_at": datetime.fromisoformat(e.data["due_at"])}
                                                          if "due_at" in e.data else {})}) for e in events]
    # 20 WH from Thursday 10:00 were due Monday 14:00; an hour and a half of pauses.
    assert task.due_at == sh(2025, 6, 16, 15, 30)
    assert task.sla_paused_seconds == 5400 and task.sla_paused_at is None
    assert sla_clock.pauses(task) == [(sh(2025, 6, 12, 11), sh(2025, 6, 12, 12)),
                                      (sh(2025, 6, 13, 9), sh(2025, 6, 13, 9, 30))]
    paused = {"task_id": task_id, "reason": "等待客户补充材料"}
    resumed = {"task_id": task_id, "unit": "WH"}
    assert seen == [
        ("sla.paused", "li", task.task_uuid, paused),
        ("sla.resumed", "li", task.task_uuid, {**resumed, "paused_seconds": 3600.0, "counted_seconds": 3600.0,
                                                "due_at": sh(2025, 6, 16, 15)}),
        ("sla.paused", "li", task.task_uuid, paused),
        ("sla.resumed", "li", task.task_uuid, {**resumed, "paused_seconds": 1800.0, "counted_seconds": 1800.0,
                                                "due_at": sh(2025, 6, 16, 15, 30)}),
    ]


@pytest.mark.sqlite
def test_without_a_policy_a_diagram_due_date_moves_by_the_wall_clock_paused(db, rt, people, review):
    own_due = sh(2025, 6, 17, 17)
    with time_machine.travel(WEEKEND["start"], tick=False) as clock:
        instance_id, task_id = _start_as(db, rt, people, "R-1", due_at=own_due)
        clock.move_to(WEEKEND["pause"])
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(WEEKEND["resume"])
        _resume(db, rt, people, instance_id, task_id)
    with db.transaction() as s:
        task = s.get(Task, task_id)
    # Friday 16:00 to Monday 10:00 is 66 hours; the at-risk moment (80 % of the window) moves as much.
    assert task.due_at == own_due + timedelta(hours=66)
    assert task.at_risk_at == WEEKEND["start"] + (own_due - WEEKEND["start"]) * 0.8 + timedelta(hours=66)


@pytest.mark.sqlite
def test_a_task_without_a_due_date_pauses_and_resumes_with_nothing_to_move(db, rt, people, review):
    with time_machine.travel(WEEKEND["start"], tick=False) as clock:
        instance_id, task_id = _start_as(db, rt, people, "R-1")
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(WEEKEND["pause"])
        _resume(db, rt, people, instance_id, task_id)
    with db.transaction() as s:
        task = s.get(Task, task_id)
        resumed = s.execute(select(AuditEvent.data).where(AuditEvent.kind == "sla.resumed")).scalar_one()
    assert (task.due_at, task.at_risk_at, task.sla_paused_at) == (None, None, None)
    assert (resumed["due_at"], resumed["unit"]) == (None, "CMIN")
    waited = (WEEKEND["pause"] - WEEKEND["start"]).total_seconds()
    assert resumed["paused_seconds"] == resumed["counted_seconds"] == waited


@pytest.mark.sqlite
@pytest.mark.parametrize(("unit", "moved_due"), [
    # The make-up Sunday is working time: 10 working hours paused (Friday 16–17, Sunday 9–17,
    # Monday 9–10), counted from Monday 17:00 past the National Day holiday.
    ("WD", sh(2025, 10, 9, 11)),
    # The exchanges are closed on it: two trading hours (Friday 16–17, Monday 9–10).
    ("TD", sh(2025, 9, 30, 11)),
])
def test_a_diagram_due_date_moves_by_the_working_or_trading_time_paused_across_a_make_up_sunday(
        db, rt, people, review, unit, moved_due):
    _policy(db, rt, people, unit, 3)
    with time_machine.travel(MAKE_UP["start"], tick=False) as clock:
        instance_id, task_id = _start_as(db, rt, people, "R-1", due_at=sh(2025, 9, 29, 17))
        clock.move_to(MAKE_UP["pause"])
        _pause(db, rt, people, instance_id, task_id)
        clock.move_to(MAKE_UP["resume"])
        _resume(db, rt, people, instance_id, task_id)
    with db.transaction() as s:
        assert s.get(Task, task_id).due_at == moved_due


# -- the calendar arithmetic pauses rely on --------------------------------------------------
LUNCH = BusinessHours(periods=((time(9), time(11, 30)), (time(13), time(17))))


def test_paused_business_time_counts_only_open_periods_and_says_when_it_guessed():
    calendar = BusinessCalendar({date(2026, 12, 31): DayInfo(working=True, trading=True)}, LUNCH)
    # 31 December 11:00–11:30 and 13:00–17:00; 1 January 2027 (not known: a Friday, so
    # guessed a working day) 6.5 h; the weekend nothing; Monday 09:00–11:30 and 13:00–14:00.
    assert calendar.paused_time(sh(2026, 12, 31, 11), sh(2027, 1, 4, 14), "WD") == (timedelta(hours=14.5), False)
    assert calendar.paused_time(sh(2026, 12, 31, 11), sh(2026, 12, 31, 14), "WH") == (timedelta(hours=1.5), True)
    assert calendar.paused_time(sh(2026, 12, 31, 11), sh(2026, 12, 31, 14), "CD") == (timedelta(hours=3), True)


def test_a_moved_working_day_due_date_is_an_opening_never_a_closing():
    calendar = BusinessCalendar({date(2026, 12, 31): DayInfo(working=True, trading=True),
                                 date(2027, 1, 1): DayInfo(working=False, trading=False, name="元旦")}, LUNCH)
    one_hour = timedelta(hours=1)
    # 16:00 + one working hour is the closing time; for WD/TD that instant is the next opening.
    assert calendar.extend(sh(2026, 12, 31, 16), one_hour, "WH").at == sh(2026, 12, 31, 17)
    assert calendar.extend(sh(2026, 12, 31, 16), one_hour, "WD").at == sh(2027, 1, 4, 9)
    assert calendar.extend(sh(2026, 12, 31, 16), one_hour, "TD").at == sh(2027, 1, 4, 9)
    assert calendar.extend(sh(2026, 12, 31, 11), one_hour, "WD").at == sh(2026, 12, 31, 13, 30)  # over lunch
    assert calendar.extend(sh(2026, 12, 31, 16), one_hour, "CD").at == sh(2026, 12, 31, 17)
    assert calendar.extend(sh(2026, 12, 31, 16), timedelta(), "WD").at == sh(2026, 12, 31, 16)
