"""Starting, reading, cancelling and retrying process instances."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.simple import NoneEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.events.start_event import StartEvent
from SpiffWorkflow.bpmn.util import BpmnEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import String, and_, bindparam, exists, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access import client_access
from engine.access.identity import Actor
from engine.access.roles import BRANCH_MANAGEMENT, BRANCH_OR_ALL, FIRM_STARTERS, INTEGRATION, SUPERVISOR
from engine.bpmn.expressions import json_safe
from engine.bpmn.values import text_problem, value_problems
from engine.calendars import SHANGHAI
from engine.errors import (
    ClientNotFound,
    DataInvalid,
    DuplicateBusinessKey,
    FieldError,
    InstanceNotFound,
    InvalidInput,
    PermissionDenied,
    ProcessNotFound,
    StartNotOffered,
)
from engine.models import (
    ACTIVE_TASK_STATES,
    AuditEvent,
    Client,
    InstanceStatus,
    ProcessInstance,
    ProcessVersion,
    Task,
    TaskExclusion,
    TaskKind,
    TaskStatus,
)
from engine.numbering import next_business_key
from engine.process.limits import check_case, check_text, check_variables
from engine.process.runtime import Runtime, locked_instance
from engine.process.tasks import offer_groups, offered_clause, principals
from engine.process.unit_of_work import audit, run_and_save, save
from engine.process.variables import reserved_names
from engine.sla import calendar_store


def start(session: Session, rt: Runtime, *, process_key: str, business_key: str | None, actor: Actor,
          data: dict[str, Any] | None = None, client_id: str | None = None,
          branch_code: str | None = None, message: tuple[str, dict[str, Any]] | None = None,
          from_case: bool = False) -> ProcessInstance:
    """Start the latest version of ``process_key``. ``message`` (name, payload) triggers a
    message start event instead of the none start event. Without a business key, a process
    that declares a businessKeyFormat gets the next case number. ``from_case``: the data is
    another case's variables (a message a diagram threw), whose copies of the client's
    registry values may be older than the registry or rewritten for routing (a branch-pool
    client's retention talk goes to the branch's account managers): the registry's replace
    them, where a caller's differing values are refused."""
    if business_key is not None and (not business_key or len(business_key) > 128):
        raise InvalidInput("business_key must be 1 to 128 characters")
    check_text(business_key=business_key, client_id=client_id, branch_code=branch_code)
    # A message's payload is the new case's data: name it as the sender sent it. Checked
    # before the JSON round trip, which recurses as deep as the value nests.
    field = "payload" if message is not None else "data"
    check_variables(rt.settings, data or {}, field=field)
    data = json_safe(data or {})
    # One round trip: the latest version, an instance already holding the business key, the
    # client's registry entry, and the reference-data revisions the new tasks' SLA clocks
    # check their caches against.
    client_key = client_id or data.get("client_id")
    found = session.execute(_START_LOOKUP, {"process_key": process_key, "business_key": business_key,
                                            "client_id": client_key}).first()
    if found is None:
        raise ProcessNotFound(f"no process {process_key!r} is deployed")
    version, existing_id = found, found.existing_id  # the row names the version's columns
    if message is None:
        _require_none_start(process_key, found.start_routes)
    calendar_store.remember_revisions(session, found.calendar_revision, found.sla_revision)
    # Outside systems start processes by message whatever the starter groups (which are
    # about people); a person needs one of them, or the supervisor role.
    system_start = message is not None and actor.has_role(INTEGRATION)
    if (version.starter_groups and not system_start and not actor.has_role(SUPERVISOR)
            and not actor.groups & set(version.starter_groups)):
        raise PermissionDenied(f"starting {process_key} needs one of the groups {', '.join(version.starter_groups)}")
    if client_key is not None:
        _require_client_in_scope(session, actor, str(client_key), registered=found.client_id is not None)
        if not from_case:
            _refuse_registry_overrides(found, data, client_id=client_id, branch_code=branch_code,
                                       where="payload" if message is not None else "data", now=rt.now())
    data = _with_client_context(found, data, rt.now())
    check_case(rt.settings, data, field=field)
    if found.client_id is not None:
        branch_code = found.client_branch_code
    if existing_id is not None:
        raise DuplicateBusinessKey(
            f"{process_key} already has an instance with business key {business_key!r}",
            instance_id=existing_id,
        )
    now = rt.now()
    branch_code = branch_code or data.get("branch_code")
    if business_key is None:
        if not version.business_key_format:
            raise InvalidInput(f"business_key is required: {process_key} declares no businessKeyFormat")
        business_key = next_business_key(session, version.business_key_format, now=now, branch_code=branch_code)
    workflow = rt.new_workflow(session, version.id)
    start_task = workflow.get_next_task(spec_name="Start")
    # Scripts and conditions read task data, not workflow.data: seed the Start task.
    start_task.data.update(data)
    instance = ProcessInstance(
        process_version_id=version.id, process_key=process_key, business_key=business_key,
        status=InstanceStatus.RUNNING, client_id=client_id or data.get("client_id"),
        branch_code=branch_code, state=b"", projected={},
        started_by=actor.username, started_at=now, updated_at=now, audit_seq=0, audit_head="",
    )
    session.add(instance)
    try:
        session.flush()
    except IntegrityError:
        # Someone started the same business key since the check above (unique constraint).
        raise DuplicateBusinessKey(
            f"{process_key} already has an instance with business key {business_key!r}") from None
    audit(session, rt, instance, "instance.started", actor, process_key=process_key,
          version=version.version, business_key=business_key, data=data)
    if message is not None:
        name, payload = message
        _deliver_start_message(workflow, name, json_safe(payload))
        audit(session, rt, instance, "message.received", actor, message=name, payload=payload)
    run_and_save(session, rt, instance, workflow, actor=actor)
    return instance


