"""Projections (invariant 3): what is queried is kept in indexed rows, so no query reads a
workflow. After every step, :func:`project` brings the open human tasks (inbox), message
subscriptions and waiting timers of an instance in line with its workflow: it inserts
tasks with their candidate groups, recusals and SLA clock, and retires what the step ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import String, bindparam, delete, func, insert, select, update
from sqlalchemy import event as sa_event
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from engine.access.assignment import resolve_candidate_groups
from engine.bpmn.date_functions import DateFunctions
from engine.bpmn.expressions import unwrap
from engine.bpmn.lint import candidate_groups_of
from engine.bpmn.parser import (
    CANDIDATE_GROUPS_IF_NONE,
    EXCLUDE_GROUPS,
    EXCLUDE_SERVICE_GROUPS_OF,
    EXCLUDE_USERS,
    RECUSAL_SCOPE,
    SEPARATE_FROM,
    SLA_POLICY,
    camunda_of,
    exclusion_parts,
    properties_of,
)
from engine.bpmn.script_engine import date_functions_for
from engine.calendars import BusinessCalendar
from engine.errors import ExpressionError, InvalidInput
from engine.models import (
    ACTIVE_TASK_STATES,
    Group,
    GroupMember,
    InstanceStatus,
    MessageSubscription,
    ProcessInstance,
    StaffProfile,
    Task,
    TaskCandidate,
    TaskExclusion,
    TaskStatus,
    Timer,
    TimerKind,
    TimerStatus,
    User,
)
from engine.process.runtime import Runtime
from engine.sla import case_clock, clock, milestones
from engine.sla.calendar_store import CALENDARS

KIND_TASK, KIND_MESSAGE, KIND_TIMER = "task", "message", "timer"


def _wanted(workflow: BpmnWorkflow, instance: ProcessInstance) -> dict[str, tuple[str, Any]]:
    wanted: dict[str, tuple[str, Any]] = {}
    if instance.status in (InstanceStatus.COMPLETED, InstanceStatus.CANCELLED):
        return wanted
    if instance.status in (InstanceStatus.RUNNING, InstanceStatus.FAILED):
        # A failed instance keeps its open tasks visible (completing them answers
        # "instance failed" until an administrator retries), rather than losing them.
        for task in workflow.get_tasks(state=TaskState.READY, manual=True):
            wanted[str(task.id)] = (KIND_TASK, task)
    for task in workflow.get_tasks(state=TaskState.WAITING):
        definition = getattr(task.task_spec, "event_definition", None)
        if definition is None:
            continue
        definitions = [definition, *getattr(definition, "event_definitions", [])]
        if any(isinstance(d, MessageEventDefinition) for d in definitions):
            wanted[str(task.id)] = (KIND_MESSAGE, task)
        elif any(isinstance(d, TimerEventDefinition) for d in definitions):
            wanted[str(task.id)] = (KIND_TIMER, task)
    return wanted


def project(session: Session, rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow, *,
            now: datetime) -> None:
    """Bring the inbox, subscription and timer rows in line with the workflow.

    The instance row remembers what is projected, so this diffs in memory and writes only
    what changed: usually one insert and one update per step.
    """
    wanted = _wanted(workflow, instance)
    current = dict(instance.projected or {})
    # Set before the rows below are written: their flushes then carry it in the same UPDATE
    # of the instance row as the state, instead of a second UPDATE at commit.
    instance.projected = {uuid: kind for uuid, (kind, _) in wanted.items()}
    gone = {uuid: kind for uuid, kind in current.items() if uuid not in wanted}
    if gone:
        _retire(session, workflow, gone, now)
        retired = [u for u, k in gone.items() if k == KIND_TASK]
        if retired:
            milestones.close_escalations(session, instance, retired, now)
    for uuid, (kind, task) in wanted.items():
        if current.get(uuid) == kind:
            continue
        if kind == KIND_TASK:
            _insert_task(session, rt, instance, task, now)
        elif kind == KIND_MESSAGE:
            _insert_subscriptions(session, rt, instance, task, now)
        else:
            _insert_timer(session, rt, instance, task, now)


def _retire(session: Session, workflow: BpmnWorkflow, gone: dict[str, str], now: datetime) -> None:
    tasks = [u for u, k in gone.items() if k == KIND_TASK]
    messages = [u for u, k in gone.items() if k == KIND_MESSAGE]
    timers = [u for u, k in gone.items() if k == KIND_TIMER]
    if tasks:
        # A task completed through the API is already marked completed by its service;
        # whatever is still open here was cancelled by the process (boundary, cancel, end).
        # Rows this transaction already holds are settled in memory (no statement); the rest
        # by one UPDATE each.
        loaded = {t.task_uuid: t for t in session.identity_map.values() if isinstance(t, Task)}
        unknown = [u for u in tasks if u not in loaded]
        for uuid in tasks:
            row = loaded.get(uuid)
            if row is not None and row.status in ACTIVE_TASK_STATES:
                row.status, row.completed_at = TaskStatus.CANCELLED, now
        with_sla = unknown + [u for u in tasks if u in loaded and loaded[u].sla_policy_id is not None]
        if with_sla:
            milestones.retire_task_timers(session, with_sla)
        for row in opened_tasks(session):
            if row.task_uuid in unknown:  # opened earlier in this unit of work, now gone
                row.status, row.completed_at = TaskStatus.CANCELLED, now
        if unknown:
            session.execute(
                update(Task).where(Task.task_uuid.in_(unknown), Task.status.in_(ACTIVE_TASK_STATES))
                .values(status=TaskStatus.CANCELLED, completed_at=now)
            )
    if messages:
        session.execute(delete(MessageSubscription).where(MessageSubscription.task_uuid.in_(messages)))
    settled = session.info.get(_SETTLED_TIMERS, set())
    timers = [u for u in timers if u not in settled]
    if timers:
        fired: list[str] = []
        cancelled: list[str] = []
        for uuid in timers:
            task = workflow.get_task_from_id(UUID(uuid))
            (fired if task is not None and task.has_state(TaskState.COMPLETED | TaskState.READY)
             else cancelled).append(uuid)
        for uuids, status in ((fired, TimerStatus.FIRED), (cancelled, TimerStatus.CANCELLED)):
            if uuids:
                session.execute(
                    update(Timer).where(Timer.task_uuid.in_(uuids), Timer.status == TimerStatus.WAITING)
                    .values(status=status, fired_at=now if status == TimerStatus.FIRED else None)
                )


_SETTLED_TIMERS = "bpm_settled_timers"


def settled_timer(session: Session, task_uuid: str) -> None:
    """The caller already marked this timer's row fired: retiring it needs no statement."""
    session.info.setdefault(_SETTLED_TIMERS, set()).add(task_uuid)


