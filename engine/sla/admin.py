"""What a process owner edits: calendar days, business hours, SLA policies; and the
recompute of open tasks' due dates and milestones that follows each edit."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import ADMIN, PROCESS_OWNER
from engine.audit import record_system_event
from engine.calendars import (
    EARLIEST_DAY,
    LATEST_DAY,
    SHANGHAI,
    BusinessHours,
    Due,
    Unit,
    check_plausible,
    check_target,
)
from engine.errors import DataInvalid, FieldError, InvalidInput, PermissionDenied
from engine.models import (
    ACTIVE_TASK_STATES,
    ACTIVE_TIMER_STATES,
    BusinessHoursRow,
    CalendarDay,
    Group,
    GroupMember,
    Notification,
    ProcessInstance,
    Setting,
    SlaPolicy,
    Task,
    TaskKind,
    Timer,
    TimerKind,
    TimerStatus,
    User,
)
from engine.sla import case_clock
from engine.sla.calendar_store import CALENDARS, PolicyRow, bump_calendar_revision, bump_sla_revision
from engine.sla.clock import PausedTime, first_match, legacy_pause, match, pauses
from engine.sla.host import SlaHost
from engine.sla.milestones import ACTIONS, AT_RISK_FRACTION, arm, at_risk, languages, milestone_due


def set_day(session: Session, *, day: Any, working: bool, trading: bool | None, name: str | None,
            actor: Actor, now: datetime) -> CalendarDay:
    """Add or correct one day (next year's holidays are announced each November)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("editing the calendar needs the process_owner or admin role")
    check_plausible(day, name="the day")
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


YEAR_KINDS = ("holiday", "workday")
# Which years an official notice was imported for as a whole (the value: who, when).
_COMPLETE_YEAR = "calendar_year_complete:{year}"
# From this day of a year on, next year's calendar is expected (the State Council publishes
# the public holidays around November) and its absence is warned about.
WARN_FROM = (11, 1)
# What a case clock's milestone may do: tell the groups it names (escalate says it is the
# deadline's escalation; both notify).
CASE_ACTIONS = ("notify", "escalate")


@dataclass(frozen=True)
class ImportedYear:
    year: int
    holidays: int
    workdays: int  # make-up working days (调休) on weekends
    days: int  # every day of the year written
    complete: bool


def import_year(session: Session, *, year: int, days: list[dict[str, Any]], complete: bool, actor: Actor,
                now: datetime) -> ImportedYear:
    """A year of the calendar from the official notice as one table: each listed day is a
    ``holiday`` (no work, no trading) or a ``workday`` (a make-up working day, 调休: work but
    no trading, the exchanges being closed at weekends); every day not listed is ordinary
    (Monday–Friday working and trading, weekends neither). The year's days are replaced
    whole, so the calendar knows every day of it; ``complete`` records that this is the
    year's official notice (the coverage stops warning about it)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("editing the calendar needs the process_owner or admin role")
    if not EARLIEST_DAY.year <= year <= LATEST_DAY.year:
        raise InvalidInput(f"the year must lie between {EARLIEST_DAY.year} and {LATEST_DAY.year}", field="year")
    listed: dict[date, tuple[str, str]] = {}
    problems = []
    for i, row in enumerate(days):
        day, kind, name = row.get("date"), row.get("kind"), (row.get("name") or "").strip()
        if not isinstance(day, date) or day.year != year:
            problems.append(FieldError(f"days/{i}/date", f"{day} is not a day of {year}"))
        elif day in listed:
            problems.append(FieldError(f"days/{i}/date", f"{day} is listed twice"))
        if kind not in YEAR_KINDS:
            problems.append(FieldError(f"days/{i}/kind", f"kind is holiday or workday, not {kind!r}"))
        if not name or len(name) > 64:
            problems.append(FieldError(f"days/{i}/name", "each day needs a name of at most 64 characters"))
        if isinstance(day, date) and kind == "workday" and day.weekday() < 5:
            problems.append(FieldError(f"days/{i}/kind", f"{day} is a weekday: a make-up working day falls on "
                                                         "a weekend"))
        if isinstance(day, date) and day.year == year and kind in YEAR_KINDS:
            listed[day] = (kind, name)
    if problems:
        raise DataInvalid(f"{len(problems)} row(s) of the {year} calendar refused", problems)
    session.execute(delete(CalendarDay).where(CalendarDay.day >= date(year, 1, 1),
                                              CalendarDay.day <= date(year, 12, 31)))
    rows = []
    day = date(year, 1, 1)
    while day.year == year:
        kind, name = listed.get(day, (None, None))
        ordinary = day.weekday() < 5
        working = kind == "workday" or (kind is None and ordinary)
        rows.append(CalendarDay(day=day, working=working, trading=kind is None and ordinary, name=name,
                                source="notice", updated_by=actor.username, updated_at=now))
        day += timedelta(days=1)
    session.add_all(rows)
    key = _COMPLETE_YEAR.format(year=year)
    marker = session.get(Setting, key)
    if complete:
        value = f"{actor.username} {now.isoformat()}"
        if marker is None:
            session.add(Setting(key=key, value=value))
        else:
            marker.value = value
    elif marker is not None:
        session.delete(marker)
    bump_calendar_revision(session)
    holidays = sum(1 for kind, _ in listed.values() if kind == "holiday")
    result = ImportedYear(year, holidays, len(listed) - holidays, len(rows), complete)
    record_system_event(session, kind="calendar.year_imported", actor=actor.username, at=now,
                        data={"year": year, "holidays": result.holidays, "workdays": result.workdays,
                              "complete": complete,
                              "days": {d.isoformat(): list(v) for d, v in sorted(listed.items())}})
    return result


# A year's notice is a few dozen rows; a pasted or uploaded table far beyond that is not one.
MAX_YEAR_TABLE_CHARS = 64 * 1024


@dataclass(frozen=True)
class YearRow:
    line: int  # the table's line the day came from
    day: date
    kind: str
    name: str


def parse_year_table(text: str) -> list[YearRow]:
    """A year's notice as CSV rows ``date,kind,name`` (a header row and blank lines are
    skipped), as the CLI reads a file and the calendar page a paste or an upload. Each row
    that is not three cells or whose date does not read is refused by its line; what the
    rows mean is :func:`import_year`'s to check."""
    if len(text) > MAX_YEAR_TABLE_CHARS:
        raise InvalidInput(f"the table is longer than {MAX_YEAR_TABLE_CHARS} characters: a year's notice is a few "
                           "dozen rows", field="table")
    rows, problems = [], []
    for number, record in enumerate(csv.reader(io.StringIO(text.removeprefix("\ufeff"))), start=1):
        cells = [cell.strip() for cell in record]
        if not any(cells) or cells[0].lower() == "date":
            continue  # a blank line, or the header
        if len(cells) != 3:
            problems.append(FieldError(f"line {number}", "a row is date,kind,name"))
            continue
        try:
            day = date.fromisoformat(cells[0])
        except ValueError:
            problems.append(FieldError(f"line {number}", f"{cells[0]!r} is not a date (YYYY-MM-DD)"))
            continue
        rows.append(YearRow(number, day, cells[1], cells[2]))
    if problems:
        raise DataInvalid(f"{len(problems)} line(s) of the table refused", problems)
    if not rows:
        raise InvalidInput("the table has no rows: give each holiday and make-up working day as date,kind,name",
                           field="table")
    return rows


