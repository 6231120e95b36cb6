"""Milestones: timer rows at fractions of a task's SLA target, and what firing one does
(notify, raise the priority, reassign to a role, open an escalation task; at the target, the
breach is recorded)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from uuid import uuid4

from sqlalchemy import and_, delete, or_, select, true, update
from sqlalchemy.orm import Session, aliased

from engine.access.assignment import resolve_candidate_groups
from engine.access.roles import BRANCH_BOUND_CANDIDATES
from engine.audit import record_instance_event
from engine.bpmn.expressions import SafeEvaluator
from engine.calendars import BUSINESS_UNITS, SHANGHAI, BusinessCalendar, BusinessHours, Due, Unit
from engine.errors import NotFound
from engine.models import (
    ACTIVE_TIMER_STATES,
    Group,
    GroupMember,
    Notification,
    ProcessInstance,
    Task,
    TaskCandidate,
    TaskKind,
    TaskStatus,
    Timer,
    TimerKind,
    TimerStatus,
    User,
)
from engine.sla.calendar_store import CALENDARS, PolicyRow
from engine.sla.host import SlaHost

ACTIONS = ("notify", "raise_priority", "reassign", "escalate")
# A task turns "at risk" when this share of its target has elapsed.
AT_RISK_FRACTION = 0.8


def milestone_due(calendar: BusinessCalendar, start: datetime, due: Due, amount: Decimal, unit: str,
                  fraction: float) -> datetime:
    """The moment ``fraction`` of the target has elapsed, in the target's own terms:
    business time for WD/TD/WH, wall-clock time for calendar units."""
    if fraction >= 1.0 and math.isclose(fraction, 1.0):
        return due.at
    if unit in (Unit.WORKING_DAYS, Unit.TRADING_DAYS):
        span = Decimal(str(fraction)) * amount
        whole = int(span)
        at = calendar.add(start, whole, unit).at if whole else calendar.clock_start(
            start, trading=unit == Unit.TRADING_DAYS)[0]
        rest = span - whole
        if rest:
            # The fraction of a day is business hours of the target's own days: a trading
            # day's half is never on a make-up Sunday, when the exchanges are closed.
            minutes = float(Decimal(_minutes_per_day(calendar.hours)) * rest)
            at = calendar.add_business_time(at, timedelta(minutes=minutes),
                                            trading=unit == Unit.TRADING_DAYS).at
        return at
    if unit == Unit.WORKING_HOURS:
        return calendar.add(start, Decimal(str(fraction)) * amount, Unit.WORKING_HOURS).at
    return start + (due.at - start) * fraction


def diagram_milestone_due(calendar: BusinessCalendar, start: datetime, due_at: datetime, unit: str,
                          fraction: float) -> datetime:
    """The moment ``fraction`` of a due date the diagram set has elapsed, counted like the
    policy's own targets: the working time (trading time for TD) between the clock's start
    and the due date, on the task's calendar, so a reminder never falls at night or on a
    holiday. A calendar-unit policy, or a window with no working time in it, counts the
    wall clock."""
    if fraction >= 1.0 and math.isclose(fraction, 1.0):
        return due_at
    if unit in BUSINESS_UNITS:
        trading = unit == Unit.TRADING_DAYS
        span, _ = calendar.business_time(start, due_at, trading=trading)
        if span > timedelta():
            point = calendar.add_business_time(start, span * fraction, trading=trading).at
            # Short of the whole, a share never passes the due date (one set at night would
            # otherwise put the last share at the next opening); past it, it counts on, so an
            # escalation at 150 % does not go out with the breach.
            return min(point, due_at) if fraction < 1.0 else point
    return start + (due_at - start) * fraction


def _minutes_per_day(hours: BusinessHours) -> int:
    return sum((b.hour * 60 + b.minute) - (a.hour * 60 + a.minute) for a, b in hours.periods)


def schedule_milestones(session: Session, rt: SlaHost, *, instance: ProcessInstance, task: Task, policy: PolicyRow,
                        now: datetime) -> None:
    """Arm a new task's milestones (its row has an id by now)."""
    start = task.sla_started_at or now
    arm(session, rt, instance, task, policy, start=start, now=now, overdue_breach=start < now)


