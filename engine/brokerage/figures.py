"""Supervisors' figures (看板指标, docs/figures.md): SQL over rows, never a deserialization of
instance state (architecture invariant 3).

The rows are the human tasks (``bpm_task``: status, due date, at-risk moment, pause, who,
when completed), the instances' facts (the diagrams' ``reportVariables`` copied onto
``bpm_process_instance.facts`` on every save), the client registry (a client's service
group) and the per-period client figures (``bpm_client_snapshot``). Where a figure needs
the business calendar (a complaint's resolution deadline, a duration in working days) the
arithmetic runs in Python on the rows a query returned, one row per case.

Every figure takes a :class:`Scope`: a period ``[start, end)`` and optionally a branch and a
group; :func:`scope_for` decides what the asking person may see
(docs/domain.md#case-visibility). The exact definitions are in docs/figures.md; step ids
(C12, K5…) are those of docs/domain.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, case, exists, false, func, literal, or_, select, true, type_coerce
from sqlalchemy.orm import Session, aliased

from engine.access.identity import Actor
from engine.access.roles import PROCESS_OWNER, SUPERVISOR
from engine.brokerage import settings
from engine.brokerage.settings import Target
from engine.calendars import SHANGHAI, BusinessCalendar, Unit, check_plausible
from engine.db import UTCDateTime
from engine.errors import InvalidInput, PermissionDenied
from engine.models import (
    ACTIVE_TASK_STATES,
    Branch,
    Client,
    ClientSnapshot,
    Group,
    InstanceStatus,
    ProcessInstance,
    ProcessVersion,
    Setting,
    SlaPolicy,
    Task,
    TaskCandidate,
    TaskStatus,
    User,
)
from engine.sla import calendar_store

COMPLAINT, CALLBACK, RETENTION = "complaint", "callback", "retention"
# Diagram steps the figures read (element ids). complaint.bpmn: C12 反馈客户 stops the
# resolution clock (the whole-case deadline runs from registration to C12,
# docs/domain.md#complaints), C16 反馈监管 is the 12386 feedback, C17 满意度回访 the satisfaction
# score. callback.bpmn: K5 回访问卷 is the call that counts (client reached, identity confirmed,
# questions answered). retention.bpmn: B1 挽留沟通 and A1 提交指令.
RESPONSE_STEP, REGULATOR_STEP, SATISFACTION_STEP = "communicate_result", "report_regulator", "satisfaction_callback"
QUESTIONNAIRE_STEP = "questionnaire"
CONVERSATION_STEP, SUBMIT_STEP = "retention_conversation", "submit_instructions"
SEVERITIES = ("general", "major", "group", "regulator")
OBSTRUCTION = "transfer_obstruction"
# Who may read figures besides supervisors: the people the brief's supervisor metrics are for
# (docs/domain.md#roles): compliance, the branch's management (the head, the ops director who
# owns counter-side SLAs and retention locally, the 客服总监 who owns complaint handling and
# satisfaction), the HQ complaint and brokerage departments, the call-centre supervisor
# (callback completion) and the process owners, who receive the breach reports.
VIEWER_GROUPS = frozenset({"compliance", "branch_head", "branch_ops_director", "branch_cs_director",
                           "hq_complaint_dept", "hq_brokerage_mgmt", "call_center_supervisor", PROCESS_OWNER})
TASK_DIMENSIONS = ("branch", "group", "process", "step", "assignee")

# -- configuration ---------------------------------------------------------------------------
# The stored tunables the figures read (engine.brokerage.settings: key, default, meaning).
CONFIG_KEYS = ("figures.ageing_buckets", "figures.regulatory_policies", "figures.regulatory_steps",
               "figures.business_hours", "figures.satisfied_min", *(f"complaint.sla.resolve.{s}" for s in SEVERITIES),
               "complaint.sla.regulator_margin", "complaint.extension.max", "callback.new_account.deadline",
               "callback.periodic.min_ratio", "figures.group_score.weights", "figures.group_rank.highlight")


@dataclass(frozen=True)
class FigureConfig:
    ageing_buckets: tuple[int, ...]
    regulatory_policies: tuple[str, ...]
    regulatory_steps: tuple[tuple[str, str], ...]
    business_hours: str
    satisfied_min: int
    resolve: dict[str, Target]
    regulator_margin: Target
    extension_max: Target
    new_account_deadline: Target
    periodic_min_ratio: Decimal
    score_weights: dict[str, float]
    highlight: int


def load_config(session: Session) -> FigureConfig:
    """The defaults, overridden by bpm_setting rows of the same key."""
    value = settings.load(session, CONFIG_KEYS)
    return FigureConfig(
        ageing_buckets=value["figures.ageing_buckets"],
        regulatory_policies=value["figures.regulatory_policies"],
        regulatory_steps=value["figures.regulatory_steps"],
        business_hours=value["figures.business_hours"],
        satisfied_min=value["figures.satisfied_min"],
        resolve={s: value[f"complaint.sla.resolve.{s}"] for s in SEVERITIES},
        regulator_margin=value["complaint.sla.regulator_margin"],
        extension_max=value["complaint.extension.max"],
        new_account_deadline=value["callback.new_account.deadline"],
        periodic_min_ratio=value["callback.periodic.min_ratio"],
        score_weights=value["figures.group_score.weights"],
        highlight=value["figures.group_rank.highlight"],
    )


# -- who may see what -----------------------------------------------------------------------
@dataclass(frozen=True)
class Scope:
    """The period ``[start, end)`` and the optional branch and group filters."""

    start: datetime
    end: datetime
    branch: str | None = None
    group: str | None = None

    def as_of(self, now: datetime) -> datetime:
        """Point-in-time figures (what is open, overdue) are taken at the period's end, or
        now if the period has not ended."""
        return min(self.end, now)

    @property
    def first_day(self) -> date:
        return self.start.astimezone(SHANGHAI).date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).astimezone(SHANGHAI).date()


def period(first: date | None, last: date | None, *, now: datetime) -> tuple[datetime, datetime]:
    """Calendar dates in Asia/Shanghai, both inclusive, as ``[start, end)``; the default is
    the year to date."""
    today = now.astimezone(SHANGHAI).date()
    first = first or date(today.year, 1, 1)
    last = last or today
    check_plausible(first, name="from")
    check_plausible(last, name="to")
    if last < first:
        raise InvalidInput(f"the period ends ({last}) before it starts ({first})")
    return (datetime.combine(first, time.min, SHANGHAI),
            datetime.combine(last + timedelta(days=1), time.min, SHANGHAI))


def scope_for(actor: Actor, *, first: date | None = None, last: date | None = None, branch: str | None = None,
              group: str | None = None, now: datetime) -> Scope:
    """Figures are for supervisors and :data:`VIEWER_GROUPS` (docs/permissions.md). Whoever
    belongs to a branch (its management, its compliance officer) sees that branch only;
    headquarters staff see every branch."""
    if not (actor.has_role(SUPERVISOR) or actor.groups & VIEWER_GROUPS):
        raise PermissionDenied("figures are for supervisors, compliance, branch management, the HQ complaint "
                               "and brokerage departments, the call-centre supervisor and process owners")
    if actor.branch_code is not None and not actor.is_admin:
        if branch not in (None, actor.branch_code):
            raise PermissionDenied(f"figures of branch {branch} are not visible to staff of {actor.branch_code}")
        branch = actor.branch_code
    start, end = period(first, last, now=now)
    return Scope(start=start, end=end, branch=branch or None, group=group or None)


# -- shared SQL ----------------------------------------------------------------------------
def _fact(name: str) -> Any:
    """``facts -> name``; ``.as_string()``, ``.as_float()``, ``.as_boolean()`` give SQL values."""
    return cast(Any, ProcessInstance.facts)[name]


def _instance_group() -> ColumnElement[Any]:
    """The service group a case belongs to: the one its data names (callbacks, retention),
    else the client's group in the registry (complaints). Needs the outer join to Client."""
    return func.coalesce(_fact("service_group").as_string(), Client.service_group_key)


