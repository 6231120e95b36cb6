"""SLA policies as data: due dates on business calendars, milestones, breach, pause,
recompute on change, administrator calendar edits, scheduled starts, cycle catch-up."""

from __future__ import annotations

from datetime import date, datetime

import pytest
import time_machine
from sqlalchemy import func, select

from engine.bootstrap import build_runtime
from engine.calendars import SHANGHAI
from engine.models import AuditEvent, Notification, ProcessInstance, Task, Timer
from engine.process import instances, tasks
from engine.sla import admin as sla_admin
from engine.sla import clock as sla_clock
from engine.timers import firing, schedules

MONDAY_9 = datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)
POLICY = {
    "key": "review.register", "name": "登记 2 个工作日", "position": 10, "process_key": "review",
    "element_id": "register", "target_amount": 2, "target_unit": "WD", "business_hours": "default",
    "milestones": [
        {"at": 0.5, "action": "notify", "to": "assignee"},
        {"at": 0.8, "action": "notify", "to": "candidates"},
        {"at": 1.0, "action": "escalate", "to": "managers"},
    ],
}


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def _policy(db, rt, people, **changes):
    with db.transaction() as s:
        return sla_admin.upsert_policy(s, rt, data={**POLICY, **changes}, actor=people.owner)[1]


def _start(db, rt, people, key="R-1", **data):
    with db.transaction() as s:
        return instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data={"priority": 50, "due_at": None, **data}).id


def _task(db, key="R-1", element="register"):
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.business_key == key, Task.element_id == element)).scalar_one()


@pytest.mark.sqlite
def test_a_policy_gives_the_task_a_due_date_in_working_days(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people)
    task = _task(db)
    assert task.due_at == sh(2026, 3, 4, 9) and task.due_source == "policy" and not task.calendar_incomplete
    with db.transaction() as s:
        due = sorted(s.execute(select(Timer.due_at).where(Timer.kind == "sla")).scalars())
    assert due == [sh(2026, 3, 3, 9), sh(2026, 3, 3, 13, 48), sh(2026, 3, 4, 9)]  # 1 WD, 1.6 WD, 2 WD


@pytest.mark.sqlite
def test_a_fraction_of_a_trading_day_is_counted_on_trading_days(db, rt, people, review):
    # 1 TD from Friday 26 September 2025 14:00: Sunday 28 September is a make-up working day
    # but the exchanges are closed, so the target is Monday 14:00 and its half (4 h: Friday
    # 14–17, then one hour) is Monday 10:00, not Sunday 10:00.
    _policy(db, rt, people, target_amount=1, target_unit="TD",
            milestones=[{"at": 0.5, "action": "notify", "to": "assignee"}])
    with time_machine.travel(sh(2025, 9, 26, 14), tick=False):
        _start(db, rt, people)
    assert _task(db).due_at == sh(2025, 9, 29, 14)
    with db.transaction() as s:
        assert s.execute(select(Timer.due_at).where(Timer.kind == "sla")).scalar_one() == sh(2025, 9, 29, 10)


@pytest.mark.sqlite
def test_a_due_date_from_the_diagram_wins_over_the_policy(db, rt, people, review):
    _policy(db, rt, people)
    own_due = sh(2026, 3, 10, 17)
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people, due_at=own_due.isoformat())
    task = _task(db)
    assert task.due_at == own_due and task.due_source == "diagram"


