"""The unit of work every change to an instance ends with, in the caller's transaction:
run engine steps, deliver the messages the diagram threw, save the workflow, refresh the
projections (:mod:`engine.process.projection`), record the report facts and append audit
events. The instance is already locked (:func:`engine.process.runtime.locked_instance`).
"""

from __future__ import annotations

import logging
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_instance_event
from engine.bpmn.expressions import json_safe
from engine.bpmn.serializer import dump_state
from engine.errors import BpmError
from engine.models import InstanceStatus, ProcessInstance
from engine.process import passage
from engine.process.projection import declared_correlation_key, project
from engine.process.runtime import Runtime

log = logging.getLogger(__name__)


def advance(rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow) -> None:
    """Run engine steps. A failure inside (a service task raising, an expression failing)
    leaves SpiffWorkflow's task in ERROR with everything before it done: that state is
    consistent, so it is saved and the instance is marked failed with the error kept."""
    try:
        workflow.do_engine_steps()
    except Exception as exc:  # noqa: BLE001 - any failure of diagram logic fails the instance
        log.warning("instance %s failed: %s", instance.id, exc)
        instance.status = InstanceStatus.FAILED
        instance.error = _describe_failure(exc, workflow)


def _describe_failure(exc: Exception, workflow: BpmnWorkflow | None = None) -> str:
    task = getattr(exc, "task", None)
    bare = task is None
    if bare and workflow is not None:
        # A service-task function's own exception reaches us bare (SpiffWorkflow only marks
        # its task ERROR): name that task and the exception's type, or the error says neither.
        task = next(iter(workflow.get_tasks(state=TaskState.ERROR)), None)
    where = ""
    if task is not None:
        spec = task.task_spec
        where = f"{getattr(spec, 'bpmn_id', spec.name)} ({getattr(spec, 'bpmn_name', '') or ''}): "
    if bare:
        return f"{where}{type(exc).__name__}: {exc}"
    cause = getattr(exc, "exception", None) or exc.__cause__
    detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(exc)
    return f"{where}{exc}" if str(exc) and detail in str(exc) else f"{where}{exc} [{detail}]"


def run_and_save(session: Session, rt: Runtime, instance: ProcessInstance,
                 workflow: BpmnWorkflow, *, actor: Actor) -> None:
    """The tail of every change: engine steps, save, projections, outcome in the audit."""
    advance(rt, instance, workflow)
    # The path the engine took (gateways, events, service steps) before what it came to.
    passage.record(session, instance, workflow, at=rt.now())
    if instance.status == InstanceStatus.FAILED:
        audit(session, rt, instance, "instance.failed", actor, error=instance.error)
    failed_before_save = instance.status == InstanceStatus.FAILED
    save(session, rt, instance, workflow, actor=actor)
    if instance.status == InstanceStatus.FAILED and not failed_before_save:  # a task's assignment or due date failed
        audit(session, rt, instance, "instance.failed", actor, error=instance.error)
    if instance.status in (InstanceStatus.RUNNING, InstanceStatus.COMPLETED) and _outgoing_messages(workflow):
        _send_messages(session, rt, instance, workflow, actor=actor)
    if instance.status == InstanceStatus.COMPLETED:
        audit(session, rt, instance, "instance.completed", actor)


def _outgoing_messages(workflow: BpmnWorkflow) -> list[Any]:
    """Messages thrown that no event of this instance caught: SpiffWorkflow queues them."""
    return [e for e in workflow.bpmn_events if isinstance(e.event_definition, MessageEventDefinition)]