def at_risk(session: Session, policy: PolicyRow | None, task: Task, *, start: datetime) -> datetime:
    """When the task turns "at risk": :data:`AT_RISK_FRACTION` of its target, in the target's terms."""
    assert task.due_at is not None
    if policy is None:
        # No policy, no calendar to count on: the window's wall-clock share.
        return start + (task.due_at - start) * AT_RISK_FRACTION
    calendar = CALENDARS.get(session, policy.business_hours)
    if task.due_source == "diagram":
        return diagram_milestone_due(calendar, start, task.due_at, policy.target_unit, AT_RISK_FRACTION)
    return milestone_due(calendar, start, Due(task.due_at, task.calendar_incomplete), policy.target_amount,
                         policy.target_unit, AT_RISK_FRACTION)


def arm(session: Session, rt: SlaHost, instance: ProcessInstance, task: Task,
                         policy: PolicyRow, *, start: datetime, now: datetime,
                         shift: Callable[[datetime], datetime] | None = None,
                         overdue_breach: bool = False) -> None:
    """Timer rows for the milestones still ahead: a recompute must not re-notify the past.
    ``shift`` moves a milestone past the time the clock already spent paused."""
    assert task.due_at is not None
    calendar = CALENDARS.get(session, policy.business_hours)
    due = Due(task.due_at, task.calendar_incomplete)
    if task.due_source == "diagram":
        # The diagram's own due date: fractions of the working time up to it.
        points = [(m, diagram_milestone_due(calendar, start, task.due_at, policy.target_unit, m["at"]))
                  for m in policy.milestones]
    else:
        points = [(m, milestone_due(calendar, start, due, policy.target_amount, policy.target_unit, m["at"]))
                  for m in policy.milestones]
    # A paused task's clock stopped at the pause: its milestones are held until resume()
    # moves them by the paused time (a recompute during a pause must not arm them).
    paused = task.sla_paused_at is not None
    stopped = task.sla_paused_at if task.sla_paused_at is not None else now
    for milestone, at in points:
        if shift is not None:
            at = shift(at)
        if at < stopped:
            if not (overdue_breach and milestone["at"] >= 1.0 and not paused):
                continue
            # A clock anchored in the past can be breached on arrival: record it now.
            at = now
        timer = Timer(kind=TimerKind.SLA, instance_id=instance.id, task_uuid=task.task_uuid,
                      element_id=task.element_id, due_at=at,
                      status=TimerStatus.PAUSED if paused else TimerStatus.WAITING,
                      created_at=now, payload={"task_id": task.id, "policy": policy.key, **milestone})
        session.add(timer)
        if not paused:
            rt.announce_timer(session, timer)


def retire_task_timers(session: Session, task_uuids: list[str]) -> None:
    """A task that is done or gone needs no more reminders."""
    session.execute(update(Timer).where(Timer.kind == TimerKind.SLA, Timer.task_uuid.in_(task_uuids),
                                        Timer.status.in_(ACTIVE_TIMER_STATES))
                    .values(status=TimerStatus.CANCELLED))


