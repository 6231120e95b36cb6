"""The callback process (回访, brief §2.3) driven through the engine on the demo data:
happy path with QA review, retries spaced by timers, retry exhaustion, exception routes
(a wish to complain starts a complaint case by message), separation of duties (the client's
service group never works the call; the caller never reviews it), and due dates on the
right calendar per callback type. Time moves with time-machine."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import pytest
import time_machine
from lxml import etree
from SpiffWorkflow.bpmn.specs.mixins.events.end_event import EndEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.bpmn import bundle
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import NotAssignee, Recused, TaskNotFound
from engine.models import AuditEvent, ProcessInstance, Task, Timer
from engine.process import deployments, instances, tasks
from engine.timers import firing

AGENT, OTHER_AGENT, SUPERVISOR, COMPLIANCE = "s003", "s004", "s002", "s006"
# 龚丽: counter staff in NB01-G2 (C08's service group); some tests also give her call-centre shifts.
GROUP_MEMBER = "s208"
COUNTER_NB01 = "s204"  # 任静, NB01 counter
# Demo clients (brief §4.4): branch and service group travel in the start data until the
# client registry provides them.
CLIENTS = {
    "C03": {"client_id": "C03", "branch_code": "NB01", "service_group": "NB01-G1"},
    "C06": {"client_id": "C06", "branch_code": "HZ01", "service_group": "HZ01-G2"},
    "C08": {"client_id": "C08", "branch_code": "NB01", "service_group": "NB01-G2"},
}
REACHED = {"attempt_at": "2025-06-16T10:05:00+08:00", "dialled_number_masked": "177****5089",
           "result": "reached", "recording_id": "REC-0001"}
NO_ANSWER = {"attempt_at": "2025-06-16T10:05:00+08:00", "dialled_number_masked": "177****5089",
             "result": "no_answer"}
IDENTITY_OK = {"identity_confirmed": True, "method": "name_id_last4"}
ANSWERS_OK = {"opened_by_self": "是", "account_changes_confirmed": "是", "staff_operated_account": "否",
              "discretionary_mandate": "否", "risk_disclosed": "是", "suitability_result_known": "知晓",
              "service_satisfaction": 5, "wants_to_complain": False, "recording_id": "REC-0001",
              "investor_education_delivered": ["风险提示", "防诈骗提示"]}
QA_OK = {"script_followed": True, "data_accurate": True, "qa_score": 92}


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI)


@pytest.fixture
def callback(demo_loaded) -> None:
    """Demo people and groups, workflows/ deployed and its SLA policies saved."""


def _actor(db, username: str) -> Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


def _start(db, rt, key: str, callback_type: str, client: str, **data: Any) -> int:
    with db.transaction() as s:
        return instances.start(s, rt, process_key="callback", business_key=key, actor=Actor.system("crm"),
                               data={"callback_type": callback_type, **CLIENTS[client], **data}).id


def _open_task(db, key: str, element: str) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                            Task.status.in_(("open", "claimed")))).scalar_one()


def _offered(db, rt, username: str, key: str) -> set[int]:
    """The person's work on the case: unclaimed tasks of their groups and tasks given to them."""
    actor = _actor(db, username)
    with db.transaction() as s:
        found = set()
        for query in (tasks.InboxQuery(candidate_me=True, business_key=key),
                      tasks.InboxQuery(assignee_me=True, business_key=key)):
            found |= {t.id for t in tasks.inbox(s, actor=actor, query=query, now=rt.now())[0]}
        return found


def _complete(db, rt, key: str, element: str, username: str, data: dict[str, Any]) -> Task:
    task = _open_task(db, key, element)
    actor = _actor(db, username)
    assert task.id in _offered(db, rt, username, key), f"{element} is not offered to {username}"
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=task.id, actor=actor, data=data)
    return task


def _grant(db, username: str, group: str) -> None:
    """A second hat (brief §1: group membership comes on top of the job role)."""
    with db.transaction() as s:
        identity.add_member(s, group_key=group, username=username)