def _evaluate_attribute(rt: Runtime, task: Any, value: str | None, dates: DateFunctions | None = None) -> Any:
    if value is None:
        return None
    stripped = value.strip()
    if stripped.startswith(("${", "#{")):
        return rt.evaluator.evaluate(stripped, task.data, dates=dates)
    return stripped


def _as_datetime(session: Session, value: Any, what: str) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, date) and not isinstance(value, datetime):
        day: date | None = value
    else:
        day = _date_only(value)
    if day is not None:
        # A date without a time (a regulator's "reply by 2027-01-08"): the end of that
        # working day in Beijing time, on the default business calendar.
        return _default_calendar(session).close_of_working_day(day)
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ExpressionError(f"{what} {value!r} has no UTC offset")
    return parsed


def _default_calendar(session: Session) -> BusinessCalendar:
    try:
        return CALENDARS.get(session, "default")
    except InvalidInput:  # no business hours stored yet: weekdays, 09:00-17:00 Beijing time
        return BusinessCalendar({})


def _date_only(value: Any) -> date | None:
    text = str(value).strip()
    if len(text) != 10:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class Assignment:
    """What a step's attributes give for one task: who may take it, who is recused, when it
    is due (as the diagram says; the SLA policy comes after)."""

    assignee: str | None
    due_at: datetime | None
    follow_up_at: datetime | None
    priority: int
    groups: list[str]
    excluded: list[str]
    separated: list[str]
    case_wide: bool
    calendar_incomplete: bool


