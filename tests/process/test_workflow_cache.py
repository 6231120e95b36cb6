"""The per-process workflow cache (``Runtime.workflows``): a committed change leaves its
workflow in memory for the next change, which uses it only while the stored state is the
one it was saved as. Two Runtime objects over one database stand for two processes."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import select

from engine.bootstrap import build_runtime
from engine.models import MessageSubscription, ProcessInstance, Task
from engine.process import instances, messages, tasks

pytestmark = pytest.mark.sqlite

REGISTER = {"amount": 100, "summary": "小额登记"}
APPROVE = {"approved": True}


def _start(db, rt, actor, key):
    with db.transaction() as s:
        return instances.start(s, rt, process_key="review", business_key=key, actor=actor,
                               data={"priority": 50, "due_at": None}).id


def _open_task(db, instance_id):
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.instance_id == instance_id, Task.status.in_(("open", "claimed")))
                         ).scalar_one()


def _complete(db, rt, actor, task_id, data):
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=task_id, actor=actor, data=data)


def _instance(db, instance_id):
    with db.transaction() as s:
        return s.get(ProcessInstance, instance_id)


def test_a_committed_change_leaves_its_workflow_for_the_next_one(db, rt, people, review):
    instance_id = _start(db, rt, people.clerk, "WC-1")
    stored = _instance(db, instance_id).state
    cached = rt.workflows.take(instance_id, stored)
    assert cached is not None  # the workflow the start saved, under the state it saved
    rt.workflows.put(instance_id, stored, cached)
    task = _open_task(db, instance_id)
    with db.transaction() as s:
        instance = s.get(ProcessInstance, instance_id)
        assert rt.load(s, instance) is cached  # no restore: the very object
    # take() handed it out, and that transaction saved nothing: gone until the next save.
    assert rt.workflows.take(instance_id, stored) is None
    _complete(db, rt, people.clerk, task.id, REGISTER)
    assert _open_task(db, instance_id).element_id == "approve_small"
    assert rt.workflows.take(instance_id, _instance(db, instance_id).state) is not None


def test_a_change_made_by_another_process_is_not_overwritten_by_a_stale_workflow(db, settings, people, review):
    one, other = build_runtime(settings), build_runtime(settings)
    instance_id = _start(db, one, people.clerk, "WC-2")
    assert len(one.workflows) == 1
    # The other process completes the first step; `one` still holds the workflow at step 1.
    _complete(db, other, people.clerk, _open_task(db, instance_id).id, REGISTER)
    second = _open_task(db, instance_id)
    assert second.element_id == "approve_small"
    # `one` must restore the state the other process saved: its cached workflow has no
    # approve_small task ready and would refuse (or undo) the step.
    _complete(db, one, people.clerk, second.id, APPROVE)
    with db.transaction() as s:
        waiting = s.execute(select(MessageSubscription.element_id)
                            .where(MessageSubscription.instance_id == instance_id)).scalars().all()
        assert waiting == ["wait_ack"]  # the step after approval: the process moved on once
        done = s.execute(select(Task.element_id).where(Task.instance_id == instance_id, Task.status == "completed")
                         .order_by(Task.id)).scalars().all()
    assert done == ["register", "approve_small"]


def test_a_change_that_rolls_back_leaves_nothing_behind(db, rt, people, review):
    instance_id = _start(db, rt, people.clerk, "WC-3")
    task = _open_task(db, instance_id)
    with pytest.raises(RuntimeError), db.transaction() as s:
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data=REGISTER)
        raise RuntimeError("the entry point failed after the step")  # e.g. the response could not be built
    assert len(rt.workflows) == 0  # the workflow that ran the rolled-back step is not kept
    assert _open_task(db, instance_id).id == task.id
    _complete(db, rt, people.clerk, task.id, REGISTER)  # the step runs again, once
    assert _open_task(db, instance_id).element_id == "approve_small"


def test_a_finished_instance_is_not_kept_and_size_zero_keeps_nothing(db, settings, people, review):
    rt = build_runtime(settings)
    instance_id = _start(db, rt, people.clerk, "WC-4")
    _complete(db, rt, people.clerk, _open_task(db, instance_id).id, REGISTER)
    _complete(db, rt, people.clerk, _open_task(db, instance_id).id, APPROVE)
    assert len(rt.workflows) == 1  # waiting for the client's acknowledgement
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="WC-4", actor=people.clerk, payload={})
    assert _instance(db, instance_id).status == "completed"
    assert len(rt.workflows) == 0

    off = build_runtime(replace(settings, workflow_cache=0))
    _start(db, off, people.clerk, "WC-5")
    assert len(off.workflows) == 0
