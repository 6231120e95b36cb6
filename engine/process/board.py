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


def _scoped(actor: Actor) -> list[Any]:
    """The tasks a supervisor may see, as WHERE clauses: none that recuses them, and their
    branch's and those tied to no branch (the firm at headquarters)."""
    where: list[Any] = tasks.not_recused(tasks.principals(actor))
    branch = tasks.supervised_branch(actor)
    if branch is not None:
        where.append(or_(Task.branch_code.is_(None), Task.branch_code == branch))
    return where


def board(session: Session, *, actor: Actor, by: str, now: datetime, process_key: str | None = None) -> Board:
    """Open, on track, at risk, breached, paused and undated tasks per ``by`` (branch, group,
    person, process or step), busiest breach first, with the total over the reader's scope."""
    require_supervisor(actor)
    if by not in DIMENSIONS:
        raise InvalidInput(f"by must be one of {', '.join(DIMENSIONS)}", field="by")
    paused = Task.sla_paused_at.is_not(None)
    undated = and_(~paused, Task.due_at.is_(None))
    breached = and_(~paused, Task.due_at.is_not(None), or_(Task.breached_at.is_not(None), Task.due_at < now))
    at_risk = and_(~paused, Task.due_at >= now, Task.breached_at.is_(None), Task.at_risk_at <= now)

    def counted(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    key: Any = {
        "branch": func.coalesce(Task.branch_code, ""),
        "group": func.coalesce(TaskCandidate.group_key, ""),
        "person": func.coalesce(Task.assignee, ""),
        "process": Task.process_key,
        "step": Task.process_key + literal("/", String) + Task.element_id,
    }[by]
    columns = [func.count(), counted(breached), counted(at_risk), counted(paused), counted(undated),
               func.min(case((breached, Task.due_at), else_=None))]
    where = [Task.status.in_(ACTIVE_TASK_STATES), *_scoped(actor)]
    if process_key:
        where.append(Task.process_key == process_key)
    # A step's name comes with its counts: naming the steps afterwards read every open task again.
    stmt = select(key, *columns, *([func.max(Task.name)] if by == "step" else [])).where(*where)
    if by == "group":
        # A task offered to several groups counts once in each; a claimed task, in none. Only
        # the open tasks' candidate rows are joined (a completed task's stay for the figures).
        stmt = stmt.outerjoin(TaskCandidate, and_(TaskCandidate.task_id == Task.id, Task.assignee.is_(None),
                                                  TaskCandidate.active == true()))
    found: list[Any] = list(session.execute(stmt.group_by(key)).all())
    names = _names(session, by, [row[0] for row in found])
    if by == "step":
        names = {k: f"{(names.get(k) or k).split(' · ')[0]} · {row[-1] or k.split('/', 1)[1]}"
                 for row in found if (k := row[0])}
        found = [row[:-1] for row in found]
    rows = [_row(by, row[0], names.get(row[0]) or row[0] or "", row[1:]) for row in found]
    rows.sort(key=lambda r: (-r.breached, -r.at_risk, -r.open, r.name))
    if by == "group":
        # Rows of groups overlap (one task, two groups): the total counts each task once.
        totals = session.execute(select(*columns).where(*where)).one()
        return Board(by, rows, _row(by, "", "", totals), now)
    # Otherwise every task is in exactly one row: the total is their sum, not a second scan.
    oldest = [r.oldest_breach for r in rows if r.oldest_breach is not None]
    total = _row(by, "", "", (sum(r.open for r in rows), sum(r.breached for r in rows), sum(r.at_risk for r in rows),
                              sum(r.paused for r in rows), sum(r.no_deadline for r in rows),
                              min(oldest) if oldest else None))
    return Board(by, rows, total, now)


def count_all(session: Session, *, actor: Actor, query: tasks.InboxQuery, now: datetime) -> int:
    """How many tasks a task-list query finds (exactly: an export says how many rows it held)."""
    _, total = tasks.inbox(session, actor=actor, query=replace(query, limit=1, offset=0), now=now)
    return total


def _row(by: str, key: str, name: str, values: Any) -> BoardRow:
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
    this_monday = (now.astimezone(SHANGHAI) - timedelta(days=now.astimezone(SHANGHAI).weekday())).replace(
        hour=0, minute=0, second=0, microsecond=0)
    starts = [this_monday - timedelta(weeks=weeks - 1 - i) for i in range(weeks)]
    edges = [*starts, this_monday + timedelta(weeks=1)]
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
    where = [Task.due_at.is_not(None), or_(Task.completed_at >= edges[0], Task.completed_at.is_(None)),
             *_scoped(actor)]
    values = session.execute(select(*columns).where(*where)).one()
    return [Week(start, *(int(v or 0) for v in values[i * 3:i * 3 + 3])) for i, start in enumerate(starts)]
