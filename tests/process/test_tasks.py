"""The human side through the service layer: claim, unclaim, assign, delegate, complete, inbox."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from engine.access.identity import Actor
from engine.errors import (
    FormValidationError,
    InstanceNotRunning,
    NotAssignee,
    NotCandidate,
    PermissionDenied,
    TaskAlreadyClaimed,
    TaskNotFound,
    TaskNotOpen,
    UserNotFound,
)
from engine.models import AuditEvent, ProcessInstance, Task
from engine.process import deployments, instances, passage, tasks
from tests.support.bpmn import bundle_of, linear, process, row_counts, user_task

pytestmark = pytest.mark.sqlite



def _start(db, rt, actor, key, *, due_at=None, priority=50):
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="review", business_key=key, actor=actor,
                               data={"priority": priority, "due_at": due_at.isoformat() if due_at else None})
        return inst.id


def _task(db, instance_id, element_id="register"):
    with db.transaction() as s:
        query = select(Task).where(Task.instance_id == instance_id, Task.element_id == element_id)
        return s.execute(query).scalar_one()


def _kinds(db, instance_id):
    """What people did (the engine's own path, gateways and events, left out)."""
    with db.transaction() as s:
        return [e.kind for e in instances.history(s, instance_id, actor=Actor.system()) if e.kind not in passage.KINDS]


def _instance(db, instance_id):
    with db.transaction() as s:
        return s.get(ProcessInstance, instance_id)


REGISTER = {"amount": 100, "summary": "小额登记"}


@pytest.fixture
def open_task(db, rt, people, review):
    """The review instance R-1 waiting at its first user task (register, clerks)."""
    instance_id = _start(db, rt, people.clerk, "R-1")
    task = _task(db, instance_id)
    assert (task.status, task.assignee, task.candidate_groups) == ("open", None, ["clerks"])
    return task


# -- claim -------------------------------------------------------------------------------
def test_a_candidate_claims_and_it_is_audited(db, rt, people, open_task):
    with db.transaction() as s:
        claimed = tasks.claim(s, rt, task_id=open_task.id, actor=people.clerk)
        assert (claimed.status, claimed.assignee) == ("claimed", "li")
    assert (_task(db, open_task.instance_id).status, _task(db, open_task.instance_id).assignee) == ("claimed", "li")
    assert _kinds(db, open_task.instance_id)[-1] == "task.claimed"


def test_someone_outside_the_candidate_groups_cannot_claim(db, rt, people, open_task):
    # The outsider cannot even see the task: a scoped lookup answers "no such task".
    with pytest.raises(TaskNotFound), db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.outsider)
    with pytest.raises(TaskNotFound), db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.manager)
    # A supervisor sees every task but is not a candidate, so may not take it for themself.
    with pytest.raises(NotCandidate), db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.supervisor)
    task = _task(db, open_task.instance_id)
    assert (task.status, task.assignee) == ("open", None)
    assert "task.claimed" not in _kinds(db, open_task.instance_id)


def test_a_claimed_task_cannot_be_claimed_by_someone_else(db, rt, people, open_task):
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.clerk)
    with pytest.raises(TaskAlreadyClaimed), db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.teammate)
    with db.transaction() as s:  # claiming again as the assignee is harmless
        assert tasks.claim(s, rt, task_id=open_task.id, actor=people.clerk).assignee == "li"
    assert _task(db, open_task.instance_id).assignee == "li"
    assert _kinds(db, open_task.instance_id).count("task.claimed") == 1


def test_unclaim_returns_the_task_to_the_pool(db, rt, people, open_task):
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.clerk)
    with pytest.raises(NotAssignee), db.transaction() as s:
        tasks.unclaim(s, rt, task_id=open_task.id, actor=people.teammate)
    with db.transaction() as s:
        tasks.unclaim(s, rt, task_id=open_task.id, actor=people.clerk)
    task = _task(db, open_task.instance_id)
    assert (task.status, task.assignee) == ("open", None)
    with db.transaction() as s:
        assert tasks.claim(s, rt, task_id=open_task.id, actor=people.teammate).assignee == "zhao"
    with db.transaction() as s:  # a supervisor may release anyone's task
        tasks.unclaim(s, rt, task_id=open_task.id, actor=people.supervisor)
    assert _task(db, open_task.instance_id).assignee is None
    assert _kinds(db, open_task.instance_id)[-4:] == ["task.claimed", "task.unclaimed", "task.claimed",
                                                       "task.unclaimed"]


# -- assign and delegate ------------------------------------------------------------------
def test_assign_needs_a_supervisor(db, rt, people, open_task):
    for actor in (people.clerk, people.owner):
        with pytest.raises(PermissionDenied), db.transaction() as s:
            tasks.assign(s, rt, task_id=open_task.id, username="zhao", actor=actor)
    assert _task(db, open_task.instance_id).assignee is None
    with pytest.raises(UserNotFound), db.transaction() as s:
        tasks.assign(s, rt, task_id=open_task.id, username="nobody", actor=people.supervisor)
    with db.transaction() as s:
        tasks.assign(s, rt, task_id=open_task.id, username="zhao", actor=people.supervisor)
    task = _task(db, open_task.instance_id)
    assert (task.status, task.assignee) == ("claimed", "zhao")
    with pytest.raises(NotAssignee), db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=REGISTER)
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.teammate, data=REGISTER)
    assert _task(db, open_task.instance_id).completed_by == "zhao"
    with db.transaction() as s:
        assigned = s.execute(select(AuditEvent).where(AuditEvent.kind == "task.assigned")).scalar_one()
        assert (assigned.actor, assigned.data["assignee"]) == ("boss", "zhao")