def _refused(db, rt, task: Task, username: str) -> None:
    """``username`` is recused from ``task``: it is in none of their views, claiming or
    completing it finds no such task (no existence leak), and no supervisor can give it to them."""
    actor = _actor(db, username)
    with db.transaction() as s:
        for query in (tasks.InboxQuery(), tasks.InboxQuery(candidate_me=True)):
            assert task.id not in {t.id for t in tasks.inbox(s, actor=actor, query=query, now=rt.now())[0]}
    for operation in (tasks.claim, tasks.complete):
        with pytest.raises(TaskNotFound), db.transaction() as s:
            operation(s, rt, task_id=task.id, actor=actor)
    with pytest.raises(Recused), db.transaction() as s:
        tasks.assign(s, rt, task_id=task.id, username=username, actor=_actor(db, "s007"))  # an HQ supervisor


def _status(db, instance_id: int) -> str:
    with db.transaction() as s:
        return s.get(ProcessInstance, instance_id).status


def _end_events(db, rt, instance_id: int) -> list[str]:
    with db.transaction() as s:
        workflow = rt.load(s, s.get(ProcessInstance, instance_id))
    return [t.task_spec.bpmn_id for t in workflow.get_tasks(state=TaskState.COMPLETED)
            if isinstance(t.task_spec, EndEvent) and t.task_spec.bpmn_id]


def _data(db, rt, instance_id: int) -> dict[str, Any]:
    with db.transaction() as s:
        return instances.data_of(s, rt, s.get(ProcessInstance, instance_id))


def _trail(db, instance_id: int) -> list[tuple[str, str, str | None]]:
    with db.transaction() as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{instance_id}")
                           .order_by(AuditEvent.seq)).scalars()
        return [(e.kind, e.actor, (e.data or {}).get("element_id")) for e in events]


def _retry_timers(db, instance_id: int) -> list[Timer]:
    with db.transaction() as s:
        return list(s.execute(select(Timer).where(Timer.instance_id == instance_id,
                                                  Timer.element_id == "retry_wait").order_by(Timer.id)).scalars())


