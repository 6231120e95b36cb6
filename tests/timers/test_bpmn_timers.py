"""The timer projection beyond tests/test_timers.py: expression timer values, a timer that
cannot be computed, and what a fired boundary timer does to the message subscription."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from engine.access.identity import Actor
from engine.errors import MessageNotCorrelated
from engine.models import MessageSubscription, ProcessInstance, Task, Timer
from engine.process import deployments, instances, messages, tasks
from engine.timers import firing
from tests.support.bpmn import bundle_of, linear, process, row_counts, user_task

pytestmark = pytest.mark.sqlite

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)

FOLLOW_UP = process(linear(
    ("wait_until", '    <bpmn:intermediateCatchEvent id="wait_until" name="等到回访日">'
                   "<bpmn:timerEventDefinition><bpmn:timeDate>${callback_at}</bpmn:timeDate>"
                   "</bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>\n"),
    ("call_client", user_task("call_client", name="回访客户")),
), key="callback")



@pytest.fixture
def callback(db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(FOLLOW_UP), actor=people.owner)
    return "callback"


def _timer(db, instance_id):
    with db.transaction() as s:
        return s.execute(select(Timer).where(Timer.instance_id == instance_id)).scalar_one_or_none()


def test_a_time_date_expression_gives_the_timer_row_its_due_time(db, rt, people, callback):
    at = "2026-03-05T09:30:00+08:00"
    with time_machine.travel(START, tick=False) as traveller:
        with db.transaction() as s:
            inst = instances.start(s, rt, process_key="callback", business_key="CB-1", actor=people.clerk,
                                   data={"callback_at": at})
        timer = _timer(db, inst.id)
        assert (timer.status, timer.element_id) == ("waiting", "wait_until")
        assert timer.due_at == datetime.fromisoformat(at)
        with db.transaction() as s:
            assert s.execute(select(Task).where(Task.instance_id == inst.id)).first() is None
        traveller.move_to(datetime.fromisoformat(at) + timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
    assert _timer(db, inst.id).status == "fired"
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == inst.id)).scalar_one()
        assert (task.element_id, task.status) == ("call_client", "open")


def test_a_timer_value_that_cannot_be_computed_fails_the_instance(db, rt, people, callback):
    with db.transaction() as s:  # no callback_at in the data
        inst = instances.start(s, rt, process_key="callback", business_key="CB-2", actor=people.clerk)
    assert inst.status == "failed"
    assert "wait_until" in inst.error and "callback_at" in inst.error
    assert _timer(db, inst.id) is None


def _to_waiting_for_ack(db, rt, people, key):
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data={"priority": 50, "due_at": None})
    for form in ({"amount": 10, "summary": "小额"}, {"approved": True}):
        with db.transaction() as s:
            task = s.execute(select(Task).where(Task.instance_id == inst.id, Task.status == "open")).scalar_one()
            tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data=form)
    return inst.id


def test_the_boundary_timer_row_waits_fifteen_days_and_the_message_cancels_it(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people, "R-1")
        timer = _timer(db, instance_id)
        assert (timer.status, timer.element_id, timer.due_at) == ("waiting", "ack_timeout", START + timedelta(days=15))
        traveller.shift(timedelta(days=3))
        with db.transaction() as s:
            messages.correlate(s, rt, name="client_ack", correlation_key="R-1", actor=people.system)
    timer = _timer(db, instance_id)
    assert (timer.status, timer.fired_at) == ("cancelled", None)


def test_a_fired_boundary_timer_ends_the_wait_and_a_late_message_finds_nobody(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people, "R-2")
        traveller.move_to(START + timedelta(days=15, seconds=1))
        assert firing.fire_due(db, rt) == 1
        with db.transaction() as s:
            instance = s.get(ProcessInstance, instance_id)
            assert (instance.status, instance.ended_at) == ("completed", START + timedelta(days=15, seconds=1))
            assert s.execute(select(MessageSubscription)).first() is None
            assert "timer.fired" in [e.kind for e in instances.history(s, instance_id, actor=Actor.system())]
        before = row_counts(db)
        with pytest.raises(MessageNotCorrelated), db.transaction() as s:
            messages.correlate(s, rt, name="client_ack", correlation_key="R-2", actor=people.system)
        assert row_counts(db) == before