def _cases(process_key: str, scope: Scope, *columns: Any) -> Any:
    """Not-cancelled instances of a process in the scope's branch and group."""
    stmt = (select(*columns).select_from(ProcessInstance)
            .outerjoin(Client, Client.client_id == ProcessInstance.client_id)
            .where(ProcessInstance.process_key == process_key, ProcessInstance.status != InstanceStatus.CANCELLED))
    if scope.branch:
        stmt = stmt.where(ProcessInstance.branch_code == scope.branch)
    if scope.group:
        stmt = stmt.where(_instance_group() == scope.group)
    return stmt


def _first_completion(process_key: str, element_id: str) -> Any:
    """Per instance, when the step was first completed (a subquery: instance_id, at)."""
    return (select(Task.instance_id.label("instance_id"), func.min(Task.completed_at).label("at"))
            .where(Task.process_key == process_key, Task.element_id == element_id, Task.status == TaskStatus.COMPLETED)
            .group_by(Task.instance_id).subquery())


def _count(condition: ColumnElement[bool]) -> Any:
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _aware(value: Any) -> datetime | None:
    """A fact holding a date-time (ISO 8601 with an offset), else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks (PostgreSQL's ``percentile_cont``,
    ``statistics.quantiles(method="inclusive")``); the median is ``q=0.5``."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def working_days_between(calendar: BusinessCalendar, start: datetime, end: datetime) -> float:
    """Business time from ``start`` to ``end`` in working days: time inside business hours
    of working days, divided by the business hours of one day."""
    if end <= start:
        return 0.0
    tz = calendar.hours.tz
    day_seconds = sum((datetime.combine(date.min, b) - datetime.combine(date.min, a)).total_seconds()
                      for a, b in calendar.hours.periods)
    total, d, last = 0.0, start.astimezone(tz).date(), end.astimezone(tz).date()
    while d <= last:
        if calendar.day(d)[0].working:
            for begin, finish in calendar.hours.periods:
                low = max(start, datetime.combine(d, begin, tz))
                high = min(end, datetime.combine(d, finish, tz))
                total += max(0.0, (high - low).total_seconds())
        d += timedelta(days=1)
    return total / day_seconds


def working_days_before(calendar: BusinessCalendar, moment: datetime, days: int) -> datetime:
    """The same local time ``days`` working days earlier."""
    local = moment.astimezone(calendar.hours.tz)
    d = local.date()
    while days > 0:
        d -= timedelta(days=1)
        if calendar.day(d)[0].working:
            days -= 1
    return datetime.combine(d, local.timetz())


# -- 1. overdue and at-risk tasks ----------------------------------------------------------
@dataclass(frozen=True)
class Bucket:
    """Overdue tasks whose whole working days overdue are ``from_days`` to ``to_days``
    (both included; no upper end for the last bucket)."""

    from_days: int
    to_days: int | None
    count: int


@dataclass(frozen=True)
class TaskFigureRow:
    key: dict[str, str | None]
    overdue: int
    at_risk: int
    closed_late: int
    regulatory_overdue: int
    ageing: list[Bucket]
    # What people call each key: the branch's, group's and person's names, the process's
    # name and the step's (its Chinese name in the diagram).
    names: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskFigures:
    as_of: datetime
    by: list[str]
    total: TaskFigureRow
    rows: list[TaskFigureRow]


def _dimensions(by: Sequence[str]) -> list[str]:
    unknown = [d for d in by if d not in TASK_DIMENSIONS]
    if unknown:
        raise InvalidInput(f"unknown dimension(s) {', '.join(unknown)}; use {', '.join(TASK_DIMENSIONS)}")
    wanted = set(by) | ({"process"} if "step" in by else set())  # element ids repeat across processes
    return [d for d in TASK_DIMENSIONS if d in wanted]


def bucket_spans(edges: Sequence[int]) -> list[tuple[int, int | None]]:
    """The ageing buckets' (first, last) whole working days overdue; the last has no end."""
    return [(0, edges[0]), *((low + 1, high) for low, high in itertools.pairwise(edges)), (edges[-1] + 1, None)]