def test_delegate_hands_the_work_over_and_keeps_the_owner(db, rt, people, open_task):
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.clerk)
    with pytest.raises(NotAssignee), db.transaction() as s:
        tasks.delegate(s, rt, task_id=open_task.id, username="wang", actor=people.teammate)
    with db.transaction() as s:
        tasks.delegate(s, rt, task_id=open_task.id, username="wang", actor=people.clerk)
    task = _task(db, open_task.instance_id)
    assert (task.assignee, task.owner, task.status) == ("wang", "li", "claimed")
    with db.transaction() as s:  # the owner still sees it; the delegate sees it though not a candidate
        assert tasks.get(s, open_task.id, actor=people.clerk).id == open_task.id
        assert tasks.get(s, open_task.id, actor=people.manager).id == open_task.id
    with pytest.raises(NotAssignee), db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=REGISTER)
    with db.transaction() as s:  # delegating onwards keeps the first owner
        tasks.delegate(s, rt, task_id=open_task.id, username="zhao", actor=people.manager)
    task = _task(db, open_task.instance_id)
    assert (task.assignee, task.owner) == ("zhao", "li")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.teammate, data=REGISTER)
    assert _task(db, open_task.instance_id).completed_by == "zhao"


# -- complete ------------------------------------------------------------------------------
def test_only_the_assignee_may_complete(db, rt, people, open_task):
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=open_task.id, actor=people.clerk)
    with pytest.raises(NotAssignee), db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.teammate, data=REGISTER)
    with pytest.raises(TaskNotFound), db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.outsider, data=REGISTER)
    assert _task(db, open_task.instance_id).status == "claimed"
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=REGISTER)
    assert _task(db, open_task.instance_id).status == "completed"


def test_a_candidate_may_complete_an_unclaimed_task_which_claims_it(db, rt, people, open_task):
    with db.transaction() as s:
        done = tasks.complete(s, rt, task_id=open_task.id, actor=people.teammate, data=REGISTER)
    task = _task(db, open_task.instance_id)
    assert (task.status, task.assignee, task.completed_by) == ("completed", "zhao", "zhao")
    assert done.completed_at is not None
    assert _kinds(db, open_task.instance_id)[-2:] == ["task.claimed", "task.completed"]
    # The process moved on: amount 100 goes to the clerks' approval.
    assert _task(db, open_task.instance_id, "approve_small").status == "open"


def test_a_supervisor_who_is_not_a_candidate_cannot_complete(db, rt, people, open_task):
    with pytest.raises(NotCandidate), db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.supervisor, data=REGISTER)
    assert _task(db, open_task.instance_id).status == "open"


@pytest.mark.parametrize(("data", "fields"), [
    ({"summary": "只有摘要"}, {"amount"}),
    ({"amount": -5, "summary": "x"}, {"amount", "summary"}),
    ({"amount": "很多", "summary": "金额不是数字"}, {"amount"}),
], ids=["missing_required", "minimum_and_min_length", "wrong_type"])
def test_a_form_that_fails_its_schema_changes_nothing(db, rt, people, open_task, data, fields):
    before_instance = _instance(db, open_task.instance_id)
    before = row_counts(db)
    with pytest.raises(FormValidationError) as caught, db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=data)
    error = caught.value
    assert error.code == "form_invalid"
    assert {e.field for e in error.errors} == fields
    assert all(e.message for e in error.errors)
    assert error.details["errors"] == [{"field": e.field, "message": e.message} for e in error.errors]

    task = _task(db, open_task.instance_id)
    assert (task.status, task.assignee, task.completed_at) == ("open", None, None)  # not even claimed
    after_instance = _instance(db, open_task.instance_id)
    assert after_instance.state == before_instance.state
    assert (after_instance.status, after_instance.audit_seq, after_instance.updated_at) == \
        (before_instance.status, before_instance.audit_seq, before_instance.updated_at)
    assert row_counts(db) == before
    # The same task then accepts a valid form.
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=REGISTER)


def test_an_undeclared_form_field_is_refused(db, rt, people, open_task):
    with pytest.raises(FormValidationError) as caught, db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data={**REGISTER, "admin": True})
    (error,) = caught.value.errors
    assert error.field == "admin"
    assert "admin" in error.message
    assert _task(db, open_task.instance_id).status == "open"


