"""SLA clocks: policies as data, due dates on business calendars, milestones as timers.

A policy says which tasks it applies to (process, element or lane, minimum priority,
instance variables such as the VIP tier; ordered, first match wins), the target (amount,
unit, business hours), the milestones at fractions of the target and whether the clock may
pause. A task's due date comes from ``camunda:dueDate`` when the diagram gives one (that
wins), else from the first matching policy. Milestones become ``bpm_timer`` rows of kind
``sla``: firing one notifies, raises priority, reassigns to a role or opens an escalation
task. Reaching the target records a breach (an audit event and ``breached_at``), which
completing the task late does not clear.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

from sqlalchemy import delete, event, func, or_, select, update
from sqlalchemy.orm import Session

from engine.assignment import resolve_candidate_groups
from engine.audit import record_instance_event, record_system_event
from engine.calendars import SHANGHAI, BusinessCalendar, BusinessHours, DayInfo, Due, Unit
from engine.db import after_commit
from engine.errors import InvalidInput, NotFound, PermissionDenied
from engine.expressions import SafeEvaluator
from engine.identity import PROCESS_OWNER, Actor
from engine.models import (
    BusinessHoursRow,
    CalendarDay,
    Group,
    GroupMember,
    Notification,
    ProcessInstance,
    Setting,
    SlaPolicy,
    Task,
    TaskCandidate,
    Timer,
    User,
)

ACTIONS = ("notify", "raise_priority", "reassign", "escalate")
ON_TRACK, AT_RISK, BREACHED, PAUSED, NO_SLA = "on_track", "at_risk", "breached", "paused", "none"
AT_RISK_FRACTION = 0.8


# -- calendars ------------------------------------------------------------------------------
class CalendarCache:
    """Days and business hours by calendar revision; an administrator's edit bumps the
    revision, so every process sees it on its next computation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._revision: str | None = None
        self._days: dict[Any, DayInfo] = {}
        self._hours: dict[str, BusinessHours] = {}

    def get(self, session: Session, hours_name: str) -> BusinessCalendar:
        revision = revisions(session).get("calendar_revision")
        if revision != self._revision:
            days = {row.day: DayInfo(row.working, row.trading, row.name)
                    for row in session.execute(select(CalendarDay)).scalars()}
            hours = {row.name: _hours(row) for row in session.execute(select(BusinessHoursRow)).scalars()}
            with self._lock:
                self._days, self._hours, self._revision = days, hours, revision
        if hours_name not in self._hours:
            raise InvalidInput(f"no business hours named {hours_name!r}")
        return BusinessCalendar(self._days, self._hours[hours_name])


def _hours(row: BusinessHoursRow) -> BusinessHours:
    periods = tuple((time.fromisoformat(a), time.fromisoformat(b)) for a, b in row.periods)
    return BusinessHours(periods=periods, tz=ZoneInfo(row.tz))


CALENDARS = CalendarCache()

_REVISIONS_KEY = "bpm_revisions"
_REVISIONS = select(Setting.key, Setting.value).where(Setting.key.in_(("calendar_revision", "sla_revision")))


# The same two values as columns, so the statement that locks an instance brings them along
# and a step that creates tasks needs no round trip of its own to check its caches.
REVISION_COLUMNS = tuple(
    select(Setting.value).where(Setting.key == key).scalar_subquery().label(key)
    for key in ("calendar_revision", "sla_revision")
)


def remember_revisions(session: Session, calendar_revision: str | None, sla_revision: str | None) -> None:
    """Values read by a statement with :data:`REVISION_COLUMNS`."""
    if _REVISIONS_KEY not in session.info:
        session.info[_REVISIONS_KEY] = {k: v for k, v in (("calendar_revision", calendar_revision),
                                                         ("sla_revision", sla_revision)) if v is not None}


def revisions(session: Session) -> dict[str, str]:
    """Revisions of the reference data processes cache (calendar, SLA policies), read once
    per transaction and on the connection, so asking does not flush the session."""
    cached: dict[str, str] | None = session.info.get(_REVISIONS_KEY)
    if cached is None:
        cached = {key: value for key, value in session.connection().execute(_REVISIONS).all()}
        session.info[_REVISIONS_KEY] = cached
    return cached


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_revisions(session: Session) -> None:
    session.info.pop(_REVISIONS_KEY, None)