def import_year_table(session: Session, *, year: int, rows: list[YearRow], complete: bool, actor: Actor,
                      now: datetime) -> ImportedYear:
    """:func:`import_year` from parsed table rows; a refused row is named by its line."""
    try:
        return import_year(session, year=year, days=[{"date": r.day, "kind": r.kind, "name": r.name} for r in rows],
                           complete=complete, actor=actor, now=now)
    except DataInvalid as exc:
        raise DataInvalid(exc.message, [FieldError(f"line {rows[int(e.field.split('/')[1])].line}", e.message)
                                        for e in exc.errors]) from None


def mark_year_complete(session: Session, *, year: int, actor: Actor, now: datetime) -> None:
    """Record that the calendar holds a year's official notice (entered day by day, or
    imported as a draft first), so the coverage stops warning about it. Every day of the year
    must be known: a year with gaps would count its unknown days as guesses."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("editing the calendar needs the process_owner or admin role")
    if not EARLIEST_DAY.year <= year <= LATEST_DAY.year:
        raise InvalidInput(f"the year must lie between {EARLIEST_DAY.year} and {LATEST_DAY.year}", field="year")
    known = session.execute(select(func.count()).select_from(CalendarDay).where(
        CalendarDay.day >= date(year, 1, 1), CalendarDay.day <= date(year, 12, 31))).scalar_one()
    days = (date(year, 12, 31) - date(year, 1, 1)).days + 1
    if known < days:
        raise InvalidInput(f"the calendar knows {known} of the {days} days of {year}: import the year's notice "
                           "before marking it complete", field="year")
    key = _COMPLETE_YEAR.format(year=year)
    value = f"{actor.username} {now.isoformat()}"
    marker = session.get(Setting, key)
    if marker is None:
        session.add(Setting(key=key, value=value))
    else:
        marker.value = value
    record_system_event(session, kind="calendar.year_marked_complete", actor=actor.username, at=now,
                        data={"year": year})


def year_days(session: Session, *, year: int, actor: Actor) -> dict[date, CalendarDay]:
    """The calendar's days of a year, as the calendar page shows them (process owners)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("the calendar page needs the process_owner role")
    if not EARLIEST_DAY.year <= year <= LATEST_DAY.year:
        raise InvalidInput(f"the year must lie between {EARLIEST_DAY.year} and {LATEST_DAY.year}", field="year")
    return {row.day: row for row in session.execute(select(CalendarDay).where(
        CalendarDay.day >= date(year, 1, 1), CalendarDay.day <= date(year, 12, 31))).scalars()}