def test_completing_a_completed_task_is_task_not_open(db, rt, people, open_task):
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=REGISTER)
    before = row_counts(db)
    seq = _instance(db, open_task.instance_id).audit_seq
    for actor in (people.clerk, people.teammate):
        with pytest.raises(TaskNotOpen), db.transaction() as s:
            tasks.complete(s, rt, task_id=open_task.id, actor=actor, data=REGISTER)
    for operation in (tasks.claim, tasks.unclaim):
        with pytest.raises(TaskNotOpen), db.transaction() as s:
            operation(s, rt, task_id=open_task.id, actor=people.clerk)
    assert row_counts(db) == before
    assert _instance(db, open_task.instance_id).audit_seq == seq


def test_tasks_of_a_cancelled_instance_are_cancelled_and_cannot_be_completed(db, rt, people, open_task):
    with pytest.raises(PermissionDenied), db.transaction() as s:
        instances.cancel(s, rt, instance_id=open_task.instance_id, actor=people.clerk)
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=open_task.instance_id, actor=people.supervisor, reason="重复登记")
    assert _task(db, open_task.instance_id).status == "cancelled"
    with pytest.raises(InstanceNotRunning), db.transaction() as s:
        tasks.complete(s, rt, task_id=open_task.id, actor=people.clerk, data=REGISTER)
    assert _kinds(db, open_task.instance_id)[-1] == "instance.cancelled"


# -- inbox ---------------------------------------------------------------------------------
OTHER = process(linear(("note", user_task("note", name="记录"))), key="other")


@pytest.fixture
def inbox_world(db, rt, people, review):
    """Five review tasks with different due times (one claimed by li) and one of another process."""
    now = datetime.now(UTC).replace(microsecond=0)
    due = {"R-1": now - timedelta(days=2), "R-2": now + timedelta(days=1), "R-3": now + timedelta(days=10),
           "R-4": None, "R-5": now + timedelta(hours=3)}
    ids = {key: _task(db, _start(db, rt, people.clerk, key, due_at=when)).id for key, when in due.items()}
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=ids["R-5"], actor=people.clerk)
        deployments.deploy(s, rt, bundle_of(OTHER), actor=people.owner)
    with db.transaction() as s:
        instances.start(s, rt, process_key="other", business_key="O-1", actor=people.clerk)
    return now


def _keys(db, actor, now, **query):
    with db.transaction() as s:
        rows, total = tasks.inbox(s, actor=actor, query=tasks.InboxQuery(**query), now=now)
        return [t.business_key for t in rows], total


def test_inbox_sorts_by_due_time_with_undated_tasks_last(db, people, inbox_world):
    keys, total = _keys(db, people.teammate, inbox_world, process_key="review")
    assert keys == ["R-1", "R-5", "R-2", "R-3", "R-4"]
    assert total == 5


def test_inbox_assignee_me_and_candidate_me(db, people, inbox_world):
    assert _keys(db, people.clerk, inbox_world, assignee_me=True) == (["R-5"], 1)
    assert _keys(db, people.teammate, inbox_world, assignee_me=True) == ([], 0)
    # Unclaimed tasks offered to my groups: the claimed R-5 is not among them.
    assert _keys(db, people.teammate, inbox_world, candidate_me=True) == (["R-1", "R-2", "R-3", "R-4", "O-1"], 5)


def test_inbox_overdue_and_due_within(db, people, inbox_world):
    assert _keys(db, people.clerk, inbox_world, overdue=True) == (["R-1"], 1)
    assert _keys(db, people.clerk, inbox_world, due_within=timedelta(days=2)) == (["R-5", "R-2"], 2)
    # Later, the same query sees different things: "now" is the caller's.
    assert _keys(db, people.clerk, inbox_world + timedelta(days=5), overdue=True) == (["R-1", "R-5", "R-2"], 3)


def test_inbox_filters_by_process_and_business_key(db, people, inbox_world):
    assert _keys(db, people.clerk, inbox_world, process_key="other") == (["O-1"], 1)
    assert _keys(db, people.clerk, inbox_world, business_key="R-3") == (["R-3"], 1)
    assert _keys(db, people.clerk, inbox_world, process_key="other", business_key="R-3") == ([], 0)


def test_inbox_pagination_keeps_the_total(db, people, inbox_world):
    pages = [_keys(db, people.clerk, inbox_world, process_key="review", limit=2, offset=offset)
             for offset in (0, 2, 4, 6)]
    assert pages == [(["R-1", "R-5"], 5), (["R-2", "R-3"], 5), (["R-4"], 5), ([], 5)]


def test_inbox_status_filter_shows_completed_tasks(db, rt, people, inbox_world):
    with db.transaction() as s:
        (task,), _ = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(business_key="R-3"), now=inbox_world)
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data=REGISTER)
    assert _keys(db, people.clerk, inbox_world, status=("completed",)) == (["R-3"], 1)
    assert "R-3" in _keys(db, people.clerk, inbox_world, business_key="R-3")[0]  # its next task is open


def test_the_outsider_sees_nothing_and_a_supervisor_sees_everything(db, people, inbox_world):
    assert _keys(db, people.outsider, inbox_world) == ([], 0)
    assert _keys(db, people.outsider, inbox_world, overdue=True) == ([], 0)
    assert _keys(db, people.manager, inbox_world) == ([], 0)
    assert _keys(db, people.supervisor, inbox_world)[1] == 6