def fire_milestone(session: Session, *, timer: Timer, instance: ProcessInstance, now: datetime,
                   evaluator: SafeEvaluator) -> None:
    """Do what the milestone says; the caller has claimed its timer row."""
    payload = dict(timer.payload or {})
    task = session.get(Task, payload["task_id"])
    if task is None:
        raise NotFound(f"task {payload['task_id']} of SLA timer {timer.id} is gone")
    action, fraction = payload["action"], float(payload["at"])
    record_instance_event(session, instance, kind="sla.milestone", actor="sla", at=now, task_uuid=task.task_uuid,
                          data={"task_id": task.id, "at": fraction, "action": action, "policy": payload.get("policy")})
    if fraction >= 1.0 and task.breached_at is None:
        task.breached_at = now
        record_instance_event(session, instance, kind="sla.breached", actor="sla", at=now, task_uuid=task.task_uuid,
                              data={"task_id": task.id, "due_at": task.due_at.isoformat() if task.due_at else None})
    # The API stores omitted optional fields as null: null "to"/"by" mean the defaults.
    if action == "notify":
        _notify(session, _recipients(session, evaluator, instance, task, payload.get("to") or "assignee"),
                fraction=fraction, escalated=False, task=task, now=now)
    elif action == "raise_priority":
        task.priority = min(100, task.priority + int(payload.get("by") or 20))
    elif action == "reassign":
        groups = resolve_candidate_groups(session, evaluator, [payload["to"]], instance=instance, data={})
        _set_candidates(session, task, groups)
        task.assignee, task.status = None, TaskStatus.OPEN
        record_instance_event(session, instance, kind="task.reassigned", actor="sla", at=now,
                              task_uuid=task.task_uuid, data={"task_id": task.id, "candidate_groups": groups})
    elif action == "escalate":
        groups = resolve_candidate_groups(session, evaluator, [payload["to"]], instance=instance, data={})
        escalation = open_escalation(session, instance, task, groups, now)
        _notify(session, members(session, groups, escalation), fraction=fraction, escalated=True, task=task,
                now=now)
        record_instance_event(session, instance, kind="sla.escalated", actor="sla", at=now, task_uuid=task.task_uuid,
                              data={"task_id": task.id, "escalation_task_id": escalation.id, "to": groups})


def open_escalation(session: Session, instance: ProcessInstance, task: Task, groups: list[str],
                    now: datetime) -> Task:
    """An escalation task (升级) about ``task``, offered to ``groups`` above the usual queue;
    it closes by itself when the step is done or cancelled (``close_escalations``)."""
    escalation = Task(
        task_uuid=str(uuid4()), instance_id=instance.id, process_key=task.process_key,
        element_id=f"{task.element_id}.escalation", name=f"升级 Escalation: {task.name or task.element_id}",
        lane=None, candidate_groups=groups, status=TaskStatus.OPEN, priority=min(100, task.priority + 30),
        created_at=now, due_at=None, business_key=task.business_key, client_id=task.client_id,
        branch_code=task.branch_code, form_key=None, kind=TaskKind.ESCALATION, escalated_task_id=task.id,
    )
    session.add(escalation)
    session.flush()
    session.add_all(TaskCandidate(task_id=escalation.id, group_key=g) for g in groups)
    return escalation


def open_escalation_of(session: Session, task: Task) -> Task | None:
    """The escalation task still open about ``task``, if one is."""
    return session.execute(
        select(Task).where(Task.escalated_task_id == task.id, Task.kind == TaskKind.ESCALATION,
                           Task.status.in_((TaskStatus.OPEN, TaskStatus.CLAIMED))).limit(1)
    ).scalar_one_or_none()


def escalation_target(policy: PolicyRow | None) -> str | None:
    """Where the task's deadline policy escalates to (the ``to`` of its escalate milestone,
    the last one if several), or None when it names no escalation."""
    targets = [m.get("to") for m in (policy.milestones if policy else []) if m.get("action") == "escalate"]
    return next((t for t in reversed(targets) if t), None)


# What a reminder says, in the recipient's language (the language they chose for the pages;
# Chinese unless they chose English), with times in Beijing time.
_TEXTS = {
    "zh": {"subject": "[{key}] {name}：{status}", "overdue": "已超时", "progress": "已用时 {pct}%",
           "escalated": "已升级", "body": "任务「{name}」（{key}）截止时间 {due}（北京时间）；{status}。",
           "no_due": "未设截止时间"},
    "en": {"subject": "[{key}] {name}: {status}", "overdue": "overdue", "progress": "{pct}% of the time allowed used",
           "escalated": "escalated", "body": "Task {name} ({key}) is due {due} Beijing time; {status}.",
           "no_due": "no due date"},
}


