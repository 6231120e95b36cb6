"""The case history of the path: every element the token passed, by its name.

A person's step already leaves ``task.completed`` (and its claim) in the audit trail; what
the engine did between them did not: the gateway that chose the branch, the boundary event
that fired (a timer, the client's message, an error) and the step it interrupted, the end
event the case reached. A supervisor reading a case, or an inspector asking why a complaint
closed as withdrawn, needs those too (Securities Law Art. 89 puts the burden of proof on the
firm).

How: when a workflow is loaded (or created) :func:`remember` notes which of its tasks were
already finished and which were open; the unit of work then calls :func:`record`, which
writes one audit event for each element that finished since, in the order they changed, and
notes them as finished so a second call records nothing twice.
"""

from __future__ import annotations

from typing import Any

from SpiffWorkflow.bpmn.specs.event_definitions import (
    CancelEventDefinition,
    ConditionalEventDefinition,
    ErrorEventDefinition,
    EscalationEventDefinition,
    MessageEventDefinition,
    MultipleEventDefinition,
    SignalEventDefinition,
    TerminateEventDefinition,
)
from SpiffWorkflow.bpmn.specs.event_definitions.timer import TimerEventDefinition
from SpiffWorkflow.bpmn.specs.mixins.events.event_types import CatchingEvent, ThrowingEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy.orm import Session

from engine.audit import record_instance_event
from engine.models import ProcessInstance

_SEEN = "_bpm_passage_seen"
# What a task was in when the workflow was loaded: finished, or reached and still open.
_OPEN = TaskState.READY | TaskState.STARTED | TaskState.WAITING | TaskState.ERROR

# The kinds written, by what the element is. A person's step is not here: its completion is
# ``task.completed``, written by the task service with who did it and what they entered.
START, BOUNDARY, INTERMEDIATE, END = "event.start", "event.boundary", "event.intermediate", "event.end"
GATEWAY, ACTIVITY, TASK_CANCELLED, ACTIVITY_CANCELLED = (
    "gateway.passed", "activity.completed", "task.cancelled", "activity.cancelled")
KINDS = (START, BOUNDARY, INTERMEDIATE, END, GATEWAY, ACTIVITY, TASK_CANCELLED, ACTIVITY_CANCELLED)


def remember(workflow: Any) -> Any:
    """Note the finished and the open tasks of a workflow just loaded or created."""
    finished: set[Any] = set()
    opened: set[Any] = set()
    for task in workflow.get_tasks():
        if task.has_state(TaskState.FINISHED_MASK):
            finished.add(task.id)
        elif task.has_state(_OPEN):
            opened.add(task.id)
    setattr(workflow, _SEEN, (finished, opened))
    return workflow


def record(session: Session, instance: ProcessInstance, workflow: Any, *, at: Any) -> None:
    """Write an audit event for every element finished since :func:`remember` (or the last
    call), oldest change first."""
    seen = getattr(workflow, _SEEN, None)
    if seen is None:  # a workflow that did not come through the runtime: nothing to compare with
        return
    finished, opened = seen
    passed = []
    for task in workflow.get_tasks(state=TaskState.FINISHED_MASK):
        if task.id in finished:
            continue
        was_open = task.id in opened
        finished.add(task.id)
        kind = _kind(task, was_open=was_open)
        if kind is not None:
            passed.append((task, kind))
    # Reached and still open now (a task readied by this step): cancelled later, it counts.
    opened.update(t.id for t in workflow.get_tasks(state=_OPEN))
    # What a step cancelled comes after what cancelled it (the boundary event that fired), the
    # rest in the order it changed; the sort is stable, so tasks changed in one instant keep
    # the workflow's (path) order.
    cancelled = (TASK_CANCELLED, ACTIVITY_CANCELLED)
    for task, kind in sorted(passed, key=lambda pair: (pair[1] in cancelled, pair[0].last_state_change)):
        record_instance_event(session, instance, kind=kind, actor=None, at=at, task_uuid=str(task.id),
                              data=describe(task))


