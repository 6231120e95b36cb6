"""The supervisors' board: open work counted by where its clock stands, for the reader's
scope, by branch, service group, person, process or step.

A supervisor sees what the inbox shows them: their branch's tasks and tasks tied to no branch
(at headquarters, and administrators, the firm), never a task that recuses them. The counts
are made in the database over the open tasks only, with the same rules as the task's own
SLA state (:func:`engine.sla.clock.state`): paused first, then breached, at risk, on track.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, case, func, literal, or_, select, true
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import SUPERVISOR
from engine.calendars import SHANGHAI
from engine.errors import InvalidInput, PermissionDenied
from engine.models import (
    ACTIVE_TASK_STATES,
    Group,
    ProcessVersion,
    Task,
    TaskCandidate,
    TaskExclusion,
    TaskStatus,
    User,
)
from engine.process import tasks

DIMENSIONS = ("branch", "group", "person", "process", "step")


@dataclass
class BoardRow:
    key: str  # the branch code, group key, username, process key or "process/element" (empty: none)
    name: str  # what people call it
    open: int
    on_track: int
    at_risk: int
    breached: int
    paused: int
    no_deadline: int
    oldest_breach: datetime | None  # the due time of the longest-breached task
    dimension: str = "branch"

    @property
    def filters(self) -> dict[str, str]:
        """The inbox filters that list this row's tasks (the drill-down)."""
        return _FILTER_OF[self.dimension](self.key) if self.key else {}


_FILTER_OF: dict[str, Any] = {
    "branch": lambda key: {"branch": key},
    "group": lambda key: {"group": key},
    "person": lambda key: {"assignee": key},
    "process": lambda key: {"process": key},
    "step": lambda key: dict(zip(("process", "step"), key.split("/", 1), strict=True)),
}


@dataclass
class Board:
    dimension: str
    rows: list[BoardRow]
    total: BoardRow
    as_of: datetime


def require_supervisor(actor: Actor) -> None:
    if not actor.has_role(SUPERVISOR):
        raise PermissionDenied("the board is for supervisors")


def scoped(actor: Actor) -> list[Any]:
    """The tasks a supervisor may see, as WHERE clauses: none that recuses them, and their
    branch's and those tied to no branch (the firm at headquarters)."""
    return [*tasks.not_recused(tasks.principals(actor)), *in_branch_scope(actor)]


def in_branch_scope(actor: Actor) -> list[Any]:
    """A branch's supervisor's tasks: their branch's and those tied to no branch; at
    headquarters (and for administrators), every task."""
    branch = tasks.supervised_branch(actor)
    return [] if branch is None else [or_(Task.branch_code.is_(None), Task.branch_code == branch)]


def recusing(session: Session, actor: Actor) -> list[int]:
    """The ids of the tasks that recuse ``actor``, themselves or case-wide (every task of the
    case), whatever their status: what the board hides from them. Few, and found from the
    exclusions by principal (a WHERE clause saying the same would read every task)."""
    principals = tasks.principals(actor)
    own = select(TaskExclusion.task_id).where(TaskExclusion.principal.in_(principals))
    cases = (select(Task.instance_id).join(TaskExclusion, TaskExclusion.task_id == Task.id)
             .where(TaskExclusion.principal.in_(principals), TaskExclusion.case_wide.is_(True)))
    return sorted(set(session.execute(own).scalars())
                  | set(session.execute(select(Task.id).where(Task.instance_id.in_(cases))).scalars()))


def board(session: Session, *, actor: Actor, by: str, now: datetime, process_key: str | None = None) -> Board:
    """Open, on track, at risk, breached, paused and undated tasks per ``by`` (branch, group,
    person, process or step), busiest breach first, with the total over the reader's scope,
    counted live (engine.brokerage.board_snapshot reads the same from a snapshot)."""
    require_supervisor(actor)
    check_dimension(by)
    where = [Task.status.in_(ACTIVE_TASK_STATES), *scoped(actor)]
    rows = counted(session, by=by, now=now, where=where, process_key=process_key)
    if by == "group":
        # Rows of groups overlap (one task, two groups): the total counts each task once.
        totals = session.execute(select(*measures(now)).where(*where, *_of_process(process_key))).one()
        return Board(by, rows, row_of(by, "", "", totals), now)
    return Board(by, rows, total_of(by, rows), now)


