"""The case history records every element the token passed, by its Chinese name (issue 13
item 20): the boundary event that fired and the step it interrupted (whose SLA clock is
settled), the gateways taken and where to, the end event reached. On our own diagrams; the
error boundary on a small one (none of ours throws a BPMN error)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from engine.models import AuditEvent, Task
from engine.process import deployments, instances, tasks
from engine.sla import clock as sla_clock
from engine.timers import firing
from tests.brokerage.test_callback import (
    AGENT,
    NO_ANSWER,
    _complete,
    _retry_timers,
    _start,
    sh,
)
from tests.brokerage.test_complaint import CONTACTED, MONDAY_9, PHONE_CALL, Case, registration
from tests.support.bpmn import bundle_of, flow, process, user_task

pytestmark = pytest.mark.store_independent


def _history(db, instance_id: int) -> list[tuple[str, dict[str, Any]]]:
    with db.transaction() as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{instance_id}")
                           .order_by(AuditEvent.seq)).scalars()
        return [(e.kind, dict(e.data or {})) for e in events]


def _path(db, instance_id: int) -> list[tuple[str, str, str | None]]:
    """(kind, element, name) of the events that name an element, in order."""
    return [(k, d["element_id"], d.get("name")) for k, d in _history(db, instance_id) if "element_id" in d]


def test_a_withdrawal_records_the_message_boundary_the_cancelled_steps_and_the_end_reached(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0901")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", PHONE_CALL)
        case.do("register", "s003", registration())
        case.do("acknowledge", "s003", CONTACTED)
        investigate = case.open_task()
        clock.shift(timedelta(hours=2))
        case.correlate("client_withdraws", {"withdrawal_note": "客户来电表示不再追究"})
        case.do("confirm_withdrawal", "s003", {"withdrawal_reason": "no_longer_interested",
                                               "withdrawal_confirmed_by_client": True, "recording_id": "REC-9"})
        case.do("close_case", "s103", {"closure_reason": "withdrawn"})
        case.do("withdrawal_verify", "s005", {"withdrawal_voluntary": True})
    assert case.end_state() == "E2"
    history = _history(db, case.instance_id)
    path = _path(db, case.instance_id)
    # Started by the message start event, then classified (a service step) and routed.
    assert path[:2] == [("event.start", "start_received", "收到投诉"), ("task.completed", "register", None)]
    assert ("activity.completed", "classify", "分类分级") in path
    (severity,) = [d for k, d in history if k == "gateway.passed" and d["element_id"] == "gw_severity"]
    assert severity["name"] == "投诉级别?" and severity["to"] == ["gw_severity_merge"]
    (is_complaint,) = [d for k, d in history if k == "gateway.passed" and d["element_id"] == "gw_is_complaint"]
    assert is_complaint["to"] == ["gw_severity"]
    # The client's message fired the interrupting boundary on the handling sub-process,
    # which cancelled the investigation that was open (and the sub-process itself).
    fired = path.index(("event.boundary", "withdraw", "客户撤诉"))
    (boundary,) = [d for k, d in history if k == "event.boundary"]
    assert boundary["trigger"] == "message" and boundary["interrupting"] is True
    assert (boundary["attached_to"], boundary["attached_to_name"]) == ("handling", "投诉处理（受理至客户答复）")
    cancelled = [(k, e, n) for k, e, n in path if k.endswith(".cancelled")]
    assert ("task.cancelled", "investigate", "调查核实") in cancelled
    assert ("activity.cancelled", "handling", "投诉处理（受理至客户答复）") in cancelled
    assert sorted(path[fired + 1:fired + 3]) == sorted(cancelled)
    kinds = [k for k, _ in history]
    (received,) = [i for i, (k, d) in enumerate(history)
                   if k == "message.received" and d["message"] == "client_withdraws"]
    assert kinds[received + 1] == "event.boundary"
    assert sorted(kinds[received + 2:received + 4]) == ["activity.cancelled", "task.cancelled"]
    # The non-interrupting extension boundary that never fired is not in the history.
    assert not [e for _, e, _ in path if e == "extension_requested"]
    # The end event reached, by its name, before the case is completed.
    end = path.index(("event.end", "end_withdrawn", "E2 客户撤诉"))
    assert [k for k, _ in history].index("instance.completed") > [k for k, _ in history].index("event.end")
    assert end == max(i for i, (k, _, _) in enumerate(path) if k == "event.end")
    # The cancelled investigation's clock is settled: no time left, not on track.
    with db.transaction() as s:
        row = s.get(Task, investigate.id)
        assert row.status == "cancelled"
        assert sla_clock.state(row, rt.now()) == (sla_clock.CLOSED, None)


def test_a_callback_records_its_retry_timer_and_the_end_reached(db, rt, callback_ready):
    key = "CB-20250616-0901"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False) as clock:
        instance_id = _start(db, rt, key, "anomaly", "C06")
        for attempt in range(1, 4):
            _complete(db, rt, key, "call_attempt", AGENT, NO_ANSWER)
            if attempt < 3:
                clock.move_to(_retry_timers(db, instance_id)[-1].due_at + timedelta(seconds=1))
                assert firing.fire_due(db, rt) == 1
    history = _history(db, instance_id)
    timers = [d for k, d in history if k == "event.boundary"]
    assert [(d["element_id"], d["name"], d["trigger"], d["attached_to"]) for d in timers] == [
        ("retry_wait", "间隔等待后重拨", "timer", "await_retry")] * 2
    # Each timer interrupted the wait for the client's call back.
    assert [d["element_id"] for k, d in history if k == "activity.cancelled"] == ["await_retry", "await_retry"]
    ends = [(d["element_id"], d["name"]) for k, d in history if k == "event.end"]
    assert ends == [("end_unreachable", "无法联系（重试用尽）")]
    assert history[-1][0] == "instance.completed"


@pytest.fixture
def callback_ready(demo_loaded) -> None:
    """Demo people and groups, workflows/ deployed."""


ERROR_DIAGRAM = process(
    '    <bpmn:startEvent id="start" name="开始"/>\n'
    '    <bpmn:subProcess id="check" name="核对">\n'
    '      <bpmn:startEvent id="check_start"/>\n'
    '      <bpmn:endEvent id="check_failed" name="核对失败"><bpmn:errorEventDefinition errorRef="err_check"/>'
    '</bpmn:endEvent>\n'
    + flow("check_start", "check_failed").replace("    <", "      <")
    + '    </bpmn:subProcess>\n'
    '    <bpmn:boundaryEvent id="check_error" name="核对出错" attachedToRef="check" cancelActivity="true">\n'
    '      <bpmn:errorEventDefinition errorRef="err_check"/>\n'
    '    </bpmn:boundaryEvent>\n'
    + user_task("fix", name="人工处理")
    + '    <bpmn:endEvent id="done" name="结束"/>\n'
    '    <bpmn:endEvent id="fixed" name="已人工处理"/>\n'
    + flow("start", "check") + flow("check", "done") + flow("check_error", "fix") + flow("fix", "fixed"),
    key="error_path", extra='  <bpmn:error id="err_check" name="核对失败" errorCode="CHECK"/>\n')


def test_an_error_boundary_records_the_error_and_the_sub_process_it_interrupted(db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(ERROR_DIAGRAM), actor=people.owner)
    with db.transaction() as s:
        instance = instances.start(s, rt, process_key="error_path", business_key="E-1", actor=people.clerk, data={})
        instance_id = instance.id
    with db.transaction() as s:
        (fix,) = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(candidate_me=True), now=rt.now())[0]
        tasks.complete(s, rt, task_id=fix.id, actor=people.clerk, data={})
    path = _path(db, instance_id)
    assert ("event.end", "check_failed", "核对失败") in path
    (boundary,) = [d for k, d in _history(db, instance_id) if k == "event.boundary"]
    assert (boundary["element_id"], boundary["name"], boundary["trigger"]) == ("check_error", "核对出错", "error")
    assert path.index(("event.boundary", "check_error", "核对出错")) < path.index(("task.completed", "fix", None))
    assert ("event.end", "fixed", "已人工处理") in path and ("event.end", "done", "结束") not in path