def assignment_for(session: Session, rt: Runtime, instance: ProcessInstance, task: Any) -> Assignment:
    """Evaluate the step's assignment and dates for ``task`` (raises ExpressionError or
    ValueError when one cannot be used). Used for a new task, and for an open task moved to
    another version of its diagram (``engine.process.migration``)."""
    spec = task.task_spec
    camunda = camunda_of(spec)
    dates = date_functions_for(task)  # a due date computed on guessed calendar days flags the task
    assignee = _evaluate_attribute(rt, task, camunda.get("assignee"), dates)
    due_at = _as_datetime(session, _evaluate_attribute(rt, task, camunda.get("dueDate"), dates),
                          "camunda:dueDate")
    follow_up = _as_datetime(session, _evaluate_attribute(rt, task, camunda.get("followUpDate"), dates),
                             "camunda:followUpDate")
    priority_raw = _evaluate_attribute(rt, task, camunda.get("priority"), dates)
    priority = int(priority_raw) if priority_raw not in (None, "") else 50
    groups = resolve_candidate_groups(session, rt.evaluator, candidate_groups_of(spec),
                                      instance=instance, data=task.data)
    properties = properties_of(spec)
    if due_at is None and properties.get(case_clock.DUE_BY_CASE_CLOCK) == "true":
        due_at = case_clock.due_for_step(session, instance.id)
    excluded = _exclusions(session, rt, task, properties)
    separated = [p for p in dict.fromkeys(f"user:{u}" for u in _property_values(rt, task, properties,
                                                                                SEPARATE_FROM))
                 if p not in excluded]
    excluded = excluded + separated
    if properties.get(CANDIDATE_GROUPS_IF_NONE) and not _anyone_left(session, groups, excluded):
        # Nobody may take the step at its own level (the branch's only head investigated the
        # complaint himself): the level above takes it.
        fallback = [g.strip() for g in properties[CANDIDATE_GROUPS_IF_NONE].split(",") if g.strip()]
        groups = resolve_candidate_groups(session, rt.evaluator, fallback, instance=instance, data=task.data)
    if assignee and excluded and _names_user(session, str(assignee), excluded):
        # Recusal beats a computed assignment: a complaint's first-contact owner who is the
        # subject, or in the subject's service group, does not get the step; it waits for
        # its candidates (whom the recusal also filters) until a supervisor hands it over.
        assignee = None
    return Assignment(str(assignee) if assignee else None, due_at, follow_up, priority, groups, excluded,
                      separated, properties.get(RECUSAL_SCOPE) == "case",
                      dates is not None and dates.incomplete)


def _insert_task(session: Session, rt: Runtime, instance: ProcessInstance, task: Any, now: datetime) -> None:
    spec = task.task_spec
    camunda = camunda_of(spec)
    try:
        assigned = assignment_for(session, rt, instance, task)
    except (ExpressionError, ValueError) as exc:
        # The step itself succeeded; an unusable assignment/due expression fails the
        # instance so an administrator sees it, instead of a task nobody can find. No row is
        # written and the task is left unprojected, so a retry projects it afresh.
        instance.status = InstanceStatus.FAILED
        instance.error = f"{spec.bpmn_id}: {exc}"
        instance.projected = {k: v for k, v in (instance.projected or {}).items() if k != str(task.id)}
        return
    assignee, groups, excluded, separated = assigned.assignee, assigned.groups, assigned.excluded, assigned.separated
    row = Task(
        task_uuid=str(task.id), instance_id=instance.id, process_key=instance.process_key,
        element_id=spec.bpmn_id, name=spec.bpmn_name, lane=spec.lane, candidate_groups=groups,
        assignee=str(assignee) if assignee else None, status=TaskStatus.CLAIMED if assignee else TaskStatus.OPEN,
        priority=assigned.priority, created_at=now, due_at=assigned.due_at, follow_up_at=assigned.follow_up_at,
        business_key=instance.business_key, client_id=instance.client_id,
        branch_code=instance.branch_code, form_key=camunda.get("formKey"), excluded=excluded or None,
        calendar_incomplete=assigned.calendar_incomplete, sla_policy_key=properties_of(spec).get(SLA_POLICY),
    )
    # Due date and SLA fields before the INSERT, milestones (which need the id) after it.
    policy = clock.start_clock(session, rt, instance=instance, task=row, data=task.data, now=now)
    # Plain INSERTs, not the unit of work: this runs for every step of every instance, and
    # the ORM's flush costs several times the statements. The row object stays transient;
    # whoever needs the task later in the transaction reads it (``_retire`` does).
    connection = session.connection()
    given = sqlalchemy_inspect(row).dict
    for key in [k for k, default in _TASK_DEFAULTS.items() if default is not None and k not in given]:
        # The column defaults the INSERT would apply, on the object too: it is handed out as
        # it is stored (``opened_tasks``).
        setattr(row, key, _TASK_DEFAULTS[key])
    values = {k: v for k, v in given.items() if not k.startswith("_")}
    if groups and connection.dialect.name == "postgresql":
        # The task and its candidate rows in one statement: the row's id never has to
        # travel back to Python before the candidates can be written.
        params = {**_TASK_DEFAULTS, **values, "groups": groups}
        row.id = connection.execute(_INSERT_TASK_WITH_CANDIDATES, params).scalars().all()[0]
    else:
        row.id = connection.execute(_INSERT_TASK, values).scalar_one()
        if groups:
            connection.execute(_INSERT_CANDIDATE, [{"task_id": row.id, "group_key": g, "priority": row.priority,
                                                    "due_at": row.due_at, "claimed": row.assignee is not None}
                                                   for g in groups])
    session.info.setdefault(_OPENED_TASKS, []).append(row)
    if excluded:
        connection.execute(_INSERT_EXCLUSION, [{"task_id": row.id, "principal": p,
                                                "case_wide": assigned.case_wide and p not in separated}
                                               for p in excluded])
    if policy is not None:
        milestones.schedule_milestones(session, rt, instance=instance, task=row, policy=policy, now=now)