@dataclass(frozen=True)
class TaskRules:
    """The overdue figure's rules for one task, as SQL over ``bpm_task`` (with ``bpm_sla_policy``
    outer-joined for ``regulatory``), at one moment: the figure and the board's snapshot count
    by the same ones."""

    clock: Any  # where the task's clock stands: the moment, or its pause if paused before it
    is_open: Any
    maybe: Any  # implied by open or closed in the period, said so an index can find it
    overdue: Any
    at_risk: Any
    closed_late: Any
    regulatory: Any


def task_rules(scope: Scope, as_of: datetime, config: FigureConfig) -> TaskRules:
    at = literal(as_of, UTCDateTime())
    # A paused clock stopped at the pause: a task paused before its due date is not overdue,
    # and one paused after it ages no further.
    clock = case((and_(Task.sla_paused_at.is_not(None), Task.sla_paused_at < at), Task.sla_paused_at), else_=at)
    is_open = and_(Task.created_at <= at, or_(Task.completed_at.is_(None), Task.completed_at > at))
    # What is implied by both open at ``as_of`` and closed in the period, said so an index can
    # find it (the open tasks', ix_task_completed_at's range) instead of reading every task
    # ever completed: a task has a completion time once, and only once, it is no longer open.
    maybe = or_(Task.status.in_(ACTIVE_TASK_STATES), Task.completed_at >= min(scope.start, as_of))
    closed_late = and_(Task.status == TaskStatus.COMPLETED, Task.completed_at >= scope.start,
                       Task.completed_at < scope.end, Task.completed_at > Task.due_at)
    regulatory = or_(SlaPolicy.key.in_(config.regulatory_policies) if config.regulatory_policies else false(),
                     *(and_(Task.process_key == p, Task.element_id == e) for p, e in config.regulatory_steps))
    return TaskRules(clock=clock, is_open=is_open, maybe=maybe, overdue=and_(is_open, Task.due_at < clock),
                     at_risk=and_(is_open, Task.due_at >= clock, Task.at_risk_at <= clock), closed_late=closed_late,
                     regulatory=regulatory)


def age_bucket(calendar: BusinessCalendar, edges: Sequence[int], due_at: datetime, stopped: datetime) -> int:
    """Which ageing bucket an overdue task is in: by the whole working days from its due time
    to where its clock stands."""
    age = math.floor(working_days_between(calendar, due_at, stopped) + 1e-9)
    return sum(1 for e in edges if age > e)


