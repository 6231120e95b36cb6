"""What each milestone does when it fires: whom a notice reaches, how far the priority
rises, to whom a step is given back, what an escalation task carries and when it closes.

The review fixture's register step is offered to clerks (li, zhao of branch HZ01); wang
is a manager of HZ01. A policy of 4 working days from Monday 09:00 puts its 25 %, 50 % and
75 % milestones at Tuesday, Wednesday and Thursday 09:00.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import delete, select, update

from engine.access import assignment, identity
from engine.calendars import SHANGHAI
from engine.models import AuditEvent, Group, Notification, Task, TaskCandidate, Timer, User
from engine.process import instances, tasks
from engine.sla import admin as sla_admin
from engine.sla import milestones
from engine.timers import firing

MONDAY_9 = datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)
DAY = timedelta(days=1)


def _policy(db, rt, people, *steps: dict[str, Any]) -> None:
    data = {"key": "review.register", "name": "登记 4 个工作日", "position": 10, "process_key": "review",
            "element_id": "register", "target_amount": 4, "target_unit": "WD", "milestones": list(steps)}
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=data, actor=people.owner)


def _start(db, rt, people, priority: int = 50, key: str = "R-1") -> int:
    with db.transaction() as s:
        instance = instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                                   data={"priority": priority, "due_at": None})
        return s.execute(select(Task.id).where(Task.instance_id == instance.id,
                                               Task.element_id == "register")).scalar_one()


def _fire_days_later(db, rt, days: int) -> None:
    with time_machine.travel(MONDAY_9 + days * DAY + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 1


def _notices(db) -> list[tuple[str, str]]:
    with db.transaction() as s:
        return sorted((n, t) for n, t in s.execute(select(Notification.recipient, Notification.subject)))


def _events(db, kind: str) -> list[tuple[str | None, dict[str, Any]]]:
    with db.transaction() as s:
        return [(actor, data) for actor, data in s.execute(
            select(AuditEvent.actor, AuditEvent.data).where(AuditEvent.kind == kind).order_by(AuditEvent.id))]


@pytest.mark.sqlite
def test_a_priority_milestone_raises_by_its_amount_or_20_and_never_past_100(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.25, "action": "raise_priority", "by": 30},
            {"at": 0.5, "action": "raise_priority", "by": None},
            {"at": 0.75, "action": "raise_priority", "by": 50})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people, priority=10)
    seen = []
    for days in (1, 2, 3):
        _fire_days_later(db, rt, days)
        with db.transaction() as s:
            seen.append(s.get(Task, task_id).priority)
    assert seen == [40, 60, 100]


@pytest.mark.sqlite
def test_a_notice_to_the_assignee_reaches_only_them_once_the_step_is_claimed(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.25, "action": "notify", "to": "assignee"},
            {"at": 0.5, "action": "notify", "to": "candidates"},
            {"at": 0.75, "action": "notify", "to": "managers"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
        with db.transaction() as s:
            tasks.claim(s, rt, task_id=task_id, actor=people.teammate)
    _fire_days_later(db, rt, 1)
    assert _notices(db) == [("zhao", "[R-1] 登记：已用时 25%")]
    _fire_days_later(db, rt, 2)  # the candidates, claimed or not
    assert _notices(db) == [("li", "[R-1] 登记：已用时 50%"), ("zhao", "[R-1] 登记：已用时 25%"),
                            ("zhao", "[R-1] 登记：已用时 50%")]
    _fire_days_later(db, rt, 3)  # a role by name
    assert ("wang", "[R-1] 登记：已用时 75%") in _notices(db) and len(_notices(db)) == 4
    with db.transaction() as s:
        rows = s.execute(select(Notification)).scalars().all()
        assert {(n.task_id, n.created_at.astimezone(SHANGHAI).date()) for n in rows if n.recipient == "wang"} == \
            {(task_id, (MONDAY_9 + 3 * DAY).date())}
        # Each notice names its case, and none has been tried yet (the notifier counts its tries).
        assert {(n.instance_id, n.attempts) for n in rows} == {(s.get(Task, task_id).instance_id, 0)}
    recorded = _events(db, "sla.milestone")
    assert [(actor, data["at"], data["action"], data["policy"]) for actor, data in recorded] == [
        ("sla", 0.25, "notify", "review.register"), ("sla", 0.5, "notify", "review.register"),
        ("sla", 0.75, "notify", "review.register")]
    assert {data["task_id"] for _, data in recorded} == {task_id}


@pytest.mark.sqlite
def test_a_reassign_milestone_gives_the_step_back_to_the_pool_of_the_role(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.5, "action": "reassign", "to": "managers"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
        with db.transaction() as s:
            tasks.claim(s, rt, task_id=task_id, actor=people.clerk)
    _fire_days_later(db, rt, 2)
    with db.transaction() as s:
        task = s.get(Task, task_id)
        assert (task.assignee, task.status, task.candidate_groups) == (None, "open", ["managers"])
        candidates = s.execute(select(TaskCandidate.group_key).where(TaskCandidate.task_id == task_id)).scalars()
        assert list(candidates) == ["managers"]
    assert _events(db, "task.reassigned") == [("sla", {"task_id": task_id, "candidate_groups": ["managers"]})]


@pytest.mark.sqlite
def test_an_escalation_opens_a_task_above_the_step_and_notifies_the_role(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.5, "action": "escalate", "to": "managers"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people, priority=60)
    with db.transaction() as s:  # a client's case at a branch (the review fixture names neither)
        s.execute(update(Task).where(Task.id == task_id).values(client_id="C08", branch_code="HZ01"))
    _fire_days_later(db, rt, 2)
    with db.transaction() as s:
        step = s.get(Task, task_id)
        escalation = s.execute(select(Task).where(Task.kind == "escalation")).scalar_one()
        assert milestones.open_escalation_of(s, step).id == escalation.id
        assert (escalation.name, escalation.element_id, escalation.process_key) == (
            "升级 Escalation: 登记", "register.escalation", "review")
        assert (escalation.priority, escalation.status, escalation.candidate_groups) == (90, "open", ["managers"])
        assert (escalation.business_key, escalation.client_id, escalation.instance_id) == (
            "R-1", "C08", step.instance_id)
        assert escalation.branch_code == step.branch_code == "HZ01"
        assert (escalation.lane, escalation.form_key) == (None, None)
        assert (escalation.escalated_task_id, escalation.due_at, escalation.assignee) == (task_id, None, None)
        assert escalation.created_at == MONDAY_9 + 2 * DAY + timedelta(seconds=1)
        assert list(s.execute(select(TaskCandidate.group_key).where(TaskCandidate.task_id == escalation.id)
                              ).scalars()) == ["managers"]
        escalation_id = escalation.id
    assert step.status == "open" and step.breached_at is None  # half way: the step stays, not breached
    assert _notices(db) == [("wang", "[R-1] 登记：已升级")]
    assert _events(db, "sla.escalated") == [
        ("sla", {"task_id": task_id, "escalation_task_id": escalation_id, "to": ["managers"]})]
    with db.transaction() as s:  # filed under the step that was escalated
        assert s.execute(select(AuditEvent.task_uuid).where(AuditEvent.kind == "sla.escalated")).scalar_one() == \
            s.get(Task, task_id).task_uuid


@pytest.mark.sqlite
def test_an_escalation_closes_when_its_step_is_completed(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.5, "action": "escalate", "to": "managers"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people, priority=90)
        other_id = _start(db, rt, people, key="R-2")
    with time_machine.travel(MONDAY_9 + 2 * DAY + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 2  # both steps escalated
    done = MONDAY_9 + 2 * DAY + timedelta(hours=1)
    with time_machine.travel(done, tick=False), db.transaction() as s:
        tasks.claim(s, rt, task_id=task_id, actor=people.clerk)
        tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data={"amount": 1, "summary": "办结"})
    with db.transaction() as s:
        escalation = s.execute(select(Task).where(Task.escalated_task_id == task_id)).scalar_one()
        assert escalation.priority == 100  # 90 + 30, at most 100
        assert milestones.open_escalation_of(s, s.get(Task, other_id)).status == "open"  # the other step's stays
        assert (escalation.status, escalation.completed_at) == ("cancelled", done)
        assert milestones.open_escalation_of(s, s.get(Task, task_id)) is None
    assert _events(db, "task.escalation_closed") == [
        ("system", {"task_id": escalation.id, "escalated_task_id": task_id, "element_id": "register.escalation",
                    "because": "completed"})]
    with db.transaction() as s:  # the closing is filed under the escalation task, not the step
        assert s.execute(select(AuditEvent.task_uuid).where(AuditEvent.kind == "task.escalation_closed")
                         ).scalar_one() == s.get(Task, escalation.id).task_uuid


@pytest.mark.sqlite
def test_completing_a_step_cancels_its_own_waiting_milestones_only(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.25, "action": "notify", "to": "assignee"},
            {"at": 0.75, "action": "notify", "to": "assignee"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
        other_id = _start(db, rt, people, key="R-2")
        with db.transaction() as s:
            other_uuid = s.get(Task, other_id).task_uuid
    with time_machine.travel(MONDAY_9 + DAY + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 2  # both cases' 25 %
    with time_machine.travel(MONDAY_9 + 2 * DAY, tick=False), db.transaction() as s:
        tasks.claim(s, rt, task_id=task_id, actor=people.clerk)
        tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data={"amount": 1, "summary": "办结"})
    with db.transaction() as s:
        task_uuid = s.get(Task, task_id).task_uuid
        rows = s.execute(select(Timer.task_uuid, Timer.payload, Timer.status)).all()
    states = sorted((uuid == task_uuid, payload["at"], status) for uuid, payload, status in rows)
    assert states == [(False, 0.25, "fired"), (False, 0.75, "waiting"),
                      (True, 0.25, "fired"), (True, 0.75, "cancelled")]
    assert {uuid for uuid, _, _ in rows} == {task_uuid, other_uuid}


@pytest.mark.sqlite
def test_an_escalation_handled_before_its_step_is_done_stays_handled(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.5, "action": "escalate", "to": "managers"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
    _fire_days_later(db, rt, 2)
    handled = MONDAY_9 + 2 * DAY + timedelta(hours=1)
    with time_machine.travel(handled, tick=False):
        with db.transaction() as s:
            escalation_id = milestones.open_escalation_of(s, s.get(Task, task_id)).id
            tasks.complete(s, rt, task_id=escalation_id, actor=people.manager, data={})
        with db.transaction() as s:
            tasks.claim(s, rt, task_id=task_id, actor=people.clerk)
            tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data={"amount": 1, "summary": "办结"})
    with db.transaction() as s:
        escalation = s.get(Task, escalation_id)
        assert (escalation.status, escalation.completed_by, escalation.completed_at) == ("completed", "wang", handled)
    assert _events(db, "task.escalation_closed") == []


@pytest.mark.sqlite
def test_a_step_escalated_twice_has_two_open_escalations_and_either_is_found(db, rt, people, review):
    # As workflows/sla/complaint.json does at 100 % and 150 %: the first is not closed by the second.
    _policy(db, rt, people, {"at": 0.25, "action": "escalate", "to": "managers"},
            {"at": 0.5, "action": "escalate", "to": "supervisor"})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
    _fire_days_later(db, rt, 1)
    _fire_days_later(db, rt, 2)
    with db.transaction() as s:
        opened = set(s.execute(select(Task.id).where(Task.escalated_task_id == task_id,
                                                     Task.status == "open")).scalars())
        assert len(opened) == 2
        assert milestones.open_escalation_of(s, s.get(Task, task_id)).id in opened


@pytest.mark.sqlite
def test_a_notice_to_the_assignee_of_a_step_nobody_has_claimed_reaches_its_candidates(db, rt, people, review):
    # A notice whose "to" was left out (stored as null) is for the assignee too.
    _policy(db, rt, people, {"at": 0.25, "action": "notify", "to": "assignee"},
            {"at": 0.5, "action": "notify", "to": None})
    with time_machine.travel(MONDAY_9, tick=False):
        _start(db, rt, people)
    _fire_days_later(db, rt, 1)
    assert _notices(db) == [("li", "[R-1] 登记：已用时 25%"), ("zhao", "[R-1] 登记：已用时 25%")]
    _fire_days_later(db, rt, 2)
    assert _notices(db) == [("li", "[R-1] 登记：已用时 25%"), ("li", "[R-1] 登记：已用时 50%"),
                            ("zhao", "[R-1] 登记：已用时 25%"), ("zhao", "[R-1] 登记：已用时 50%")]


def _compliance_officers(db, rt) -> None:
    """sun at headquarters, zhou (who reads English) and qian (departed) at HZ01, wu at NB02."""
    with db.transaction() as s:
        identity.ensure_group(s, key="compliance")
        for username, branch in (("sun", None), ("zhou", "HZ01"), ("qian", "HZ01"), ("wu", "NB02")):
            identity.create_user(s, username=username, display_name=username, now=rt.now(), branch_code=branch,
                                 groups=["compliance"])
        s.execute(update(User).where(User.username == "zhou").values(locale="en-GB"))
        s.execute(update(User).where(User.username == "qian").values(active=False))


@pytest.mark.sqlite
def test_a_notice_to_compliance_reaches_the_steps_branch_and_headquarters_or_every_branch_for_a_step_of_none(
        db, rt, people, review):
    _compliance_officers(db, rt)
    _policy(db, rt, people, {"at": 0.25, "action": "notify", "to": "compliance"})
    with time_machine.travel(MONDAY_9, tick=False):
        branch_step = _start(db, rt, people)
        _start(db, rt, people, key="R-2")  # its step names no branch
    with db.transaction() as s:
        s.execute(update(Task).where(Task.id == branch_step).values(branch_code="HZ01"))
    with time_machine.travel(MONDAY_9 + DAY + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 2
    assert _notices(db) == [("sun", "[R-1] 登记：已用时 25%"), ("sun", "[R-2] 登记：已用时 25%"),
                            ("wu", "[R-2] 登记：已用时 25%"),
                            ("zhou", "[R-1] 登记: 25% of the time allowed used"),
                            ("zhou", "[R-2] 登记: 25% of the time allowed used")]


@pytest.mark.sqlite
def test_a_notice_names_its_role_by_expression_by_display_name_or_by_the_cases_branch(
        db, rt, people, review, monkeypatch):
    with db.transaction() as s:
        s.execute(update(Group).where(Group.key == "managers").values(name="营业部经理"))
        for branch, username in (("HZ01", "boss"), ("NB02", "chen")):
            identity.ensure_group(s, key=f"{branch}:branch_head")
            identity.add_member(s, group_key=f"{branch}:branch_head", username=username)
    monkeypatch.setattr(assignment, "_KEYS", {})  # the display name is looked up, not remembered from before
    _policy(db, rt, people, {"at": 0.25, "action": "notify", "to": "${'clerks'}"},
            {"at": 0.5, "action": "notify", "to": "营业部经理"},
            {"at": 0.75, "action": "notify", "to": "branch:branch_head"})
    with time_machine.travel(MONDAY_9, tick=False), db.transaction() as s:
        instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk, branch_code="HZ01",
                        data={"priority": 50, "due_at": None})
    for days in (1, 2, 3):
        _fire_days_later(db, rt, days)
    assert _notices(db) == [("boss", "[R-1] 登记：已用时 75%"), ("li", "[R-1] 登记：已用时 25%"),
                            ("wang", "[R-1] 登记：已用时 50%"), ("zhao", "[R-1] 登记：已用时 25%")]


def _armed(db, task_id: int) -> list[tuple[float, str, datetime]]:
    """The step's milestone rows: (share, status, due time), by share."""
    with db.transaction() as s:
        task_uuid = s.get(Task, task_id).task_uuid
        rows = s.execute(select(Timer).where(Timer.task_uuid == task_uuid)).scalars()
        return sorted((row.payload["at"], row.status, row.due_at) for row in rows)


