"""Case ownership: a variable naming the person who owns part of a case (a complaint's
first-contact owner, 首办责任人), to whom the diagram assigns that part's steps
(``camunda:assignee="${first_contact_owner}"``).

The owner is whoever did the step the diagram records in ``completedByVariable``; it changes
only by an explicit, audited handover (absence, departure): the variable takes the new name in
every step still holding a copy, so the steps to come are assigned to the new owner, and the
open steps the old owner held by that assignment move with it.
"""

from __future__ import annotations

from typing import Any

from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor, get_user
from engine.bpmn.parser import camunda_of
from engine.errors import InvalidInput
from engine.models import ACTIVE_TASK_STATES, InstanceStatus, ProcessInstance, Task, TaskKind, TaskStatus
from engine.process.runtime import Runtime, locked_instance
from engine.process.unit_of_work import audit, save

# The steps whose data a later step inherits: open, waiting and not yet reached.
_HOLDING_DATA = TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.FUTURE | TaskState.LIKELY | \
    TaskState.MAYBE


def owners_of(session: Session, *, variable: str, username: str) -> list[int]:
    """The running cases whose ``variable`` (one of their diagram's ``reportVariables``) names
    ``username``, by instance id."""
    return list(session.execute(
        select(ProcessInstance.id).where(
            ProcessInstance.status.in_((InstanceStatus.RUNNING, InstanceStatus.FAILED)),
            ProcessInstance.facts[variable].as_string() == username)
        .order_by(ProcessInstance.id)).scalars())


def hand_over(session: Session, rt: Runtime, *, instance_id: int, variable: str, to_user: str, actor: Actor,
              reason: str) -> list[int]:
    """Make ``to_user`` the case's owner named by ``variable``; returns the ids of the open
    tasks that moved to them. The caller decides who may hand over (a supervisor, a
    departure) and that ``to_user`` is not recused from the case."""
    if not reason.strip():
        raise InvalidInput("a handover states its reason (it is audited)", field="reason")
    if not get_user(session, to_user).active:
        raise InvalidInput(f"user {to_user!r} is inactive", field="to")
    instance = locked_instance(session, instance_id, allow=(InstanceStatus.RUNNING, InstanceStatus.FAILED))
    workflow = rt.load(session, instance)
    holders = workflow.get_tasks(state=_HOLDING_DATA)
    if workflow.last_task is not None and workflow.last_task not in holders:
        holders.append(workflow.last_task)
    previous = next((t.data.get(variable) for t in holders if t.data.get(variable)), None)
    for task in holders:
        if variable in task.data:
            task.data[variable] = to_user
    expression = f"${{{variable}}}"
    moved: list[int] = []
    open_rows = session.execute(select(Task).where(
        Task.instance_id == instance.id, Task.kind == TaskKind.BPMN, Task.status.in_(ACTIVE_TASK_STATES))
        .execution_options(populate_existing=True)).scalars().all()
    by_uuid = {str(t.id): t for t in workflow.get_tasks(state=TaskState.READY)}
    for row in open_rows:
        spiff_task = by_uuid.get(row.task_uuid)
        if spiff_task is None or _assignee_expression(spiff_task) != expression:
            continue
        if row.assignee not in (None, previous):
            continue  # a supervisor gave this step to someone else on purpose: theirs it stays
        row.assignee, row.owner, row.status = to_user, None, TaskStatus.CLAIMED
        moved.append(row.id)
    audit(session, rt, instance, "case.owner_handed_over", actor, variable=variable,
          previous_owner=previous, owner=to_user, reason=reason.strip(), tasks=moved)
    save(session, rt, instance, workflow, actor=actor)
    return moved


def _assignee_expression(spiff_task: Any) -> str:
    return "".join(str(camunda_of(spiff_task.task_spec).get("assignee") or "").split())
