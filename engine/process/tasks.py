"""The human side: inbox queries and claim, unclaim, assign, delegate, complete.

Rules: only a member of a candidate group (or the named assignee) may claim; only the
assignee may complete. Completing an unclaimed task as a candidate claims it in the same
transaction ("claim and complete"), so two people pressing Complete on one open task race
on the instance lock: exactly one wins, the other gets ``task_not_open``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from uuid import UUID

from SpiffWorkflow.util.task import TaskState
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    String,
    and_,
    bindparam,
    exists,
    false,
    func,
    or_,
    select,
    true,
    union,
)
from sqlalchemy.orm import Session, aliased

from engine.access.identity import Actor, actor_for, get_user
from engine.access.masking import mask_echo, mask_text
from engine.access.roles import BRANCH_BOUND_CANDIDATES, SUPERVISOR
from engine.bpmn.expressions import json_safe
from engine.bpmn.forms import declared_fields
from engine.bpmn.parser import COMPLETED_BY_VARIABLE, properties_of, writable_variables
from engine.errors import (
    FieldError,
    FormValidationError,
    InstanceNotRunning,
    InvalidInput,
    NotAssignee,
    NotCandidate,
    PermissionDenied,
    Recused,
    TaskAlreadyClaimed,
    TaskNotFound,
    TaskNotOpen,
)
from engine.models import (
    ACTIVE_TASK_STATES,
    InstanceStatus,
    ProcessInstance,
    Task,
    TaskCandidate,
    TaskExclusion,
    TaskKind,
    TaskStatus,
)
from engine.process.limits import check_case, check_variables
from engine.process.projection import opened_tasks
from engine.process.runtime import Runtime, lock_instance_row, lock_statement
from engine.process.unit_of_work import audit, run_and_save
from engine.process.variables import ENGINE_VARIABLES, changes_engine_value, reserved_names
from engine.sla import clock as sla_clock


def offer_groups(actor: Actor) -> tuple[list[str], list[str], str | None]:
    """The actor's groups as candidates: (groups offered every task naming them, groups
    offered only their branch's tasks and tasks tied to no branch, that branch). A member of
    a :data:`BRANCH_BOUND_CANDIDATES` group who belongs to a branch has it in the second
    list; at headquarters (no branch), or as an administrator, in the first."""
    branch = None if actor.is_admin else actor.branch_code
    bound = sorted(actor.groups & BRANCH_BOUND_CANDIDATES) if branch is not None else []
    return sorted(actor.groups - set(bound)), bound, branch


def _is_candidate(task: Task, actor: Actor) -> bool:
    free, bound, branch = offer_groups(actor)
    named = set(task.candidate_groups or [])
    return bool(named.intersection(free)) or (
        bool(named.intersection(bound)) and task.branch_code in (None, branch))


def is_candidate(task: Task, actor: Actor) -> bool:
    """Whether the task is offered to the actor by one of its candidate groups (recusals aside)."""
    return _is_candidate(task, actor)


def offered_clause(groups: Any, bound_groups: Any, branch: Any) -> Any:
    """:func:`_is_candidate` as a condition on ``Task`` (the arguments: the lists and branch
    of :func:`offer_groups`, as values or bound parameters)."""
    return or_(
        exists().where(TaskCandidate.task_id == Task.id, TaskCandidate.group_key.in_(groups)),
        and_(or_(Task.branch_code.is_(None), Task.branch_code == branch),
             exists().where(TaskCandidate.task_id == Task.id, TaskCandidate.group_key.in_(bound_groups))))


def principals(actor: Actor) -> list[str]:
    """How an actor can be named in a task's exclusions."""
    return [f"user:{actor.username}", *sorted(f"group:{g}" for g in actor.groups)]


def is_excluded(task: Task, actor: Actor) -> bool:
    return bool(task.excluded) and not set(task.excluded or ()).isdisjoint(principals(actor))


def can_see(task: Task, actor: Actor) -> bool:
    """Recusal wins over everything, roles included: the subject of a complaint may not
    learn that the task exists, even as a supervisor. A candidate group sees its tasks while
    they are open or claimed (the team's work in hand); a finished task only to whoever held,
    owned or completed it: a role offered every complaint's registration does not keep every
    registration once it is done."""
    if is_excluded(task, actor):
        return False
    return ((actor.has_role(SUPERVISOR) and _in_supervised_branch(task, actor))
            or actor.username in (task.assignee, task.owner, task.completed_by)
            or (task.status in ACTIVE_TASK_STATES and _is_candidate(task, actor)))