@pytest.mark.sqlite
def test_reached_and_satisfied_ends_completed_after_qa_review(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        instance_id = _start(db, rt, "CB-20250603-0031", "new_account", "C08", qa_sample_rate=1.0)
        attempt = _open_task(db, "CB-20250603-0031", "call_attempt")
        assert attempt.candidate_groups == ["call_center_agent"] and attempt.lane == "客服中心坐席"
        assert attempt.form_key == "callback_call_attempt"
        manager = _actor(db, "s206")  # the client's own account manager never sees the call
        with db.transaction() as s, pytest.raises(TaskNotFound):
            tasks.complete(s, rt, task_id=attempt.id, actor=manager, data=REACHED)
        _complete(db, rt, "CB-20250603-0031", "call_attempt", AGENT, REACHED)
        _complete(db, rt, "CB-20250603-0031", "verify_identity", AGENT, IDENTITY_OK)
        _complete(db, rt, "CB-20250603-0031", "questionnaire", AGENT, ANSWERS_OK)
        qa = _open_task(db, "CB-20250603-0031", "qa_review")
        assert qa.candidate_groups == ["call_center_supervisor"] and qa.due_at == sh(2025, 6, 10, 10)  # 5 WD
        _complete(db, rt, "CB-20250603-0031", "qa_review", SUPERVISOR, QA_OK)
    assert _status(db, instance_id) == "completed"
    assert _end_events(db, rt, instance_id) == ["end_completed"]
    data = _data(db, rt, instance_id)
    assert data["attempt_no"] == 1 and data["max_attempts"] == 3 and data["exception_route"] == "none"
    trail = _trail(db, instance_id)
    assert trail[0][0] == "instance.started" and trail[-1][0] == "instance.completed"
    assert [(a, e) for k, a, e in trail if k == "task.completed"] == [
        (AGENT, "call_attempt"), (AGENT, "verify_identity"), (AGENT, "questionnaire"), (SUPERVISOR, "qa_review")]


def _offer(task: Task) -> tuple[list[str], str | None, datetime | None]:
    """Who a task is offered to (candidate groups, assignee) and when it is due."""
    return list(task.candidate_groups or []), task.assignee, task.due_at


@pytest.mark.sqlite
def test_unreachable_twice_then_reached_on_the_third_attempt(db, rt, callback):
    key, start = "CB-20250616-0107", sh(2025, 6, 16, 10)
    due = sh(2025, 7, 14, 10)  # 20 WD from the case's start
    with time_machine.travel(start, tick=False) as clock:
        instance_id = _start(db, rt, key, "periodic", "C03", qa_sample_rate=0)
        assert _offer(_open_task(db, key, "call_attempt")) == (["call_center_agent"], None, due)
        first = _complete(db, rt, key, "call_attempt", AGENT, NO_ANSWER)
        [timer] = _retry_timers(db, instance_id)
        # A morning attempt is retried in the afternoon, at least 4 hours on (retry_after PT4H).
        assert timer.status == "waiting" and timer.due_at == sh(2025, 6, 16, 14)
        clock.move_to(sh(2025, 6, 16, 14))
        assert firing.fire_due(db, rt) == 0  # not before the spacing has passed
        clock.shift(timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
        assert _offer(_open_task(db, key, "call_attempt")) == (["call_center_agent"], None, sh(2025, 7, 14, 14, 0, 1))
        second = _complete(db, rt, key, "call_attempt", OTHER_AGENT, NO_ANSWER)
        assert second.id != first.id
        # An afternoon attempt is retried the next working morning, never at night.
        assert _retry_timers(db, instance_id)[1].due_at == sh(2025, 6, 17, 9)
        clock.move_to(sh(2025, 6, 17, 9, 0, 1))
        assert firing.fire_due(db, rt) == 1
        assert [t.status for t in _retry_timers(db, instance_id)] == ["fired", "fired"]
        assert _offer(_open_task(db, key, "call_attempt")) == (["call_center_agent"], None, sh(2025, 7, 15, 9, 0, 1))
        _complete(db, rt, key, "call_attempt", AGENT, REACHED)
        assert _offer(_open_task(db, key, "verify_identity")) == (["call_center_agent"], AGENT, None)
        _complete(db, rt, key, "verify_identity", AGENT, IDENTITY_OK)
        assert _offer(_open_task(db, key, "questionnaire")) == (["call_center_agent"], AGENT, None)
        _complete(db, rt, key, "questionnaire", AGENT, ANSWERS_OK)
    assert _status(db, instance_id) == "completed"
    assert _end_events(db, rt, instance_id) == ["end_completed"]  # not sampled for QA
    assert _data(db, rt, instance_id)["attempt_no"] == 3
    kinds = [k for k, _, _ in _trail(db, instance_id)]
    assert kinds.count("timer.fired") == 2 and kinds.count("task.completed") == 5


@pytest.mark.sqlite
@pytest.mark.parametrize(("attempt_at", "calling_hours", "first_due", "retry_at"), [
    # Four wall-clock hours after an evening attempt would be 22:28: the next opening instead.
    (sh(2025, 6, 16, 18, 28), None, sh(2025, 6, 18, 9), sh(2025, 6, 17, 9)),
    # Friday afternoon: Monday morning. The eve of National Day 2025: after the holiday.
    (sh(2025, 6, 13, 15), None, sh(2025, 6, 16, 15), sh(2025, 6, 16, 9)),
    (sh(2025, 9, 30, 16), None, sh(2025, 10, 9, 16), sh(2025, 10, 9, 9)),
    # Calling hours from the settings registry (callback.calling_hours) instead of the calendar's.
    (sh(2025, 6, 16, 8), "09:00-12:00,13:00-20:00", sh(2025, 6, 17, 9), sh(2025, 6, 16, 13)),
    (sh(2025, 6, 16, 8), None, sh(2025, 6, 17, 9), sh(2025, 6, 16, 12)),
], ids=["evening", "friday", "holiday-eve", "calling-hours", "calendar-hours"])
def test_a_retry_is_offered_within_calling_hours_on_another_half_day(db, rt, callback, attempt_at, calling_hours,
                                                                     first_due, retry_at):
    key = "CB-20250616-0108"
    with time_machine.travel(attempt_at, tick=False) as clock:
        instance_id = _start(db, rt, key, "anomaly", "C06", qa_sample_rate=0,
                             **({"calling_hours": calling_hours} if calling_hours else {}))
        # Anomaly callbacks are due 1 WD after the attempt is offered.
        assert _offer(_open_task(db, key, "call_attempt")) == (["call_center_agent"], None, first_due)
        _complete(db, rt, key, "call_attempt", AGENT, NO_ANSWER)
        [timer] = _retry_timers(db, instance_id)
        assert timer.due_at == retry_at
        clock.move_to(retry_at)
        assert firing.fire_due(db, rt) == 0
        clock.shift(timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
        retry = _open_task(db, key, "call_attempt")
        offered_at = retry_at + timedelta(seconds=1)
        assert _offer(retry) == (["call_center_agent"], None, offered_at + timedelta(days=1))
        assert retry.created_at == offered_at


def test_calling_hours_that_are_not_periods_fail_the_case_with_the_reason(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance_id = _start(db, rt, "CB-20250616-0109", "anomaly", "C06", calling_hours="9-17")
        with db.transaction() as s:
            instance = s.get(ProcessInstance, instance_id)
            assert instance.status == "failed" and "calling_hours" in (instance.error or "")


@pytest.mark.sqlite
def test_retry_exhaustion_ends_unreachable(db, rt, callback):
    key, start = "CB-20250616-0200", sh(2025, 6, 16, 10)
    with time_machine.travel(start, tick=False) as clock:
        instance_id = _start(db, rt, key, "anomaly", "C06")
        # Each attempt is due 1 WD after it is offered: 10:00, 14:00 and 09:00 the next morning.
        dues = [sh(2025, 6, 17, 10), sh(2025, 6, 17, 14, 0, 1), sh(2025, 6, 18, 9, 0, 1)]
        for attempt in range(1, 4):
            assert _offer(_open_task(db, key, "call_attempt")) == (["call_center_agent"], None, dues[attempt - 1])
            _complete(db, rt, key, "call_attempt", AGENT, NO_ANSWER)
            if attempt < 3:
                clock.move_to(_retry_timers(db, instance_id)[-1].due_at + timedelta(seconds=1))
                assert firing.fire_due(db, rt) == 1
    assert _status(db, instance_id) == "completed"
    assert _end_events(db, rt, instance_id) == ["end_unreachable"]
    # 10:00 -> 14:00 the same afternoon -> 09:00 the next morning; no wait after the last attempt.
    assert [t.due_at for t in _retry_timers(db, instance_id)] == [sh(2025, 6, 16, 14), sh(2025, 6, 17, 9)]
    data = _data(db, rt, instance_id)
    assert data["attempt_no"] == data["max_attempts"] == 3


@pytest.mark.sqlite
def test_a_staff_conduct_answer_goes_to_compliance_then_to_qa_review(db, rt, callback):
    key = "CB-20250612-0044"
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False):
        instance_id = _start(db, rt, key, "risk_disclosure", "C06", qa_sample_rate=0)
        _complete(db, rt, key, "call_attempt", AGENT, REACHED)
        _complete(db, rt, key, "verify_identity", AGENT, IDENTITY_OK)
        _complete(db, rt, key, "questionnaire", AGENT, {**ANSWERS_OK, "staff_operated_account": "是"})
        review = _open_task(db, key, "handle_compliance")
        assert review.candidate_groups == ["compliance"] and review.lane == "合规"
        assert review.due_at == sh(2025, 6, 19, 10)  # 5 WD
        _complete(db, rt, key, "handle_compliance", COMPLIANCE,
                  {"finding": "客户经理代客下单，已核实", "action": "interview_staff",
                   "closed_at": "2025-06-13T15:00:00+08:00"})
        # Exceptions are always reviewed, whatever the sample rate.
        _complete(db, rt, key, "qa_review", SUPERVISOR, QA_OK)
    assert _end_events(db, rt, instance_id) == ["end_exception"]
    data = _data(db, rt, instance_id)
    assert data["exception_route"] == "compliance" and data["exception_items"] == ["staff_operated_account"]


@pytest.mark.sqlite
def test_service_items_go_to_the_branch_head_then_to_qa_review(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance_id = _start(db, rt, "CB-B", "periodic", "C06", qa_sample_rate=0)
        _complete(db, rt, "CB-B", "call_attempt", AGENT, REACHED)
        _complete(db, rt, "CB-B", "verify_identity", AGENT, IDENTITY_OK)
        _complete(db, rt, "CB-B", "questionnaire", AGENT, {**ANSWERS_OK, "account_changes_confirmed": "否"})
        assert _open_task(db, "CB-B", "branch_follow_up").candidate_groups == ["HZ01:branch_head"]
        _complete(db, rt, "CB-B", "branch_follow_up", "s101",
                  {"finding": "客户不认可一笔转账", "action": "correct", "closed_at": "2025-06-17T10:00:00+08:00"})
        _complete(db, rt, "CB-B", "qa_review", SUPERVISOR, QA_OK)
    assert _end_events(db, rt, instance_id) == ["end_exception"]
    assert _data(db, rt, instance_id)["exception_items"] == ["account_changes_confirmed"]


HANDOVER = {"complaint_summary": "客户称客户经理全权代理操作其账户并造成亏损", "business_line": "brokerage",
            "client_request": "staff_sanction", "amount_claimed": 0,
            "alleged_violations": ["discretionary_trading"], "subject_staff_ids": ["s206"]}


def _complaints(db) -> list[ProcessInstance]:
    with db.transaction() as s:
        return list(s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "complaint")).scalars())


@pytest.mark.sqlite
def test_a_wish_to_complain_starts_a_complaint_case_by_message_and_the_callback_ends_with_an_exception(
        db, rt, callback):
    key = "CB-20250616-0301"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        callback_id = _start(db, rt, key, "new_account", "C08", qa_sample_rate=0)
        _complete(db, rt, key, "call_attempt", AGENT, REACHED)
        _complete(db, rt, key, "verify_identity", AGENT, IDENTITY_OK)
        _complete(db, rt, key, "questionnaire", AGENT,
                  {**ANSWERS_OK, "wants_to_complain": True, "discretionary_mandate": "是"})
        # The caller heard the complaint: they write it down, within C1's 4 business hours.
        handover = _open_task(db, key, "complaint_handover")
        assert (handover.assignee, handover.status, handover.due_at) == (AGENT, "claimed", sh(2025, 6, 16, 14))
        assert _complaints(db) == []  # nobody registers the complaint by hand
        _complete(db, rt, key, "complaint_handover", AGENT, HANDOVER)

        [complaint] = _complaints(db)
        assert re.fullmatch(r"CMP-20250616-\d{4}", complaint.business_key)
        assert (complaint.client_id, complaint.branch_code, complaint.status) == ("C08", "NB01", "running")
        data = _data(db, rt, complaint.id)
        assert (data["origin_business_key"], data["origin_process"]) == (key, "callback")
        assert (data["channel"], data["request_kind"], data["summary"]) == \
            ("callback", "complaint", HANDOVER["complaint_summary"])
        assert (data["received_at"], data["recording_id"], data["first_contact_owner"]) == \
            (REACHED["attempt_at"], "REC-0001", AGENT)
        assert data["callback_findings"] == ["wants_to_complain", "discretionary_mandate"]
        assert data["subject_staff_ids"] == ["s206"] and data["service_group"] == "NB01-G2"  # from the registry
        assert "attempt_no" not in data and "qa_sampled" not in data  # the callback's own variables stay home
        assert data["severity"] == "major" and data["severity_reasons"] == ["alleged_violation"]
        with db.transaction() as s:
            complaint_tasks = s.execute(select(Task).where(Task.instance_id == complaint.id)).scalars().all()
            sent = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{callback_id}",
                                                      AuditEvent.kind == "message.sent")).scalar_one()
        # Straight to handling: the caller, as first-contact owner, acknowledges the complaint.
        assert [(t.element_id, t.assignee) for t in complaint_tasks] == [("acknowledge", AGENT)]
        assert (sent.data["message"], sent.data["to_instance"]) == ("complaint_from_callback", complaint.id)

        # The complaint also names a conduct item: compliance reviews it, then QA (not the caller).
        _complete(db, rt, key, "handle_compliance", COMPLIANCE,
                  {"finding": "转投诉流程处理", "action": "report", "closed_at": "2025-06-16T16:00:00+08:00"})
        _complete(db, rt, key, "qa_review", SUPERVISOR, QA_OK)
    assert _status(db, callback_id) == "completed"
    assert _end_events(db, rt, callback_id) == ["end_exception"]