def overdue_tasks(session: Session, *, scope: Scope, by: Sequence[str], now: datetime, config: FigureConfig,
                  buckets: Sequence[int] | None = None, with_total: bool = True, named: bool = True) -> TaskFigures:
    """Open tasks overdue or at risk at :meth:`Scope.as_of`, tasks closed late in the period,
    by any of branch, candidate group, process, step and assignee, with ageing buckets in whole
    working days overdue (``buckets``: the last day count of each bucket but the open-ended last).
    ``with_total=False`` leaves the total empty and ``named=False`` the rows unnamed (the board's
    snapshot sums its own totals and names its own rows)."""
    dims = _dimensions(by)
    edges = settings.check_buckets(buckets) if buckets is not None else config.ageing_buckets
    as_of = scope.as_of(now)
    rules = task_rules(scope, as_of, config)
    overdue, at_risk, closed_late, regulatory, clock = (rules.overdue, rules.at_risk, rules.closed_late,
                                                        rules.regulatory, rules.clock)
    is_open, maybe = rules.is_open, rules.maybe
    measures = [
        _count(overdue).label("overdue"), _count(at_risk).label("at_risk"), _count(closed_late).label("closed_late"),
        _count(and_(overdue, regulatory)).label("regulatory"),
    ]
    columns = {"branch": Task.branch_code, "group": TaskCandidate.group_key, "process": Task.process_key,
               "step": Task.element_id, "assignee": Task.assignee}

    def filtered(stmt: Any, dimensions: list[str]) -> Any:
        if "group" in dimensions:
            # A task offered to two groups counts in each: group rows can add up to more
            # than the total.
            on = TaskCandidate.task_id == Task.id
            stmt = stmt.outerjoin(TaskCandidate, and_(on, TaskCandidate.group_key == scope.group)
                                  if scope.group else on)
        if scope.branch:
            stmt = stmt.where(Task.branch_code == scope.branch)
        if scope.group:
            offered = aliased(TaskCandidate)  # the join above may use TaskCandidate itself
            stmt = stmt.where(exists().where(offered.task_id == Task.id, offered.group_key == scope.group))
        return stmt

    def query(dimensions: list[str]) -> list[Any]:
        keys = [columns[d].label(d) for d in dimensions]
        stmt = filtered(select(*keys, *measures).select_from(Task)
                        .outerjoin(SlaPolicy, SlaPolicy.id == Task.sla_policy_id)
                        .where(Task.due_at.is_not(None), maybe, or_(is_open, closed_late)), dimensions)
        return list(session.execute(stmt.group_by(*keys) if keys else stmt).all())

    # How long work has been overdue is counted in whole working days on the business calendar
    # (brief §5: 0-2, 3-5, 6-10, >10 WD), which SQL cannot do: the overdue tasks' due dates and
    # clocks come back (one row per task and key) and are bucketed here.
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    ages: dict[tuple[Any, ...], list[int]] = {}

    def age_buckets(dimensions: list[str]) -> None:
        keys = [columns[d].label(d) for d in dimensions]
        stopped_at = type_coerce(clock, UTCDateTime()).label("stopped_at")
        stmt = filtered(select(*keys, Task.due_at, stopped_at).select_from(Task).where(maybe, overdue), dimensions)
        for *key, due_at, stopped in session.execute(stmt).all():
            ages.setdefault(tuple(key), [0] * (len(edges) + 1))[age_bucket(calendar, edges, due_at, stopped)] += 1

    spans = bucket_spans(edges)

    def row(values: Any, dimensions: list[str]) -> TaskFigureRow:
        counts = [int(v or 0) for v in values[len(dimensions):]]
        key = tuple(values[:len(dimensions)])
        ageing = [Bucket(low, high, n) for (low, high), n in
                  zip(spans, ages.get(key, [0] * len(spans)), strict=True)]
        return TaskFigureRow(key={d: values[i] for i, d in enumerate(dimensions)}, overdue=counts[0],
                             at_risk=counts[1], closed_late=counts[2], regulatory_overdue=counts[3], ageing=ageing)

    total_row = row([0, 0, 0, 0], [])
    if with_total:
        age_buckets([])
        (total,) = query([])
        total_row = row(total, [])
        ages.clear()
    if dims:
        age_buckets(dims)
    rows = [row(r, dims) for r in query(dims)] if dims else []
    rows = [r for r in rows if r.overdue or r.at_risk or r.closed_late]
    if named:
        rows = _named(session, rows)
    rows.sort(key=lambda r: (-r.overdue, -r.at_risk, -r.closed_late, [str(v) for v in r.key.values()]))
    return TaskFigures(as_of=as_of, by=dims, total=total_row, rows=rows)


def _named(session: Session, rows: list[TaskFigureRow]) -> list[TaskFigureRow]:
    """The rows with the names people know their keys by."""
    wanted: dict[str, set[str]] = {}
    for r in rows:
        for dimension, value in r.key.items():
            if value:
                wanted.setdefault(dimension, set()).add(value)
    names: dict[str, dict[str, str]] = {}
    if "branch" in wanted:
        names["branch"] = dict(session.execute(select(Branch.code, Branch.name)
                                               .where(Branch.code.in_(wanted["branch"]))).all())
    if "group" in wanted:
        names["group"] = dict(session.execute(select(Group.key, Group.name)
                                              .where(Group.key.in_(wanted["group"]))).all())
    if "assignee" in wanted:
        names["assignee"] = dict(session.execute(select(User.username, User.display_name)
                                                 .where(User.username.in_(wanted["assignee"]))).all())
    if "process" in wanted:
        names["process"] = {k: n for k, n in session.execute(
            select(ProcessVersion.process_key, ProcessVersion.name).where(ProcessVersion.process_key.in_(
                wanted["process"])).order_by(ProcessVersion.version)).all() if n}
    steps: dict[tuple[str, str], str] = {}
    if "step" in wanted:
        steps = {(p, e): n for p, e, n in session.execute(
            select(Task.process_key, Task.element_id, func.max(Task.name))
            .where(Task.element_id.in_(wanted["step"])).group_by(Task.process_key, Task.element_id)).all() if n}

    def name_of(r: TaskFigureRow, dimension: str, value: str | None) -> str | None:
        if value is None:
            return None
        if dimension == "step":
            return steps.get((r.key.get("process") or "", value))
        return names.get(dimension, {}).get(value)

    return [replace(r, names={d: name_of(r, d, v) for d, v in r.key.items()}) for r in rows]