def supervised_branch(actor: Actor) -> str | None:
    """A supervisor who belongs to a branch supervises that branch (branch management sees
    its branch, docs/domain.md#case-visibility); one at headquarters, and administrators,
    everything."""
    return None if actor.is_admin else actor.branch_code


def _in_supervised_branch(task: Task, actor: Actor) -> bool:
    branch = supervised_branch(actor)
    return branch is None or task.branch_code in (None, branch)


def _refuse_excluded(session: Session, task: Task, username: str) -> Actor:
    """A task cannot be given to someone it recuses, nor to someone a step of its case recuses
    case-wide (a complaint's subject cannot read the case, so cannot hold any of its steps);
    returns who they are."""
    target = actor_for(session, get_user(session, username))
    if task.excluded and is_excluded(task, target):
        raise Recused(f"{username} is excluded from task {task.id} (recusal) and cannot be given it")
    if session.execute(select(TaskExclusion.task_id).join(Task, Task.id == TaskExclusion.task_id).where(
            Task.instance_id == task.instance_id, TaskExclusion.case_wide.is_(True),
            TaskExclusion.principal.in_(principals(target))).limit(1)).first() is not None:
        raise Recused(f"{username} is recused from the whole case and cannot be given any of its tasks")
    return target


_CASE_RECUSED = (
    select(TaskExclusion.task_id).join(Task, Task.id == TaskExclusion.task_id)
    .where(Task.instance_id == bindparam("instance_id"), TaskExclusion.case_wide.is_(True),
           TaskExclusion.principal.in_(bindparam("principals", expanding=True))).limit(1))


def recused_from_case(session: Session, instance_id: int, actor: Actor) -> bool:
    """Whether a step of the case recuses ``actor`` case-wide (a complaint's subject): then
    none of the case's tasks exists for them either, whatever their role."""
    return session.execute(_CASE_RECUSED, {"instance_id": instance_id,
                                           "principals": principals(actor)}).first() is not None


def get(session: Session, task_id: int, *, actor: Actor) -> Task:
    """One scoped lookup: a task the actor may not see does not exist for them."""
    task = session.get(Task, task_id)
    if task is None or not can_see(task, actor) or recused_from_case(session, task.instance_id, actor):
        raise TaskNotFound(f"no task {task_id}")
    return task


_LOCK_BY_TASK = lock_statement(
    ProcessInstance.id == select(Task.instance_id).where(Task.id == bindparam("task_id")).scalar_subquery())
_READ_TASK = select(Task).where(Task.id == bindparam("task_id")).execution_options(populate_existing=True)


def _lock(session: Session, task_id: int, actor: Actor) -> tuple[Task, ProcessInstance]:
    """Lock the task's instance, then read the task: whoever held the lock before us may
    have completed or claimed it. Two statements: the lock finds the instance through the
    task, and the task is read once, after the lock."""
    instance = lock_instance_row(session, _LOCK_BY_TASK, {"task_id": task_id})
    task = session.execute(_READ_TASK, {"task_id": task_id}).scalar_one_or_none()
    # A candidate who lost the race for a task (completed or cancelled under them) is told so
    # (409 below), not that it does not exist: they saw it a moment ago.
    offered = task is not None and not is_excluded(task, actor) and _is_candidate(task, actor)
    if (task is None or instance is None or not (offered or can_see(task, actor))
            or recused_from_case(session, instance.id, actor)):
        raise TaskNotFound(f"no task {task_id}")
    if instance.status not in (InstanceStatus.RUNNING, InstanceStatus.FAILED):
        raise InstanceNotRunning(f"instance {instance.id} is {instance.status}")
    if task.status not in ACTIVE_TASK_STATES:
        raise TaskNotOpen(f"task {task_id} is already {task.status}")
    return task, instance


def claim(session: Session, rt: Runtime, *, task_id: int, actor: Actor) -> Task:
    task, instance = _lock(session, task_id, actor)
    if task.assignee == actor.username:
        return task
    if task.assignee is not None:
        raise TaskAlreadyClaimed(f"task {task_id} is claimed by {task.assignee}")
    if not _is_candidate(task, actor):
        raise NotCandidate("only a member of the task's candidate groups may claim it")
    task.assignee, task.status = actor.username, TaskStatus.CLAIMED
    audit(session, rt, instance, "task.claimed", actor, task_uuid=task.task_uuid, task_id=task.id)
    return task