@pytest.mark.sqlite
def test_an_obstructed_closure_found_on_a_post_closure_callback_becomes_a_complaint(db, rt, callback):
    key = "CB-20250616-0302"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        callback_id = _start(db, rt, key, "post_closure", "C03", qa_sample_rate=0)
        _complete(db, rt, key, "call_attempt", OTHER_AGENT, REACHED)
        _complete(db, rt, key, "verify_identity", OTHER_AGENT, IDENTITY_OK)
        _complete(db, rt, key, "questionnaire", OTHER_AGENT, {**ANSWERS_OK, "obstructed": "是"})
        _complete(db, rt, key, "complaint_handover", OTHER_AGENT,
                  {**HANDOVER, "complaint_summary": "销户申请被营业部拖延两周", "business_line": "account_services",
                   "client_request": "explanation", "alleged_violations": ["transfer_obstruction"],
                   "subject_staff_ids": []})
        [complaint] = _complaints(db)
        data = _data(db, rt, complaint.id)
        assert (complaint.client_id, data["origin_business_key"], data["first_contact_owner"]) == \
            ("C03", key, OTHER_AGENT)
        assert data["alleged_violations"] == ["transfer_obstruction"] and data["callback_type"] == "post_closure"
        # No conduct item besides the complaint: straight to QA, which is 100 % for exceptions.
        with db.transaction() as s:
            open_now = s.execute(select(Task.element_id).where(Task.business_key == key,
                                                               Task.status.in_(("open", "claimed")))).scalars().all()
        assert open_now == ["qa_review"]
        _complete(db, rt, key, "qa_review", SUPERVISOR, QA_OK)
    assert _end_events(db, rt, callback_id) == ["end_exception"]