@pytest.mark.sqlite
def test_milestones_notify_then_the_breach_escalates_and_stays_after_late_completion(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        _start(db, rt, people)
        clock.move_to(sh(2026, 3, 3, 9, 0, 1))
        assert firing.fire_due(db, rt) == 1
        with db.transaction() as s:
            assert sorted(s.execute(select(Notification.recipient)).scalars()) == ["li", "zhao"]
            task = s.execute(select(Task).where(Task.element_id == "register")).scalar_one()
            assert sla_clock.state(task, rt.now())[0] == sla_clock.ON_TRACK
        clock.move_to(sh(2026, 3, 3, 14))
        assert firing.fire_due(db, rt) == 1
        with db.transaction() as s:
            task = s.execute(select(Task).where(Task.element_id == "register")).scalar_one()
            assert sla_clock.state(task, rt.now())[0] == sla_clock.AT_RISK
        clock.move_to(sh(2026, 3, 4, 9, 0, 1))
        assert firing.fire_due(db, rt) == 1
        with db.transaction() as s:
            escalation = s.execute(select(Task).where(Task.kind == "escalation")).scalar_one()
            assert escalation.candidate_groups == ["managers"] and escalation.status == "open"
            original = s.execute(select(Task).where(Task.element_id == "register")).scalar_one()
            assert original.status == "open" and original.breached_at is not None
            assert sla_clock.state(original, rt.now())[0] == sla_clock.BREACHED
            task_id = original.id
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data={"amount": 1, "summary": "迟了"})
    task = _task(db)
    assert task.status == "completed" and task.breached_at is not None
    with db.transaction() as s:
        kinds = list(s.execute(select(AuditEvent.kind).where(AuditEvent.kind.like("sla.%"))).scalars())
    assert kinds.count("sla.breached") == 1 and kinds.count("sla.milestone") == 3


@pytest.mark.sqlite
def test_completing_on_time_cancels_the_remaining_milestones(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        _start(db, rt, people)
        task_id = _task(db).id
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data={"amount": 1, "summary": "准时"})
        clock.move_to(sh(2026, 3, 5, 9))
        assert firing.fire_due(db, rt) == 0
    with db.transaction() as s:
        assert set(s.execute(select(Timer.status).where(Timer.kind == "sla")).scalars()) == {"cancelled"}
    assert _task(db).breached_at is None


@pytest.mark.sqlite
def test_waiting_for_the_client_pauses_the_clock_and_moves_the_due_date(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        instance_id = _start(db, rt, people)
        task = _task(db)
        with db.transaction() as s:
            sla_clock.pause(s, rt, task=s.get(Task, task.id), instance=s.get(ProcessInstance, instance_id),
                      actor=people.clerk, reason="等待客户补充材料")
        clock.move_to(sh(2026, 3, 5, 9))  # a day past the original due time: nothing fires
        assert firing.fire_due(db, rt) == 0
        with db.transaction() as s:
            assert sla_clock.state(s.get(Task, task.id), rt.now())[0] == sla_clock.PAUSED
            sla_clock.resume(s, rt, task=s.get(Task, task.id), instance=s.get(ProcessInstance, instance_id),
                       actor=people.clerk)
    resumed = _task(db)
    # Paused Monday 09:00 → Thursday 09:00: three working days excluded, so the 2 WD count
    # from Thursday 09:00 (not Wednesday 09:00 + 72 h, which is a Saturday).
    assert task.due_at == sh(2026, 3, 4, 9) and resumed.due_at == sh(2026, 3, 9, 9)
    with db.transaction() as s:
        due = sorted(s.execute(select(Timer.due_at).where(Timer.kind == "sla", Timer.status == "waiting")).scalars())
    assert due[-1] == resumed.due_at


@pytest.mark.sqlite
def test_changing_a_policy_recomputes_open_tasks_and_says_how_many(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people, key="R-1")
        _start(db, rt, people, key="R-2")
        changed = _policy(db, rt, people, target_amount=5)
    assert changed == 2
    assert _task(db, "R-1").due_at == sh(2026, 3, 9, 9)  # 5 WD from Monday 09:00
    with db.transaction() as s:
        waiting = s.execute(select(func.count()).select_from(Timer)
                            .where(Timer.kind == "sla", Timer.status == "waiting")).scalar_one()
    assert waiting == 6  # 3 milestones x 2 tasks, the old ones cancelled


@pytest.mark.sqlite
def test_a_policy_matches_on_instance_variables_first_match_wins(db, rt, people, review):
    _policy(db, rt, people)
    _policy(db, rt, people, key="review.register.diamond", position=1, target_amount=1,
            match_data={"vip_tier": "diamond"})
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people, key="R-D", vip_tier="diamond")
        _start(db, rt, people, key="R-S", vip_tier="silver")
    assert _task(db, "R-D").due_at == sh(2026, 3, 3, 9)
    assert _task(db, "R-S").due_at == sh(2026, 3, 4, 9)


