"""Where a case stands, element by element: what its diagram shows.

For every element of the deployed diagram the case has touched: completed (how many times,
so a loop that ran three times says so), active (with the open task's SLA state when it is a
person's step), waiting (a timer or a message), failed, or cancelled; and the sequence flows
the case has taken. Read from the workflow itself, so gateways, events and service tasks are
there as well as people's steps. Scoped like the case: 404 to a reader who may not see it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from lxml import etree
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.models import ACTIVE_TASK_STATES, ProcessInstance, ProcessVersion, Task
from engine.process import instances
from engine.process.runtime import Runtime
from engine.sla import clock as sla_clock

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
_STATES = {TaskState.COMPLETED: "completed", TaskState.READY: "active", TaskState.STARTED: "active",
           TaskState.WAITING: "waiting", TaskState.ERROR: "failed", TaskState.CANCELLED: "cancelled"}
# When an element was in several states (a loop: done twice, open again), the one shown.
_PRECEDENCE = ("failed", "active", "waiting", "completed", "cancelled")


@dataclass
class ElementState:
    element_id: str
    name: str | None
    state: str  # failed, active, waiting, completed or cancelled
    count: int  # how many times it completed
    sla_state: str | None = None  # an open person's step: on_track, at_risk, breached, paused, none
    due_at: datetime | None = None

    @property
    def markers(self) -> list[str]:
        """CSS marker names for the diagram (bpm-completed, bpm-active, bpm-sla-at_risk…)."""
        found = [self.state]
        if self.sla_state not in (None, "none"):
            found.append(f"sla-{self.sla_state}")
        return found


@dataclass
class Activity:
    instance: ProcessInstance
    elements: list[ElementState] = field(default_factory=list)
    flows: list[str] = field(default_factory=list)  # ids of the sequence flows taken


def of(session: Session, rt: Runtime, *, instance_id: int, actor: Actor) -> Activity:
    instance = instances.get(session, instance_id, actor=actor)
    workflow = rt.load(session, instance)
    counts: dict[str, int] = defaultdict(int)
    states: dict[str, set[str]] = defaultdict(set)
    names: dict[str, str | None] = {}
    for task in workflow.get_tasks():
        element = getattr(task.task_spec, "bpmn_id", None)
        state = _STATES.get(task.state)
        if element is None or state is None:
            continue
        names[element] = getattr(task.task_spec, "bpmn_name", None)
        states[element].add(state)
        if state == "completed":
            counts[element] += 1
    open_tasks = {t.element_id: t for t in session.execute(select(Task).where(
        Task.instance_id == instance.id, Task.status.in_(ACTIVE_TASK_STATES))).scalars()}
    now = rt.now()
    elements = []
    for element, seen in states.items():
        shown = next(s for s in _PRECEDENCE if s in seen)
        row = open_tasks.get(element)
        sla_state = sla_clock.state(row, now)[0] if row is not None and shown == "active" else None
        elements.append(ElementState(element, names.get(element), shown, counts[element], sla_state,
                                     row.due_at if row is not None else None))
    xml = session.execute(select(ProcessVersion.bpmn_xml)
                          .where(ProcessVersion.id == instance.process_version_id)).scalar_one()
    reached = {e.element_id for e in elements if e.state != "cancelled"}
    done = {e.element_id for e in elements if e.count}
    return Activity(instance=instance, elements=sorted(elements, key=lambda e: e.element_id),
                    flows=_flows_taken(xml, done, reached))


def _flows_taken(xml: str, done: set[str], reached: set[str]) -> list[str]:
    """A sequence flow counts as taken when its source completed and its target was reached
    (the diagram, not the workflow, knows the flows; a gateway's untaken branch is left out
    because its target was never reached)."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    root = etree.fromstring(xml.encode("utf-8"), parser=parser)
    taken = []
    for flow in root.iter(f"{{{BPMN_NS}}}sequenceFlow"):
        if flow.get("sourceRef") in done and flow.get("targetRef") in reached:
            taken.append(flow.get("id"))
    return sorted(taken)


def names(session: Session, rt: Runtime, *, instance: ProcessInstance) -> dict[str, str]:
    """Element ids to the names the diagram gives them (for timelines), for a case already read."""
    spec, subprocesses = rt.spec_for(session, instance.process_version_id)
    found: dict[str, str] = {}
    for process in (spec, *subprocesses.values()):
        for task_spec in process.task_specs.values():
            element, name = getattr(task_spec, "bpmn_id", None), getattr(task_spec, "bpmn_name", None)
            if element and name:
                found[element] = name
    return found


def bpmn_xml(session: Session, *, instance_id: int, actor: Actor) -> str:
    """The diagram the case runs on: its deployed version's BPMN, for a reader of the case."""
    instance = instances.get(session, instance_id, actor=actor)
    xml: str = session.execute(select(ProcessVersion.bpmn_xml)
                               .where(ProcessVersion.id == instance.process_version_id)).scalar_one()
    return xml