@dataclass(frozen=True)
class CalendarCoverage:
    first: Any
    last: Any  # the last day of the unbroken run of known days from ``first``
    incomplete_open_tasks: int
    complete_years: list[int]
    warning: str | None  # next year unknown after WARN_FROM, or a gap before the last day entered


def coverage(session: Session, *, now: datetime | None = None) -> CalendarCoverage:
    """What the calendar knows (its unbroken range: a single day entered a year ahead does
    not make the months before it known), the years imported whole, how many open tasks have
    a due date computed past it, and, from 1 November on, a warning while next year is not
    known."""
    known = sorted(session.execute(select(CalendarDay.day)).scalars())
    first = known[0] if known else None
    last = first
    for day in known[1:]:
        if last is None or (day - last).days != 1:
            break
        last = day
    flagged = session.execute(select(func.count()).select_from(Task).where(
        Task.calendar_incomplete.is_(True), Task.status.in_(ACTIVE_TASK_STATES))).scalar_one()
    complete_years = sorted(int(key.rsplit(":", 1)[1]) for key in session.execute(
        select(Setting.key).where(Setting.key.like("calendar_year_complete:%"))).scalars())
    warning = None
    missing = _next_year_missing(now, last, complete_years) if now is not None else None
    if missing is not None:
        warning = (f"the calendar does not know {missing} yet: import the official notice of its public "
                   f"holidays (bpm calendar import-year {missing} FILE, or PUT /calendar/years/{missing}); "
                   "until then due dates in it assume Monday–Friday and are flagged calendar_incomplete")
    if warning is None and known and last is not None and last < known[-1]:
        warning = (f"the calendar has a gap after {last}: the days up to {known[-1]} are not all known "
                   "(import the year whole)")
    return CalendarCoverage(first, last, flagged, complete_years, warning)


def _next_year_missing(now: datetime, last: date | None, complete_years: list[int]) -> int | None:
    """Next year, when it is 1 November or later (Beijing time) and the calendar neither has
    next year marked complete (its notice imported) nor knows every day of it."""
    today = now.astimezone(SHANGHAI).date()
    following = today.year + 1
    if (today.month, today.day) < WARN_FROM or following in complete_years:
        return None
    return following if last is None or last < date(following, 12, 31) else None


