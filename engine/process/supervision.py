"""What a supervisor does to work in hand from the board: remind whoever holds a step (or
the groups it is offered to) with a reason, reassign it to one of its candidates, or escalate
it to the level above. Each is audited on the case and follows the same rules as everywhere:
the task must be one the supervisor may see (recusal included), and a reassignment goes to a
candidate only."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.assignment import resolve_candidate_groups
from engine.access.identity import Actor
from engine.access.roles import SUPERVISOR
from engine.audit import record_instance_event
from engine.calendars import SHANGHAI
from engine.errors import Conflict, InvalidInput, PermissionDenied
from engine.models import ACTIVE_TASK_STATES, Group, Notification, ProcessInstance, SlaPolicy, Task, TaskKind
from engine.process import tasks
from engine.process.runtime import Runtime
from engine.sla.milestones import escalation_target, languages, members, open_escalation, open_escalation_of

MAX_REASON = 500
# The levels above a step a supervisor escalates to from the board: the case's branch
# management, the call centre's supervisors, headquarters' complaint department, compliance
# (the case's branch officer or HQ). ``branch:<role>`` is that role at the case's branch.
ESCALATION_TARGETS = ("branch:branch_head", "branch:branch_cs_director", "call_center_supervisor",
                      "hq_complaint_dept", "compliance")


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
    task = _open_task(session, task_id, actor, "only an open step can be reminded of")
    recipients = [task.assignee] if task.assignee else members(session, task.candidate_groups or [], task)
    now = rt.now()
    step = task.name or task.element_id
    when = f"{task.due_at.astimezone(SHANGHAI):%Y-%m-%d %H:%M}" if task.due_at else None
    _tell(session, recipients, task=task, about=task.id, now=now, texts={
        "en": (f"[{task.business_key}] {step}: a reminder from {actor.username}",
               f"{actor.username}: {text} ({step}{f', due {when} Beijing time' if when else ''})"),
        "zh": (f"[{task.business_key}] {step}：督办提醒",
               f"{actor.username} 督办：{text}（{step}{f'，{when} 到期' if when else ''}）")})
    record_instance_event(session, _case(session, task), kind="task.reminded", actor=actor.username, at=now,
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


def escalate(session: Session, rt: Runtime, *, task_id: int, actor: Actor, reason: str | None,
             to: str | None = None) -> Task:
    """Open an escalation task (升级) about an open step, offered to ``to`` (a group key, or
    ``branch:<role>`` for that role at the case's branch) or, without one, to where the step's
    deadline policy escalates; its members are notified with the supervisor's reason. A step
    already escalated and not yet answered is refused, so nobody is chased twice for it."""
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("escalating needs the supervisor role")
    text = _reason(reason)
    task = _open_task(session, task_id, actor, "only an open step can be escalated")
    if task.kind == TaskKind.ESCALATION:
        raise InvalidInput("this is already an escalation; reassign it instead", field="task_ids")
    if open_escalation_of(session, task) is not None:
        raise Conflict("this step is already escalated and the escalation is still open")
    target = (to or "").strip()
    if not target:
        policy = session.get(SlaPolicy, task.sla_policy_id) if task.sla_policy_id else None
        target = escalation_target(policy) or ""
        if not target:
            raise InvalidInput("the step's deadline policy names no escalation: say to whom", field="to")
    instance = _case(session, task)
    evaluator = rt.evaluator
    groups = resolve_candidate_groups(session, evaluator, [target], instance=instance, data={})
    known = set(session.execute(select(Group.key).where(Group.key.in_(groups))).scalars())
    if not groups or known != set(groups):
        raise InvalidInput(f"no group {target!r} to escalate to", field="to")
    recipients = members(session, groups, task)
    if not recipients:
        raise InvalidInput(f"nobody active is in {', '.join(groups)} to receive the escalation", field="to")
    if recipients == [actor.username]:
        raise InvalidInput("you alone would receive this escalation: name the level above", field="to")
    now = rt.now()
    escalation = open_escalation(session, instance, task, groups, now)
    step = task.name or task.element_id
    _tell(session, recipients, task=task, about=escalation.id, now=now, texts={
        "en": (f"[{task.business_key}] {step}: escalated by {actor.username}",
               f"{actor.username} escalated {step} to you: {text}"),
        "zh": (f"[{task.business_key}] {step}：升级督办", f"{actor.username} 将「{step}」升级给您：{text}")})
    record_instance_event(session, instance, kind="task.escalated", actor=actor.username, at=now,
                          task_uuid=task.task_uuid,
                          data={"task_id": task.id, "escalation_task_id": escalation.id, "to": groups,
                                "reason": text})
    return escalation


def _tell(session: Session, recipients: list[str], *, task: Task, about: int, now: datetime,
          texts: dict[str, tuple[str, str]]) -> None:
    """A notification to each recipient in their language (the one they chose for the pages,
    Chinese unless English): ``texts`` holds (subject, body) by language; ``about`` is the
    task the notice links to."""
    for username, language in languages(session, recipients).items():
        subject, body = texts[language]
        session.add(Notification(channel="default", recipient=username, subject=subject, body=body,
                                 instance_id=task.instance_id, task_id=about, created_at=now, attempts=0))


def _open_task(session: Session, task_id: int, actor: Actor, refusal: str) -> Task:
    task = tasks.get(session, task_id, actor=actor)
    if task.status not in ACTIVE_TASK_STATES:
        raise InvalidInput(refusal, field="task_ids")
    return task


def _case(session: Session, task: Task) -> ProcessInstance:
    instance = session.get(ProcessInstance, task.instance_id)
    assert instance is not None  # a task's case is never deleted
    return instance