@pytest.mark.sqlite
def test_the_clients_service_group_is_never_offered_the_call_even_when_a_member_works_call_centre_shifts(
        db, rt, callback):
    _grant(db, GROUP_MEMBER, "call_center_agent")
    key = "CB-20250616-0401"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        _start(db, rt, "CB-OTHER", "periodic", "C03", qa_sample_rate=0)  # NB01-G1's client
        instance_id = _start(db, rt, key, "periodic", "C08", qa_sample_rate=0)  # her group's client
        # As a call-centre agent she is offered other groups' calls, so only the recusal keeps her off.
        assert _open_task(db, "CB-OTHER", "call_attempt").id in _offered(db, rt, GROUP_MEMBER, "CB-OTHER")
        attempt = _open_task(db, key, "call_attempt")
        assert attempt.excluded == ["group:NB01-G2"]
        _refused(db, rt, attempt, GROUP_MEMBER)
        _complete(db, rt, key, "call_attempt", AGENT, REACHED)
        for element, data in (("verify_identity", IDENTITY_OK),
                              ("questionnaire", {**ANSWERS_OK, "wants_to_complain": True}),
                              ("complaint_handover", {**HANDOVER, "subject_staff_ids": []})):
            task = _open_task(db, key, element)
            assert (task.excluded, task.assignee) == (["group:NB01-G2"], AGENT)
            _refused(db, rt, task, GROUP_MEMBER)
            _complete(db, rt, key, element, AGENT, data)
    assert {a for k, a, _ in _trail(db, instance_id) if k == "task.completed"} == {AGENT}


