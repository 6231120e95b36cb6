"""Starting, reading, cancelling and retrying process instances."""

from __future__ import annotations

from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.simple import NoneEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.events.start_event import StartEvent
from SpiffWorkflow.bpmn.util import BpmnEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import and_, bindparam, exists, or_, select, true, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine import client_access, sla
from engine.client_access import BRANCH_MANAGEMENT, BRANCH_OR_ALL
from engine.errors import DuplicateBusinessKey, InstanceNotFound, InvalidInput, PermissionDenied, ProcessNotFound
from engine.expressions import json_safe
from engine.identity import INTEGRATION, SUPERVISOR, Actor
from engine.models import AuditEvent, Client, ProcessInstance, ProcessVersion, Task, TaskCandidate, TaskExclusion
from engine.numbering import next_business_key
from engine.runtime import (
    CANCELLED,
    FAILED,
    RUNNING,
    Runtime,
    audit,
    locked_instance,
    run_and_save,
    save,
)
from engine.tasks import principals


def start(session: Session, rt: Runtime, *, process_key: str, business_key: str | None, actor: Actor,
          data: dict[str, Any] | None = None, client_id: str | None = None,
          branch_code: str | None = None, message: tuple[str, dict[str, Any]] | None = None,
          ) -> ProcessInstance:
    """Start the latest version of ``process_key``. ``message`` (name, payload) triggers a
    message start event instead of the none start event. Without a business key, a process
    that declares a businessKeyFormat gets the next case number."""
    if business_key is not None and (not business_key or len(business_key) > 128):
        raise InvalidInput("business_key must be 1 to 128 characters")
    data = _with_client_context(session, json_safe(data or {}), client_id)
    # One round trip: the latest version, an instance already holding the business key, and
    # the reference-data revisions the new tasks' SLA clocks check their caches against.
    found = session.execute(_START_LOOKUP, {"process_key": process_key, "business_key": business_key}).first()
    if found is None:
        raise ProcessNotFound(f"no process {process_key!r} is deployed")
    version, existing_id, calendar_revision, sla_revision = found
    sla.remember_revisions(session, calendar_revision, sla_revision)
    # Outside systems start processes by message whatever the starter groups (which are
    # about people); a person needs one of them, or the supervisor role.
    system_start = message is not None and actor.has_role(INTEGRATION)
    if (version.starter_groups and not system_start and not actor.has_role(SUPERVISOR)
            and not actor.groups & set(version.starter_groups)):
        raise PermissionDenied(f"starting {process_key} needs one of the groups {', '.join(version.starter_groups)}")
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
        status=RUNNING, client_id=client_id or data.get("client_id"),
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


def _with_client_context(session: Session, data: dict[str, Any], client_id: str | None) -> dict[str, Any]:
    """A case about a registered client starts with the registry's branch, service group,
    class, tier and risk level (never the identifiers: those stay masked in the registry),
    so diagrams route ``client:service_group`` from the truth, not from what a form typed.
    Values the caller gave win: a test or an import may need to say otherwise."""
    client_id = client_id or data.get("client_id")
    if not client_id:
        return data
    client = session.get(Client, client_id)
    if client is None:
        return data
    registry = {"client_id": client.client_id, "branch_code": client.branch_code,
                "service_group": client.service_group_key, "client_class": client.classification,
                "vip_tier": client.vip_tier, "risk_level": client.risk_level}
    return {**{k: v for k, v in registry.items() if v is not None}, **data}


_START_LOOKUP = (
    select(ProcessVersion,
           select(ProcessInstance.id).where(ProcessInstance.process_key == bindparam("process_key"),
                                            ProcessInstance.business_key == bindparam("business_key"))
           .scalar_subquery(),
           *sla.REVISION_COLUMNS)
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


def _visible(session: Session, actor: Actor) -> Any:
    """Who may read a case (brief §6.3): whoever started it or has, had or may take one
    of its tasks; branch management, branch compliance and branch supervisors their
    branch's cases; a service group's members the cases of the group's clients (and of
    the branch pool's unassigned clients); HQ complaint and brokerage management, HQ
    compliance and administrators every case. Counter staff and call-centre agents see only
    cases they took part in. Recusal (:func:`_not_recused`) still applies on top."""
    involved = exists().where(
        Task.instance_id == ProcessInstance.id,
        or_(Task.assignee == actor.username, Task.owner == actor.username, Task.completed_by == actor.username,
            exists().where(TaskCandidate.task_id == Task.id, TaskCandidate.group_key.in_(sorted(actor.groups)))),
    )
    scope = client_access.scope_of(session, actor)
    if scope.everything:
        return true()
    parts = [ProcessInstance.started_by == actor.username, involved]
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
    """Someone recused from any step of a case cannot read the case at all (a complaint's
    subject cannot read it), whatever their roles."""
    return ~exists().where(Task.instance_id == ProcessInstance.id, exists().where(
        TaskExclusion.task_id == Task.id, TaskExclusion.principal.in_(principals(actor))))


def get(session: Session, instance_id: int, *, actor: Actor) -> ProcessInstance:
    """One scoped lookup: an instance the actor may not see does not exist for them."""
    query = select(ProcessInstance).where(ProcessInstance.id == instance_id, _not_recused(actor),
                                          _visible(session, actor))
    instance = session.execute(query).scalar_one_or_none()
    if instance is None:
        raise InstanceNotFound(f"no instance {instance_id}")
    return instance


def readable(session: Session, instance_id: int, actor: Actor) -> bool:
    return session.execute(select(ProcessInstance.id).where(
        ProcessInstance.id == instance_id, _not_recused(actor), _visible(session, actor))).first() is not None


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
    instance = locked_instance(session, instance_id, allow=(RUNNING, FAILED))
    workflow = rt.load(session, instance)
    workflow.cancel()
    # Escalation tasks are not in the workflow; close them with it.
    session.execute(update(Task).where(Task.instance_id == instance.id, Task.kind == "escalation",
                                       Task.status.in_(("open", "claimed")))
                    .values(status="cancelled", completed_at=rt.now()))
    instance.status = CANCELLED
    instance.ended_at = rt.now()
    instance.ended_by = actor.username
    save(session, rt, instance, workflow, actor=actor)
    audit(session, rt, instance, "instance.cancelled", actor, reason=reason)
    return instance


def retry(session: Session, rt: Runtime, *, instance_id: int, actor: Actor) -> ProcessInstance:
    """Run a failed instance's failed step again (after the cause was fixed)."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("retrying an instance needs the supervisor role")
    instance = locked_instance(session, instance_id, allow=(FAILED,))
    workflow = rt.load(session, instance)
    for task in workflow.get_tasks(state=TaskState.ERROR):
        task._set_state(TaskState.READY)
    previous_error, instance.status, instance.error = instance.error, RUNNING, None
    audit(session, rt, instance, "instance.retried", actor, previous_error=previous_error)
    run_and_save(session, rt, instance, workflow, actor=actor)
    return instance


def history(session: Session, instance_id: int, *, actor: Actor) -> list[AuditEvent]:
    get(session, instance_id, actor=actor)
    return list(session.execute(
        select(AuditEvent).where(AuditEvent.stream == f"instance:{instance_id}")
        .order_by(AuditEvent.seq)
    ).scalars())