def _describe_route(route: dict[str, Any]) -> str:
    name = f" ({route['name']})" if route.get("name") else ""
    if route["kind"] == "message":
        return f"{route['event_id']}{name}: by the message {route['message']!r} (POST /api/v1/messages)"
    if route["kind"] == "timer":
        return f"{route['event_id']}{name}: by its timer"
    return f"{route['event_id']}{name}: {route['kind']}"


def _require_none_start(process_key: str, routes: list[dict[str, Any]] | None) -> None:
    """A start without a message needs a none start event: a process that starts only by
    message or timer would otherwise be numbered and saved with no step ever appearing."""
    routes = routes or []
    if any(r["kind"] == "none" for r in routes):
        return
    described = "; ".join(_describe_route(r) for r in routes) or "none"
    raise StartNotOffered(f"{process_key} has no start event a start without a message can take; it starts "
                          f"{described}", start_routes=routes)


def age_on(birth: date, day: date) -> int:
    """Full years from ``birth`` to ``day`` (a birthday counts on the day itself)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _registry_context(found: Any, now: datetime) -> dict[str, Any]:
    """What the client registry says of the case's client (``found``: the start lookup's row).
    ``client_age_at_start`` is the client's age on the case's start day, a Beijing date, from
    the registry's birth date: rules that read an age (an elderly client's complaint is major,
    docs/domain.md#complaints) read it before any typed ``client_age``."""
    birth = found.birth_date
    return {"client_id": found.client_id, "branch_code": found.client_branch_code,
            "service_group": found.service_group_key, "client_class": found.classification,
            "vip_tier": found.vip_tier, "risk_level": found.risk_level,
            "client_age_at_start": age_on(birth, now.astimezone(SHANGHAI).date()) if birth is not None else None}