@pytest.mark.sqlite
def test_identity_check_and_questionnaire_stay_with_the_agent_who_reached_the_client(db, rt, callback):
    key, start = "CB-20250616-0402", sh(2025, 6, 16, 10)
    with time_machine.travel(start, tick=False) as clock:
        instance_id = _start(db, rt, key, "periodic", "C03", qa_sample_rate=1.0)
        _complete(db, rt, key, "call_attempt", AGENT, NO_ANSWER)
        clock.move_to(sh(2025, 6, 16, 14, 0, 1))  # the afternoon retry
        assert firing.fire_due(db, rt) == 1
        _complete(db, rt, key, "call_attempt", OTHER_AGENT, REACHED)  # the retry went to a colleague
        for element, data in (("verify_identity", IDENTITY_OK), ("questionnaire", ANSWERS_OK)):
            task = _open_task(db, key, element)
            assert (task.assignee, task.status) == (OTHER_AGENT, "claimed")
            assert task.id not in _offered(db, rt, AGENT, key)  # the first caller never spoke to the client
            with pytest.raises(NotAssignee), db.transaction() as s:
                tasks.complete(s, rt, task_id=task.id, actor=_actor(db, AGENT), data=data)
            _complete(db, rt, key, element, OTHER_AGENT, data)
        assert _data(db, rt, instance_id)["caller"] == OTHER_AGENT
        assert _open_task(db, key, "qa_review").excluded == [f"user:{OTHER_AGENT}"]