# The job (run by a schedule, every working day) that tells administrators next year's
# calendar is missing: docs/timers.md#the-calendar-warning.
COVERAGE_JOB = "calendar.coverage_warning"
_WARNING_TEXTS = {
    "zh": ("[日历] {year} 年节假日安排尚未导入",
           "工作日历还没有 {year} 年的节假日安排（国务院办公厅通知）。请导入该年全年安排"
           "（bpm calendar import-year {year} 文件，或 PUT /api/v1/calendar/years/{year}）并标记为完整；"
           "在此之前，落在 {year} 年的时限按周一至周五计算，并标记为日历不完整。"
           "当前有 {flagged} 个未完成的任务时限超出了已知日历。（北京时间 {today}）"),
    "en": ("[calendar] the public holidays of {year} are not imported yet",
           "The working-day calendar does not know {year} yet (the State Council's holiday notice). Import the "
           "year whole (bpm calendar import-year {year} FILE, or PUT /api/v1/calendar/years/{year}) and mark it "
           "complete; until then due dates in {year} assume Monday to Friday and are flagged calendar_incomplete. "
           "{flagged} open task(s) have a due date beyond the known calendar. (Beijing time {today})"),
}


def warn_administrators(session: Session, *, now: datetime) -> list[str]:
    """From 1 November, while next year is not known, a notification to every active
    administrator through the outbox, at most once per administrator per Beijing day (however
    often the job runs): a notice given once a year is easily lost in November's work, and
    every day without next year's holidays lets more due dates be computed on guesses (a
    deadline across New Year or the Spring Festival). It stops the day the year is imported
    complete. Returns who was told."""
    found = coverage(session, now=now)
    missing = _next_year_missing(now, found.last, found.complete_years)
    if missing is None:
        return []
    admins = list(session.execute(
        select(User.username).join(GroupMember, GroupMember.user_id == User.id)
        .join(Group, Group.id == GroupMember.group_id)
        .where(Group.key == ADMIN, User.active.is_(True)).order_by(User.username)).scalars())
    today = now.astimezone(SHANGHAI).date()
    day_start = datetime.combine(today, time(0), SHANGHAI)
    subjects = [texts[0].format(year=missing) for texts in _WARNING_TEXTS.values()]
    told_today = set(session.execute(select(Notification.recipient).where(
        Notification.recipient.in_(admins), Notification.subject.in_(subjects),
        Notification.created_at >= day_start)).scalars())
    told = []
    for username, language in languages(session, [a for a in admins if a not in told_today]).items():
        subject, body = _WARNING_TEXTS[language]
        session.add(Notification(channel="default", recipient=username, subject=subject.format(year=missing),
                                 body=body.format(year=missing, flagged=found.incomplete_open_tasks,
                                                  today=f"{today:%Y-%m-%d}"),
                                 instance_id=None, task_id=None, created_at=now, attempts=0))
        told.append(username)
    if told:
        record_system_event(session, kind="calendar.warning_sent", actor=None, at=now,
                            data={"year": missing, "to": told})
    return told


def coverage_job(session: Session, rt: Any, *, slot: datetime) -> dict[str, Any]:
    """The scheduled job: warn at the moment it runs (a late run warns for today)."""
    return {"warned": warn_administrators(session, now=rt.now())}


