"""A task's SLA clock: which policy applies, when the task is due, its state (on track, at
risk, breached, paused), and pausing it while the task waits for the client."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_instance_event
from engine.calendars import BUSINESS_UNITS, SHANGHAI, BusinessCalendar, Unit
from engine.errors import InvalidInput
from engine.models import ACTIVE_TASK_STATES, ProcessInstance, SlaPolicy, Task, Timer, TimerKind, TimerStatus
from engine.sla.calendar_store import CALENDARS, PolicyRow
from engine.sla.host import SlaHost
from engine.sla.milestones import at_risk

ON_TRACK, AT_RISK, BREACHED, PAUSED, NO_SLA = "on_track", "at_risk", "breached", "paused", "none"
# A finished task (completed, or cancelled by the process: a boundary event, an end, the
# case's cancellation) whose deadline was not breached while it was open.
CLOSED = "closed"


def _matches(policy: PolicyRow, task: Task, data: dict[str, Any]) -> bool:
    return (
        policy.active
        and (policy.process_key is None or policy.process_key == task.process_key)
        and (policy.element_id is None or policy.element_id == task.element_id)
        and (policy.lane is None or policy.lane == task.lane)
        and (policy.min_priority is None or task.priority >= policy.min_priority)
        and all(str(data.get(k)) == str(v) for k, v in (policy.match_data or {}).items())
    )


def match(session: Session, rt: SlaHost, task: Task, data: dict[str, Any]) -> PolicyRow | None:
    return first_match(rt.policies.active(session), task, data)


def first_match(policies: Sequence[PolicyRow], task: Task, data: dict[str, Any]) -> PolicyRow | None:
    """The policy the step names (its ``slaPolicy`` property) when it is active, else the
    first of ``policies`` (in matching order) that applies to the task."""
    named = task.sla_policy_key
    if named:
        chosen = next((p for p in policies if p.active and p.key == named), None)
        if chosen is not None:
            return chosen
    return next((p for p in policies if _matches(p, task, data)), None)


def start_clock(session: Session, rt: SlaHost, *, instance: ProcessInstance, task: Task, data: dict[str, Any],
                now: datetime) -> PolicyRow | None:
    """Give a new task its due date; returns the policy whose milestones
    :func:`schedule_milestones` must arm once the task row has an id."""
    policy = match(session, rt, task, data)
    start = _anchor(policy, data, now)
    task.sla_started_at = start
    if task.due_at is not None:
        task.due_source = "diagram"
    elif policy is not None:
        calendar = CALENDARS.get(session, policy.business_hours)
        due = calendar.add(start, policy.target_amount, policy.target_unit)
        task.due_at, task.due_source, task.calendar_incomplete = due.at, "policy", due.incomplete
    if task.due_at is not None:
        task.at_risk_at = at_risk(session, policy, task, start=start)
    if policy is None or task.due_at is None:
        return None
    task.sla_policy_id = policy.id
    return policy


def _anchor(policy: PolicyRow | None, data: dict[str, Any], now: datetime) -> datetime:
    """Where the clock starts: the policy's anchor variable when it holds an earlier,
    timezone-aware moment (a regulatory deadline counts from the event, not from when the
    case reached us), else now. An unusable value falls back to now rather than failing
    the step: the due date is then late, never early, and the value is visible in the data."""
    name = getattr(policy, "anchor_variable", None)
    raw = data.get(name) if name else None
    if not raw:
        return now
    try:
        moment = raw if isinstance(raw, datetime) else datetime.fromisoformat(str(raw))
    except ValueError:
        return now
    if moment.tzinfo is None and len(str(raw)) == 10:
        # A date only ("opened 2025-06-03"): that day at the time it is now, so a message
        # arriving on the day itself changes nothing and a late one moves back whole days.
        local = now.astimezone(SHANGHAI)
        moment = datetime.combine(moment.date(), local.timetz())
    if moment.tzinfo is None or moment > now:
        return now
    return moment


def state(task: Task, now: datetime) -> tuple[str, float | None]:
    """(SLA state, seconds to breach) as shown on every task. A finished task's clock is
    settled: breached if it was, else closed, and nothing left to breach."""
    if task.due_at is None:
        return NO_SLA, None
    if task.status not in ACTIVE_TASK_STATES:
        return (BREACHED if task.breached_at is not None else CLOSED), None
    if task.sla_paused_at is not None:
        return PAUSED, (task.due_at - task.sla_paused_at).total_seconds()
    remaining = (task.due_at - now).total_seconds()
    if task.breached_at is not None or remaining < 0:
        return BREACHED, remaining
    if task.at_risk_at is not None and now >= task.at_risk_at:
        return AT_RISK, remaining
    return ON_TRACK, remaining


def pause(session: Session, rt: SlaHost, *, task: Task, instance: ProcessInstance, actor: Actor, reason: str) -> None:
    """"Waiting for client": the clock stops and milestone timers are held."""
    if task.sla_paused_at is not None:
        return
    if task.sla_policy_id is not None:
        policy = session.get(SlaPolicy, task.sla_policy_id)
        if policy is not None and not policy.pausable:
            raise InvalidInput(f"the SLA policy {policy.key!r} does not allow pausing")
    now = rt.now()
    task.sla_paused_at = now
    session.execute(update(Timer).where(Timer.kind == TimerKind.SLA, Timer.task_uuid == task.task_uuid,
                                        Timer.status == TimerStatus.WAITING).values(status=TimerStatus.PAUSED))
    record_instance_event(session, instance, kind="sla.paused", actor=actor.username, at=now,
                          task_uuid=task.task_uuid, data={"task_id": task.id, "reason": reason})


def resume(session: Session, rt: SlaHost, *, task: Task, instance: ProcessInstance, actor: Actor) -> None:
    """The due date and pending milestones move by the paused time, measured in the
    target's terms (business time for WD/TD/WH, see :mod:`engine.calendars`)."""
    if task.sla_paused_at is None:
        return
    now = rt.now()
    since = task.sla_paused_at
    task.sla_paused_at = None
    task.sla_paused_seconds = (task.sla_paused_seconds or 0) + int((now - since).total_seconds())
    # The interval itself is kept: a recompute measures it again on the calendar of the day.
    task.sla_pauses = [*(task.sla_pauses or []), [since.isoformat(), now.isoformat()]]
    calendar, unit = _pause_terms(session, task)
    paused = PausedTime(calendar, unit, [(since, now)])
    if task.due_at is not None:
        task.due_at = paused(task.due_at)
    if task.at_risk_at is not None:
        task.at_risk_at = paused(task.at_risk_at)
    held = session.execute(select(Timer).where(Timer.kind == TimerKind.SLA, Timer.task_uuid == task.task_uuid,
                                               Timer.status == TimerStatus.PAUSED)).scalars().all()
    for timer in held:
        timer.due_at = paused(timer.due_at)
        timer.status = TimerStatus.WAITING
        rt.announce_timer(session, timer)
    if paused.incomplete:
        task.calendar_incomplete = True
    record_instance_event(session, instance, kind="sla.resumed", actor=actor.username, at=now,
                          task_uuid=task.task_uuid,
                          data={"task_id": task.id, "paused_seconds": (now - since).total_seconds(),
                                "counted_seconds": paused.total.total_seconds(), "unit": str(unit),
                                "due_at": task.due_at.isoformat() if task.due_at else None})


