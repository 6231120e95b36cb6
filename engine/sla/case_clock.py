"""A case's own deadline (``bpm_case_clock``), beside its steps' SLA clocks: a complaint must be
answered within 15 or 30 working days whichever steps it goes through, and nobody would know
it runs long while every single step is on time.

A product decides the policy (when the clock starts, its deadline, who is warned) and calls
:func:`start`, :func:`move` and :func:`stop`; the engine keeps the clock, arms its milestones as
timer rows (kind ``case``) and fires them (:func:`fire_milestone`): each milestone notifies the
people of the groups it names, and the one at 100 % records the breach. Steps that carry the
task property ``dueByCaseClock`` are due when the case is (their due date follows a move).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.access.assignment import resolve_candidate_groups
from engine.audit import record_instance_event
from engine.bpmn.expressions import SafeEvaluator
from engine.calendars import SHANGHAI
from engine.errors import Conflict
from engine.models import (
    ACTIVE_TASK_STATES,
    ACTIVE_TIMER_STATES,
    CaseClock,
    Notification,
    ProcessInstance,
    SlaPolicy,
    Task,
    Timer,
    TimerKind,
    TimerStatus,
)
from engine.sla.host import SlaHost
from engine.sla.milestones import languages, members

ELEMENT = "case_clock"
# Task property: the step is due when its case is (a complaint's 反馈客户).
DUE_BY_CASE_CLOCK = "dueByCaseClock"


def get(session: Session, instance_id: int) -> CaseClock | None:
    return session.get(CaseClock, instance_id)


def state(clock: CaseClock, now: datetime) -> str:
    if clock.stopped_at is not None:
        return "met" if clock.stopped_at <= clock.due_at else "late"
    return "breached" if now >= clock.due_at else "running"


def start(session: Session, rt: SlaHost, *, instance: ProcessInstance, policy: str, started_at: datetime,
          due_at: datetime, milestones: list[dict[str, Any]], now: datetime) -> CaseClock:
    if get(session, instance.id) is not None:
        raise Conflict(f"case {instance.business_key} already has its clock")
    clock = CaseClock(instance_id=instance.id, policy=policy, started_at=started_at, due_at=due_at,
                      base_due_at=due_at, milestones=milestones)
    session.add(clock)
    session.flush()
    _arm(session, rt, instance, clock, now)
    record_instance_event(session, instance, kind="case_clock.started", actor="sla", at=now,
                          data={"policy": policy, "started_at": started_at.isoformat(), "due_at": due_at.isoformat()})
    return clock


def move(session: Session, rt: SlaHost, *, instance: ProcessInstance, clock: CaseClock, due_at: datetime,
         extended_by: str, actor: str, now: datetime) -> None:
    """An extension: the deadline moves, the milestones still ahead are re-armed on the new
    span (the ones already fired are not repeated), and a breach not yet reached is forgotten."""
    previous = clock.due_at
    clock.due_at, clock.extended_by, clock.extended_at = due_at, extended_by, now
    # The open steps due when the case is (``dueByCaseClock``) move with it.
    session.execute(update(Task).where(Task.instance_id == instance.id, Task.status.in_(ACTIVE_TASK_STATES),
                                       Task.due_at == previous).values(due_at=due_at, breached_at=None))
    if clock.breached_at is not None and due_at > now:
        clock.breached_at = None
    _cancel(session, instance.id)
    _arm(session, rt, instance, clock, now)
    record_instance_event(session, instance, kind="case_clock.moved", actor=actor, at=now,
                          data={"from": previous.isoformat(), "to": due_at.isoformat(), "extended_by": extended_by})


def retarget(session: Session, rt: SlaHost, *, instance: ProcessInstance, clock: CaseClock, due_at: datetime,
             reason: str, actor: str, now: datetime) -> None:
    """The case's own deadline changed (a complaint the client took to 12386 is regulator-
    transferred from then on): unlike an extension, the base deadline moves too and the one
    extension the case may get is still to come. Open steps due when the case is move with it,
    the milestones are re-armed on the new span, and a breach not yet reached is forgotten."""
    previous = clock.due_at
    if due_at == previous:
        return
    offset = due_at - previous
    clock.due_at = due_at
    clock.base_due_at = clock.base_due_at + offset if clock.extended_at is not None else due_at
    session.execute(update(Task).where(Task.instance_id == instance.id, Task.status.in_(ACTIVE_TASK_STATES),
                                       Task.due_at == previous).values(due_at=due_at, breached_at=None))
    if clock.breached_at is not None and due_at > now:
        clock.breached_at = None
    if clock.stopped_at is None:
        _cancel(session, instance.id)
        _arm(session, rt, instance, clock, now)
    record_instance_event(session, instance, kind="case_clock.retargeted", actor=actor, at=now,
                          data={"from": previous.isoformat(), "to": due_at.isoformat(), "reason": reason})


def stop(session: Session, *, instance: ProcessInstance, now: datetime) -> None:
    """The case answered (or ended): no more warnings; the clock keeps whether it was met."""
    clock = get(session, instance.id)
    if clock is None or clock.stopped_at is not None:
        return
    clock.stopped_at = now
    _cancel(session, instance.id)
    record_instance_event(session, instance, kind="case_clock.stopped", actor="sla", at=now,
                          data={"due_at": clock.due_at.isoformat(), "met": now <= clock.due_at})


def restart(session: Session, rt: SlaHost, *, instance: ProcessInstance, now: datetime) -> None:
    """The case is handled again (a withdrawal found involuntary): the same deadline runs on."""
    clock = get(session, instance.id)
    if clock is None or clock.stopped_at is None:
        return
    clock.stopped_at = None
    _arm(session, rt, instance, clock, now)
    record_instance_event(session, instance, kind="case_clock.restarted", actor="sla", at=now,
                          data={"due_at": clock.due_at.isoformat()})


def _cancel(session: Session, instance_id: int) -> None:
    session.execute(update(Timer).where(Timer.kind == TimerKind.CASE, Timer.instance_id == instance_id,
                                        Timer.status.in_(ACTIVE_TIMER_STATES))
                    .values(status=TimerStatus.CANCELLED))


def policy_milestones(session: Session, key: str) -> list[dict[str, Any]]:
    """The milestones of the case clock policy ``key``: the SLA policy of that key whose
    element is :data:`ELEMENT` (it never matches a step), saved like every SLA policy
    (``PUT /sla/policies/{key}``, workflows/sla/*.json). Each is ``{"at": fraction, "to":
    [groups]}``; none when no such policy is saved (the deadline is then watched without
    warnings: its breach is still recorded)."""
    policy = session.execute(select(SlaPolicy).where(SlaPolicy.key == key, SlaPolicy.element_id == ELEMENT,
                                                     SlaPolicy.active.is_(True))).scalar_one_or_none()
    if policy is None:
        return []
    return [{"at": float(m["at"]), "to": groups_of(m.get("to"))} for m in policy.milestones or []]


def groups_of(value: Any) -> list[str]:
    """A milestone's ``to``: a list of group keys, or one string of them separated by commas."""
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(g).strip() for g in items if str(g).strip()]


def apply_policy(session: Session, rt: SlaHost, *, key: str, actor: str, now: datetime) -> int:
    """The policy ``key`` changed: every running clock of it takes its milestones from now on
    (those whose moment has passed are not sent late, nor a breach recorded twice), audited
    on each case. Returns how many clocks changed."""
    milestones = policy_milestones(session, key)
    changed = 0
    clocks = session.execute(select(CaseClock, ProcessInstance).join(
        ProcessInstance, ProcessInstance.id == CaseClock.instance_id)
        .where(CaseClock.policy == key, CaseClock.stopped_at.is_(None)).order_by(CaseClock.instance_id)).all()
    for clock, instance in clocks:
        if clock.milestones == milestones:
            continue
        previous = clock.milestones
        clock.milestones = milestones
        _cancel(session, instance.id)
        _arm(session, rt, instance, clock, now, late=False)
        record_instance_event(session, instance, kind="case_clock.policy_changed", actor=actor, at=now,
                              data={"policy": key, "from": previous, "to": milestones})
        changed += 1
    return changed


def _arm(session: Session, rt: SlaHost, instance: ProcessInstance, clock: CaseClock, now: datetime, *,
         late: bool = True) -> None:
    """Arm the clock's milestones still ahead. The deadline is always watched (a breach is
    recorded at 100 % even if the policy names nobody to tell). ``late``: a deadline already
    passed fires now (a clock started or moved late); not when a policy change re-arms."""
    span = clock.due_at - clock.started_at
    milestones = list(clock.milestones)
    if not any(float(m["at"]) >= 1.0 for m in milestones):
        milestones.append({"at": 1.0, "to": []})
    for milestone in milestones:
        at = clock.started_at + span * float(milestone["at"])
        if at < now:
            if float(milestone["at"]) < 1.0 or not late or clock.breached_at is not None:
                continue  # a warning that would come late says nothing the breach will not
            at = now
        timer = Timer(kind=TimerKind.CASE, instance_id=instance.id, task_uuid=None, element_id=ELEMENT, due_at=at,
                      status=TimerStatus.WAITING, created_at=now, payload=dict(milestone))
        session.add(timer)
        rt.announce_timer(session, timer)


def fire_milestone(session: Session, *, timer: Timer, instance: ProcessInstance, now: datetime,
                   evaluator: SafeEvaluator) -> None:
    """Notify the milestone's groups (resolved for the case: ``branch:branch_cs_director`` is
    the case's branch's 客服总监); at 100 %, record the breach."""
    clock = get(session, instance.id)
    if clock is None or clock.stopped_at is not None:
        return
    payload = dict(timer.payload or {})
    fraction = float(payload.get("at", 1.0))
    groups = resolve_candidate_groups(session, evaluator, list(payload.get("to") or []), instance=instance, data={})
    due = clock.due_at
    if fraction >= 1.0:
        clock.breached_at = clock.breached_at or now
    recipients = members(session, groups, instance)
    # One language per recipient (their page language, Chinese unless they chose English),
    # the deadline in Beijing time, as every reminder is written.
    for username, language in languages(session, recipients).items():
        subject, body = _message(instance.business_key, fraction, due, english=language == "en")
        session.add(Notification(channel="default", recipient=username, subject=subject, body=body,
                                 instance_id=instance.id, task_id=None, created_at=now, attempts=0))
    record_instance_event(session, instance, kind="case_clock.breached" if fraction >= 1.0 else "case_clock.milestone",
                          actor="sla", at=now, data={"at": fraction, "to": groups, "due_at": due.isoformat()})


def _message(key: str, fraction: float, due: datetime, *, english: bool) -> tuple[str, str]:
    when = f"{due.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"
    if english:
        status = "past its deadline" if fraction >= 1.0 else f"{int(fraction * 100)}% of its deadline used"
        return f"[{key}] the case is {status}", f"Case {key} is due by {when} (Beijing time)."
    status = "已超过办结期限" if fraction >= 1.0 else f"办结期限已用 {int(fraction * 100)}%"
    return f"[{key}] 案件{status}", f"案件 {key} 应于 {when}（北京时间）前办结。"


def due_for_step(session: Session, instance_id: int) -> datetime | None:
    """The case's deadline for a step that is part of answering it; None once the case has
    answered (the clock stopped), so a step opened later takes its own policy's due date
    instead of one already past."""
    clock = session.execute(select(CaseClock).where(CaseClock.instance_id == instance_id)).scalar_one_or_none()
    return clock.due_at if clock is not None and clock.stopped_at is None else None