@pytest.mark.sqlite
def test_the_caller_cannot_see_claim_or_complete_the_qa_review_while_another_supervisor_can(db, rt, callback):
    # 许婧 supervises the call centre and takes calls herself on a busy day; 罗斌 is a second reviewer.
    _grant(db, SUPERVISOR, "call_center_agent")
    _grant(db, "s005", "call_center_supervisor")
    key = "CB-20250616-0403"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance_id = _start(db, rt, key, "new_account", "C08", qa_sample_rate=1.0)
        _complete(db, rt, key, "call_attempt", SUPERVISOR, REACHED)
        _complete(db, rt, key, "verify_identity", SUPERVISOR, IDENTITY_OK)
        _complete(db, rt, key, "questionnaire", SUPERVISOR, ANSWERS_OK)
        qa = _open_task(db, key, "qa_review")
        assert qa.candidate_groups == ["call_center_supervisor"] and qa.excluded == [f"user:{SUPERVISOR}"]
        _refused(db, rt, qa, SUPERVISOR)  # her supervisor role does not help
        _complete(db, rt, key, "qa_review", "s005", QA_OK)
    assert _end_events(db, rt, instance_id) == ["end_completed"]
    assert [(a, e) for k, a, e in _trail(db, instance_id) if k == "task.completed"] == [
        (SUPERVISOR, "call_attempt"), (SUPERVISOR, "verify_identity"), (SUPERVISOR, "questionnaire"),
        ("s005", "qa_review")]