# -- 2. complaint resolution time and on-time rates ------------------------------------------
@dataclass(frozen=True)
class SeverityFigures:
    severity: str
    responded: int
    on_time: int
    on_time_rate: float | None
    median_days: float | None
    p90_days: float | None
    max_days: float | None
    median_working_days: float | None
    p90_working_days: float | None
    unresolved_overdue: int


@dataclass(frozen=True)
class RegulatorFeedback:
    due: int
    on_time: int
    late: int
    pending: int
    on_time_rate: float | None


@dataclass(frozen=True)
class ComplaintFigures:
    as_of: datetime
    by_severity: list[SeverityFigures]
    total: SeverityFigures
    regulator_feedback: RegulatorFeedback


def resolution_due(calendar: BusinessCalendar, config: FigureConfig, started_at: datetime,
                   facts: dict[str, Any]) -> datetime | None:
    """The whole-case resolution deadline (docs/domain.md#complaints): the severity's target
    from the start; a regulator-transferred case no later than the regulator's due date less
    the margin; an approved extension adds its working days (at most the maximum)."""
    target = config.resolve.get(str(facts.get("severity")))
    if target is None:
        return None
    due = calendar.add(started_at, target.amount, target.unit).at
    regulator_due = _aware(facts.get("regulator_due_at"))
    if facts.get("severity") == "regulator" and regulator_due is not None:
        due = min(due, working_days_before(calendar, regulator_due, config.regulator_margin.amount))
    if facts.get("extension_decision") == "approve":
        try:
            days = min(int(facts.get("extension_days") or 0), config.extension_max.amount)
        except (TypeError, ValueError):
            days = 0
        if days > 0:
            due = calendar.add(due, days, Unit.WORKING_DAYS).at
    return due


def complaint_figures(session: Session, *, scope: Scope, now: datetime, config: FigureConfig) -> ComplaintFigures:
    """Resolution time (start → first response, complaint step C12) of complaints answered
    in the period, the share answered by their deadline, by severity; complaints still
    unanswered past their deadline at :meth:`Scope.as_of`; and 12386 feedback (complaint
    step C16) due in the period."""
    as_of = scope.as_of(now)
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    responded = _first_completion(COMPLAINT, RESPONSE_STEP)
    is_complaint = _fact("request_kind").as_string() == "complaint"
    answered = session.execute(
        _cases(COMPLAINT, scope, ProcessInstance.started_at, ProcessInstance.facts, responded.c.at)
        .join(responded, responded.c.instance_id == ProcessInstance.id)
        .where(is_complaint, responded.c.at >= scope.start, responded.c.at < scope.end)
    ).all()
    unanswered = session.execute(
        _cases(COMPLAINT, scope, ProcessInstance.started_at, ProcessInstance.facts)
        .outerjoin(responded, responded.c.instance_id == ProcessInstance.id)
        .where(is_complaint, ProcessInstance.started_at <= as_of,
               or_(responded.c.at.is_(None), responded.c.at > as_of),
               or_(ProcessInstance.ended_at.is_(None), ProcessInstance.ended_at > as_of))
    ).all()

    durations: dict[str, list[tuple[float, float, bool]]] = {s: [] for s in SEVERITIES}
    for started_at, facts, at in answered:
        severity = (facts or {}).get("severity")
        if severity not in durations:
            continue
        due = resolution_due(calendar, config, started_at, facts)
        durations[severity].append(((at - started_at).total_seconds() / 86400,
                                    working_days_between(calendar, started_at, at), due is not None and at <= due))
    overdue = dict.fromkeys(SEVERITIES, 0)
    for started_at, facts in unanswered:
        severity = (facts or {}).get("severity")
        due = resolution_due(calendar, config, started_at, facts or {})
        if severity in overdue and due is not None and due < as_of:
            overdue[severity] += 1

    def summary(severity: str, items: list[tuple[float, float, bool]], late_open: int) -> SeverityFigures:
        days, working = [i[0] for i in items], [i[1] for i in items]
        on_time = sum(1 for i in items if i[2])
        return SeverityFigures(
            severity=severity, responded=len(items), on_time=on_time, on_time_rate=_rate(on_time, len(items)),
            median_days=percentile(days, 0.5), p90_days=percentile(days, 0.9), max_days=max(days, default=None),
            median_working_days=percentile(working, 0.5), p90_working_days=percentile(working, 0.9),
            unresolved_overdue=late_open)

    by_severity = [summary(s, durations[s], overdue[s]) for s in SEVERITIES]
    total = summary("all", [i for s in SEVERITIES for i in durations[s]], sum(overdue.values()))
    return ComplaintFigures(as_of=as_of, by_severity=by_severity, total=total,
                            regulator_feedback=_regulator_feedback(session, scope, now))


