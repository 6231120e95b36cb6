"""Messages from outside: correlate to the one instance waiting, or start a process."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from SpiffWorkflow.bpmn.util import BpmnEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.masking import mask_echo, mask_text
from engine.access.roles import INTEGRATION
from engine.bpmn.expressions import json_safe
from engine.bpmn.parser import PAYLOAD_FORM, PAYLOAD_VARIABLES, properties_of
from engine.errors import (
    AmbiguousCorrelation,
    Conflict,
    FieldError,
    FormValidationError,
    IdempotencyKeyReused,
    InvalidInput,
    MessageNotCorrelated,
)
from engine.models import MessageReceipt, MessageSubscription, ProcessInstance
from engine.process import instances
from engine.process.deployments import latest_versions
from engine.process.limits import check_case, check_text, check_variables
from engine.process.runtime import Runtime, locked_instance
from engine.process.unit_of_work import audit, run_and_save
from engine.process.variables import reserved_names


@dataclass(frozen=True)
class Received:
    """What :func:`receive` did: the case the message reached or started, and whether this
    was a repeat answered from its receipt (nothing was delivered again)."""

    instance: ProcessInstance
    replayed: bool = False


# An idempotency key: what outside systems send (a UUID, "OPEN-20250612-000123"); visible
# ASCII only, as it may travel in an HTTP header.
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,128}")
# Expired receipts removed per message received: enough to keep up with any inflow, few
# enough that no request waits on a large delete.
PURGE_BATCH = 100


def receive(session: Session, rt: Runtime, *, name: str, correlation_key: str | None, actor: Actor,
            payload: dict[str, Any] | None = None, idempotency_key: str | None = None) -> Received:
    """A message from outside the engine (``POST /messages``): :func:`correlate`, at most
    once per idempotency key.

    The key's scope is the sender (the caller's username) and the message name: two systems,
    or two kinds of message, cannot collide. A repeat within ``BPM_IDEMPOTENCY_HOURS`` with
    the same correlation key and payload gets the first answer (``replayed``): the case the
    first delivery reached or started, nothing delivered or started again. The same key with
    a different correlation key or payload is refused (:class:`IdempotencyKeyReused`): it is
    another message, and the sender must give it a key of its own. Only a delivery that
    committed leaves a receipt: a message that was refused can be sent again under its key."""
    if idempotency_key is None:
        return Received(correlate(session, rt, name=name, correlation_key=correlation_key, actor=actor,
                                  payload=payload))
    if not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
        raise InvalidInput("an idempotency key is 1 to 128 visible ASCII characters (no spaces)")
    check_text(name=name, correlation_key=correlation_key)
    check_variables(rt.settings, payload or {}, field="payload")
    digest = _request_digest(correlation_key, json_safe(payload or {}))
    now = rt.now()
    horizon = now - timedelta(hours=rt.settings.idempotency_hours)
    _purge_expired(session, horizon)
    found = _receipt(session, actor.username, name, idempotency_key)
    if found is not None and found.received_at >= horizon:
        return _replay(session, found, digest)
    if found is not None:  # expired: the key is free again
        session.delete(found)
        session.flush()
    # Claim the key before delivering. A concurrent repeat (the sender timed out and sent
    # again) waits on this row until the first delivery commits, then answers from it.
    receipt = MessageReceipt(sender=actor.username, message_name=name, idempotency_key=idempotency_key,
                             request_sha256=digest, received_at=now)
    try:
        with session.begin_nested():
            session.add(receipt)
    except IntegrityError:
        found = _receipt(session, actor.username, name, idempotency_key)
        if found is None:  # the first delivery rolled back meanwhile
            raise Conflict("a message with this idempotency key was being delivered; send it again") from None
        return _replay(session, found, digest)
    instance = correlate(session, rt, name=name, correlation_key=correlation_key, actor=actor, payload=payload)
    receipt.instance_id = instance.id
    return Received(instance)


def _request_digest(correlation_key: str | None, payload: dict[str, Any]) -> str:
    canonical = json.dumps({"correlation_key": correlation_key, "payload": payload}, sort_keys=True,
                           ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _receipt(session: Session, sender: str, name: str, key: str) -> MessageReceipt | None:
    return session.execute(
        select(MessageReceipt).where(MessageReceipt.sender == sender, MessageReceipt.message_name == name,
                                     MessageReceipt.idempotency_key == key)
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def _replay(session: Session, receipt: MessageReceipt, digest: str) -> Received:
    if receipt.request_sha256 != digest:
        raise IdempotencyKeyReused(
            f"idempotency key {receipt.idempotency_key!r} was used at {receipt.received_at.isoformat()} for a "
            f"{receipt.message_name!r} message with another correlation key or payload; give a new message a new key",
            received_at=receipt.received_at.isoformat(), instance_id=receipt.instance_id)
    instance = session.get(ProcessInstance, receipt.instance_id) if receipt.instance_id is not None else None
    if instance is None:
        raise MessageNotCorrelated(f"the case the first {receipt.message_name!r} message reached is gone")
    return Received(instance, replayed=True)


def _purge_expired(session: Session, horizon: datetime) -> None:
    """Remove a batch of receipts older than the retention. Rows another transaction is
    removing are skipped, not waited for (PostgreSQL; SQLite runs one writer at a time)."""
    expired = (select(MessageReceipt.id).where(MessageReceipt.received_at < horizon)
               .order_by(MessageReceipt.id).limit(PURGE_BATCH).with_for_update(skip_locked=True))
    session.execute(delete(MessageReceipt).where(MessageReceipt.id.in_(expired.scalar_subquery())),
                    execution_options={"synchronize_session": False})


def correlate(session: Session, rt: Runtime, *, name: str, correlation_key: str | None, actor: Actor,
              payload: dict[str, Any] | None = None, from_case: bool = False) -> ProcessInstance:
    """Deliver ``name`` to the instance waiting for it under ``correlation_key``.

    If no instance waits but a deployed process starts on this message, a new instance is
    started with the correlation key as its business key (``from_case``: a diagram threw the
    message, see :func:`instances.start`). Otherwise nothing changes and
    :class:`MessageNotCorrelated` is raised.
    """
    check_text(name=name, correlation_key=correlation_key)
    check_variables(rt.settings, payload or {}, field="payload")
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
    _check_payload(session, rt, instance, task.task_spec, name, payload)
    definition = _message_definition(task.task_spec.event_definition, name)
    correlations = definition.get_correlations(task, payload)
    workflow.send_event(BpmnEvent(definition, payload, correlations))
    dropped: list[str] = []
    if getattr(definition, "message_var", None) is None:
        # Camunda semantics: a message's payload becomes process variables. (SpiffWorkflow
        # only keeps it when spiffworkflow:messageVariable names a variable.)
        accepted, dropped = _variables_of(workflow, task.task_spec, payload)
        task.data.update(accepted)
        # Taken here, filtered: the unit of work must not take the raw payload again.
        task.internal_data.pop(definition.name, None)
        check_case(rt.settings, task.data, field="payload")
    audit(session, rt, instance, "message.received", actor, task_uuid=subscription.task_uuid,
          message=name, correlation_key=correlation_key, payload=payload,
          **({"dropped": dropped} if dropped else {}))
    run_and_save(session, rt, instance, workflow, actor=actor)
    return instance


def _check_payload(session: Session, rt: Runtime, instance: ProcessInstance, task_spec: Any, name: str,
                   payload: dict[str, Any]) -> None:
    """Refuse a payload the catching event's ``payloadForm`` refuses (422, every problem
    listed, identifiers masked as in a form's answer): a bad message never runs the case."""
    form_key = (properties_of(task_spec).get(PAYLOAD_FORM) or "").strip()
    if not form_key:
        return
    validator = rt.form_validator(session, instance.process_version_id, form_key)
    if validator is None:
        return
    errors = [FieldError(field=mask_text("/".join(str(p) for p in error.absolute_path)
                                         or (error.validator in ("required", "additionalProperties")
                                             and _quoted(error.message)) or ""),
                         message=mask_echo(error.message, error.instance,
                                           next((str(p) for p in reversed(error.absolute_path)), "")))
              for error in sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))]
    if errors:
        raise FormValidationError(f"the {name!r} message's payload is invalid", errors)


def _quoted(message: str) -> str:
    # jsonschema names a missing property on the parent: "'regulator_ref' is a required property"
    return message.split("'")[1] if message.count("'") >= 2 else ""


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