@pytest.mark.sqlite
def test_invalid_number_goes_to_the_clients_service_group_and_refusal_ends_refused(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        alt_id = _start(db, rt, "CB-ALT", "periodic", "C03", qa_sample_rate=0)
        assert _offer(_open_task(db, "CB-ALT", "call_attempt")) == (["call_center_agent"], None, sh(2025, 7, 14, 10))
        _complete(db, rt, "CB-ALT", "call_attempt", AGENT, {**NO_ANSWER, "result": "invalid_number"})
        alt = _open_task(db, "CB-ALT", "alt_channel")
        assert _offer(alt) == (["NB01-G1"], None, sh(2025, 6, 23, 10))  # 5 WD
        assert alt.lane == "营业部（负责人 / 服务小组）"
        # An invalid number is also a data-quality task for the counter of the client's branch.
        update = _open_task(db, "CB-ALT", "update_contact")
        assert _offer(update) == (["NB01:counter_staff"], None, sh(2025, 6, 23, 10))  # 5 WD
        assert update.form_key == "callback_update_contact"
        _complete(db, rt, "CB-ALT", "alt_channel", "s205", {"channel": "sms", "alt_result": "unreachable"})
        assert _status(db, alt_id) == "running"  # the counter's task is still open
        _complete(db, rt, "CB-ALT", "update_contact", COUNTER_NB01, {"contact_updated": True,
                                                                      "update_channel": "counter"})
        refused_id = _start(db, rt, "CB-REF", "periodic", "C03", qa_sample_rate=0)
        assert _offer(_open_task(db, "CB-REF", "call_attempt")) == (["call_center_agent"], None, sh(2025, 7, 14, 10))
        _complete(db, rt, "CB-REF", "call_attempt", AGENT, {**REACHED, "result": "refused"})
    assert _status(db, alt_id) == "completed"
    assert sorted(_end_events(db, rt, alt_id)) == ["end_contact_task", "end_unreachable_alt"]
    assert _end_events(db, rt, refused_id) == ["end_refused"]


@pytest.mark.sqlite
def test_a_caller_who_is_not_the_client_gets_no_contact_update_task(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        _start(db, rt, "CB-NOT", "periodic", "C03", qa_sample_rate=0)
        _complete(db, rt, "CB-NOT", "call_attempt", AGENT,
                  {**NO_ANSWER, "result": "not_client", "recording_id": "REC-N"})
        assert _offer(_open_task(db, "CB-NOT", "alt_channel")) == (["NB01-G1"], None, sh(2025, 6, 23, 10))
        with db.transaction() as s:
            assert s.execute(select(Task).where(Task.business_key == "CB-NOT",
                                                Task.element_id == "update_contact")).first() is None


@pytest.mark.sqlite
@pytest.mark.parametrize(("callback_type", "started", "due"), [
    ("new_account", sh(2025, 6, 3, 10), sh(2025, 7, 3, 10)),  # +1 calendar month (CM)
    ("new_account", sh(2025, 1, 31, 10), sh(2025, 2, 28, 10)),  # clamped to the month's end
    ("risk_disclosure", sh(2025, 6, 12, 10), sh(2025, 6, 16, 10)),  # +2 trading days over a weekend
    ("periodic", sh(2025, 4, 1, 10), sh(2025, 4, 29, 10)),  # 20 WD, skips 清明, counts make-up Sunday 04-27
    ("post_closure", sh(2025, 6, 13, 10), sh(2025, 6, 20, 10)),  # 5 WD
])
def test_the_due_date_follows_the_type_on_its_calendar(db, rt, callback, callback_type, started, due):
    with time_machine.travel(started, tick=False):
        _start(db, rt, "CB-DUE", callback_type, "C08")
    attempt = _open_task(db, "CB-DUE", "call_attempt")
    assert attempt.due_at == due and attempt.due_source == "policy" and not attempt.calendar_incomplete


def test_the_diagram_parses_lints_and_has_interchange_for_every_element(rt):
    path = PROJECT_ROOT / "workflows" / "callback.bpmn"
    processes, problems = deployments.check(None, rt, bundle.from_paths([path]))
    assert problems == [] and [p.key for p in processes] == ["callback"]
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
          "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI", "di": "http://www.omg.org/spec/DD/20100524/DI"}
    tree = etree.parse(str(path))
    process = tree.find("bpmn:process", ns)
    nodes = {el.get("id") for el in process if el.tag.endswith(("Event", "Task", "Gateway"))}
    flows = {el.get("id") for el in process.iterfind("bpmn:sequenceFlow", ns)}
    lanes = {el.get("id") for el in process.iterfind(".//bpmn:lane", ns)}
    shapes = {el.get("bpmnElement") for el in tree.iterfind(".//bpmndi:BPMNShape", ns)}
    edges = {el.get("bpmnElement"): el.findall("di:waypoint", ns) for el in tree.iterfind(".//bpmndi:BPMNEdge", ns)}
    assert nodes | lanes | {"participant_callback"} <= shapes
    assert set(edges) == flows and all(len(points) >= 2 for points in edges.values())


def test_a_closed_out_client_who_consented_is_offered_to_the_former_group_for_a_win_back_90_days_on(
        db, rt, callback):
    # R8: only with consent_marketing_contact, 90 calendar days after the closure (completed_at).
    key, declined = "CB-20250616-0308", "CB-20250616-0309"
    closed = {"completed_at": "2025-06-13T15:10:00+08:00"}
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False) as clock:
        callback_id = _start(db, rt, key, "post_closure", "C03", qa_sample_rate=0, **closed)
        other_id = _start(db, rt, declined, "post_closure", "C03", qa_sample_rate=0, **closed)
        for case, consent in ((key, True), (declined, False)):
            _complete(db, rt, case, "call_attempt", OTHER_AGENT, REACHED)
            _complete(db, rt, case, "verify_identity", OTHER_AGENT, IDENTITY_OK)
            _complete(db, rt, case, "questionnaire", OTHER_AGENT,
                      {**ANSWERS_OK, "consent_marketing_contact": consent})
        assert _status(db, other_id) == "completed"  # no consent: nobody calls again
        assert _status(db, callback_id) == "running"
        with db.transaction() as s:
            [wait] = s.execute(select(Timer).where(Timer.instance_id == callback_id,
                                                   Timer.status == "waiting")).scalars()
        assert (wait.element_id, wait.due_at) == ("win_back_wait", sh(2025, 9, 11, 15, 10))
        clock.move_to(sh(2025, 9, 11, 15, 10) + timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
        task = _complete(db, rt, key, "win_back", "s205", {"contact_result": "reached", "interest": "considering"})
        assert task.candidate_groups == ["NB01-G1"]  # the former service group
    assert _status(db, callback_id) == "completed"