def _kind(task: Any, *, was_open: bool) -> str | None:
    spec = task.task_spec
    if getattr(spec, "bpmn_id", None) is None:  # the engine's own joins and splits
        return None
    type_name = type(spec).__name__
    if task.has_state(TaskState.CANCELLED):
        # Only what had been reached: a branch the engine had merely predicted is not news.
        # An event that was waiting and did not fire (a boundary event whose step completed) is
        # not news either.
        if not was_open or (isinstance(spec, CatchingEvent) and "Task" not in type_name):
            return None
        return TASK_CANCELLED if spec.manual else ACTIVITY_CANCELLED
    if not task.has_state(TaskState.COMPLETED) or spec.manual:
        return None
    if "Gateway" in type_name:
        return GATEWAY
    if type_name == "StartEvent":
        return START
    if type_name == "BoundaryEvent":
        return BOUNDARY
    if type_name == "EndEvent":
        return END
    if isinstance(spec, (CatchingEvent, ThrowingEvent)) and "Task" not in type_name:
        return INTERMEDIATE
    return ACTIVITY


def describe(task: Any) -> dict[str, Any]:
    """What the history says of an element: its id and name, what it is, what triggered it
    (an event's timer, message, error…), whether a boundary event interrupted its step, and
    for a gateway the elements it sent the token on to."""
    spec = task.task_spec
    data: dict[str, Any] = {"element_id": spec.bpmn_id, "name": spec.bpmn_name, "element_type": _snake(type(spec))}
    trigger = _trigger(getattr(spec, "event_definition", None))
    if trigger is not None:
        data["trigger"] = trigger
    if type(spec).__name__ == "BoundaryEvent":
        data["interrupting"] = bool(getattr(spec, "cancel_activity", True))
        attached = _attached_to(task)
        if attached is not None:
            data["attached_to"], data["attached_to_name"] = attached
    if data["element_type"].endswith("gateway") and task.has_state(TaskState.COMPLETED):
        targets = _targets(task)
        data["to"] = [element for element, _ in targets]
        data["to_names"] = [name or element for element, name in targets]
    return data


_SPIFF_TYPES = {"RegistryServiceTask": "service_task", "SubWorkflowTask": "sub_process"}


def _snake(cls: type) -> str:
    for klass in cls.__mro__:
        if klass.__name__ in _SPIFF_TYPES:
            return _SPIFF_TYPES[klass.__name__]
    name = cls.__name__
    return "".join(f"_{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))


_TRIGGERS = ((TimerEventDefinition, "timer"), (MessageEventDefinition, "message"), (ErrorEventDefinition, "error"),
             (EscalationEventDefinition, "escalation"), (SignalEventDefinition, "signal"),
             (ConditionalEventDefinition, "conditional"), (CancelEventDefinition, "cancel"),
             (TerminateEventDefinition, "terminate"), (MultipleEventDefinition, "multiple"))


def _trigger(definition: Any) -> str | None:
    if definition is None:
        return None
    return next((word for cls, word in _TRIGGERS if isinstance(definition, cls)), "none")


def _attached_to(task: Any) -> tuple[str, str | None] | None:
    """The step a boundary event sits on: its sibling under the engine's boundary split."""
    parent = task.parent
    if parent is None:
        return None
    for sibling in parent.children:
        spec = sibling.task_spec
        if sibling is not task and type(spec).__name__ != "BoundaryEvent" and getattr(spec, "bpmn_id", None):
            return spec.bpmn_id, spec.bpmn_name
    return None


def _targets(task: Any) -> list[tuple[str, str | None]]:
    """The elements a gateway passed the token to (its children that were not dropped),
    looking through the engine's own splits to the element behind them."""
    found: list[tuple[str, str | None]] = []
    for child in task.children:
        if child.has_state(TaskState.PREDICTED_MASK | TaskState.CANCELLED):
            continue
        spec = child.task_spec
        if getattr(spec, "bpmn_id", None):
            found.append((spec.bpmn_id, spec.bpmn_name))
        else:
            found.extend((g.task_spec.bpmn_id, g.task_spec.bpmn_name) for g in child.children
                         if getattr(g.task_spec, "bpmn_id", None) and type(g.task_spec).__name__ != "BoundaryEvent")
    return found