def _with_client_context(found: Any, data: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A case about a registered client starts with the registry's branch, service group,
    class, tier and risk level (never the identifiers: those stay masked in the registry),
    so diagrams route ``client:service_group`` from the truth, not from what a form typed.
    The registry wins (:func:`_refuse_registry_overrides` has refused start data that
    disagrees). ``found``: the start lookup's row, whose client columns are empty for no such
    client."""
    if found.client_id is None:
        return data
    return {**data, **{k: v for k, v in _registry_context(found, now).items() if v is not None}}


def _require_client_in_scope(session: Session, actor: Actor, client_id: str, *, registered: bool) -> None:
    """A case about a client is started by someone who may see that client in the registry
    (docs/domain.md#client-visibility), or by a role that starts cases for any client on the
    firm's behalf (the call centre and HQ desks, outside systems). Anyone else is told there is
    no such client, registered or not, so a start never reveals whether a client exists."""
    if actor.groups & FIRM_STARTERS:
        return
    scope = client_access.scope_of(session, actor)
    if scope.everything:
        return
    if registered and session.execute(select(Client.client_id).where(
            Client.client_id == client_id, scope.clause())).first() is not None:
        return
    raise ClientNotFound(f"no client {client_id!r}")


def _refuse_registry_overrides(found: Any, data: dict[str, Any], *, client_id: str | None,
                               branch_code: str | None, where: str, now: datetime) -> None:
    """Start data does not override the client registry: a value that differs from the
    registry's (a service group, a branch, a tier) is refused by name rather than silently
    replaced, so the caller learns the case is not what they asked for."""
    problems: list[FieldError] = []
    if client_id is not None and data.get("client_id") not in (None, client_id):
        problems.append(FieldError(f"{where}/client_id", f"differs from client_id {client_id!r}"))
    if found.client_id is not None:
        registry = _registry_context(found, now)
        # The client was looked up by the client_id given (checked above), so only the rest.
        for name, value in sorted(registry.items()):
            # Without a birth date in the registry there is no age to contradict.
            if name == "client_age_at_start" and value is None:
                continue
            if name != "client_id" and name in data and data[name] != value:
                problems.append(FieldError(f"{where}/{name}",
                                           f"{name!r} comes from the client registry and cannot be given"))
        if branch_code is not None and branch_code != registry["branch_code"]:
            problems.append(FieldError("branch_code", "the branch is the client's, from the client registry"))
    if problems:
        raise DataInvalid(f"the start has {len(problems)} value(s) the client registry decides; nothing was "
                          "started", problems)


_START_LOOKUP = (
    select(ProcessVersion.id, ProcessVersion.version, ProcessVersion.starter_groups,
           ProcessVersion.business_key_format, ProcessVersion.start_routes,
           select(ProcessInstance.id).where(ProcessInstance.process_key == bindparam("process_key"),
                                            ProcessInstance.business_key == bindparam("business_key"))
           .scalar_subquery().label("existing_id"),
           Client.client_id, Client.branch_code.label("client_branch_code"), Client.service_group_key,
           Client.classification, Client.vip_tier, Client.risk_level, Client.birth_date,
           *calendar_store.REVISION_COLUMNS)
    .outerjoin(Client, Client.client_id == bindparam("client_id", type_=String))
    .where(ProcessVersion.process_key == bindparam("process_key"))
    .order_by(ProcessVersion.version.desc()).limit(1)
)


def _deliver_start_message(workflow: Any, name: str, payload: dict[str, Any]) -> None:
    """Start by the message, never by a none start event the process also has (the
    callback process starts by hand, by "account opened" or by a closure's message)."""
    workflow.get_next_task(spec_name="Start", state=TaskState.READY).run()
    split = workflow.get_next_task(spec_name="StartEventSplit", state=TaskState.READY)
    if split is None:
        workflow.do_engine_steps()  # one start event: let it wait for its message
    else:
        split.run()
        for task in workflow.get_tasks(state=TaskState.READY):
            if isinstance(task.task_spec, StartEvent) and isinstance(task.task_spec.event_definition,
                                                                     NoneEventDefinition):
                task.cancel()
    for task in workflow.get_tasks(state=TaskState.WAITING):
        definition = getattr(task.task_spec, "event_definition", None)
        if definition is not None and getattr(definition, "name", None) == name:
            correlations = definition.get_correlations(task, payload) if hasattr(definition, "get_correlations") else {}
            workflow.send_event(BpmnEvent(definition, payload, correlations))
            return
    raise InvalidInput(f"the process has no start event for message {name!r}")


def took_part(actor: Actor) -> Any:
    """The case's handlers (docs/domain.md#case-visibility): who did one of its steps, holds one
    (assignee, or owner of a step they delegated), or is offered an open one (a member of a
    candidate group of an unclaimed step that does not recuse them). Membership of a candidate
    group counts only while the step waits for someone: a role offered every complaint's
    registration (call-centre agents) does not follow every complaint once it is registered."""
    me = actor.username
    offered = and_(
        Task.status == TaskStatus.OPEN, offered_clause(*offer_groups(actor)),
        ~exists().where(TaskExclusion.task_id == Task.id, TaskExclusion.principal.in_(principals(actor))))
    return exists().where(
        Task.instance_id == ProcessInstance.id,
        or_(Task.completed_by == me, Task.owner == me,
            and_(Task.assignee == me, Task.status.in_(ACTIVE_TASK_STATES)), offered))


def _visible(session: Session, actor: Actor) -> Any:
    """Who may read a case (docs/domain.md#case-visibility): whoever started it or took part in
    it (:func:`took_part`); branch management, branch compliance and branch supervisors their
    branch's cases; a service group's members the cases of the group's clients (and of the
    branch pool's unassigned clients); HQ complaint and brokerage management, HQ compliance and
    administrators every case. Counter staff and call-centre agents see only cases they started
    or took part in. Recusal (:func:`_not_recused`) still applies on top."""
    scope = client_access.scope_of(session, actor)
    if scope.everything:
        return true()
    parts = [ProcessInstance.started_by == actor.username, took_part(actor)]
    branches = sorted(b for b in scope.branches if actor.groups & (BRANCH_MANAGEMENT | BRANCH_OR_ALL))
    if branches:
        # A case tied to no branch (no client) is company business: branch management sees it.
        parts.append(or_(ProcessInstance.branch_code.in_(branches), ProcessInstance.branch_code.is_(None)))
    if scope.groups or scope.pool_branches:
        parts.append(exists().where(Client.client_id == ProcessInstance.client_id, or_(
            Client.service_group_key.in_(sorted(scope.groups)),
            and_(Client.branch_code.in_(sorted(scope.pool_branches)), Client.service_group_key.is_(None)))))
    return or_(*parts)


def _not_recused(actor: Actor) -> Any:
    """Someone recused case-wide from any step of a case (``recusalScope="case"``: a
    complaint's subject) cannot read the case at all, whatever their roles. Separation of
    duties on one step (QA is not the caller) leaves the case readable."""
    return ~exists().where(Task.instance_id == ProcessInstance.id, exists().where(
        TaskExclusion.task_id == Task.id, TaskExclusion.case_wide.is_(True),
        TaskExclusion.principal.in_(principals(actor))))


def get(session: Session, instance_id: int, *, actor: Actor) -> ProcessInstance:
    """One scoped lookup: an instance the actor may not see does not exist for them."""
    query = select(ProcessInstance).where(ProcessInstance.id == instance_id, _not_recused(actor),
                                          _visible(session, actor))
    instance = session.execute(query).scalar_one_or_none()
    if instance is None:
        raise InstanceNotFound(f"no instance {instance_id}")
    return instance


def readable_clause(session: Session, actor: Actor) -> Any:
    """The instances ``actor`` may read, as a condition on ``ProcessInstance``."""
    return and_(_not_recused(actor), _visible(session, actor))


def readable(session: Session, instance_id: int, actor: Actor) -> bool:
    return session.execute(select(ProcessInstance.id).where(
        ProcessInstance.id == instance_id, readable_clause(session, actor))).first() is not None


def handles(session: Session, instance_id: int, actor: Actor) -> bool:
    """Whether ``actor`` is one of the case's handlers, who brought it in (started it) or took
    part in it (:func:`took_part`), and may still read it: recused case-wide, a former handler
    is not one any more."""
    return session.execute(select(ProcessInstance.id).where(
        ProcessInstance.id == instance_id, or_(ProcessInstance.started_by == actor.username, took_part(actor)),
        readable_clause(session, actor))).first() is not None


def _require_readable(session: Session, instance_id: int, actor: Actor) -> None:
    """A case the actor may not read does not exist for them, whatever their role: a branch
    supervisor does not cancel, retry or correct another branch's cases, nor a recused one
    the case that names them."""
    if not readable(session, instance_id, actor):
        raise InstanceNotFound(f"no instance {instance_id}")


def get_all(session: Session, *, actor: Actor, process_key: str | None = None, status: str | None = None,
            business_key: str | None = None, limit: int = 50, offset: int = 0) -> list[ProcessInstance]:
    query = (select(ProcessInstance).where(_not_recused(actor))
             .order_by(ProcessInstance.id.desc()).limit(limit).offset(offset))
    query = query.where(_visible(session, actor))
    if process_key:
        query = query.where(ProcessInstance.process_key == process_key)
    if status:
        query = query.where(ProcessInstance.status == status)
    if business_key:
        query = query.where(ProcessInstance.business_key == business_key)
    return list(session.execute(query).scalars())


def data_of(session: Session, rt: Runtime, instance: ProcessInstance) -> dict[str, Any]:
    """The instance's current variables (one instance: deserializing here is fine)."""
    workflow = rt.load(session, instance)
    task = workflow.last_task or workflow.task_tree
    return json_safe(dict(task.data))


def cancel(session: Session, rt: Runtime, *, instance_id: int, actor: Actor, reason: str = "") -> ProcessInstance:
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("cancelling an instance needs the supervisor role")
    _require_readable(session, instance_id, actor)
    instance = locked_instance(session, instance_id, allow=(InstanceStatus.RUNNING, InstanceStatus.FAILED))
    workflow = rt.load(session, instance)
    workflow.cancel()
    # Escalation tasks are not in the workflow; close them with it.
    session.execute(update(Task).where(Task.instance_id == instance.id, Task.kind == TaskKind.ESCALATION,
                                       Task.status.in_(ACTIVE_TASK_STATES))
                    .values(status=TaskStatus.CANCELLED, completed_at=rt.now()))
    instance.status = InstanceStatus.CANCELLED
    instance.ended_at = rt.now()
    instance.ended_by = actor.username
    save(session, rt, instance, workflow, actor=actor)
    audit(session, rt, instance, "instance.cancelled", actor, reason=reason)
    return instance


def retry(session: Session, rt: Runtime, *, instance_id: int, actor: Actor) -> ProcessInstance:
    """Run a failed instance's failed step again (after the cause was fixed)."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("retrying an instance needs the supervisor role")
    _require_readable(session, instance_id, actor)
    instance = locked_instance(session, instance_id, allow=(InstanceStatus.FAILED,))
    workflow = rt.load(session, instance)
    for task in workflow.get_tasks(state=TaskState.ERROR):
        task._set_state(TaskState.READY)
    previous_error, instance.status, instance.error = instance.error, InstanceStatus.RUNNING, None
    audit(session, rt, instance, "instance.retried", actor, previous_error=previous_error)
    run_and_save(session, rt, instance, workflow, actor=actor)
    return instance


def history(session: Session, instance_id: int, *, actor: Actor) -> list[AuditEvent]:
    get(session, instance_id, actor=actor)
    return list(session.execute(
        select(AuditEvent).where(AuditEvent.stream == f"instance:{instance_id}")
        .order_by(AuditEvent.seq)
    ).scalars())


# Tasks that still hold their own copy of the variables: a step reads its copy, inherited
# from its parent when it became ready, so these are what the rest of the run will see.
_HOLDING_DATA = TaskState.ERROR | TaskState.READY | TaskState.WAITING | TaskState.STARTED


def correct_data(session: Session, rt: Runtime, *, instance_id: int, actor: Actor, reason: str,
                 set: dict[str, Any] | None = None, remove: list[str] | None = None) -> ProcessInstance:
    """Correct the variables of a failed instance before its retry (supervisor): ``set``
    gives names their new JSON values (new names are allowed: a missing variable), ``remove``
    drops variables. The instance stays failed; :func:`retry` runs the failed step again.

    SpiffWorkflow 3.2 keeps variables in each task's ``data``, not in ``workflow.data`` (filled
    from the end event's data only when the workflow completes). A retried step runs with its
    own copy, so the change is written to every task still holding one: the failed step, open
    tasks and waiting events of parallel branches (which would bring the old value back at
    their join), and the last completed step, whose data is what the instance shows
    (:func:`data_of`) and what the report facts read. Completed steps before it keep what they
    ran with; the audit event keeps old and new values. A variable removed here comes back at
    a join from a parallel branch that had already finished with it.

    Refused: without the supervisor role (PermissionDenied), an instance the actor may not
    see (InstanceNotFound), one that has not failed (InstanceNotRunning), a blank reason, a
    reserved name, a value JSON cannot carry unchanged, removing a variable the failed step
    does not have, or nothing to change (DataInvalid, naming each entry)."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("correcting an instance's data needs the supervisor role")
    _require_readable(session, instance_id, actor)
    instance = locked_instance(session, instance_id, allow=(InstanceStatus.FAILED,))
    workflow = rt.load(session, instance)
    values, removed = dict(set or {}), list(remove or [])
    failed = workflow.get_tasks(state=TaskState.ERROR)
    # The failed step's variables when a step raised; else (a task's assignment or due date
    # failed, nothing is in ERROR) the instance's variables as data_of shows them.
    current = (failed[0] if failed else workflow.last_task or workflow.task_tree).data
    _check_correction(workflow, current, values, removed, reason)
    check_variables(rt.settings, values, field="set")
    check_case(rt.settings, {**{k: v for k, v in current.items() if k not in removed}, **values})
    names = sorted({*values, *removed})
    old = {name: json.loads(json.dumps(current[name])) for name in names if name in current}

    targets = workflow.get_tasks(state=_HOLDING_DATA)
    if workflow.last_task is not None and workflow.last_task not in targets:
        targets.append(workflow.last_task)
    for task in targets:
        for name in removed:
            task.data.pop(name, None)
        task.data.update(json.loads(json.dumps(values)))  # each task its own copy
    # ``old`` lacks a name that was not set before, ``new`` one that was removed.
    audit(session, rt, instance, "instance.data_corrected", actor, keys=names, old=old, new=values,
          reason=reason.strip(), error=instance.error)
    save(session, rt, instance, workflow, actor=actor)
    return instance


def _check_correction(workflow: Any, current: dict[str, Any], values: dict[str, Any], removed: list[str],
                      reason: str) -> None:
    reserved = reserved_names(workflow)
    problems: list[FieldError] = []
    if not isinstance(reason, str) or not reason.strip():
        problems.append(FieldError("reason", "a reason is required: it is kept in the audit trail"))
    elif len(reason) > 1000:
        problems.append(FieldError("reason", "at most 1000 characters"))
    elif message := text_problem(reason):
        problems.append(FieldError("reason", message))
    if not values and not removed:
        problems.append(FieldError("", "nothing to correct: give variables to set or to remove"))
    for name, value in values.items():
        field = f"set/{name}"
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("__"):
            problems.append(FieldError(field, f"{name!r} is not a variable name an expression can read"))
        elif name in reserved:
            problems.append(FieldError(field, f"{name!r} is written by the engine, not corrected by hand"))
        elif name in removed:
            problems.append(FieldError(field, f"{name!r} is both set and removed"))
        # Text and nesting first: the JSON round trip of _not_json recurses as deep as the value.
        stored = value_problems(value, field)
        message = None if stored else _not_json(value)
        problems.extend(stored)
        if message:
            problems.append(FieldError(field, message))
    for index, name in enumerate(removed):
        field = f"remove/{index}"
        if not isinstance(name, str) or (message := text_problem(name)):
            problems.append(FieldError(field, message or "not a variable name"))
        elif name in reserved:
            problems.append(FieldError(field, f"{name!r} is written by the engine, not corrected by hand"))
        elif name not in current:
            problems.append(FieldError(field, f"the failed step has no variable {name!r}"))
    if problems:
        raise DataInvalid(f"the correction has {len(problems)} error(s); nothing was changed", problems)


def _not_json(value: Any) -> str | None:
    """Why ``value`` cannot be stored as it is (the state is JSON), or None."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return f"not a JSON value: {exc}"
    if json.loads(text) != value:  # a tuple, keys that are not text: stored, it would change
        return "not a JSON value: it would not read back the same"
    return None