def _bump_revision(session: Session, key: str) -> None:
    # A fresh random token, not a counter: two concurrent edits must not both write "n+1"
    # and leave other processes trusting a cache of the first edit.
    token = uuid4().hex
    setting = session.get(Setting, key)
    if setting is None:
        session.add(Setting(key=key, value=token))
    else:
        setting.value = token
    revisions(session)[key] = token


def bump_calendar_revision(session: Session) -> None:
    _bump_revision(session, "calendar_revision")


# A policy as cached: a plain row (attribute access like the model), never an ORM object,
# which a rollback in the session that loaded it would expire under every other user.
PolicyRow = Any
_ACTIVE_POLICIES = (select(SlaPolicy.__table__).where(SlaPolicy.__table__.c.active.is_(True))
                    .order_by(SlaPolicy.__table__.c.position, SlaPolicy.__table__.c.id))


class PolicyCache:
    """Active policies by SLA revision: matching a new task costs no query (every task
    creation would otherwise read the policy table). One per Runtime."""

    def __init__(self) -> None:
        self._revision: str | None = None
        self._policies: list[PolicyRow] = []

    def active(self, session: Session) -> list[PolicyRow]:
        revision = revisions(session).get("sla_revision", "")
        if revision != self._revision:
            session.flush()  # a policy saved in this transaction is part of it
            self._policies = list(session.connection().execute(_ACTIVE_POLICIES).all())
            self._revision = revision
        return self._policies


def set_day(session: Session, *, day: Any, working: bool, trading: bool | None, name: str | None,
            actor: Actor, now: datetime) -> CalendarDay:
    """Add or correct one day (next year's holidays are announced each November)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("editing the calendar needs the process_owner or admin role")
    trading = (working and day.weekday() < 5) if trading is None else trading
    if trading and not working:
        raise InvalidInput("a trading day must be a working day")
    row = session.get(CalendarDay, day)
    before = None if row is None else {"working": row.working, "trading": row.trading, "name": row.name}
    if row is None:
        row = CalendarDay(day=day, source="admin")
        session.add(row)
    row.working, row.trading, row.name = working, trading, name
    row.source, row.updated_by, row.updated_at = "admin", actor.username, now
    bump_calendar_revision(session)
    record_system_event(session, kind="calendar.day_set", actor=actor.username, at=now,
                        data={"day": day.isoformat(), "before": before,
                              "after": {"working": working, "trading": trading, "name": name}})
    return row


def set_business_hours(session: Session, *, name: str, periods: list[list[str]], tz: str, actor: Actor,
                       now: datetime) -> BusinessHoursRow:
    """Define or change named business hours, e.g. [["09:00", "11:30"], ["13:00", "17:00"]]."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("editing business hours needs the process_owner or admin role")
    try:
        BusinessHours(periods=tuple((time.fromisoformat(a), time.fromisoformat(b)) for a, b in periods),
                      tz=ZoneInfo(tz))
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidInput(f"business hours {periods!r} in {tz!r}: {exc}") from None
    row = session.get(BusinessHoursRow, name)
    if row is None:
        row = BusinessHoursRow(name=name)
        session.add(row)
    row.periods, row.tz = [list(p) for p in periods], tz
    bump_calendar_revision(session)
    record_system_event(session, kind="calendar.hours_set", actor=actor.username, at=now,
                        data={"name": name, "periods": periods, "tz": tz})
    return row


@dataclass(frozen=True)
class CalendarCoverage:
    first: Any
    last: Any
    incomplete_open_tasks: int


def coverage(session: Session) -> CalendarCoverage:
    """What the calendar knows, and how many open tasks have a due date computed past it."""
    first, last = session.execute(select(func.min(CalendarDay.day), func.max(CalendarDay.day))).one()
    flagged = session.execute(select(func.count()).select_from(Task).where(
        Task.calendar_incomplete.is_(True), Task.status.in_(("open", "claimed")))).scalar_one()
    return CalendarCoverage(first, last, flagged)


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


def _minutes_per_day(hours: BusinessHours) -> int:
    return sum((b.hour * 60 + b.minute) - (a.hour * 60 + a.minute) for a, b in hours.periods)