@pytest.mark.sqlite
def test_an_administrator_holiday_moves_due_dates_after_recompute(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people)
        with db.transaction() as s:
            sla_admin.set_day(s, day=date(2026, 3, 3), working=False, trading=False, name="临时假日",
                        actor=people.owner, now=rt.now())
            assert sla_admin.recompute(s, rt, now=rt.now()) == 1
    assert _task(db).due_at == sh(2026, 3, 5, 9)


@pytest.mark.sqlite
def test_a_due_date_past_the_known_calendar_is_flagged_not_wrong(db, rt, people, review):
    _policy(db, rt, people)
    with time_machine.travel(datetime(2026, 12, 30, 9, tzinfo=SHANGHAI), tick=False):
        _start(db, rt, people)
    task = _task(db)
    assert task.calendar_incomplete and task.due_at == sh(2027, 1, 1, 9)
    with db.transaction() as s:
        assert sla_admin.coverage(s).incomplete_open_tasks == 1


@pytest.mark.sqlite
def test_a_quarterly_schedule_starts_once_after_downtime(db, rt, people, review):
    with time_machine.travel(sh(2026, 3, 15, 12), tick=False), db.transaction() as s:
        schedule = schedules.create(s, rt, key="CBQ", process_key="review", rule="first_working_day_of_quarter",
                                    at_time="09:00", actor=people.owner, data={"priority": 50, "due_at": None})
        assert schedule.next_run_at == sh(2026, 4, 1, 9)
    with time_machine.travel(sh(2026, 10, 5, 12), tick=False):  # down from March to October
        assert firing.fire_due(db, rt) == 1
        assert firing.fire_due(db, rt) == 0
        with db.transaction() as s:
            keys = list(s.execute(select(ProcessInstance.business_key)).scalars())
            assert keys == ["CBQ-20260401"]
            assert schedules.get_all(s)[0].next_run_at == sh(2026, 10, 8, 9)  # after the Oct 1-7 holiday


@pytest.mark.sqlite
def test_next_years_holidays_entered_by_an_administrator_move_a_schedules_waiting_slot(db, rt, people, review):
    # Created in November 2026, before 2027's holidays are known: "the first working day of
    # the quarter" is computed on weekends only, so it falls on New Year's Day.
    with time_machine.travel(sh(2026, 11, 25, 12), tick=False) as clock:
        with db.transaction() as s:
            schedule = schedules.create(s, rt, key="CBQ", process_key="review", rule="first_working_day_of_quarter",
                                        at_time="09:00", actor=people.owner, data={"priority": 50, "due_at": None})
            assert schedule.next_run_at == sh(2027, 1, 1, 9)
        with db.transaction() as s:
            sla_admin.set_day(s, day=date(2027, 1, 1), working=False, trading=False, name="元旦", actor=people.owner,
                        now=rt.now())
            assert schedules.recompute(s, rt, now=rt.now()) == 1
        with db.transaction() as s:
            assert schedules.get_all(s)[0].next_run_at == sh(2027, 1, 4, 9)  # the Monday after
            assert s.execute(select(Timer.due_at).where(Timer.kind == "schedule")).scalar_one() == sh(2027, 1, 4, 9)
            assert s.execute(select(func.count()).select_from(AuditEvent)
                             .where(AuditEvent.kind == "schedule.moved")).scalar_one() == 1
        clock.move_to(sh(2027, 1, 1, 9, 0, 1))
        assert firing.fire_due(db, rt) == 0  # nothing starts on the holiday
        clock.move_to(sh(2027, 1, 4, 9, 0, 1))
        assert firing.fire_due(db, rt) == 1
        with db.transaction() as s:
            assert list(s.execute(select(ProcessInstance.business_key)).scalars()) == ["CBQ-20270104"]