def _regulator_feedback(session: Session, scope: Scope, now: datetime) -> RegulatorFeedback:
    """Regulator-transferred complaints whose regulator due date falls in the period, as
    known now: fed back (complaint step C16 completed) by that date, late (after it, or not
    yet and the date has passed), or pending."""
    fed_back = _first_completion(COMPLAINT, REGULATOR_STEP)
    rows = session.execute(
        _cases(COMPLAINT, scope, ProcessInstance.facts, fed_back.c.at)
        .outerjoin(fed_back, fed_back.c.instance_id == ProcessInstance.id)
        # A case due in the period started before the period ended.
        .where(_fact("severity").as_string() == "regulator", ProcessInstance.started_at < scope.end)
    ).all()
    on_time = late = pending = 0
    for facts, at in rows:
        due = _aware((facts or {}).get("regulator_due_at"))
        if due is None or not scope.start <= due < scope.end:
            continue
        if at is not None and at <= due:
            on_time += 1
        elif at is not None or due < now:
            late += 1
        else:
            pending += 1
    return RegulatorFeedback(due=on_time + late + pending, on_time=on_time, late=late, pending=pending,
                             on_time_rate=_rate(on_time, on_time + late))


# -- 3. retention ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RetentionFigures:
    as_of: datetime
    requests: int
    open_to_talk: int
    conversations_held: int
    retained: int
    attempt_rate: float | None
    success_rate: float | None
    obstruction_complaints: int
    post_closure_obstructed: int
    late_executions: int
    guard_total: int


def retention_figures(session: Session, *, scope: Scope, now: datetime) -> RetentionFigures:
    """Attempt and success rates of transfer/closure requests received in the period, and
    the guard metric: obstruction complaints received, post-closure callbacks answering
    "obstructed" in the period, and instructions (retention step A1) due in the period and,
    as known now, submitted late."""
    held = exists().where(Task.instance_id == ProcessInstance.id, Task.element_id == CONVERSATION_STEP,
                          Task.status == TaskStatus.COMPLETED)
    open_to_talk = _fact("client_open_to_retention_talk").as_boolean().is_(true())
    # Retained is the end state X2, which the case records (outcome, a report variable) only
    # when the client withdrew the request themselves and the counter confirmed it: a staff
    # member's "retained" in the conversation form is not enough (docs/domain.md#retention).
    retained = _fact("outcome").as_string() == "retained"
    requests, willing, conversations, kept = session.execute(
        _cases(RETENTION, scope, func.count(), _count(open_to_talk), _count(held), _count(and_(held, retained)))
        .where(ProcessInstance.started_at >= scope.start, ProcessInstance.started_at < scope.end)
    ).one()

    complaints = session.execute(
        _cases(COMPLAINT, scope, ProcessInstance.facts)
        .where(ProcessInstance.started_at >= scope.start, ProcessInstance.started_at < scope.end)
    ).scalars()
    obstruction = sum(1 for facts in complaints if facts and (
        facts.get("root_cause") == OBSTRUCTION or OBSTRUCTION in (facts.get("alleged_violations") or [])))

    answered = _first_completion(CALLBACK, QUESTIONNAIRE_STEP)
    obstructed = session.execute(
        _cases(CALLBACK, scope, func.count()).join(answered, answered.c.instance_id == ProcessInstance.id)
        .where(_fact("callback_type").as_string() == "post_closure", _fact("obstructed").as_string() == "是",
               answered.c.at >= scope.start, answered.c.at < scope.end)
    ).scalar_one()

    # Late: the due date passed before the instructions were submitted (or the step ended
    # otherwise, e.g. the client withdrew while waiting), or it passed and they are not yet.
    late = session.execute(
        _cases(RETENTION, scope, func.count()).join(Task, Task.instance_id == ProcessInstance.id)
        .where(Task.element_id == SUBMIT_STEP, Task.due_at >= scope.start, Task.due_at < scope.end,
               Task.due_at < now, Task.due_at < func.coalesce(Task.completed_at, literal(now, UTCDateTime())))
    ).scalar_one()
    return RetentionFigures(
        as_of=now, requests=int(requests), open_to_talk=int(willing), conversations_held=int(conversations),
        retained=int(kept), attempt_rate=_rate(int(conversations), int(willing)),
        success_rate=_rate(int(kept), int(conversations)), obstruction_complaints=obstruction,
        post_closure_obstructed=int(obstructed), late_executions=int(late),
        guard_total=obstruction + int(obstructed) + int(late))