_OPENED_TASKS = "bpm_opened_tasks"


def opened_tasks(session: Session) -> list[Task]:
    """The task rows this unit of work inserted, in order (transient objects, ids set)."""
    return list(session.info.get(_OPENED_TASKS, ()))


@sa_event.listens_for(Session, "after_soft_rollback")
def _forget_opened(session: Session, _previous: Any) -> None:
    # A rolled-back savepoint may have opened some of them: forget all rather than name a
    # task that does not exist (the caller falls back to the inbox).
    session.info.pop(_OPENED_TASKS, None)


_INSERT_TASK = insert(Task).returning(Task.id)
_INSERT_CANDIDATE = insert(TaskCandidate)
# Every column but the id bound by name (a CTE's INSERT takes no implicit column list);
# unset ones get their Python-side default, as the plain INSERT would.
_TASK_COLUMNS = [c for c in Task.__table__.columns if c.key != "id"]
_TASK_DEFAULTS = {c.key: (c.default.arg if c.default is not None and not callable(c.default.arg) else None)
                  for c in _TASK_COLUMNS}
_NEW_TASK = (insert(Task).values({c.key: bindparam(c.key, type_=c.type) for c in _TASK_COLUMNS})
             .returning(Task.id, Task.priority, Task.due_at, Task.assignee).cte("new_task"))
# The candidate rows carry the task's order (migration 0024) and whether it is held (0025), from the
# row just inserted.
_INSERT_TASK_WITH_CANDIDATES = (
    insert(TaskCandidate)
    .from_select(["task_id", "priority", "due_at", "claimed", "group_key"],
                 select(_NEW_TASK.c.id, _NEW_TASK.c.priority, _NEW_TASK.c.due_at, _NEW_TASK.c.assignee.is_not(None),
                        func.unnest(bindparam("groups", type_=ARRAY(String)))))
    .returning(TaskCandidate.task_id)
)
_INSERT_EXCLUSION = insert(TaskExclusion)


def _property_values(rt: Runtime, task: Any, properties: dict[str, str], name: str) -> list[str]:
    """A property is a literal (comma-separated) or an expression giving a name or a list;
    empty values, and a plain ``${variable}`` that is not set (a complaint with no staff
    subject), give nothing."""
    found: list[Any] = []
    for raw in exclusion_parts(properties.get(name) or ""):
        if not raw.startswith(("${", "#{")):
            found += raw.split(",")
        elif not (unwrap(raw).isidentifier() and unwrap(raw) not in task.data):
            value = rt.evaluator.evaluate(raw, task.data)
            found += value if isinstance(value, (list, tuple, set)) else [value]
    return [str(v).strip() for v in found if v is not None and str(v).strip()]