@pytest.mark.sqlite
def test_a_recompute_after_the_target_does_not_fire_its_milestone_again(db, rt, people, review):
    step = {"at": 1.0, "action": "raise_priority", "by": 10}
    _policy(db, rt, people, step)
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
    _fire_days_later(db, rt, 4)  # the target, Friday 09:00: breached
    with time_machine.travel(MONDAY_9 + 4 * DAY + timedelta(hours=1), tick=False) as clock:
        _policy(db, rt, people, step)  # saving the policy recomputes the open step
        clock.shift(timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 0
    assert [status for _, status, _ in _armed(db, task_id)] == ["fired"]
    with db.transaction() as s:
        assert s.get(Task, task_id).priority == 60


@pytest.mark.sqlite
def test_a_diagram_due_date_puts_the_milestones_at_shares_of_the_working_time_up_to_it(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.25, "action": "notify", "to": "candidates"},
            {"at": 0.75, "action": "notify", "to": "candidates"})
    with time_machine.travel(MONDAY_9, tick=False), db.transaction() as s:
        instance = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                                   data={"priority": 50, "due_at": (MONDAY_9 + DAY + timedelta(hours=8)).isoformat()})
        task_id = s.execute(select(Task.id).where(Task.instance_id == instance.id)).scalar_one()
    # Monday 09:00 to Tuesday 17:00 is 16 working hours, not the policy's 4 working days.
    assert _armed(db, task_id) == [(0.25, "waiting", MONDAY_9 + timedelta(hours=4)),
                                   (0.75, "waiting", MONDAY_9 + DAY + timedelta(hours=4))]
    with db.transaction() as s:  # at risk from 80 % of them: 12 h 48 min
        assert s.get(Task, task_id).at_risk_at == MONDAY_9 + DAY + timedelta(hours=4, minutes=48)