def validate_policy(session: Session, data: dict[str, Any]) -> None:
    """What the policy's fields mean together (the API's request schema has checked their
    shapes); each refusal names its field, so a page can show it beside that field."""
    try:
        Unit(data["target_unit"])
    except (KeyError, ValueError):
        raise InvalidInput(f"target_unit must be one of {[u.value for u in Unit]}", field="target_unit") from None
    try:
        amount = Decimal(str(data.get("target_amount", 0)))
    except ArithmeticError:
        raise InvalidInput(f"target_amount must be a number, got {data.get('target_amount')!r}",
                           field="target_amount") from None
    try:
        check_target(amount, data["target_unit"])
    except InvalidInput as exc:
        raise InvalidInput(exc.message, field="target_amount") from None
    anchor = data.get("anchor_variable")
    if anchor is not None and (not isinstance(anchor, str) or not anchor.isidentifier()):
        raise InvalidInput(f"anchor_variable must name a variable, got {anchor!r}", field="anchor_variable")
    if session.get(BusinessHoursRow, data.get("business_hours", "default")) is None:
        raise InvalidInput(f"no business hours named {data.get('business_hours')!r}", field="business_hours")
    case_wide = data.get("element_id") == case_clock.ELEMENT
    for i, milestone in enumerate(data.get("milestones", [])):
        if not isinstance(milestone, dict):
            raise InvalidInput("each milestone is an object with 'at' and 'action'", field=f"milestones/{i}")
        if case_wide and (milestone.get("action") not in CASE_ACTIONS or not case_clock.groups_of(milestone.get("to"))):
            # A case's clock has no assignee or candidates: it tells the groups it names.
            raise InvalidInput(f"a case clock's milestone is one of {CASE_ACTIONS} with 'to': the groups to tell, "
                               "e.g. [\"branch:branch_cs_director\", \"hq_complaint_dept\"]",
                               field=f"milestones/{i}/to")
        if milestone.get("action") not in ACTIONS:
            raise InvalidInput(f"milestone action must be one of {ACTIONS}", field=f"milestones/{i}/action")
        at = milestone.get("at")
        if not isinstance(at, (int, float)) or not 0 < at <= 5:
            raise InvalidInput("milestone 'at' is a fraction of the target, e.g. 0.5, 0.8, 1.0, 1.5",
                               field=f"milestones/{i}/at")
        if milestone["action"] in ("reassign", "escalate") and not milestone.get("to"):
            raise InvalidInput(f"a {milestone['action']} milestone needs 'to' (a role or group)",
                               field=f"milestones/{i}/to")
        to = milestone.get("to")
        if any(isinstance(t, str) and t.startswith("client:") for t in (to if isinstance(to, list) else [to])):
            # A milestone fires with no case data to hand: "the client's own group" would
            # resolve to nobody, and the notice or escalation would go nowhere, silently.
            raise InvalidInput("a milestone cannot reach the client's group ('client:…'): it fires without the "
                               "case's data; name a role or a group, or 'candidates'", field=f"milestones/{i}/to")


def list_policies(session: Session, *, actor: Actor) -> list[SlaPolicy]:
    """Every policy in matching order, for the process owners' policy page."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("the SLA policy pages need the process_owner role")
    return list(session.execute(select(SlaPolicy).order_by(SlaPolicy.position, SlaPolicy.id)).scalars())


def get_policy(session: Session, key: str, *, actor: Actor) -> SlaPolicy | None:
    """One policy to edit (None: a new one under this key)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("the SLA policy pages need the process_owner role")
    return session.execute(select(SlaPolicy).where(SlaPolicy.key == key)).scalar_one_or_none()


def business_hours_names(session: Session) -> list[str]:
    return list(session.execute(select(BusinessHoursRow.name).order_by(BusinessHoursRow.name)).scalars())


def upsert_policy(session: Session, rt: SlaHost, *, data: dict[str, Any], actor: Actor) -> tuple[SlaPolicy, int]:
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
    bump_sla_revision(session)
    # A case clock's policy (element case_clock): the running clocks of it take its milestones.
    clocks = case_clock.apply_policy(session, rt, key=policy.key, actor=actor.username, now=now) \
        if policy.element_id == case_clock.ELEMENT else 0
    record_system_event(session, kind="sla.policy_saved", actor=actor.username, at=now,
                        data={"key": policy.key, "position": policy.position,
                              "target": f"{policy.target_amount} {policy.target_unit}",
                              "milestones": policy.milestones, "case_clocks": clocks})
    return policy, recompute(session, rt, now=now)


@dataclass(frozen=True)
class TaskMove:
    """An open task whose due date a change moved (or gave, or took away)."""

    task_id: int
    business_key: str | None
    process_key: str
    element_id: str
    name: str | None
    before: datetime | None
    after: datetime | None

    @property
    def shift(self) -> timedelta | None:
        return None if self.before is None or self.after is None else self.after - self.before


def _move(task: Task, before: datetime | None, after: datetime | None) -> TaskMove:
    return TaskMove(task.id, task.business_key, task.process_key, task.element_id, task.name, before, after)