def _anyone_left(session: Session, groups: list[str], excluded: list[str]) -> bool:
    """Whether an active member of ``groups`` is not excluded (by name or by a group of theirs)."""
    if not groups:
        return False
    rows = session.execute(
        select(User.username, Group.key).join(GroupMember, GroupMember.user_id == User.id)
        .join(Group, Group.id == GroupMember.group_id)
        .where(User.active.is_(True), User.id.in_(
            select(GroupMember.user_id).join(Group, Group.id == GroupMember.group_id).where(Group.key.in_(groups))))
    ).all()
    memberships: dict[str, set[str]] = {}
    for username, key in rows:
        memberships.setdefault(username, set()).add(f"group:{key}")
    barred = set(excluded)
    return any(f"user:{u}" not in barred and barred.isdisjoint(keys) for u, keys in memberships.items())


def _exclusions(session: Session, rt: Runtime, task: Any, properties: dict[str, str]) -> list[str]:
    """Principals recused from the task: ``user:<name>`` and ``group:<key>``.
    ``excludeServiceGroupsOf`` names users whose service groups are recused as well."""
    def values_of(name: str) -> list[str]:
        return _property_values(rt, task, properties, name)

    principals = [f"user:{u}" for u in values_of(EXCLUDE_USERS)]
    principals += [f"group:{g}" for g in values_of(EXCLUDE_GROUPS)]
    subjects = values_of(EXCLUDE_SERVICE_GROUPS_OF)
    if subjects:
        groups = session.execute(select(StaffProfile.service_group_key).join(User, User.id == StaffProfile.user_id)
                                 .where(User.username.in_(subjects), StaffProfile.service_group_key.is_not(None))
                                 ).scalars()
        principals += [f"group:{g}" for g in groups]
    return list(dict.fromkeys(principals))


def _names_user(session: Session, username: str, excluded: list[str]) -> bool:
    if f"user:{username}" in excluded:
        return True
    groups = {f"group:{key}" for key in session.execute(
        select(Group.key).join(GroupMember, GroupMember.group_id == Group.id).join(User, User.id == GroupMember.user_id)
        .where(User.username == username)).scalars()}
    return not groups.isdisjoint(excluded)


def declared_correlation_key(rt: Runtime, definition: MessageEventDefinition, data: dict[str, Any]) -> str | None:
    """The key the message's correlation property gives for ``data``, or None when it
    declares none (or none evaluates)."""
    for prop in definition.correlation_properties:
        try:
            return str(rt.evaluator.evaluate(prop.retrieval_expression, data))
        except ExpressionError:
            continue
    return None


def correlation_key_for(rt: Runtime, instance: ProcessInstance, definition: MessageEventDefinition,
                        data: dict[str, Any]) -> str:
    """The business key, unless the message declares a correlation property."""
    key = declared_correlation_key(rt, definition, data)
    return key if key is not None else instance.business_key


def _insert_subscriptions(session: Session, rt: Runtime, instance: ProcessInstance, task: Any,
                          now: datetime) -> None:
    definition = task.task_spec.event_definition
    for d in [definition, *getattr(definition, "event_definitions", [])]:
        if isinstance(d, MessageEventDefinition):
            session.add(MessageSubscription(
                instance_id=instance.id, task_uuid=str(task.id), element_id=task.task_spec.bpmn_id,
                message_name=d.name, correlation_key=correlation_key_for(rt, instance, d, task.data),
                created_at=now,
            ))
            return  # one row per waiting task: the task uuid is unique


def timer_due(task: Any) -> datetime | None:
    value = task.internal_data.get("event_value")
    if isinstance(value, dict):
        value = value.get("next")
    if not value:
        return None
    return TimerEventDefinition.get_datetime(value) if isinstance(value, str) else None


def _insert_timer(session: Session, rt: Runtime, instance: ProcessInstance, task: Any, now: datetime) -> None:
    due = timer_due(task)
    if due is None:
        return
    timer_id = session.connection().execute(_INSERT_TIMER, {
        "kind": TimerKind.BPMN, "instance_id": instance.id, "task_uuid": str(task.id),
        "element_id": task.task_spec.bpmn_id, "due_at": due, "status": TimerStatus.WAITING, "created_at": now,
    }).scalar_one()
    rt.announce_timer(session, (timer_id, due))


_INSERT_TIMER = insert(Timer).returning(Timer.id)
