"""What a supervisor does to work in hand from the board: remind whoever holds a step (or
the groups it is offered to) with a reason, and reassign it to one of its candidates. Each is
audited on the case and follows the same rules as everywhere: the task must be one the
supervisor may see (recusal included), and a reassignment goes to a candidate only."""

from __future__ import annotations

from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import SUPERVISOR
from engine.audit import record_instance_event
from engine.calendars import SHANGHAI
from engine.errors import InvalidInput, PermissionDenied
from engine.models import ACTIVE_TASK_STATES, Notification, ProcessInstance, Task
from engine.process import tasks
from engine.process.runtime import Runtime
from engine.sla.milestones import languages, members

MAX_REASON = 500


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise InvalidInput("say why (the reason is kept in the audit trail)", field="reason")
    if len(text) > MAX_REASON:
        raise InvalidInput(f"a reason is at most {MAX_REASON} characters", field="reason")
    return text


def remind(session: Session, rt: Runtime, *, task_id: int, actor: Actor, reason: str | None) -> list[str]:
    """Send the holder of an open step (or, unclaimed, the members of its groups) a reminder
    from the supervisor; returns who was reminded."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("reminding needs the supervisor role")
    text = _reason(reason)
    task = tasks.get(session, task_id, actor=actor)
    if task.status not in ACTIVE_TASK_STATES:
        raise InvalidInput("only an open step can be reminded of", field="task_ids")
    recipients = [task.assignee] if task.assignee else members(session, task.candidate_groups or [], task)
    now = rt.now()
    step = task.name or task.element_id
    when = f"{task.due_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M}" if task.due_at else None
    # One language per recipient (their page language, Chinese unless they chose English).
    for username, language in languages(session, recipients).items():
        if language == "en":
            subject = f"[{task.business_key}] {step}: a reminder from {actor.username}"
            body = f"{actor.username}: {text} ({step}{f', due {when} Beijing time' if when else ''})"
        else:
            subject = f"[{task.business_key}] {step}：督办提醒"
            body = f"{actor.username} 督办：{text}（{step}{f'，{when} 到期' if when else ''}）"
        session.add(Notification(channel="default", recipient=username, subject=subject, body=body,
                                 instance_id=task.instance_id, task_id=task.id, created_at=now, attempts=0))
    instance = session.get(ProcessInstance, task.instance_id)
    assert instance is not None  # a task's case is never deleted
    record_instance_event(session, instance, kind="task.reminded", actor=actor.username, at=now,
                          task_uuid=task.task_uuid, data={"task_id": task.id, "reason": text, "to": recipients})
    return recipients


def reassign(session: Session, rt: Runtime, *, task_id: int, username: str, actor: Actor,
             reason: str | None) -> Task:
    """Give an open step to one of its candidates, with a reason (audited). Someone in none of
    its groups, or whom it recuses, is refused: an override is a single task's decision, not a
    bulk one."""
    text = _reason(reason)
    return tasks.assign(session, rt, task_id=task_id, username=username, actor=actor, reason=text,
                        candidates_only=True)
