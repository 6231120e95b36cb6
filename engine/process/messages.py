"""Messages from outside: correlate to the one instance waiting, or start a process."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.util import BpmnEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import INTEGRATION
from engine.bpmn.expressions import json_safe
from engine.bpmn.parser import PAYLOAD_VARIABLES, properties_of
from engine.errors import AmbiguousCorrelation, MessageNotCorrelated
from engine.models import MessageSubscription, ProcessInstance
from engine.process import instances
from engine.process.deployments import latest_versions
from engine.process.runtime import Runtime, locked_instance
from engine.process.unit_of_work import audit, run_and_save
from engine.process.variables import reserved_names


def correlate(session: Session, rt: Runtime, *, name: str, correlation_key: str | None, actor: Actor,
              payload: dict[str, Any] | None = None, from_case: bool = False) -> ProcessInstance:
    """Deliver ``name`` to the instance waiting for it under ``correlation_key``.

    If no instance waits but a deployed process starts on this message, a new instance is
    started with the correlation key as its business key (``from_case``: a diagram threw the
    message, see :func:`instances.start`). Otherwise nothing changes and
    :class:`MessageNotCorrelated` is raised.
    """
    payload = json_safe(payload or {})
    subscriptions = _subscriptions(session, name, correlation_key) if correlation_key else []
    instance_ids = {s.instance_id for s in subscriptions}
    if len(instance_ids) > 1:
        raise AmbiguousCorrelation(
            f"{len(instance_ids)} instances wait for {name!r} with key {correlation_key!r}",
            instance_ids=sorted(instance_ids),
        )
    if not subscriptions:
        starters = [v for v in latest_versions(session) if name in (v.start_messages or [])]
        if len(starters) == 1:
            # No key: the started process numbers the case (businessKeyFormat).
            return instances.start(session, rt, process_key=starters[0].process_key,
                                   business_key=correlation_key or None, actor=actor, data=payload,
                                   message=(name, payload), from_case=from_case)
        raise MessageNotCorrelated(f"nobody waits for message {name!r} with key {correlation_key!r}")

    assert correlation_key  # subscriptions were found by it
    if not actor.has_role(INTEGRATION) and not instances.handles(session, subscriptions[0].instance_id, actor):
        # Telling a running case something changes its course (the client withdraws, the
        # client answered): the client's own channels do it through outside systems (the
        # integration role), and a person only as one of the case's handlers. Reading a case
        # is not enough: a branch head reads every case of the branch, compliance every case.
        # Anyone else is told nobody waits, so the answer does not reveal the case either.
        raise MessageNotCorrelated(f"nobody waits for message {name!r} with key {correlation_key!r}")
    instance = locked_instance(session, subscriptions[0].instance_id)
    # Re-read under the lock: a concurrent delivery may have consumed the subscription.
    subscription = next(iter(_subscriptions(session, name, correlation_key)), None)
    if subscription is None or subscription.instance_id != instance.id:
        raise MessageNotCorrelated(f"nobody waits for message {name!r} with key {correlation_key!r}")
    workflow = rt.load(session, instance)
    task = workflow.get_task_from_id(UUID(subscription.task_uuid))
    if task is None or not task.has_state(TaskState.WAITING):
        raise MessageNotCorrelated(f"the waiting event for {name!r} is gone")
    definition = _message_definition(task.task_spec.event_definition, name)
    correlations = definition.get_correlations(task, payload)
    workflow.send_event(BpmnEvent(definition, payload, correlations))
    dropped: list[str] = []
    if getattr(definition, "message_var", None) is None:
        # Camunda semantics: a message's payload becomes process variables. (SpiffWorkflow
        # only keeps it when spiffworkflow:messageVariable names a variable.)
        accepted, dropped = _variables_of(workflow, task.task_spec, payload)
        task.data.update(accepted)
    audit(session, rt, instance, "message.received", actor, task_uuid=subscription.task_uuid,
          message=name, correlation_key=correlation_key, payload=payload,
          **({"dropped": dropped} if dropped else {}))
    run_and_save(session, rt, instance, workflow, actor=actor)
    return instance


def _variables_of(workflow: Any, task_spec: Any, payload: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """What of a payload becomes case variables, and what is dropped (kept in the audit).

    An outside system tells a running case something; it does not get to rewrite the case:
    the engine's own variables (the client and branch the case is about, who did a step,
    where it came from) are never taken from a message, and a catching event that declares
    ``payloadVariables`` takes only those names."""
    declared = properties_of(task_spec).get(PAYLOAD_VARIABLES)
    allowed = None if declared is None else {n.strip() for n in declared.split(",") if n.strip()}
    reserved = reserved_names(workflow)
    accepted = {k: v for k, v in payload.items() if k not in reserved and (allowed is None or k in allowed)}
    return accepted, sorted(set(payload) - set(accepted))


def _subscriptions(session: Session, name: str, key: str) -> list[MessageSubscription]:
    return list(session.execute(
        select(MessageSubscription).where(MessageSubscription.message_name == name,
                                          MessageSubscription.correlation_key == key)
        .execution_options(populate_existing=True)
    ).scalars())


def _message_definition(definition: Any, name: str) -> Any:
    for candidate in [definition, *getattr(definition, "event_definitions", [])]:
        if getattr(candidate, "name", None) == name:
            return candidate
    return definition