def check_dimension(by: str) -> None:
    if by not in DIMENSIONS:
        raise InvalidInput(f"by must be one of {', '.join(DIMENSIONS)}", field="by")


def measures(now: datetime) -> list[Any]:
    """The board's counts of the tasks selected, at ``now``: open, breached, at risk, paused,
    undated, and the due time of the longest-breached (the rules of engine.sla.clock.state:
    paused first, then breached, at risk, on track)."""
    paused = Task.sla_paused_at.is_not(None)
    undated = and_(~paused, Task.due_at.is_(None))
    breached = and_(~paused, Task.due_at.is_not(None), or_(Task.breached_at.is_not(None), Task.due_at < now))
    at_risk = and_(~paused, Task.due_at >= now, Task.breached_at.is_(None), Task.at_risk_at <= now)

    def count(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    return [func.count(), count(breached), count(at_risk), count(paused), count(undated),
            func.min(case((breached, Task.due_at), else_=None))]


def key_of(by: str) -> Any:
    """A board row's key as SQL ("" for none); the group's needs :func:`offered_to_groups`."""
    return {
        "branch": func.coalesce(Task.branch_code, ""),
        "group": func.coalesce(TaskCandidate.group_key, ""),
        "person": func.coalesce(Task.assignee, ""),
        "process": Task.process_key,
        "step": Task.process_key + literal("/", String) + Task.element_id,
    }[by]


def offered_to_groups(stmt: Any) -> Any:
    """A task offered to several groups counts once in each; a claimed task, in none. Only the
    open tasks' candidate rows are joined (a completed task's stay for the figures)."""
    return stmt.outerjoin(TaskCandidate, and_(TaskCandidate.task_id == Task.id, Task.assignee.is_(None),
                                              TaskCandidate.active == true()))


def _of_process(process_key: str | None) -> list[Any]:
    return [Task.process_key == process_key] if process_key else []


def counted(session: Session, *, by: str, now: datetime, where: list[Any], process_key: str | None = None,
            only_key: str | None = None) -> list[BoardRow]:
    """The board's rows over the tasks ``where`` selects, named and in the board's order
    (``only_key``: that one row)."""
    key = key_of(by)
    where = [*where, *_of_process(process_key), *([key == only_key] if only_key is not None else [])]
    # A step's name comes with its counts: naming the steps afterwards read every open task again.
    stmt = select(key, *measures(now), *([func.max(Task.name)] if by == "step" else [])).where(*where)
    if by == "group":
        stmt = offered_to_groups(stmt)
    found: list[Any] = list(session.execute(stmt.group_by(key)).all())
    step_names = {row[0]: row[-1] for row in found} if by == "step" else {}
    return named(session, by, [(row[0], row[1:7]) for row in found], step_names)


def named(session: Session, by: str, found: list[tuple[str, Any]], step_names: dict[str, str | None]) -> list[BoardRow]:
    """Board rows from (key, counts) pairs, with the names people know them by, busiest breach
    first; ``step_names``: a step's own name by its key."""
    names = _names(session, by, [key for key, _ in found])
    if by == "step":
        names = {k: f"{(names.get(k) or k).split(' · ')[0]} · {step_names.get(k) or k.split('/', 1)[1]}"
                 for k, _ in found if k}
    rows = [row_of(by, key, names.get(key) or key or "", values) for key, values in found]
    rows.sort(key=lambda r: (-r.breached, -r.at_risk, -r.open, r.name))
    return rows


def total_of(by: str, rows: list[BoardRow]) -> BoardRow:
    """The total of rows that each hold a task once (every dimension but the group)."""
    oldest = [r.oldest_breach for r in rows if r.oldest_breach is not None]
    return row_of(by, "", "", (sum(r.open for r in rows), sum(r.breached for r in rows), sum(r.at_risk for r in rows),
                             sum(r.paused for r in rows), sum(r.no_deadline for r in rows),
                             min(oldest) if oldest else None))


def count_all(session: Session, *, actor: Actor, query: tasks.InboxQuery, now: datetime) -> int:
    """How many tasks a task-list query finds (exactly: an export says how many rows it held)."""
    _, total = tasks.inbox(session, actor=actor, query=replace(query, limit=1, offset=0), now=now)
    return total


def row_of(by: str, key: str, name: str, values: Any) -> BoardRow:
    opened, breached, at_risk, paused, undated, oldest = values
    opened, breached, at_risk, paused, undated = (int(v or 0) for v in (opened, breached, at_risk, paused, undated))
    return BoardRow(key=key, name=name, open=opened, on_track=opened - breached - at_risk - paused - undated,
                    at_risk=at_risk, breached=breached, paused=paused, no_deadline=undated,
                    oldest_breach=oldest, dimension=by)


def _names(session: Session, by: str, keys: list[str]) -> dict[str, str]:
    wanted = [k for k in keys if k]
    if not wanted:
        return {}
    if by == "group":
        return {k: n for k, n in session.execute(select(Group.key, Group.name).where(Group.key.in_(wanted))).all()}
    if by == "person":
        return {u: f"{n} ({u})" if n else u for u, n in session.execute(
            select(User.username, User.display_name).where(User.username.in_(wanted))).all()}
    if by in ("process", "step"):
        processes = {k: n or k for k, n in session.execute(
            select(ProcessVersion.process_key, ProcessVersion.name).order_by(ProcessVersion.version)).all()}
        if by == "process":
            return {k: processes.get(k, k) for k in wanted}
        # The step's own name is the board query's (its largest name among the open tasks).
        return {k: f"{processes.get(k.split('/', 1)[0], k)} · " for k in wanted}
    return {}


@dataclass
class Week:
    start: datetime  # Monday 00:00, Beijing time
    breached: int  # tasks whose deadline passed that week while they were open
    completed: int  # tasks with a deadline completed that week
    on_time: int  # of those, completed by their deadline

    @property
    def on_time_rate(self) -> float | None:
        return self.on_time / self.completed if self.completed else None


def trend(session: Session, *, actor: Actor, now: datetime, weeks: int = 12) -> list[Week]:
    """The last ``weeks`` weeks (this one included), oldest first, over the supervisor's scope:
    breaches opened, deadlines met and missed. One query: a sum per week and measure."""
    require_supervisor(actor)
    return weekly(session, now=now, where=scoped(actor), weeks=weeks).get("") or week_starts(now, weeks)


def week_starts(now: datetime, weeks: int = 12) -> list[Week]:
    """The last ``weeks`` weeks, this one included, oldest first, with nothing counted."""
    local = now.astimezone(SHANGHAI)
    this_monday = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    return [Week(this_monday - timedelta(weeks=weeks - 1 - i), 0, 0, 0) for i in range(weeks)]


def weekly(session: Session, *, now: datetime, where: list[Any], weeks: int = 12,
           by_branch: bool = False) -> dict[str, list[Week]]:
    """:func:`trend`'s weeks over the tasks ``where`` selects, per branch ("" for none) with
    ``by_branch``, else under "" alone (no entry when no task counts)."""
    starts = [w.start for w in week_starts(now, weeks)]
    edges = [*starts, starts[-1] + timedelta(weeks=1)]
    # When a task's deadline passed while it was open: its recorded breach, else its due time
    # for a task still open or completed after it.
    breach_at = func.coalesce(Task.breached_at, case((or_(Task.completed_at.is_(None), Task.completed_at > Task.due_at),
                                                      Task.due_at), else_=None))
    columns = []
    for low, high in itertools.pairwise(edges):
        columns.append(func.sum(case((and_(breach_at >= low, breach_at < high, breach_at <= now), 1), else_=0)))
        done = and_(Task.status == TaskStatus.COMPLETED, Task.completed_at >= low, Task.completed_at < high)
        columns.append(func.sum(case((done, 1), else_=0)))
        columns.append(func.sum(case((and_(done, Task.completed_at <= Task.due_at), 1), else_=0)))
    branch = func.coalesce(Task.branch_code, "") if by_branch else literal("", String)
    stmt = select(branch, func.count(), *columns).where(
        Task.due_at.is_not(None), or_(Task.completed_at >= edges[0], Task.status.in_(ACTIVE_TASK_STATES)), *where)
    found = session.execute(stmt.group_by(branch) if by_branch else stmt).all()
    return {row[0]: [Week(start, *(int(v or 0) for v in row[2 + i * 3:5 + i * 3])) for i, start in enumerate(starts)]
            for row in found if row[1]}
