"""Scheduled process starts on a business calendar.

A schedule starts a process by a rule (``first_working_day_of_month``,
``first_working_day_of_quarter``, ``every_working_day``, ``every_trading_day``) at a local
time, e.g. periodic callback batches on the first working day of each quarter at 09:00.
The next run is a ``schedule`` timer row. After downtime, a schedule whose catch-up policy
is ``once`` (the default) starts once for the missed slots, not once per slot; ``all``
starts one instance per missed slot. The business key is ``<schedule key>-<yyyymmdd>``, so
a slot never starts twice.

A schedule may run an engine job instead of starting a process: ``process_key`` is then
``job:<name>`` with the name registered in the runtime's ``jobs`` (the brokerage installs the monthly VIP
evaluation, which
classifies every client and starts a VIP case per tier change; the quarterly periodic
callback batch, which samples clients and starts their callbacks). A job's slot is recorded
in the system audit stream, which is also what makes a second run of one slot a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import PROCESS_OWNER
from engine.audit import SYSTEM_STREAM, record_system_event
from engine.calendars import BusinessCalendar
from engine.errors import Conflict, DuplicateBusinessKey, InvalidInput, PermissionDenied
from engine.models import AuditEvent, ProcessInstance, Schedule, Timer, TimerKind, TimerStatus
from engine.process import instances
from engine.process.deployments import get_latest
from engine.process.limits import check_text, check_variables
from engine.process.runtime import Runtime
from engine.sla.calendar_store import CALENDARS

JOB_PREFIX = "job:"


RULES = ("first_working_day_of_month", "first_working_day_of_quarter", "every_working_day", "every_trading_day")
SCHEDULE_ACTOR = Actor.system("schedule")


def _candidate_days(rule: str, start: date) -> Any:
    d = start
    while True:
        if rule in ("every_working_day", "every_trading_day"):
            yield d
            d += timedelta(days=1)
        else:
            step = 3 if rule == "first_working_day_of_quarter" else 1
            month = d.month if rule == "first_working_day_of_month" else ((d.month - 1) // 3) * 3 + 1
            first = date(d.year, month, 1)
            yield first  # the first open day on or after the 1st, resolved by the caller
            index = first.month - 1 + step
            d = date(first.year + index // 12, index % 12 + 1, 1)


def next_run(rule: str, at_time: str, calendar: BusinessCalendar, after: datetime) -> datetime:
    """The first occurrence strictly after ``after``."""
    if rule not in RULES:
        raise InvalidInput(f"rule must be one of {', '.join(RULES)}")
    try:
        clock = time.fromisoformat(at_time)
    except ValueError:
        raise InvalidInput(f"at_time {at_time!r} is not a time of day (HH:MM)") from None
    tz = calendar.hours.tz
    local_after = after.astimezone(tz)
    trading = rule == "every_trading_day"
    for anchor in _candidate_days(rule, local_after.date().replace(day=1) if "first" in rule else local_after.date()):
        d = anchor
        if "first" in rule:  # move to the first open day of the period
            while not (calendar.day(d)[0].working):
                d += timedelta(days=1)
        else:
            info, _ = calendar.day(d)
            if not (info.trading if trading else info.working):
                continue
        at = datetime.combine(d, clock, tz)
        if at > after:
            return at
    raise InvalidInput("no next run found")  # pragma: no cover - the generator is unbounded


def create(session: Session, rt: Runtime, *, key: str, process_key: str, rule: str, at_time: str,
           actor: Actor, business_hours: str = "default", catch_up: str = "once",
           data: dict[str, Any] | None = None) -> Schedule:
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("schedules need the process_owner or admin role")
    if catch_up not in ("once", "all"):
        raise InvalidInput("catch_up must be 'once' or 'all'")
    check_text(key=key, process_key=process_key, rule=rule, business_hours=business_hours)
    # Every run starts a case with this data: refuse now what each start would refuse.
    check_variables(rt.settings, data or {}, field="data")
    if session.execute(select(Schedule.id).where(Schedule.key == key)).first() is not None:
        raise Conflict(f"a schedule {key!r} already exists")
    if process_key.startswith(JOB_PREFIX):
        if process_key.removeprefix(JOB_PREFIX) not in rt.jobs:
            raise InvalidInput(f"no job {process_key.removeprefix(JOB_PREFIX)!r}; known: {', '.join(sorted(rt.jobs))}")
    else:
        get_latest(session, process_key)  # refuse a schedule for a process that is not deployed
    now = rt.now()
    calendar = CALENDARS.get(session, business_hours)
    first = next_run(rule, at_time, calendar, now)
    schedule = Schedule(key=key, process_key=process_key, rule=rule, at_time=at_time, business_hours=business_hours,
                        catch_up=catch_up, data=dict(data or {}), active=True, next_run_at=first)
    session.add(schedule)
    session.flush()
    _arm(session, rt, schedule, first, now)
    record_system_event(session, kind="schedule.created", actor=actor.username, at=now,
                        data={"key": key, "process_key": process_key, "rule": rule, "at": at_time,
                              "next_run_at": first.isoformat()})
    return schedule


def recompute(session: Session, rt: Runtime, *, now: datetime) -> int:
    """Move each schedule's waiting slot to where the calendar now puts it; returns how many
    moved. Next year's holidays are announced in November: until an administrator enters
    them, "the first working day of January" is computed on weekends only (1 January) and
    would start the batch on New Year's Day. A slot already due (waiting for a late worker)
    stays: moving it would skip it."""
    return len(recompute_moves(session, rt, now=now))


@dataclass(frozen=True)
class SlotMove:
    key: str
    process_key: str
    before: datetime
    after: datetime


def recompute_moves(session: Session, rt: Runtime, *, now: datetime) -> list[SlotMove]:
    """:func:`recompute`, saying which schedules' next slots moved, from when to when."""
    moves = []
    rows = session.execute(
        select(Schedule, Timer).join(Timer, (Timer.kind == TimerKind.SCHEDULE) & (Timer.element_id == Schedule.key))
        .where(Schedule.active.is_(True), Timer.status == TimerStatus.WAITING, Timer.due_at > now)
        .order_by(Schedule.key)
    ).all()
    for schedule, timer in rows:
        due = next_run(schedule.rule, schedule.at_time, CALENDARS.get(session, schedule.business_hours), now)
        if due == timer.due_at:
            continue
        previous = timer.due_at
        timer.due_at = schedule.next_run_at = due
        rt.announce_timer(session, timer)
        record_system_event(session, kind="schedule.moved", actor=None, at=now,
                            data={"key": schedule.key, "from": previous.isoformat(), "to": due.isoformat()})
        moves.append(SlotMove(schedule.key, schedule.process_key, previous, due))
    return moves