class PausedTime:
    """The time a clock spent paused, in its target's terms; calling it moves a moment of
    the unpaused clock to where it falls once that time is excluded.

    ``legacy`` is wall-clock time of pauses recorded only as a total (before the intervals
    were kept, migration 0007); it moves every moment as it did then."""

    def __init__(self, calendar: BusinessCalendar, unit: Unit | str,
                 intervals: Iterable[tuple[datetime, datetime]], *, legacy: timedelta = timedelta()) -> None:
        self.calendar, self.unit, self.legacy = calendar, Unit(unit), legacy
        self.total, self.incomplete = timedelta(), False
        for since, until in intervals:
            part, complete = calendar.paused_time(since, until, self.unit)
            self.total += part
            self.incomplete |= not complete

    def __call__(self, at: datetime) -> datetime:
        moved = self.calendar.extend(at, self.total, self.unit)
        self.incomplete |= moved.incomplete
        return moved.at + self.legacy


# Wall-clock terms for a clock without a policy unit (no calendar days are consulted).
_WALL_CLOCK = BusinessCalendar({})


def _pause_terms(session: Session, task: Task) -> tuple[BusinessCalendar, Unit]:
    """The calendar and unit a task's paused time is measured in: its policy's, when the
    policy gave the due date; for a diagram's own due date, the working time of the policy's
    calendar (its milestones are shares of the working time up to it), or the wall clock
    where there is no policy or the policy counts calendar time."""
    policy = session.get(SlaPolicy, task.sla_policy_id) if task.sla_policy_id is not None else None
    if policy is None:
        return _WALL_CLOCK, Unit.CALENDAR_MINUTES
    calendar, unit = CALENDARS.get(session, policy.business_hours), Unit(policy.target_unit)
    if task.due_source == "policy":
        return calendar, unit
    if unit in BUSINESS_UNITS:
        return calendar, Unit.TRADING_DAYS if unit is Unit.TRADING_DAYS else Unit.WORKING_HOURS
    return _WALL_CLOCK, Unit.CALENDAR_MINUTES


def pauses(task: Task) -> list[tuple[datetime, datetime]]:
    return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in task.sla_pauses or []]


def legacy_pause(task: Task) -> timedelta:
    recorded = sum(int((b - a).total_seconds()) for a, b in pauses(task))
    return timedelta(seconds=max((task.sla_paused_seconds or 0) - recorded, 0))
