"""Driving one case of a process the way the worklist would: find the step in a person's
inbox, then complete it as that person."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from SpiffWorkflow.bpmn.specs.mixins.events.end_event import EndEvent
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import select

from engine.access.identity import Actor
from engine.db import Database
from engine.models import ACTIVE_TASK_STATES, AuditEvent, InstanceStatus, ProcessInstance, Task, TaskKind
from engine.process import instances, messages, tasks
from engine.process.runtime import Runtime

Handled = tuple[str, list[str], str]  # (element, candidate groups, completed by)
# (element, candidate groups, preset assignee, excluded users, due): how a step was offered.
Offer = tuple[str, list[str], str | None, list[str], datetime | None]


class CaseDriver:
    """One case, known by its business key. Subclasses say how it starts."""

    # The process whose tasks are the case's (a key another process shares is not mixed in).
    process_key: ClassVar[str | None] = None
    # Look for the step among the tasks offered to the person (their groups), not anything they may see.
    candidate_inbox: ClassVar[bool] = False
    # Every step must leave the case running, not failed.
    never_fails: ClassVar[bool] = False

    def __init__(self, db: Database, rt: Runtime, staff: dict[str, Actor], key: str) -> None:
        self.db, self.rt, self.staff, self.key = db, rt, staff, key
        self.instance_id: int | None = None
        self.handled: list[Handled] = []
        self._offered: dict[int, Offer] = {}  # each task as first seen open, by task id

    # -- reading ------------------------------------------------------------------------------
    def open_tasks(self) -> list[Task]:
        query = select(Task).where(Task.business_key == self.key, Task.kind == TaskKind.BPMN,
                                   Task.status.in_(ACTIVE_TASK_STATES))
        if self.process_key is not None:
            query = query.where(Task.process_key == self.process_key)
        with self.db.transaction() as s:
            found = list(s.execute(query.order_by(Task.id)).scalars())
        for task in found:
            self._offered.setdefault(task.id, _offer(task))
        return found

    def offers(self) -> list[Offer]:
        """Every user task the case reached, in the order it was created (done, open or
        cancelled), as it was offered: (element, candidate groups, assignee, excluded, due).
        The assignee is the one preset when the task was first seen open, not who later
        claimed or completed it; a task never seen open is read as it is now."""
        query = select(Task).where(Task.business_key == self.key, Task.kind == TaskKind.BPMN)
        if self.process_key is not None:
            query = query.where(Task.process_key == self.process_key)
        with self.db.transaction() as s:
            return [self._offered.get(t.id) or _offer(t) for t in s.execute(query.order_by(Task.id)).scalars()]

    def open_task(self) -> Task:
        (task,) = self.open_tasks()
        return task

    def task(self, element: str) -> Task:
        (task,) = [t for t in self.open_tasks() if t.element_id == element]
        return task

    def instance(self) -> ProcessInstance:
        with self.db.transaction() as s:
            instance = s.get(ProcessInstance, self.instance_id)
        assert instance is not None
        return instance

    def data(self) -> dict[str, Any]:
        with self.db.transaction() as s:
            return instances.data_of(s, self.rt, s.get(ProcessInstance, self.instance_id))

    def ends(self) -> list[str]:
        """The end events the case reached, by id (a sub-process's own ends included)."""
        with self.db.transaction() as s:
            workflow = self.rt.load(s, s.get(ProcessInstance, self.instance_id))
            return [t.task_spec.bpmn_id for t in workflow.get_tasks(state=TaskState.COMPLETED)
                    if isinstance(t.task_spec, EndEvent) and t.task_spec.bpmn_id]

    def trail(self) -> list[tuple[str, str | None, str | None]]:
        """(kind, actor, element) of every event in the case's audit trail, in order."""
        with self.db.transaction() as s:
            events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{self.instance_id}")
                               .order_by(AuditEvent.seq)).scalars()
            return [(e.kind, e.actor, (e.data or {}).get("element_id")) for e in events]

    def assert_not_failed(self) -> None:
        instance = self.instance()
        assert instance.status != InstanceStatus.FAILED, instance.error

    # -- acting -------------------------------------------------------------------------------
    def do(self, element: str, who: str, data: dict[str, Any], *, alone: bool = False) -> Task:
        """``element`` is open (the only open step with ``alone``) and in ``who``'s inbox;
        ``who`` completes it."""
        open_now = self.open_tasks()
        assert element in [t.element_id for t in open_now], f"expected {element}, open: {open_now}"
        assert not alone or len(open_now) == 1, [t.element_id for t in open_now]
        task = next(t for t in open_now if t.element_id == element)
        actor = self.staff[who]
        query = tasks.InboxQuery(candidate_me=self.candidate_inbox, business_key=self.key)
        with self.db.transaction() as s:
            inbox, _ = tasks.inbox(s, actor=actor, query=query, now=self.rt.now())
            assert task.id in {t.id for t in inbox}, f"{element} is not in {who}'s inbox"
            tasks.complete(s, self.rt, task_id=task.id, actor=actor, data=data)
        self.handled.append((element, list(task.candidate_groups or []), who))
        if self.never_fails:
            self.assert_not_failed()
        return task

    def send(self, message: str, payload: dict[str, Any] | None = None, *, actor: Actor) -> None:
        """A message to the case, correlated by its business key."""
        with self.db.transaction() as s:
            messages.correlate(s, self.rt, name=message, correlation_key=self.key, actor=actor,
                               payload=payload or {})
        if self.never_fails:
            self.assert_not_failed()


def _offer(task: Task) -> Offer:
    return (task.element_id, list(task.candidate_groups or []), task.assignee, sorted(task.excluded or []),
            task.due_at)