# -- policies -------------------------------------------------------------------------------
def validate_policy(session: Session, data: dict[str, Any]) -> None:
    try:
        Unit(data["target_unit"])
    except (KeyError, ValueError):
        raise InvalidInput(f"target_unit must be one of {[u.value for u in Unit]}") from None
    if Decimal(str(data.get("target_amount", 0))) <= 0:
        raise InvalidInput("target_amount must be positive")
    anchor = data.get("anchor_variable")
    if anchor is not None and (not isinstance(anchor, str) or not anchor.isidentifier()):
        raise InvalidInput(f"anchor_variable must name a variable, got {anchor!r}")
    if session.get(BusinessHoursRow, data.get("business_hours", "default")) is None:
        raise InvalidInput(f"no business hours named {data.get('business_hours')!r}")
    for milestone in data.get("milestones", []):
        if milestone.get("action") not in ACTIONS:
            raise InvalidInput(f"milestone action must be one of {ACTIONS}")
        at = milestone.get("at")
        if not isinstance(at, (int, float)) or not 0 < at <= 5:
            raise InvalidInput("milestone 'at' is a fraction of the target, e.g. 0.5, 0.8, 1.0, 1.5")
        if milestone["action"] in ("reassign", "escalate") and not milestone.get("to"):
            raise InvalidInput(f"a {milestone['action']} milestone needs 'to' (a role or group)")