def _recomputed_tasks(session: Session) -> list[Any]:
    """The open tasks a policy or calendar change re-derives: those whose due date the
    diagram did not set."""
    return list(session.execute(
        select(Task, ProcessInstance).join(ProcessInstance, ProcessInstance.id == Task.instance_id)
        .where(Task.status.in_(ACTIVE_TASK_STATES), Task.kind == TaskKind.BPMN,
               or_(Task.due_source.is_(None), Task.due_source != "diagram"))
        .order_by(Task.instance_id, Task.id)
    ).all())


def _policy_clock(session: Session, task: Task, policy: PolicyRow) -> tuple[datetime, Due, PausedTime]:
    """Where the task's clock starts, its due date on the policy before paused time is
    excluded, and that paused time: what both a recompute and its preview count."""
    calendar = CALENDARS.get(session, policy.business_hours)
    start = task.sla_started_at or task.created_at
    due = calendar.add(start, policy.target_amount, policy.target_unit)
    # Time already spent waiting for the client stays excluded, as resume() excluded it,
    # but measured again on today's calendar and in the policy's current unit.
    return start, due, PausedTime(calendar, policy.target_unit, pauses(task), legacy=legacy_pause(task))


def recompute(session: Session, rt: SlaHost, *, now: datetime) -> int:
    """Re-derive the due date and milestones of every open task without a diagram due date
    (after a policy or calendar change); returns how many tasks changed."""
    return len(recompute_moves(session, rt, now=now))


def recompute_moves(session: Session, rt: SlaHost, *, now: datetime) -> list[TaskMove]:
    """:func:`recompute`, saying which tasks changed and their due dates before and after."""
    moves = []
    workflows: dict[int, Any] = {}
    for task, instance in _recomputed_tasks(session):
        if instance.id not in workflows:
            # Policies match on instance variables; this is an administrator's operation,
            # so reading each affected instance once is acceptable.
            workflows[instance.id] = rt.load(session, instance)
        spiff_task = workflows[instance.id].get_task_from_id(UUID(task.task_uuid))
        data = dict(spiff_task.data) if spiff_task is not None else {}
        policy = match(session, rt, task, data)
        previous = (task.sla_policy_id, task.due_at)
        session.execute(update(Timer).where(Timer.kind == TimerKind.SLA, Timer.task_uuid == task.task_uuid,
                                            Timer.status.in_(ACTIVE_TIMER_STATES))
                        .values(status=TimerStatus.CANCELLED))
        if policy is None:
            task.sla_policy_id, task.due_at, task.due_source, task.at_risk_at = None, None, None, None
        else:
            start, due, paused = _policy_clock(session, task, policy)
            task.due_at, task.due_source, task.calendar_incomplete = due.at, "policy", due.incomplete
            task.sla_policy_id = policy.id
            task.at_risk_at = paused(at_risk(session, policy, task, start=start))
            arm(session, rt, instance, task, policy, start=start, now=now, shift=paused)
            task.due_at = paused(due.at)
            task.calendar_incomplete = due.incomplete or paused.incomplete
        if (task.sla_policy_id, task.due_at) != previous:
            moves.append(_move(task, previous[1], task.due_at))
    return moves


# -- a policy's preview, before it is saved ------------------------------------------------------
@dataclass(frozen=True)
class _Candidate:
    """A policy as it would be saved, shaped like the cached rows matching reads."""

    id: int | None
    key: str
    position: int
    active: bool
    process_key: str | None
    element_id: str | None
    lane: str | None
    min_priority: int | None
    match_data: dict[str, Any]
    target_amount: Decimal
    target_unit: str
    business_hours: str
    milestones: list[dict[str, Any]]
    pausable: bool
    anchor_variable: str | None


@dataclass(frozen=True)
class MilestonePoint:
    at: float
    action: str
    to: str | None
    due: datetime