@pytest.mark.sqlite
def test_a_timer_that_keeps_failing_is_given_up_instead_of_retried_forever(db, rt, people, review):
    with time_machine.travel(sh(2026, 3, 15, 12), tick=False), db.transaction() as s:
        # The business key <key>-<yyyymmdd> is too long for an instance: every start fails.
        schedules.create(s, rt, key="K" * 125, process_key="review", rule="every_working_day",
                         at_time="09:00", actor=people.owner, data={"priority": 50, "due_at": None})
    with time_machine.travel(sh(2026, 3, 16, 10), tick=False):
        for attempt in range(1, firing.MAX_ATTEMPTS + 1):
            assert firing.fire_due(db, rt) == 0
            with db.transaction() as s:
                timer = s.execute(select(Timer).where(Timer.kind == "schedule")).scalar_one()
                assert timer.attempts == attempt and "business_key" in (timer.last_error or "")
        assert timer.status == "failed"
        with db.transaction() as s:
            assert firing.due_ids(s, rt.now()) == []  # no longer swept


@pytest.mark.sqlite
def test_a_schedule_for_a_process_that_is_not_deployed_is_refused(db, rt, people, review):
    from engine.errors import ProcessNotFound

    with pytest.raises(ProcessNotFound), db.transaction() as s:
        schedules.create(s, rt, key="GONE", process_key="not_deployed", rule="every_working_day",
                         at_time="09:00", actor=people.owner)


@pytest.mark.sqlite
def test_milestones_of_a_diagram_due_date_count_working_time_on_the_tasks_calendar(db, rt, people, review):
    """From Wednesday 31 December 2025 13:00 to the diagram's due date, Monday 5 January 2026
    13:00, there are 16 working hours (4 that afternoon, Sunday 4 January's make-up day, 4 on
    Monday): half of them is Sunday 13:00 and 80 % Monday 09:48, never 1 January's holiday or
    the night, as wall-clock shares of the 120-hour window (03:00 on 3 January) would be."""
    _policy(db, rt, people)
    with time_machine.travel(sh(2025, 12, 31, 13), tick=False):
        _start(db, rt, people, due_at=sh(2026, 1, 5, 13).isoformat())
    task = _task(db)
    assert task.due_source == "diagram" and task.at_risk_at == sh(2026, 1, 5, 9, 48)
    with db.transaction() as s:
        due = sorted(s.execute(select(Timer.due_at).where(Timer.kind == "sla")).scalars())
    assert due == [sh(2026, 1, 4, 13), sh(2026, 1, 5, 9, 48), sh(2026, 1, 5, 13)]


@pytest.mark.sqlite
def test_a_cancelled_task_has_its_clock_settled(db, rt, people, review):
    """A task the process cancelled shows no time left to breach and is not on track: closed
    (breached, had it been)."""
    _policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        instance_id = _start(db, rt, people)
        clock.move_to(sh(2026, 3, 2, 10))
        with db.transaction() as s:
            instances.cancel(s, rt, instance_id=instance_id, actor=people.supervisor, reason="客户撤回")
        task = _task(db)
        assert task.status == "cancelled"
        assert sla_clock.state(task, rt.now()) == (sla_clock.CLOSED, None)
        task.breached_at = rt.now()
        assert sla_clock.state(task, rt.now()) == (sla_clock.BREACHED, None)