def _arm(session: Session, rt: Runtime, schedule: Schedule, due: datetime, now: datetime) -> None:
    timer = Timer(kind=TimerKind.SCHEDULE, instance_id=None, task_uuid=None, element_id=schedule.key, due_at=due,
                  status=TimerStatus.WAITING, created_at=now, payload={"schedule_id": schedule.id})
    session.add(timer)
    rt.announce_timer(session, timer)


def start_slot(session: Session, rt: Runtime, timer: Timer, *, now: datetime) -> bool:
    """Start the process for the slot of ``timer`` (already claimed by ``timers.fire``)
    and arm the next slot."""
    assert timer.payload is not None
    schedule = session.get(Schedule, timer.payload["schedule_id"])
    if schedule is None or not schedule.active:
        return False
    calendar = CALENDARS.get(session, schedule.business_hours)
    slot = timer.due_at.astimezone(calendar.hours.tz)
    business_key = f"{schedule.key}-{slot:%Y%m%d}"
    if schedule.process_key.startswith(JOB_PREFIX):
        _run_job(session, rt, schedule, business_key, slot, now)
    else:
        try:
            with session.begin_nested():
                instances.start(session, rt, process_key=schedule.process_key, business_key=business_key,
                                actor=SCHEDULE_ACTOR, data={**schedule.data, "scheduled_for": slot.isoformat()})
        except DuplicateBusinessKey:
            pass  # this slot already started (e.g. by hand): a slot never starts twice
    schedule.last_run_at = now
    after = now if schedule.catch_up == "once" else timer.due_at
    schedule.next_run_at = next_run(schedule.rule, schedule.at_time, calendar, after)
    _arm(session, rt, schedule, schedule.next_run_at, now)
    return True


