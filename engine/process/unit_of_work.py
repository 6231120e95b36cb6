"""The unit of work every change to an instance ends with, in the caller's transaction:
run engine steps, deliver the messages the diagram threw, save the workflow, refresh the
projections (:mod:`engine.process.projection`), record the report facts and append audit
events. The instance is already locked (:func:`engine.process.runtime.locked_instance`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions.message import MessageEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.events.intermediate_event import BoundaryEvent
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_instance_event
from engine.bpmn.expressions import json_safe
from engine.bpmn.parser import CASE_VARIABLES, REPEATABLE, properties_of
from engine.bpmn.serializer import dump_state
from engine.errors import BpmError
from engine.models import InstanceStatus, ProcessInstance
from engine.process import passage
from engine.process.projection import declared_correlation_key, project
from engine.process.runtime import Runtime
from engine.process.variables import reserved_names

log = logging.getLogger(__name__)
# The steps whose data a later step inherits: open, waiting and not yet reached.
_HOLDING_DATA = TaskState.READY | TaskState.WAITING | TaskState.STARTED | TaskState.FUTURE | TaskState.LIKELY | \
    TaskState.MAYBE


def advance(rt: Runtime, instance: ProcessInstance, workflow: BpmnWorkflow,
            ran: list[Any] | None = None, before: Callable[[Any], None] | None = None) -> None:
    """Run engine steps. A failure inside (a service task raising, an expression failing)
    leaves SpiffWorkflow's task in ERROR with everything before it done: that state is
    consistent, so it is saved and the instance is marked failed with the error kept.
    The steps the engine ran are appended to ``ran``; ``before`` is called with each step
    about to run."""

    def will_run(task: Any) -> None:
        _take_internal_payload(task)
        if before is not None:
            before(task)

    def did_run(task: Any) -> None:
        _spread_case_variables(workflow, task)
        _rearm(task)
        if ran is not None:
            ran.append(task)

    try:
        workflow.do_engine_steps(will_complete_task=will_run, did_complete_task=did_run)
    except Exception as exc:  # noqa: BLE001 - any failure of diagram logic fails the instance
        log.warning("instance %s failed: %s", instance.id, exc)
        instance.status = InstanceStatus.FAILED
        instance.error = _describe_failure(exc, workflow)


def _take_internal_payload(task: Any) -> None:
    """A message this instance threw and caught itself (a complaint's compliance review hands
    its answers to the follow-ups beside the handling) carries the thrower's data: it becomes
    the catching step's, as a message from outside does (``messages.correlate``, which takes
    the payload itself and leaves nothing here); the engine's own variables stay as they are."""
    definition = getattr(task.task_spec, "event_definition", None)
    if not isinstance(definition, MessageEventDefinition) or getattr(definition, "message_var", None) is not None:
        return
    payload = task.internal_data.pop(definition.name, None)
    if isinstance(payload, dict):
        reserved = reserved_names(task.workflow.top_workflow)
        task.data.update({k: copy.deepcopy(v) for k, v in payload.items() if k not in reserved})


def _spread_case_variables(workflow: BpmnWorkflow, task: Any) -> None:
    """A service task's ``caseVariables`` hold for the whole case: copy them into every step
    still holding a copy of the case's data (each branch of a BPMN process carries its own),
    so the main path sees what a boundary event's branch decided."""
    names = [n.strip() for n in (properties_of(task.task_spec).get(CASE_VARIABLES) or "").split(",") if n.strip()]
    if not names:
        return
    values = {n: task.data[n] for n in names if n in task.data}
    for holder in workflow.get_tasks(state=_HOLDING_DATA):
        if holder is not task:
            holder.data.update(copy.deepcopy(values))


def _rearm(task: Any) -> None:
    """A ``repeatable`` non-interrupting boundary event that fired waits again beside the
    activity it is attached to, as BPMN says (SpiffWorkflow fires one such event once)."""
    spec = task.task_spec
    if not isinstance(spec, BoundaryEvent) or spec.cancel_activity or task.parent is None:
        return
    if (properties_of(spec).get(REPEATABLE) or "").strip().lower() != "true":
        return
    split = task.parent
    main = next((t for t in split.children if not isinstance(t.task_spec, BoundaryEvent)), None)
    if main is None or main.has_state(TaskState.FINISHED_MASK):
        return
    if any(t.task_spec is spec and t.has_state(TaskState.WAITING) for t in split.children):
        return
    again = split._add_child(spec, TaskState.WAITING)
    again.data = copy.deepcopy(split.data)
    spec.event_definition.reset(again)
    # Its branch (the steps after the event) as SpiffWorkflow predicts a branch it creates.
    spec._predict(again, mask=TaskState.WAITING | TaskState.PREDICTED_MASK)
    task.workflow.top_workflow.event_manager.add_task(again)


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
    ran: list[Any] = []

    def before(task: Any) -> None:
        for hook in rt.on_engine_task_ready:
            hook(session, rt, instance, task)

    advance(rt, instance, workflow, ran, before if rt.on_engine_task_ready else None)
    # The path the engine took (gateways, events, service steps) before what it came to.
    passage.record(session, instance, workflow, at=rt.now())
    if instance.status != InstanceStatus.FAILED:
        for task in ran:
            for hook in rt.on_engine_task_ran:
                hook(session, rt, instance, task)
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