@dataclass(frozen=True)
class PolicyPreview:
    """What saving a policy would do: the due date, at-risk moment and milestones of a task
    it matches created now, and the open tasks whose due dates would move."""

    start: datetime
    due: datetime
    incomplete: bool  # the sample's due date needs days the calendar does not know
    at_risk: datetime
    milestones: list[MilestonePoint]
    open_tasks: int  # open tasks a save recomputes (their due date not set by the diagram)
    changes: list[TaskMove]  # of them, those whose policy or due date would change

    @property
    def shifts(self) -> list[timedelta]:
        return sorted(m.shift for m in self.changes if m.shift is not None)

    @property
    def gained(self) -> int:
        return sum(1 for m in self.changes if m.before is None and m.after is not None)

    @property
    def lost(self) -> int:
        return sum(1 for m in self.changes if m.before is not None and m.after is None)

    @property
    def shift_min(self) -> timedelta | None:
        return self.shifts[0] if self.shifts else None

    @property
    def shift_max(self) -> timedelta | None:
        return self.shifts[-1] if self.shifts else None

    @property
    def shift_median(self) -> timedelta | None:
        shifts = self.shifts
        if not shifts:
            return None
        middle = len(shifts) // 2
        return shifts[middle] if len(shifts) % 2 else (shifts[middle - 1] + shifts[middle]) / 2


def preview_policy(session: Session, rt: SlaHost, *, data: dict[str, Any], actor: Actor,
                   now: datetime) -> PolicyPreview:
    """What :func:`upsert_policy` would do with ``data``, changing nothing: the same checks,
    the due date of a sample task it matches created ``now``, and each open task whose
    policy or due date a save would change, counted as the save's recompute counts them.
    Matching runs over the active policies with this one put in its place, outside the
    runtime's policy cache (which other requests share)."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("SLA policies need the process_owner or admin role")
    validate_policy(session, data)
    existing = session.execute(select(SlaPolicy.id).where(SlaPolicy.key == data["key"])).scalar_one_or_none()
    candidate = _Candidate(
        id=existing, key=data["key"], position=int(data.get("position", 100)), active=bool(data.get("active", True)),
        process_key=data.get("process_key"), element_id=data.get("element_id"), lane=data.get("lane"),
        min_priority=data.get("min_priority"), match_data=dict(data.get("match_data") or {}),
        target_amount=Decimal(str(data["target_amount"])), target_unit=Unit(data["target_unit"]).value,
        business_hours=data.get("business_hours", "default"),
        milestones=sorted(data.get("milestones", []), key=lambda m: m["at"]),
        pausable=bool(data.get("pausable", True)), anchor_variable=data.get("anchor_variable") or None)
    table = SlaPolicy.__table__
    others = list(session.execute(select(table).where(table.c.active.is_(True), table.c.key != candidate.key)).all())
    # A new policy gets the next id, so it comes after the others of its position.
    ordered: list[PolicyRow] = sorted([*others, *([candidate] if candidate.active else [])],
                      key=lambda p: (p.position, p.id if p.id is not None else 2**63))
    needs_data = any(p.match_data for p in ordered)

    calendar = CALENDARS.get(session, candidate.business_hours)
    due = calendar.add(now, candidate.target_amount, candidate.target_unit)
    points = [MilestonePoint(float(m["at"]), m["action"], m.get("to"),
                             milestone_due(calendar, now, due, candidate.target_amount, candidate.target_unit,
                                           float(m["at"])))
              for m in candidate.milestones]
    risk = milestone_due(calendar, now, due, candidate.target_amount, candidate.target_unit, AT_RISK_FRACTION)

    changes, workflows = [], {}
    tasks = _recomputed_tasks(session)
    for task, instance in tasks:
        values: dict[str, Any] = {}
        if needs_data:
            if instance.id not in workflows:
                workflows[instance.id] = rt.load(session, instance)
            spiff_task = workflows[instance.id].get_task_from_id(UUID(task.task_uuid))
            values = dict(spiff_task.data) if spiff_task is not None else {}
        policy = first_match(ordered, task, values)
        after: tuple[int | None, datetime | None] = (None, None)
        if policy is not None:
            _, task_due, paused = _policy_clock(session, task, policy)
            after = (policy.id, paused(task_due.at))
        if after != (task.sla_policy_id, task.due_at):
            changes.append(_move(task, task.due_at, after[1]))
    return PolicyPreview(now, due.at, due.incomplete, risk, points, len(tasks), changes)