def upsert_policy(session: Session, rt: Any, *, data: dict[str, Any], actor: Actor) -> tuple[SlaPolicy, int]:
    """Create or change a policy by key; recompute due dates of the open tasks it now
    matches. Returns the policy and how many tasks were recomputed."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("SLA policies need the process_owner or admin role")
    validate_policy(session, data)
    now = rt.now()
    policy = session.execute(select(SlaPolicy).where(SlaPolicy.key == data["key"])).scalar_one_or_none()
    if policy is None:
        policy = SlaPolicy(key=data["key"])
        session.add(policy)
    policy.name = data.get("name", data["key"])
    policy.position = int(data.get("position", 100))
    policy.active = bool(data.get("active", True))
    policy.process_key = data.get("process_key")
    policy.element_id = data.get("element_id")
    policy.lane = data.get("lane")
    policy.min_priority = data.get("min_priority")
    policy.match_data = dict(data.get("match_data") or {})
    policy.target_amount = Decimal(str(data["target_amount"]))
    policy.target_unit = Unit(data["target_unit"]).value
    policy.business_hours = data.get("business_hours", "default")
    policy.milestones = sorted(data.get("milestones", []), key=lambda m: m["at"])
    policy.pausable = bool(data.get("pausable", True))
    policy.anchor_variable = data.get("anchor_variable") or None
    policy.updated_at, policy.updated_by = now, actor.username
    session.flush()
    _bump_revision(session, "sla_revision")
    record_system_event(session, kind="sla.policy_saved", actor=actor.username, at=now,
                        data={"key": policy.key, "position": policy.position,
                              "target": f"{policy.target_amount} {policy.target_unit}"})
    return policy, recompute(session, rt, now=now)


def _matches(policy: PolicyRow, task: Task, data: dict[str, Any]) -> bool:
    return (
        policy.active
        and (policy.process_key is None or policy.process_key == task.process_key)
        and (policy.element_id is None or policy.element_id == task.element_id)
        and (policy.lane is None or policy.lane == task.lane)
        and (policy.min_priority is None or task.priority >= policy.min_priority)
        and all(str(data.get(k)) == str(v) for k, v in (policy.match_data or {}).items())
    )


def match(session: Session, rt: Any, task: Task, data: dict[str, Any]) -> PolicyRow | None:
    return next((p for p in rt.policies.active(session) if _matches(p, task, data)), None)


# -- the clock ------------------------------------------------------------------------------
def start_clock(session: Session, rt: Any, *, instance: ProcessInstance, task: Task, data: dict[str, Any],
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
        task.at_risk_at = _at_risk(session, policy, task, start=start)
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


def schedule_milestones(session: Session, rt: Any, *, instance: ProcessInstance, task: Task, policy: PolicyRow,
                        now: datetime) -> None:
    start = task.sla_started_at or now
    _schedule_milestones(session, rt, instance, task, policy, start=start, now=now, overdue_breach=start < now)


def _at_risk(session: Session, policy: PolicyRow | None, task: Task, *, start: datetime) -> datetime:
    assert task.due_at is not None
    if policy is None or task.due_source == "diagram":
        return start + (task.due_at - start) * AT_RISK_FRACTION
    calendar = CALENDARS.get(session, policy.business_hours)
    return milestone_due(calendar, start, Due(task.due_at, task.calendar_incomplete), policy.target_amount,
                         policy.target_unit, AT_RISK_FRACTION)


def _schedule_milestones(session: Session, rt: Any, instance: ProcessInstance, task: Task,
                         policy: PolicyRow, *, start: datetime, now: datetime,
                         shift: Callable[[datetime], datetime] | None = None,
                         overdue_breach: bool = False) -> None:
    """Timer rows for the milestones still ahead: a recompute must not re-notify the past.
    ``shift`` moves a milestone past the time the clock already spent paused."""
    assert task.due_at is not None
    calendar = CALENDARS.get(session, policy.business_hours)
    due = Due(task.due_at, task.calendar_incomplete)
    if task.due_source == "diagram":
        # The diagram's own due date: milestones are wall-clock fractions of its window.
        points = [(m, start + (task.due_at - start) * m["at"]) for m in policy.milestones]
    else:
        points = [(m, milestone_due(calendar, start, due, policy.target_amount, policy.target_unit, m["at"]))
                  for m in policy.milestones]
    # A paused task's clock stopped at the pause: its milestones are held until resume()
    # moves them by the paused time (a recompute during a pause must not arm them).
    paused = task.sla_paused_at is not None
    for milestone, at in points:
        if shift is not None:
            at = shift(at)
        if at < (task.sla_paused_at if paused else now):
            if not (overdue_breach and milestone["at"] >= 1.0 and not paused):
                continue
            # A clock anchored in the past can be breached on arrival: record it now.
            at = now
        timer = Timer(kind="sla", instance_id=instance.id, task_uuid=task.task_uuid,
                      element_id=task.element_id, due_at=at, status="paused" if paused else "waiting",
                      created_at=now, payload={"task_id": task.id, "policy": policy.key, **milestone})
        session.add(timer)
        if not paused:
            announce_timer(session, rt, timer)


def announce_timer(session: Session, rt: Any, timer: Timer) -> None:
    """Tell the timer backend about a new or moved timer once the transaction commits (the
    row's id and due time are read then, so a timer not flushed yet is announced too)."""
    if rt.scheduler is not None:
        scheduler = rt.scheduler
        after_commit(session, lambda: scheduler.timer_created(timer.id, timer.due_at))


def recompute(session: Session, rt: Any, *, now: datetime) -> int:
    """Re-derive the due date and milestones of every open task without a diagram due date
    (after a policy or calendar change); returns how many tasks changed."""
    count = 0
    open_tasks = session.execute(
        select(Task, ProcessInstance).join(ProcessInstance, ProcessInstance.id == Task.instance_id)
        .where(Task.status.in_(("open", "claimed")), Task.kind == "bpmn",
               or_(Task.due_source.is_(None), Task.due_source != "diagram"))
        .order_by(Task.instance_id)
    ).all()
    workflows: dict[int, Any] = {}
    for task, instance in open_tasks:
        if instance.id not in workflows:
            # Policies match on instance variables; this is an administrator's operation,
            # so reading each affected instance once is acceptable.
            workflows[instance.id] = rt.load(session, instance)
        spiff_task = workflows[instance.id].get_task_from_id(UUID(task.task_uuid))
        data = dict(spiff_task.data) if spiff_task is not None else {}
        policy = match(session, rt, task, data)
        previous = (task.sla_policy_id, task.due_at)
        session.execute(update(Timer).where(Timer.kind == "sla", Timer.task_uuid == task.task_uuid,
                                            Timer.status.in_(("waiting", "paused")))
                        .values(status="cancelled"))
        start = task.sla_started_at or task.created_at
        if policy is None:
            task.sla_policy_id, task.due_at, task.due_source, task.at_risk_at = None, None, None, None
        else:
            calendar = CALENDARS.get(session, policy.business_hours)
            due = calendar.add(start, policy.target_amount, policy.target_unit)
            # Time already spent waiting for the client stays excluded, as resume() excluded
            # it, but measured again on today's calendar and in the policy's current unit.
            paused = _PausedTime(calendar, policy.target_unit, _pauses(task), legacy=_legacy_pause(task))
            task.due_at, task.due_source, task.calendar_incomplete = due.at, "policy", due.incomplete
            task.sla_policy_id = policy.id
            task.at_risk_at = paused(_at_risk(session, policy, task, start=start))
            _schedule_milestones(session, rt, instance, task, policy, start=start, now=now, shift=paused)
            task.due_at = paused(due.at)
            task.calendar_incomplete = due.incomplete or paused.incomplete
        if (task.sla_policy_id, task.due_at) != previous:
            count += 1
    return count


def state(task: Task, now: datetime) -> tuple[str, float | None]:
    """(SLA state, seconds to breach) as shown on every open task."""
    if task.due_at is None:
        return NO_SLA, None
    if task.sla_paused_at is not None:
        return PAUSED, (task.due_at - task.sla_paused_at).total_seconds()
    remaining = (task.due_at - now).total_seconds()
    if task.breached_at is not None or remaining < 0:
        return BREACHED, remaining
    if task.at_risk_at is not None and now >= task.at_risk_at:
        return AT_RISK, remaining
    return ON_TRACK, remaining


def pause(session: Session, rt: Any, *, task: Task, instance: ProcessInstance, actor: Actor, reason: str) -> None:
    """"Waiting for client": the clock stops and milestone timers are held."""
    if task.sla_paused_at is not None:
        return
    if task.sla_policy_id is not None:
        policy = session.get(SlaPolicy, task.sla_policy_id)
        if policy is not None and not policy.pausable:
            raise InvalidInput(f"the SLA policy {policy.key!r} does not allow pausing")
    now = rt.now()
    task.sla_paused_at = now
    session.execute(update(Timer).where(Timer.kind == "sla", Timer.task_uuid == task.task_uuid,
                                        Timer.status == "waiting").values(status="paused"))
    record_instance_event(session, instance, kind="sla.paused", actor=actor.username, at=now,
                          task_uuid=task.task_uuid, data={"task_id": task.id, "reason": reason})


def resume(session: Session, rt: Any, *, task: Task, instance: ProcessInstance, actor: Actor) -> None:
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
    paused = _PausedTime(calendar, unit, [(since, now)])
    if task.due_at is not None:
        task.due_at = paused(task.due_at)
    if task.at_risk_at is not None:
        task.at_risk_at = paused(task.at_risk_at)
    held = session.execute(select(Timer).where(Timer.kind == "sla", Timer.task_uuid == task.task_uuid,
                                               Timer.status == "paused")).scalars().all()
    for timer in held:
        timer.due_at = paused(timer.due_at)
        timer.status = "waiting"
        announce_timer(session, rt, timer)
    if paused.incomplete:
        task.calendar_incomplete = True
    record_instance_event(session, instance, kind="sla.resumed", actor=actor.username, at=now,
                          task_uuid=task.task_uuid,
                          data={"task_id": task.id, "paused_seconds": (now - since).total_seconds(),
                                "counted_seconds": paused.total.total_seconds(), "unit": str(unit),
                                "due_at": task.due_at.isoformat() if task.due_at else None})


class _PausedTime:
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
    policy gave the due date; wall-clock for a diagram's own due date, whose milestones
    are wall-clock fractions of its window too."""
    policy = session.get(SlaPolicy, task.sla_policy_id) if task.sla_policy_id is not None else None
    if policy is None or task.due_source != "policy":
        return _WALL_CLOCK, Unit.CALENDAR_MINUTES
    return CALENDARS.get(session, policy.business_hours), Unit(policy.target_unit)


def _pauses(task: Task) -> list[tuple[datetime, datetime]]:
    return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in task.sla_pauses or []]


def _legacy_pause(task: Task) -> timedelta:
    recorded = sum(int((b - a).total_seconds()) for a, b in _pauses(task))
    return timedelta(seconds=max((task.sla_paused_seconds or 0) - recorded, 0))


def retire_task_timers(session: Session, task_uuids: list[str]) -> None:
    """A task that is done or gone needs no more reminders."""
    session.execute(update(Timer).where(Timer.kind == "sla", Timer.task_uuid.in_(task_uuids),
                                        Timer.status.in_(("waiting", "paused")))
                    .values(status="cancelled"))


# -- milestones -----------------------------------------------------------------------------
def fire_milestone(session: Session, rt: Any, *, timer: Timer, instance: ProcessInstance, now: datetime,
                   evaluator: SafeEvaluator) -> None:
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
    subject = f"[{task.business_key}] {task.name or task.element_id}"
    # The API stores omitted optional fields as null: null "to"/"by" mean the defaults.
    if action == "notify":
        _notify(session, _recipients(session, evaluator, instance, task, payload.get("to") or "assignee"),
                subject=f"{subject}: {_progress_text(fraction)}", body=_body(task, fraction), task=task, now=now)
    elif action == "raise_priority":
        task.priority = min(100, task.priority + int(payload.get("by") or 20))
    elif action == "reassign":
        groups = resolve_candidate_groups(session, evaluator, [payload["to"]], instance=instance, data={})
        _set_candidates(session, task, groups)
        task.assignee, task.status = None, "open"
        record_instance_event(session, instance, kind="task.reassigned", actor="sla", at=now,
                              task_uuid=task.task_uuid, data={"task_id": task.id, "candidate_groups": groups})
    elif action == "escalate":
        groups = resolve_candidate_groups(session, evaluator, [payload["to"]], instance=instance, data={})
        escalation = Task(
            task_uuid=str(uuid4()), instance_id=instance.id, process_key=task.process_key,
            element_id=f"{task.element_id}.escalation", name=f"升级 Escalation: {task.name or task.element_id}",
            lane=None, candidate_groups=groups, status="open", priority=min(100, task.priority + 30),
            created_at=now, due_at=None, business_key=task.business_key, client_id=task.client_id,
            branch_code=task.branch_code, form_key=None, kind="escalation",
        )
        session.add(escalation)
        session.flush()
        session.add_all(TaskCandidate(task_id=escalation.id, group_key=g) for g in groups)
        _notify(session, _members(session, groups), subject=f"{subject}: 已升级 escalated",
                body=_body(task, fraction), task=task, now=now)
        record_instance_event(session, instance, kind="sla.escalated", actor="sla", at=now, task_uuid=task.task_uuid,
                              data={"task_id": task.id, "escalation_task_id": escalation.id, "to": groups})


def _progress_text(fraction: float) -> str:
    if fraction >= 1.0:
        return "已超时 overdue"
    return f"已用时 {int(fraction * 100)}% of the SLA"


def _body(task: Task, fraction: float) -> str:
    due = task.due_at.isoformat() if task.due_at else "-"
    return f"任务 {task.name or task.element_id} ({task.business_key}) due {due}; {_progress_text(fraction)}."


def _set_candidates(session: Session, task: Task, groups: list[str]) -> None:
    session.execute(delete(TaskCandidate).where(TaskCandidate.task_id == task.id))
    session.add_all(TaskCandidate(task_id=task.id, group_key=g) for g in groups)
    task.candidate_groups = groups


def _recipients(session: Session, evaluator: SafeEvaluator, instance: ProcessInstance, task: Task,
                to: str) -> list[str]:
    if to == "assignee":
        return [task.assignee] if task.assignee else _members(session, task.candidate_groups or [])
    if to == "candidates":
        return _members(session, task.candidate_groups or [])
    return _members(session, resolve_candidate_groups(session, evaluator, [to], instance=instance, data={}))


def _members(session: Session, groups: list[str]) -> list[str]:
    if not groups:
        return []
    return list(session.execute(
        select(User.username).join(GroupMember, GroupMember.user_id == User.id)
        .join(Group, Group.id == GroupMember.group_id)
        .where(Group.key.in_(groups), User.active.is_(True)).distinct().order_by(User.username)
    ).scalars())


def _notify(session: Session, usernames: list[str], *, subject: str, body: str, task: Task, now: datetime) -> None:
    for username in usernames:
        session.add(Notification(channel="default", recipient=username, subject=subject, body=body,
                                 instance_id=task.instance_id, task_id=task.id, created_at=now, attempts=0))