def _review_naming_a_policy(db, rt, people, key: str):
    """Version 2 of the review fixture: its register step names SLA policy ``key``."""
    from engine.process import deployments
    from tests.support.bpmn import fixture_bundle

    bundle = fixture_bundle("review")
    xml = bundle.bpmn["review.bpmn"].decode()
    step = 'camunda:priority="${priority}" camunda:dueDate="${due_at}"/>'
    assert step in xml
    bundle.bpmn["review.bpmn"] = xml.replace(step, step.removesuffix("/>") + (
        '><bpmn:extensionElements><camunda:properties>'
        f'<camunda:property name="slaPolicy" value="{key}"/>'
        "</camunda:properties></bpmn:extensionElements></bpmn:userTask>")).encode()
    with db.transaction() as s:
        return deployments.deploy(s, rt, bundle, actor=people.owner)


@pytest.mark.sqlite
def test_a_step_that_names_its_policy_is_timed_by_it_before_the_matching_rules(db, rt, people, review):
    _policy(db, rt, people)  # matches register by its step id: 2 working days
    # Written for the big approval: its own rules never match register.
    _policy(db, rt, people, key="review.fast", position=20, element_id="approve_big", target_amount=1,
            milestones=[])
    _review_naming_a_policy(db, rt, people, "review.fast")
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people, key="R-N")
    task = _task(db, "R-N")
    assert (task.sla_policy_key, task.due_at) == ("review.fast", sh(2026, 3, 3, 9))
    with db.transaction() as s:
        assert s.get(type(task), task.id).sla_policy_id == sla_admin.get_policy(s, "review.fast",
                                                                                actor=people.owner).id
    # A change to the named policy recomputes the task by it, as its creation chose.
    with time_machine.travel(MONDAY_9, tick=False):
        _policy(db, rt, people, key="review.fast", position=20, element_id="approve_big", target_amount=3,
                milestones=[])
    assert _task(db, "R-N").due_at == sh(2026, 3, 5, 9)
    # Deactivated, the matching rules time the step again.
    with time_machine.travel(MONDAY_9, tick=False):
        _policy(db, rt, people, key="review.fast", position=20, element_id="approve_big", target_amount=3,
                milestones=[], active=False)
    assert _task(db, "R-N").due_at == sh(2026, 3, 4, 9)


def test_a_deploy_naming_a_policy_that_does_not_exist_or_is_inactive_is_refused(db, rt, people, review):
    from engine.errors import DeploymentRejected

    with pytest.raises(DeploymentRejected) as caught:
        _review_naming_a_policy(db, rt, people, "review.none")
    (problem,) = caught.value.problems
    assert problem.element_id == "register" and "'review.none' does not exist or is not active" in problem.message
    _policy(db, rt, people, key="review.off", active=False)
    with pytest.raises(DeploymentRejected):
        _review_naming_a_policy(db, rt, people, "review.off")
    _policy(db, rt, people, key="review.off", active=True)
    (deployed,) = _review_naming_a_policy(db, rt, people, "review.off")
    assert deployed.version.version == 2


@pytest.mark.sqlite
def test_a_policy_saved_by_another_process_times_the_next_step_taken_here(db, rt, settings, people, review):
    """The statement that locks a case brings the SLA revision along, and a process reloads its
    policies when it moved: a policy saved by another process (the administrator's worker) times
    the next step taken here, though a step taken here before the change had loaded them."""
    elsewhere = build_runtime(settings)
    register = {"amount": 100, "summary": "小额登记"}
    with time_machine.travel(MONDAY_9, tick=False):
        for key in ("R-1", "R-2"):
            _start(db, rt, people, key)
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=_task(db, "R-2").id, actor=people.clerk, data=register)
        assert _task(db, "R-2", "approve_small").due_at is None  # no policy yet
        _policy(db, elsewhere, people, key="review.approve", name="审批 2 个工作日", element_id="approve_small")
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=_task(db, "R-1").id, actor=people.clerk, data=register)
    approve = _task(db, "R-1", "approve_small")
    assert approve.due_at == sh(2026, 3, 4, 9) and approve.due_source == "policy"