def unclaim(session: Session, rt: Runtime, *, task_id: int, actor: Actor) -> Task:
    task, instance = _lock(session, task_id, actor)
    if task.assignee != actor.username and not actor.has_role(SUPERVISOR):
        raise NotAssignee("only the assignee or a supervisor may release a task")
    previous, task.assignee, task.owner, task.status = task.assignee, None, None, TaskStatus.OPEN
    audit(session, rt, instance, "task.unclaimed", actor, task_uuid=task.task_uuid,
          task_id=task.id, previous_assignee=previous)
    return task


def assign(session: Session, rt: Runtime, *, task_id: int, username: str, actor: Actor,
           reason: str | None = None, candidates_only: bool = False) -> Task:
    """A supervisor gives the task to someone (reassignment included): a member of one of its
    candidate groups. Whoever holds a step reads the whole case, so giving it to anyone else
    (a colleague standing in from another team) is an override the supervisor states a
    ``reason`` for, kept in the audit trail; without one it is refused, and with
    ``candidates_only`` (a bulk reassignment) it is refused whatever the reason."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("assigning a task needs the supervisor role")
    target = get_user(session, username)
    if not target.active:
        raise InvalidInput(f"user {username!r} is inactive")
    task, instance = _lock(session, task_id, actor)
    override = not _is_candidate(task, _refuse_excluded(session, task, username))
    reason = (reason or "").strip() or None
    if override and candidates_only:
        raise NotCandidate(f"{username} is in none of the task's candidate groups")
    if override and reason is None:
        raise NotCandidate(f"{username} is in none of the task's candidate groups; to give it to them all the "
                           "same, state a reason (it is audited)")
    previous, task.assignee, task.status = task.assignee, username, TaskStatus.CLAIMED
    extra: dict[str, Any] = {"override": True} if override else {}
    if reason is not None:
        extra["reason"] = reason
    audit(session, rt, instance, "task.assigned", actor, task_uuid=task.task_uuid, task_id=task.id,
          assignee=username, previous_assignee=previous, **extra)
    return task


def delegate(session: Session, rt: Runtime, *, task_id: int, username: str, actor: Actor) -> Task:
    """The assignee hands the task to a colleague and remains its owner."""
    target = get_user(session, username)
    if not target.active:
        raise InvalidInput(f"user {username!r} is inactive")
    task, instance = _lock(session, task_id, actor)
    if task.assignee != actor.username:
        raise NotAssignee("only the assignee may delegate a task")
    _refuse_excluded(session, task, username)
    task.owner = task.owner or actor.username
    task.assignee = username
    audit(session, rt, instance, "task.delegated", actor, task_uuid=task.task_uuid,
          task_id=task.id, assignee=username, owner=task.owner)
    return task


def validate_form(rt: Runtime, session: Session, instance: ProcessInstance, task: Task,
                  data: dict[str, Any], *, workflow: Any = None, spiff_task: Any = None) -> None:
    """Refuse form data (422 ``form_invalid``, every problem listed): what the form's JSON
    Schema refuses; a field the form does not declare; and, given the step (``spiff_task``
    of ``workflow``), a value that would change a variable the engine set (docs/api.md).
    A message that would quote what was typed masks the identifiers in it."""
    errors: list[FieldError] = []
    validator = rt.form_validator(session, instance.process_version_id, task.form_key) if task.form_key else None
    if validator is not None:
        declared = declared_fields(validator.schema)
        # What the engine already knows of the case counts as given: a complaint started for a
        # registered client need not name the client again, so a form's "without a client,
        # the complainant's name and phone" rule asks them of a walk-in only.
        fields = validator.schema.get("properties") or {} if isinstance(validator.schema, dict) else {}
        known = {name: spiff_task.data[name] for name in ENGINE_VARIABLES
                 if spiff_task is not None and spiff_task.data.get(name) is not None and name in fields}
        errors += [
            FieldError(field=mask_text("/".join(str(p) for p in error.absolute_path) or
                                       (error.validator in ("required", "additionalProperties")
                                        and _missing_field(error.message)) or ""),
                       message=_message(error))
            for error in sorted(validator.iter_errors({**known, **data}), key=lambda e: list(e.absolute_path))
        ]
        if declared is not None:
            patterns = _patterns(validator.schema)
            errors += [FieldError(field=mask_text(name),
                                  message=mask_text(f"{name!r} is not a field of the form {task.form_key!r}"))
                       for name in sorted(set(data) - declared) if not any(p.search(name) for p in patterns)]
    if spiff_task is not None:
        errors += _engine_value_errors(workflow, spiff_task, data)
    if errors:
        raise FormValidationError(f"the form {task.form_key!r} has {len(errors)} error(s)", errors)


def _patterns(schema: Any) -> list[re.Pattern[str]]:
    return [re.compile(p) for p in (schema.get("patternProperties") or {})] if isinstance(schema, dict) else []


def _engine_value_errors(workflow: Any, spiff_task: Any, data: dict[str, Any]) -> list[FieldError]:
    """A form may carry a variable the engine writes only where the engine has not set it yet
    (a walk-in complainant's ``client_id`` at registration) or with the value it already has;
    a value that would change it is refused, whoever completes the step. The step's own
    ``completedByVariable`` is set by the engine after the form (a form cannot name someone
    else), and a step the diagram makes the authority for a fact (``writesEngineVariables``:
    a risk re-assessment's ``risk_level``) may change that fact."""
    properties = properties_of(spiff_task.task_spec)
    allowed = writable_variables(spiff_task.task_spec) | {properties.get(COMPLETED_BY_VARIABLE)}
    reserved = reserved_names(workflow) - allowed
    return [FieldError(field=name, message=f"{name!r} is set by the engine for this case; a form cannot change it")
            for name in sorted(set(data) & reserved) if changes_engine_value(spiff_task.data, name, data[name])]


def form_of(session: Session, rt: Runtime, task: Task) -> dict[str, Any] | None:
    """The task's JSON Schema form, as deployed with its process version."""
    if not task.form_key:
        return None
    version_id = session.execute(select(ProcessInstance.process_version_id)
                                 .where(ProcessInstance.id == task.instance_id)).scalar_one()
    validator = rt.form_validator(session, version_id, task.form_key)
    return dict(validator.schema) if validator is not None else None


def _message(error: Any) -> str:
    """jsonschema's message, which quotes the refused value (``'13761547720' is too long``),
    with that value masked as the field's own value is wherever it is shown."""
    name = next((p for p in reversed(error.absolute_path) if isinstance(p, str)), "")
    return mask_echo(error.message, error.instance, name)


def _missing_field(message: str) -> str:
    # jsonschema reports a missing property on the parent: "'amount' is a required property"
    return message.split("'")[1] if message.count("'") >= 2 else ""


def complete(session: Session, rt: Runtime, *, task_id: int, actor: Actor,
             data: dict[str, Any] | None = None) -> Task:
    check_variables(rt.settings, data or {}, field="data")
    data = json_safe(data or {})
    task, instance = _lock(session, task_id, actor)
    if instance.status == InstanceStatus.FAILED:
        raise InstanceNotRunning(f"instance {instance.id} failed: {instance.error}")
    if task.assignee is None:
        if not _is_candidate(task, actor):
            raise NotCandidate("only a member of the task's candidate groups may complete it")
        task.assignee = actor.username
        audit(session, rt, instance, "task.claimed", actor, task_uuid=task.task_uuid, task_id=task.id)
    elif task.assignee != actor.username:
        raise NotAssignee(f"task {task_id} is assigned to {task.assignee}")
    now = rt.now()
    if task.kind == TaskKind.ESCALATION:
        validate_form(rt, session, instance, task, data)
        # An escalation opened by an SLA milestone is not a diagram step: closing it records
        # the supervisor's handling and leaves the process where it is.
        task.status, task.completed_at, task.completed_by = TaskStatus.COMPLETED, now, actor.username
        audit(session, rt, instance, "task.completed", actor, task_uuid=task.task_uuid,
              task_id=task.id, element_id=task.element_id, data=data)
        return task

    workflow = rt.load(session, instance)
    spiff_task = workflow.get_task_from_id(UUID(task.task_uuid))
    if spiff_task is None or not spiff_task.has_state(TaskState.READY):
        raise TaskNotOpen(f"task {task_id} is no longer waiting for input")
    validate_form(rt, session, instance, task, data, workflow=workflow, spiff_task=spiff_task)
    spiff_task.set_data(**data)
    check_case(rt.settings, spiff_task.data, field="data")
    completed_by_variable = properties_of(spiff_task.task_spec).get(COMPLETED_BY_VARIABLE)
    if completed_by_variable:
        # "Who did this step" for later steps' rules (QA is not the caller; the approver is
        # not the nominator), set by the engine so a form cannot claim someone else did it.
        spiff_task.data[completed_by_variable] = actor.username
    for hook in rt.on_task_completed:
        hook(session, rt, instance, spiff_task, actor)
    spiff_task.run()
    task.status, task.completed_at, task.completed_by = TaskStatus.COMPLETED, now, actor.username
    audit(session, rt, instance, "task.completed", actor, task_uuid=task.task_uuid,
          task_id=task.id, element_id=task.element_id, data=data)
    run_and_save(session, rt, instance, workflow, actor=actor)
    return task


def won_by(session: Session, *, task_id: int, actor: Actor) -> str | None:
    """Who completed the task, told to a candidate who was filling it in when someone else
    completed it (they knew of the task; a stranger learns nothing): else None."""
    task = session.get(Task, task_id)
    if task is None or task.status != TaskStatus.COMPLETED or task.completed_by == actor.username:
        return None
    if not _is_candidate(task, actor) or is_excluded(task, actor):
        return None
    return task.completed_by


def opened(session: Session, actor: Actor) -> list[Task]:
    """The tasks this unit of work opened that ``actor`` may see: what a completion hands
    its user next (often their own next step), without a second request to the inbox."""
    return [t for t in opened_tasks(session) if t.status in ACTIVE_TASK_STATES and can_see(t, actor)]


def pause(session: Session, rt: Runtime, *, task_id: int, actor: Actor, reason: str) -> Task:
    """Mark the task "waiting for client": its SLA clock stops."""
    task, instance = _lock(session, task_id, actor)
    if task.assignee != actor.username and not actor.has_role(SUPERVISOR):
        raise NotAssignee("only the assignee or a supervisor may pause a task's clock")
    sla_clock.pause(session, rt, task=task, instance=instance, actor=actor, reason=reason)
    return task


def resume(session: Session, rt: Runtime, *, task_id: int, actor: Actor) -> Task:
    """The client answered: the clock runs again and the due date moves by the pause."""
    task, instance = _lock(session, task_id, actor)
    if task.assignee != actor.username and not actor.has_role(SUPERVISOR):
        raise NotAssignee("only the assignee or a supervisor may resume a task's clock")
    sla_clock.resume(session, rt, task=task, instance=instance, actor=actor)
    return task


# -- inbox --------------------------------------------------------------------------------
SORTS = ("due", "priority", "created")


@dataclass(frozen=True)
class InboxQuery:
    """Filters of the inbox; every one narrows what the caller may see anyway."""

    assignee_me: bool = False
    candidate_me: bool = False
    status: tuple[str, ...] = ACTIVE_TASK_STATES
    overdue: bool = False
    at_risk: bool = False  # not yet due, but past the point the SLA calls at risk
    due_within: timedelta | None = None
    process_key: str | None = None
    business_key: str | None = None
    element_id: str | None = None  # one step of the process
    client_id: str | None = None
    group: str | None = None  # offered to this candidate group
    branch: str | None = None
    assignee: str | None = None  # held by this person
    sort: str = "due"  # due (nearest deadline first), priority (highest first), created (newest first)
    limit: int = 50
    offset: int = 0


_Shape = tuple[bool, ...]
_FILTERS = (("process_key", Task.process_key), ("business_key", Task.business_key),
            ("element_id", Task.element_id), ("client_id", Task.client_id), ("branch", Task.branch_code),
            ("assignee", Task.assignee))
_ORDER: dict[str, tuple[Any, ...]] = {
    # Tasks without a due date sort last. Written NULLS LAST (both stores know it) rather than
    # "due_at IS NULL, due_at": the open tasks' due-date index (ix_task_open_due) then gives
    # the rows in order, and a page of 50 reads about 50 rows, not every open task.
    "due": (Task.due_at.asc().nulls_last(), Task.priority.desc(), Task.id),
    "priority": (Task.priority.desc(), Task.due_at.asc().nulls_last(), Task.id),
    "created": (Task.created_at.desc(), Task.id.desc()),
}


def not_recused(principals: Any) -> list[ColumnElement[bool]]:
    """WHERE clauses keeping out the tasks that recuse any of ``principals`` (a list, or a
    bound parameter standing for one). Recusal hides a task from everyone it names,
    supervisors included; recusal reaching the whole case (a complaint's subject), every
    task of the case."""
    sibling = aliased(Task)
    return [~exists().where(TaskExclusion.task_id == Task.id, TaskExclusion.principal.in_(principals)),
            ~exists().where(sibling.instance_id == Task.instance_id, TaskExclusion.task_id == sibling.id,
                            TaskExclusion.case_wide.is_(True), TaskExclusion.principal.in_(principals))]


def _offered(groups: Any) -> Any:
    """The tasks open and offered to any of ``groups``: their candidate rows that are still
    active (a partial index, migration 0019), so a queue is read by its open tasks only."""
    return Task.id.in_(select(TaskCandidate.task_id).where(TaskCandidate.group_key.in_(groups),
                                                          TaskCandidate.active == true()))


# A person in at most this many groups offered every task naming them reads each group's
# queue as a branch of its own, from the group's candidate rows in the list's order (migration
# 0024); more groups (an administrator's) are read as one branch, offered to any of them.
QUEUE_BRANCHES = 6


@dataclass(frozen=True)
class _Branch:
    """One branch of the inbox's union: its conditions on ``Task`` and, for a group's queue,
    the number of the group (``queue_<n>``) whose candidate rows it reads in order."""

    where: tuple[Any, ...]
    queue: int | None = None
    # Only tasks nobody holds: said of the candidate row when the queue is read from its rows
    # (said of the task, the planner takes it for a filter keeping a twentieth of the rows,
    # most tasks being history held by someone, and sorts the whole queue; migration 0025).
    unclaimed: bool = False


# Each "who may see it" branch of the inbox, as (shape flag, condition) builders: an OR of
# them defeats every index (the planner reads every open task and sorts them), while each on
# its own is one index range in due order; the inbox asks each for a page and merges them.
def _visibility_branches(assignee_me: bool, candidate_me: bool, free_groups: int, has_bound: bool,
                         supervisor: bool, branch_scoped: bool) -> list[_Branch] | None:
    """The union's branches; ``None``: no condition (a supervisor at headquarters sees every
    task). ``free_groups``: how many groups offer the person every task naming them, or
    ``QUEUE_BRANCHES + 1`` for more than are read one by one."""
    me = bindparam("me", type_=String)
    if free_groups > QUEUE_BRANCHES:
        queues = [_Branch((_offered(bindparam("groups", expanding=True)),))]
    else:
        queues = [_Branch((), queue=n) for n in range(free_groups)]
    bound = [or_(Task.branch_code.is_(None), Task.branch_code == bindparam("my_branch", type_=String)),
             _offered(bindparam("bound_groups", expanding=True))]
    if assignee_me:
        return [_Branch((Task.assignee == me,))]
    if candidate_me:
        found = [_Branch(q.where, q.queue, unclaimed=True) if q.queue is not None
                 else _Branch((Task.assignee.is_(None), *q.where)) for q in queues]
        if has_bound:
            # Written as two branches, not an OR: each is an index range of its own.
            found += [_Branch((Task.assignee.is_(None), Task.branch_code.is_(None), bound[1])),
                      _Branch((Task.assignee.is_(None), Task.branch_code == bindparam("my_branch", type_=String),
                               bound[1]))]
        return found or [_Branch((false(),))]
    if supervisor and not branch_scoped:
        return None
    found = [_Branch((Task.assignee == me,)), _Branch((Task.owner == me,)), *queues]
    if has_bound:
        found += [_Branch((Task.branch_code.is_(None), bound[1])),
                  _Branch((Task.branch_code == bindparam("my_branch", type_=String), bound[1]))]
    if supervisor:
        # A branch supervisor also sees their branch's tasks and tasks tied to no branch:
        # on top of their own and their groups', never instead of them (a candidate
        # outside the branch still finds the task they may claim).
        found += [_Branch((Task.branch_code == bindparam("supervised_branch", type_=String),)),
                  _Branch((Task.branch_code.is_(None),))]
    return found


_QUEUE_ORDER: dict[str, tuple[Any, ...]] = {
    "due": (TaskCandidate.due_at.asc().nulls_last(), TaskCandidate.priority.desc(), TaskCandidate.task_id),
    "priority": (TaskCandidate.priority.desc(), TaskCandidate.due_at.asc().nulls_last(), TaskCandidate.task_id),
}


def _branch_select(columns: Any, branch: _Branch, where: list[Any], sort: str, due_ranges: list[Any]) -> Select[Any]:
    """``SELECT columns`` of one branch, ordered as the list is. A group's queue is read from
    its candidate rows, whose due date and priority are the task's (migration 0024): in the
    list's order that is one index range of the group, stopped after a page, instead of every
    task the group was offered sorted, or the firm's open tasks walked for the group's.
    ``due_ranges`` (the list's due-date conditions) are said of the column the branch reads
    in order, and of that one only: said of both, the planner takes them for independent
    conditions, expects next to no rows and picks plans that are slow for many."""
    if branch.queue is None:
        return (select(*columns).where(*where, *[r(Task.due_at) for r in due_ranges], *branch.where)
                .order_by(*_ORDER[sort]))
    group = bindparam(f"queue_{branch.queue}", type_=String)
    if sort not in _QUEUE_ORDER:  # newest first: the candidate rows have no creation time
        return (select(*columns).where(*where, *[r(Task.due_at) for r in due_ranges], *branch.where,
                                       *([Task.assignee.is_(None)] if branch.unclaimed else []), _offered([group]))
                .order_by(*_ORDER[sort]))
    return (select(*columns).join(TaskCandidate, TaskCandidate.task_id == Task.id)
            .where(TaskCandidate.group_key == group, TaskCandidate.active == true(),
                   *([TaskCandidate.claimed.is_(False)] if branch.unclaimed else []),
                   *[r(TaskCandidate.due_at) for r in due_ranges], *where, *branch.where)
            .order_by(*_QUEUE_ORDER[sort]))


@lru_cache(maxsize=512)
def _inbox_statements(shape: _Shape, sort: str) -> tuple[Select[Any], Select[Any], Select[Any]]:
    """The inbox query for one combination of filters, with every value a bound parameter.

    Built once per shape: constructing a statement of this size (and its cache key) costs
    more than running it, and the inbox is the most frequent request there is.

    Who may see a task is several conditions (theirs, delegated by them, offered to their
    groups, in the branch they supervise); each becomes a branch of a UNION that reads one
    index range in the list's order and stops after a page (``window`` rows), and the page
    is taken from their merge: a page costs about (branches x page) rows, however long the
    queues. Counts stop at ``cap`` rows in each branch for the same reason."""
    (assignee_me, candidate_me, overdue, at_risk, due_within, by_group, supervisor, free_groups, has_bound,
     branch_scoped, open_only, all_open, *by_column) = shape
    status = Task.status.in_(bindparam("status", expanding=True))
    where: list[Any] = [status]
    due_ranges: list[Any] = []  # the due-date conditions, of whichever column is read
    if overdue:
        due_ranges.append(lambda due: due < bindparam("now"))
    if at_risk:
        due_ranges.append(lambda due: due >= bindparam("now"))
        where.append(Task.at_risk_at <= bindparam("now"))
    if due_within:
        due_ranges += [lambda due: due >= bindparam("now"), lambda due: due < bindparam("until")]
    if by_group:
        # Open tasks: the group's active candidate rows (its open queue); otherwise all of them.
        offered = select(TaskCandidate.task_id).where(TaskCandidate.group_key == bindparam("group", type_=String))
        where.append(Task.id.in_(offered.where(TaskCandidate.active == true()) if open_only else offered))
    for (name, column), wanted in zip(_FILTERS, by_column, strict=True):
        if wanted:
            where.append(column == bindparam(name, type_=String))
    where += not_recused(bindparam("principals", expanding=True))
    branches = _visibility_branches(assignee_me, candidate_me, free_groups, has_bound, supervisor, branch_scoped)
    order = _ORDER[sort]
    # A group's queue read from its active candidate rows holds only open and claimed tasks (the
    # trigger keeps ``active`` so): said of the task as well, the status is taken for a filter
    # that keeps a tenth of the rows (most tasks are history), the planner expects a handful
    # from a queue of thousands, and sorts the whole queue instead of reading a page in order.
    queue_where = [w for w in where if w is not status] if all_open else where

    def where_of(branch: _Branch) -> list[Any]:
        return queue_where if branch.queue is not None and sort in _QUEUE_ORDER else where

    if branches is None or len(branches) == 1:
        branch = branches[0] if branches else _Branch(())
        stmt = _branch_select([Task], branch, where_of(branch), sort, due_ranges)
        page = stmt.limit(bindparam("limit", type_=Integer)).offset(bindparam("offset", type_=Integer))
        ids = stmt.with_only_columns(Task.id).order_by(None)
        capped = select(func.count()).select_from(ids.limit(bindparam("cap", type_=Integer)).subquery())
        return page, select(func.count()).select_from(ids.subquery()), capped
    windows = [_branch_select([Task.id], branch, where_of(branch), sort, due_ranges)
               .limit(bindparam("window", type_=Integer)).subquery() for branch in branches]
    merged = union(*(select(w.c.id) for w in windows)).subquery()
    page = (select(Task).where(Task.id.in_(select(merged.c.id))).order_by(*order)
            .limit(bindparam("limit", type_=Integer)).offset(bindparam("offset", type_=Integer)))
    every = [_branch_select([Task.id], branch, where_of(branch), sort, due_ranges)
             .order_by(None) for branch in branches]
    capped_parts = [part.limit(bindparam("cap", type_=Integer)).subquery() for part in every]
    capped_union = union(*(select(c.c.id) for c in capped_parts)).subquery()
    capped = select(func.count()).select_from(select(capped_union.c.id).limit(bindparam("cap", type_=Integer))
                                              .subquery())
    everything = union(*every).subquery()
    return page, select(func.count()).select_from(everything), capped


def _statements_and_params(actor: Actor, query: InboxQuery,
                            now: datetime) -> tuple[tuple[Select[Any], Select[Any], Select[Any]], dict[str, Any]]:
    if query.sort not in SORTS:
        raise InvalidInput(f"sort must be one of {', '.join(SORTS)}", field="sort")
    supervisor = actor.has_role(SUPERVISOR)
    free, bound, my_branch = offer_groups(actor)
    shape = (query.assignee_me, query.candidate_me, query.overdue, query.at_risk, query.due_within is not None,
             bool(query.group), supervisor, min(len(free), QUEUE_BRANCHES + 1), bool(bound),
             supervised_branch(actor) is not None,
             set(query.status) <= set(ACTIVE_TASK_STATES), set(query.status) == set(ACTIVE_TASK_STATES),
             *(bool(getattr(query, name)) for name, _ in _FILTERS))
    params: dict[str, Any] = {
        "status": list(query.status), "me": actor.username, "groups": free, "bound_groups": bound,
        "my_branch": my_branch, "window": query.limit + query.offset,
        "now": now, "until": now + query.due_within if query.due_within is not None else now,
        "group": query.group, "principals": principals(actor), "limit": query.limit, "offset": query.offset,
        "supervised_branch": supervised_branch(actor),
        **({f"queue_{n}": group for n, group in enumerate(free)} if len(free) <= QUEUE_BRANCHES else {}),
        **{name: getattr(query, name) for name, _ in _FILTERS},
    }
    return _inbox_statements(shape, query.sort), params


def inbox(session: Session, *, actor: Actor, query: InboxQuery, now: datetime,
          count_total: bool = True) -> tuple[list[Task], int]:
    """One page of the tasks the query finds, and how many there are in all (without
    ``count_total``, only as many as this page tells: the pages page on, they do not count)."""
    (page, count, _), params = _statements_and_params(actor, query, now)
    rows = list(session.execute(page, params).scalars())
    if not count_total or 0 < len(rows) < query.limit or (not rows and query.offset == 0):
        # A page that is not full and not past the end already tells the total.
        return rows, query.offset + len(rows)
    total = session.execute(count, params).scalar_one()
    return rows, total


def count(session: Session, *, actor: Actor, query: InboxQuery, now: datetime, cap: int = 1000) -> int:
    """How many tasks the query finds, counting no further than ``cap`` (a tab's badge reads
    "999+" beyond that): the cost stays that of ``cap`` rows however long the queue."""
    (_, _, capped), params = _statements_and_params(actor, query, now)
    found: int = session.execute(capped, {**params, "cap": cap}).scalar_one()
    return found


def each(session: Session, *, actor: Actor, query: InboxQuery, now: datetime, batch: int = 500) -> Iterator[list[Task]]:
    """Every task the query finds, in its order, a batch at a time: an export of a whole
    queue reads it through one cursor (a server-side one on PostgreSQL) and holds one batch."""
    (page, _, _), params = _statements_and_params(actor, replace(query, limit=2**31 - 1, offset=0), now)
    result = session.execute(page.execution_options(yield_per=batch), params).scalars()
    for part in result.partitions(batch):
        yield list(part)