def _run_job(session: Session, rt: Runtime, schedule: Schedule, slot_key: str, slot: datetime, now: datetime) -> None:
    name = schedule.process_key.removeprefix(JOB_PREFIX)
    done = session.execute(select(AuditEvent.id).where(
        AuditEvent.stream == SYSTEM_STREAM, AuditEvent.kind == "schedule.job_run",
        AuditEvent.data["slot"].as_string() == slot_key)).first()
    if done is not None:
        return  # this slot already ran
    result = rt.jobs[name](session, rt, slot=slot)
    record_system_event(session, kind="schedule.job_run", actor=SCHEDULE_ACTOR.username, at=now,
                        data={"slot": slot_key, "job": name, "result": result})


def get_all(session: Session) -> list[Schedule]:
    return list(session.execute(select(Schedule).order_by(Schedule.key)).scalars())


# -- what the schedules page shows -----------------------------------------------------------------
UPCOMING_SLOTS = 3
RECENT_RUNS = 5


@dataclass(frozen=True)
class Run:
    """A slot that ran: the case it started (a process) or the job's result."""

    slot: str  # <schedule key>-<yyyymmdd>
    at: datetime
    status: str | None  # the case's status; None for a job
    result: dict[str, Any] | None  # a job's result


@dataclass(frozen=True)
class ScheduleView:
    schedule: Schedule
    job: str | None  # the engine job it runs, or None when it starts a process
    upcoming: list[datetime]  # the waiting slot, then the ones after it
    runs: list[Run]  # the latest first
    failing: Timer | None  # a slot that failed or keeps failing, with its last error


def overview(session: Session, *, actor: Actor, now: datetime) -> list[ScheduleView]:
    """Every schedule with its next slots, latest runs and results, and a slot that fails
    (process owners, who own the schedules)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("the schedules page needs the process_owner role")
    views = []
    for schedule in get_all(session):
        timers = list(session.execute(
            select(Timer).where(Timer.kind == TimerKind.SCHEDULE, Timer.element_id == schedule.key)
            .order_by(Timer.due_at.desc(), Timer.id.desc()).limit(20)).scalars())
        waiting = sorted(t.due_at for t in timers if t.status == TimerStatus.WAITING)
        upcoming: list[datetime] = []
        if schedule.active:
            calendar = CALENDARS.get(session, schedule.business_hours)
            upcoming = waiting[:1] or [next_run(schedule.rule, schedule.at_time, calendar, now)]
            while len(upcoming) < UPCOMING_SLOTS:
                upcoming.append(next_run(schedule.rule, schedule.at_time, calendar, upcoming[-1]))
        failing = next((t for t in timers if t.status == TimerStatus.FAILED
                        or (t.status == TimerStatus.WAITING and t.last_error)), None)
        job = schedule.process_key.removeprefix(JOB_PREFIX) if schedule.process_key.startswith(JOB_PREFIX) else None
        views.append(ScheduleView(schedule, job, upcoming, _runs(session, schedule, job), failing))
    return views


def _runs(session: Session, schedule: Schedule, job: str | None) -> list[Run]:
    prefix = f"{schedule.key}-"
    if job is not None:
        events = session.execute(
            select(AuditEvent).where(AuditEvent.stream == SYSTEM_STREAM, AuditEvent.kind == "schedule.job_run",
                                     AuditEvent.data["slot"].as_string().like(f"{prefix}%"))
            .order_by(AuditEvent.occurred_at.desc(), AuditEvent.id.desc()).limit(RECENT_RUNS)).scalars()
        return [Run(e.data["slot"], e.occurred_at, None, e.data.get("result")) for e in events]
    cases = session.execute(
        select(ProcessInstance).where(ProcessInstance.process_key == schedule.process_key,
                                      ProcessInstance.business_key.like(f"{prefix}%"))
        .order_by(ProcessInstance.started_at.desc(), ProcessInstance.id.desc()).limit(RECENT_RUNS)).scalars()
    return [Run(c.business_key, c.started_at, c.status, None) for c in cases]