# -- 4. callbacks against the regulatory quotas --------------------------------------------
@dataclass(frozen=True)
class NewAccountCallbacks:
    as_of: datetime
    opened: int
    completed_on_time: int
    completed_late: int
    overdue: int
    pending: int
    completion_rate: float | None
    target: float = 1.0


@dataclass(frozen=True)
class PeriodicCallbacks:
    year: int
    base_year_end: int
    active_clients: int | None
    min_ratio: Decimal
    quota: int | None
    clients_called: int
    coverage: float | None


def new_account_callbacks(session: Session, *, scope: Scope, now: datetime,
                          config: FigureConfig) -> NewAccountCallbacks:
    """New-account callbacks started in the period (one per account opened), as known now:
    completed (callback step K5, the questionnaire) by the deadline counted from the start,
    completed late, overdue, or still within the deadline."""
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    answered = _first_completion(CALLBACK, QUESTIONNAIRE_STEP)
    rows = session.execute(
        _cases(CALLBACK, scope, ProcessInstance.started_at, answered.c.at)
        .outerjoin(answered, answered.c.instance_id == ProcessInstance.id)
        .where(_fact("callback_type").as_string() == "new_account",
               ProcessInstance.started_at >= scope.start, ProcessInstance.started_at < scope.end)
    ).all()
    on_time = late = overdue = pending = 0
    deadline = config.new_account_deadline
    for started_at, at in rows:
        due = calendar.add(started_at, deadline.amount, deadline.unit).at
        if at is not None and at <= due:
            on_time += 1
        elif at is not None:
            late += 1
        elif due < now:
            overdue += 1
        else:
            pending += 1
    return NewAccountCallbacks(as_of=now, opened=len(rows), completed_on_time=on_time, completed_late=late,
                               overdue=overdue, pending=pending, completion_rate=_rate(on_time, len(rows)))


def active_clients(session: Session, *, year: int, branch: str | None) -> int | None:
    key = f"{settings.ACTIVE_CLIENTS}.{year}" + (f".{branch}" if branch else "")
    value = session.execute(select(Setting.value).where(Setting.key == key)).scalar_one_or_none()
    return int(value) if value is not None else None


def periodic_callbacks(session: Session, *, scope: Scope, config: FigureConfig) -> PeriodicCallbacks:
    """Distinct clients whose periodic callback was completed (callback step K5) in the
    period, against the year's quota: ``min_ratio`` × the prior year-end active clients of
    the branch (or the company). There is no quota per group."""
    year = scope.first_day.year
    if scope.last_day.year != year:
        raise InvalidInput("the periodic callback quota is per calendar year: ask for a period within one year")
    answered = _first_completion(CALLBACK, QUESTIONNAIRE_STEP)
    called = session.execute(
        _cases(CALLBACK, scope, func.count(ProcessInstance.client_id.distinct()))
        .join(answered, answered.c.instance_id == ProcessInstance.id)
        .where(_fact("callback_type").as_string() == "periodic", answered.c.at >= scope.start,
               answered.c.at < scope.end)
    ).scalar_one()
    base = None if scope.group else active_clients(session, year=year - 1, branch=scope.branch)
    quota = None if base is None else math.ceil(config.periodic_min_ratio * base)
    return PeriodicCallbacks(year=year, base_year_end=year - 1, active_clients=base,
                             min_ratio=config.periodic_min_ratio, quota=quota, clients_called=int(called),
                             coverage=_rate(int(called), quota) if quota is not None else None)


# -- 5. satisfaction -------------------------------------------------------------------------
@dataclass(frozen=True)
class Satisfaction:
    responses: int
    mean: float | None
    satisfied_share: float | None


@dataclass(frozen=True)
class SatisfactionRow:
    key: str | None
    complaint: Satisfaction
    callback: Satisfaction
    overall: Satisfaction


# (source, process, step that records the score, score variable)
SATISFACTION_SOURCES = (("complaint", COMPLAINT, SATISFACTION_STEP, "csat"),
                        ("callback", CALLBACK, QUESTIONNAIRE_STEP, "service_satisfaction"))


def satisfaction(session: Session, *, scope: Scope, by: str, config: FigureConfig) -> list[SatisfactionRow]:
    """1–5 scores given in the period, by branch or service group: the complaint
    satisfaction callback (complaint step C17, ``csat``) and the callback questionnaire
    (step K5, ``service_satisfaction``), each and together."""
    if by not in ("branch", "group"):
        raise InvalidInput("satisfaction is by branch or by group")
    sums: dict[str | None, dict[str, tuple[int, float, int]]] = {}
    for source, process_key, step, variable in SATISFACTION_SOURCES:
        answered = _first_completion(process_key, step)
        score = _fact(variable).as_float()
        key = (ProcessInstance.branch_code if by == "branch" else _instance_group()).label("key")
        rows = session.execute(
            _cases(process_key, scope, key, func.count(score), func.sum(score),
                   _count(score >= config.satisfied_min))
            .join(answered, answered.c.instance_id == ProcessInstance.id)
            .where(score.is_not(None), answered.c.at >= scope.start, answered.c.at < scope.end)
            .group_by(key)
        ).all()
        for value, n, total, satisfied in rows:
            sums.setdefault(value, {})[source] = (int(n), float(total or 0), int(satisfied))

    def stat(parts: list[tuple[int, float, int]]) -> Satisfaction:
        n = sum(p[0] for p in parts)
        return Satisfaction(responses=n, mean=sum(p[1] for p in parts) / n if n else None,
                            satisfied_share=_rate(sum(p[2] for p in parts), n))

    empty = (0, 0.0, 0)
    return [SatisfactionRow(key=k, complaint=stat([v.get("complaint", empty)]),
                            callback=stat([v.get("callback", empty)]), overall=stat(list(v.values())))
            for k, v in sorted(sums.items(), key=lambda item: str(item[0]))]