def languages(session: Session, usernames: list[str]) -> dict[str, str]:
    """The language each recipient reads notices in: "en" for those who chose English for
    their pages, "zh" for everyone else."""
    if not usernames:
        return {}
    chosen = dict(session.execute(select(User.username, User.locale).where(User.username.in_(usernames))).all())
    return {u: "en" if (chosen.get(u) or "").startswith("en") else "zh" for u in usernames}


def message(task: Task, fraction: float, *, escalated: bool, language: str) -> tuple[str, str]:
    """(subject, body) of a milestone's notification in ``language`` ("zh" or "en")."""
    texts = _TEXTS[language]
    progress = texts["overdue"] if fraction >= 1.0 else texts["progress"].format(pct=int(fraction * 100))
    due = (task.due_at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") if task.due_at else texts["no_due"])
    name, key = task.name or task.element_id, task.business_key
    subject = texts["subject"].format(key=key, name=name, status=texts["escalated"] if escalated else progress)
    return subject, texts["body"].format(name=name, key=key, due=due, status=progress)


def _set_candidates(session: Session, task: Task, groups: list[str]) -> None:
    session.execute(delete(TaskCandidate).where(TaskCandidate.task_id == task.id))
    session.add_all(TaskCandidate(task_id=task.id, group_key=g) for g in groups)
    task.candidate_groups = groups


def _recipients(session: Session, evaluator: SafeEvaluator, instance: ProcessInstance, task: Task,
                to: str) -> list[str]:
    if to == "assignee":
        return [task.assignee] if task.assignee else members(session, task.candidate_groups or [], task)
    if to == "candidates":
        return members(session, task.candidate_groups or [], task)
    return members(session, resolve_candidate_groups(session, evaluator, [to], instance=instance, data={}), task)


def members(session: Session, groups: list[str], task: Task | ProcessInstance) -> list[str]:
    """The active members of ``groups`` the task (or the case) would be offered to: a
    branch-bound group (``compliance``) reaches its members at headquarters and at the
    task's branch only."""
    if not groups:
        return []
    free = [g for g in groups if g not in BRANCH_BOUND_CANDIDATES]
    bound = [g for g in groups if g in BRANCH_BOUND_CANDIDATES]
    branch_ok = or_(User.branch_code.is_(None), User.branch_code == task.branch_code) \
        if task.branch_code is not None else true()
    return list(session.execute(
        select(User.username).join(GroupMember, GroupMember.user_id == User.id)
        .join(Group, Group.id == GroupMember.group_id)
        .where(or_(Group.key.in_(free), and_(Group.key.in_(bound), branch_ok)), User.active.is_(True))
        .distinct().order_by(User.username)
    ).scalars())


def _notify(session: Session, usernames: list[str], *, fraction: float, escalated: bool, task: Task,
            now: datetime) -> None:
    if not usernames:
        return
    for username, language in languages(session, usernames).items():
        subject, body = message(task, fraction, escalated=escalated, language=language)
        session.add(Notification(channel="default", recipient=username, subject=subject, body=body,
                                 instance_id=task.instance_id, task_id=task.id, created_at=now, attempts=0))


def close_escalations(session: Session, instance: ProcessInstance, task_uuids: list[str], now: datetime) -> None:
    """The steps ``task_uuids`` are done or cancelled: the escalation tasks opened for them are
    closed (cancelled, audited as ``task.escalation_closed``), so no supervisor chases a step
    that no longer waits."""
    step = aliased(Task)
    rows = session.execute(
        select(Task, step.status).join(step, step.id == Task.escalated_task_id)
        .where(step.task_uuid.in_(task_uuids), Task.kind == TaskKind.ESCALATION,
               Task.status.in_((TaskStatus.OPEN, TaskStatus.CLAIMED)))
        .execution_options(populate_existing=True)).all()
    for escalation, step_status in rows:
        escalation.status, escalation.completed_at = TaskStatus.CANCELLED, now
        record_instance_event(session, instance, kind="task.escalation_closed", actor="system", at=now,
                              task_uuid=escalation.task_uuid,
                              data={"task_id": escalation.id, "escalated_task_id": escalation.escalated_task_id,
                                    "element_id": escalation.element_id, "because": str(step_status)})