def _send_messages(session: Session, rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow, *,
                   actor: Actor) -> None:
    """Deliver thrown messages to other processes in the same transaction: to the instance
    waiting under the correlation key, or as a message start (a retention case starts its
    post-closure callback; a callback's complaint route starts a complaint).

    Each delivery runs in a savepoint. One that fails (nobody receives the message, the
    receiving start fails) leaves the message queued in this instance's state and marks the
    instance failed with the reason; a retry, after the cause is fixed, sends it again. So a
    message is never lost and never half-delivered."""
    if rt.deliver_thrown is None:
        raise RuntimeError("no message delivery is wired: build the runtime with engine.bootstrap")
    # Save the thrower first: a receiver may answer with a message to this very instance.
    session.flush()
    for event in _outgoing_messages(workflow):
        definition = event.event_definition
        # The receiving case remembers where it came from (a callback opened by a closure).
        payload = {**_thrown_payload(workflow, event), "origin_business_key": instance.business_key,
                   "origin_process": instance.process_key}
        # No declared key: the message starts a new case, numbered by the receiving process.
        key = declared_correlation_key(rt, definition, payload)
        try:
            with session.begin_nested():
                # The receiving process's starter groups do not apply: the diagram, not the
                # person whose step threw the message, decided to start it.
                target = rt.deliver_thrown(session, rt, name=definition.name, correlation_key=key,
                                           actor=Actor.system(actor.username), payload=payload, from_case=True)
        except BpmError as exc:
            instance.status = InstanceStatus.FAILED
            instance.error = f"message {definition.name!r} (key {key!r}) could not be delivered: {exc}"
            audit(session, rt, instance, "instance.failed", actor, error=instance.error)
            break
        workflow.bpmn_events.remove(event)
        audit(session, rt, instance, "message.sent", actor, message=definition.name, correlation_key=key,
              to_instance=target.id, to_process=target.process_key)
    instance.state = dump_state(workflow)


def _thrown_payload(workflow: BpmnWorkflow, event: Any) -> dict[str, Any]:
    """What the message carries: its ``spiffworkflow:messagePayload`` expression's value when
    the diagram gives one, else every variable of the throwing step (Camunda's "all")."""
    definition = event.event_definition
    if getattr(definition, "expression", None) is not None:
        return dict(event.payload) if isinstance(event.payload, dict) else {"payload": event.payload}
    throwers = [t for t in workflow.get_tasks(state=TaskState.COMPLETED)
                if definition in (getattr(t.task_spec, "event_definition", None),
                                  *getattr(getattr(t.task_spec, "event_definition", None), "event_definitions", []))]
    latest = max(throwers, key=lambda t: t.last_state_change, default=None)
    return dict(latest.data) if latest is not None else {}


def save(session: Session, rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow, *,
         actor: Actor) -> None:
    now = rt.now()
    passage.record(session, instance, workflow, at=now)  # what changed outside run_and_save (a cancel)
    if instance.status == InstanceStatus.RUNNING and workflow.is_completed():
        instance.status = InstanceStatus.COMPLETED
        instance.ended_at = now
        instance.ended_by = actor.username
    instance.state = dump_state(workflow)
    instance.updated_at = now
    variables = rt.report_variables(session, instance.process_version_id)
    if variables:
        before = instance.facts or {}
        instance.facts = facts_of(workflow, variables)
        if rt.on_facts_changed and instance.facts != before:
            for hook in rt.on_facts_changed:
                hook(session, instance, before, instance.facts)
    project(session, rt, instance, workflow, now=now)
    rt.keep(session, instance, workflow)


def facts_of(workflow: BpmnWorkflow, variables: list[str]) -> dict[str, Any]:
    """The latest value each report variable was given, across all branches.

    Each parallel branch carries its own copy of the data, so "the last task's data" would
    let a branch's stale copy win. A task counts as setting a variable only where its value
    differs from its parent's; those settings are applied in the order the tasks changed."""
    wanted = set(variables)
    facts: dict[str, Any] = {}
    states = TaskState.COMPLETED | TaskState.READY | TaskState.WAITING
    touched = [t for t in workflow.get_tasks(state=states) if t.data]
    missing = object()
    for task in sorted(touched, key=lambda t: t.last_state_change):
        inherited = task.parent.data if task.parent is not None else {}
        facts.update((k, v) for k, v in task.data.items()
                     if k in wanted and inherited.get(k, missing) != v)
    return json_safe(facts)



def audit(session: Session, rt: Runtime, instance: ProcessInstance, kind: str, actor: Actor, *,
          task_uuid: str | None = None, **data: Any) -> None:
    record_instance_event(session, instance, kind=kind, actor=actor.username, at=rt.now(),
                          data=data, task_uuid=task_uuid)