# -- 6. service-group assessment -------------------------------------------------------------
@dataclass(frozen=True)
class GroupScore:
    group: str
    branch: str
    clients: int
    assets_start: Decimal
    assets_end: Decimal
    growth: Decimal
    new_money: Decimal
    appreciation: Decimal
    growth_rate: float | None
    traded_amount: Decimal
    avg_assets: Decimal
    turnover: float | None
    referrals: int
    referral_rate: float | None
    score: float = 0.0
    rank: int = 0
    highlight: str | None = None


@dataclass(frozen=True)
class PeriodAssessment:
    period_start: date
    period_end: date
    groups: list[GroupScore] = field(default_factory=list)


def rank_points(values: Sequence[float | None]) -> list[float]:
    """Each value's place among the values as a share: 1 for the best, 0 for the worst,
    ties share the mean of their places; a missing value is below every other."""
    n = len(values)
    if n == 1:
        return [1.0]
    points = []
    for value in values:
        if value is None:
            points.append(0.0)
            continue
        below = sum(1 for v in values if v is None or v < value)
        ties = sum(1 for v in values if v == value) - 1
        points.append((below + ties / 2) / (n - 1))
    return points


def group_assessment(session: Session, *, scope: Scope, config: FigureConfig) -> list[PeriodAssessment]:
    """Per snapshot period lying in the period and per service group of the scope's branch
    (or all branches): asset growth split into new money and appreciation, turnover,
    referrals, and the rank by score among the groups. The branch pool is not ranked."""
    g = ClientSnapshot
    stmt = (select(g.period_start, g.period_end, g.service_group_key, g.branch_code, func.count(),
                   func.sum(g.assets_start), func.sum(g.assets_end), func.sum(g.net_inflow),
                   func.sum(g.traded_amount), func.sum(g.avg_assets), func.sum(g.referrals))
            .where(g.period_start >= scope.first_day, g.period_end <= scope.last_day,
                   g.service_group_key.is_not(None))
            .group_by(g.period_start, g.period_end, g.service_group_key, g.branch_code)
            .order_by(g.period_start, g.period_end, g.service_group_key))
    if scope.branch:
        stmt = stmt.where(g.branch_code == scope.branch)
    periods: dict[tuple[date, date], list[GroupScore]] = {}
    for start, end, group, branch, clients, a0, a1, inflow, traded, avg, referrals in session.execute(stmt).all():
        a0, a1, inflow, traded, avg = (Decimal(v or 0) for v in (a0, a1, inflow, traded, avg))
        growth = a1 - a0
        periods.setdefault((start, end), []).append(GroupScore(
            group=str(group), branch=branch, clients=int(clients), assets_start=a0, assets_end=a1, growth=growth,
            new_money=inflow, appreciation=growth - inflow, growth_rate=float(growth / a0) if a0 else None,
            traded_amount=traded, avg_assets=avg, turnover=float(traded / avg) if avg else None,
            referrals=int(referrals or 0), referral_rate=int(referrals or 0) / int(clients)))
    return [PeriodAssessment(start, end, _ranked(groups, config, scope.group))
            for (start, end), groups in periods.items()]


def _ranked(groups: list[GroupScore], config: FigureConfig, only: str | None) -> list[GroupScore]:
    """score = Σ weight × rank points of growth rate, turnover and referral rate; rank 1 is
    the highest score (ties by group key); the top and bottom ``highlight`` are marked."""
    metrics = {"growth": [s.growth_rate for s in groups], "turnover": [s.turnover for s in groups],
               "referrals": [s.referral_rate for s in groups]}
    points = {name: rank_points(values) for name, values in metrics.items()}
    weight_sum = sum(config.score_weights.values())
    scored = [(round(sum(w * points[m][i] for m, w in config.score_weights.items()) / weight_sum, 6), s)
              for i, s in enumerate(groups)]
    scored.sort(key=lambda item: (-item[0], item[1].group))
    n, top = len(scored), config.highlight
    ranked = []
    for rank, (score, s) in enumerate(scored, start=1):
        highlight = "top" if rank <= top else "bottom" if rank > max(n - top, top) else None
        ranked.append(replace(s, score=score, rank=rank, highlight=highlight))
    return [s for s in ranked if only is None or s.group == only]