@pytest.mark.sqlite
def test_a_step_whose_clock_started_before_it_arrived_skips_the_milestones_past_and_is_breached_if_late(
        db, rt, people, review):
    data = {"key": "review.register", "name": "登记 4 个工作日", "position": 10, "process_key": "review",
            "element_id": "register", "target_amount": 4, "target_unit": "WD", "anchor_variable": "received_at",
            "milestones": [{"at": 0.5, "action": "notify", "to": "candidates"},
                           {"at": 1.0, "action": "raise_priority", "by": 10}]}
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=data, actor=people.owner)

    def arrives(key: str, at: datetime) -> int:
        with time_machine.travel(at, tick=False), db.transaction() as s:
            instance = instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                                       data={"priority": 50, "due_at": None, "received_at": MONDAY_9.isoformat()})
            return s.execute(select(Task.id).where(Task.instance_id == instance.id)).scalar_one()

    in_time = arrives("R-1", MONDAY_9 + 2 * DAY + timedelta(hours=1))  # Wednesday 10:00, past the half-way point
    assert _armed(db, in_time) == [(1.0, "waiting", MONDAY_9 + 4 * DAY)]
    late_at = MONDAY_9 + 7 * DAY + timedelta(hours=1)  # the next Monday, past the target
    late = arrives("R-2", late_at)
    assert _armed(db, late) == [(1.0, "waiting", late_at)]
    with time_machine.travel(late_at + timedelta(seconds=1), tick=False), db.transaction() as s:
        assert firing.fire(s, rt, s.execute(select(Timer.id).where(Timer.due_at == late_at)).scalar_one())
    with db.transaction() as s:
        assert (s.get(Task, late).breached_at, s.get(Task, late).priority) == (late_at + timedelta(seconds=1), 60)
    assert _notices(db) == []


@pytest.mark.sqlite
def test_a_recompute_at_the_very_moment_a_milestone_is_due_keeps_it_to_fire(db, rt, people, review):
    # A row fires only once its due time has passed: at that instant it has not yet.
    step = {"at": 0.5, "action": "raise_priority", "by": 10}
    _policy(db, rt, people, step)
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
    with time_machine.travel(MONDAY_9 + 2 * DAY, tick=False) as clock:
        _policy(db, rt, people, step)  # saving the policy recomputes the open step
        clock.shift(timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
    with db.transaction() as s:
        assert s.get(Task, task_id).priority == 60


@pytest.mark.sqlite
def test_the_members_of_several_groups_are_listed_once_each_by_username(db, rt, people):
    # The order a supervisor's reminder reports whom it reached in (engine.process.supervision.remind).
    with db.transaction() as s:
        for username in ("zz", "aa"):
            identity.create_user(s, username=username, display_name=username, now=rt.now(),
                                 groups=["managers", "clerks"])
        assert milestones.members(s, ["managers", "clerks"], Task(branch_code=None)) == [
            "aa", "li", "wang", "zhao", "zz"]


@pytest.mark.sqlite
def test_the_target_milestone_records_the_breach_once_and_audits_it_on_the_step(db, rt, people, review):
    _policy(db, rt, people, {"at": 1.0, "action": "raise_priority", "by": 10},
            {"at": 1.25, "action": "raise_priority", "by": 10})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
    _fire_days_later(db, rt, 4)  # the target, Friday 09:00
    _fire_days_later(db, rt, 7)  # 125 %, the next Monday 09:00: breached already
    with db.transaction() as s:
        step = s.get(Task, task_id)
        assert step.breached_at == MONDAY_9 + 4 * DAY + timedelta(seconds=1)
        events = s.execute(select(AuditEvent.kind, AuditEvent.actor, AuditEvent.task_uuid, AuditEvent.data)
                           .where(AuditEvent.kind.in_(("sla.milestone", "sla.breached"))).order_by(AuditEvent.id)).all()
    assert [(kind, actor, task_uuid) for kind, actor, task_uuid, _ in events] == [
        ("sla.milestone", "sla", step.task_uuid), ("sla.breached", "sla", step.task_uuid),
        ("sla.milestone", "sla", step.task_uuid)]
    breached = events[1].data
    assert (breached["task_id"], datetime.fromisoformat(breached["due_at"])) == (task_id, MONDAY_9 + 4 * DAY)


@pytest.mark.sqlite
def test_a_milestone_whose_step_is_gone_fails_saying_which_step_and_timer(db, rt, people, review):
    _policy(db, rt, people, {"at": 0.25, "action": "raise_priority", "by": 10})
    with time_machine.travel(MONDAY_9, tick=False):
        task_id = _start(db, rt, people)
    with db.transaction() as s:  # removed by hand: the engine never deletes a step
        timer_id = s.execute(select(Timer.id).where(Timer.kind == "sla")).scalar_one()
        s.execute(delete(TaskCandidate).where(TaskCandidate.task_id == task_id))
        s.execute(delete(Task).where(Task.id == task_id))
    with time_machine.travel(MONDAY_9 + DAY + timedelta(seconds=1), tick=False):
        assert firing.fire_once(db, rt, timer_id) is False
    with db.transaction() as s:
        assert s.get(Timer, timer_id).last_error == f"NotFound: task {task_id} of SLA timer {timer_id} is gone"


@pytest.mark.sqlite
def test_a_reassignment_and_an_escalation_name_their_role_by_display_name_expression_or_the_cases_branch(
        db, rt, people, review, monkeypatch):
    with db.transaction() as s:
        s.execute(update(Group).where(Group.key == "managers").values(name="营业部经理"))
        identity.ensure_group(s, key="HZ01:branch_head")
        identity.add_member(s, group_key="HZ01:branch_head", username="boss")
    monkeypatch.setattr(assignment, "_KEYS", {})  # the display name is looked up, not remembered from before
    _policy(db, rt, people, {"at": 0.25, "action": "reassign", "to": "营业部经理"},
            {"at": 0.5, "action": "reassign", "to": "branch:branch_head"},
            {"at": 0.75, "action": "escalate", "to": "${'managers'}"},
            {"at": 1.0, "action": "escalate", "to": "branch:branch_head"})
    with time_machine.travel(MONDAY_9, tick=False), db.transaction() as s:
        instance = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                                   branch_code="HZ01", data={"priority": 50, "due_at": None})
        task_id = s.execute(select(Task.id).where(Task.instance_id == instance.id)).scalar_one()
    given = []
    for days in (1, 2, 3, 4):
        _fire_days_later(db, rt, days)
        with db.transaction() as s:
            given.append(s.get(Task, task_id).candidate_groups)
    assert given[:2] == [["managers"], ["HZ01:branch_head"]]
    with db.transaction() as s:
        step_uuid = s.get(Task, task_id).task_uuid
        assert s.execute(select(Task.candidate_groups).where(Task.kind == "escalation").order_by(Task.id)
                         ).scalars().all() == [["managers"], ["HZ01:branch_head"]]
        assert s.execute(select(AuditEvent.task_uuid).where(AuditEvent.kind == "task.reassigned")
                         ).scalars().all() == [step_uuid, step_uuid]
