"""The supervisors' board counted once a minute for the whole firm (a snapshot), and read
from there.

Counted live, the board reads every open task (a million at a national brokerage's size, 0.6
to 1.5 s firm-wide, docs/scale.md), and the overdue figure and the 12-week trend beside it
read the completed ones too. A snapshot counts all of it once, at one moment (``as_of``), per
branch and process for each of the board's dimensions; a page then sums the few thousand
counted rows of its reader's scope. What a reader may not see is taken out when they read:
the tasks that recuse them (a handful) are counted live at the snapshot's moment and
subtracted, so every number equals the live board's at ``as_of``, which the page shows. A
task that recuses the reader and changed since the snapshot is taken out as it is now.

With no snapshot younger than :data:`MAX_AGE` (none built yet, the refresher stopped), the
board is counted live, as before: never older than that, never wrong for the moment shown.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, literal, or_, select, type_coerce
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.brokerage import figures
from engine.calendars import SHANGHAI
from engine.db import UTCDateTime
from engine.models import ACTIVE_TASK_STATES, BoardCell, BoardSnapshot, BoardWeek, SlaPolicy, Task, TaskCandidate
from engine.process import board as boards
from engine.process import tasks
from engine.sla import calendar_store

log = logging.getLogger(__name__)

EVERY = timedelta(minutes=1)  # how often the refresher counts, at most
# Counting takes seconds of the database's time at a national brokerage's size (docs/scale.md):
# the refresher waits this many times as long as the last count took, if that is longer than
# EVERY, so counting never keeps more than a fifth of a core busy.
SHARE = 4
MAX_AGE = timedelta(minutes=5)  # an older snapshot is not shown: the board is counted live
KEEP = 2  # snapshots kept: a reader who took the previous one still finds its rows

# The board's dimensions and the overdue figure's names for them.
FIGURE_DIMENSION = {"branch": "branch", "group": "group", "person": "assignee", "process": "process", "step": "step"}
_COUNTS = ("open", "breached", "at_risk", "paused", "undated")
_LATE = ("overdue", "late_at_risk", "closed_late", "regulatory")


@dataclass
class LateWork:
    """The overdue figure beside the board: its rows by the board's row keys, and its total."""

    rows: dict[str, figures.TaskFigureRow]
    total: figures.TaskFigureRow


@dataclass
class BoardView:
    """Everything the board page shows, counted at ``board.as_of``."""

    board: boards.Board
    late: LateWork | None
    weeks: list[boards.Week]
    from_snapshot: bool


def figure_scope(actor: Actor, now: datetime) -> figures.Scope:
    """The overdue figure's scope on the board: the reader's (:func:`figures.scope_for`), this
    month to date, the period the page names ("closed late this month")."""
    local = now.astimezone(SHANGHAI).date()
    return figures.scope_for(actor, first=date(local.year, local.month, 1), now=now)


# -- building ------------------------------------------------------------------------------
def build(session: Session, *, now: datetime) -> BoardSnapshot:
    """Count the whole firm's board at ``now`` and keep it; drop all but the newest
    :data:`KEEP` snapshots. The caller commits."""
    started = time.perf_counter()
    local = now.astimezone(SHANGHAI).date()
    start, end = figures.period(date(local.year, local.month, 1), None, now=now)
    snapshot = BoardSnapshot(as_of=now, period_start=start, period_end=end, took_ms=0)
    session.add(snapshot)
    session.flush()
    cells: dict[tuple[str, str, str, str], dict[str, Any]] = {}

    def cell(dimension: str, branch: str | None, process: str | None, key: str | None) -> dict[str, Any]:
        at = (dimension, branch or "", process or "", key or "")
        found = cells.get(at)
        if found is None:
            found = cells[at] = {"snapshot_id": snapshot.id, "dimension": at[0], "branch_code": at[1],
                                 "process_key": at[2], "key": at[3], "name": None, "oldest_breach": None,
                                 "ageing": None, **dict.fromkeys(_COUNTS + _LATE, 0)}
        return found

    def add_counts(target: dict[str, Any], values: Iterable[Any]) -> None:
        *counts, oldest = values
        for name, value in zip(_COUNTS, counts, strict=True):
            target[name] += int(value or 0)
        if oldest is not None and (target["oldest_breach"] is None or oldest < target["oldest_breach"]):
            target["oldest_breach"] = oldest

    # The board: one read of the open tasks, by branch, process, holder and step, summed here
    # into each dimension's cells; the groups' need the candidate rows, a second read.
    branch, holder = func.coalesce(Task.branch_code, ""), func.coalesce(Task.assignee, "")
    fine = (select(branch, Task.process_key, holder, Task.element_id, func.max(Task.name), *boards.measures(now))
            .where(Task.status.in_(ACTIVE_TASK_STATES)).group_by(branch, Task.process_key, holder, Task.element_id))
    for b, process, person, element, name, *values in session.execute(fine):
        step = f"{process}/{element}"
        for dimension, key in (("branch", b), ("person", person), ("process", process), ("step", step)):
            target = cell(dimension, b, process, key)
            add_counts(target, values)
            if dimension == "step" and name and (target["name"] is None or name > target["name"]):
                target["name"] = name
    group = boards.key_of("group")
    by_group = boards.offered_to_groups(select(branch, Task.process_key, group, *boards.measures(now))
                                        .where(Task.status.in_(ACTIVE_TASK_STATES)))
    for b, process, key, *values in session.execute(by_group.group_by(branch, Task.process_key, group)):
        add_counts(cell("group", b, process, key), values)

    # The overdue figure beside the board, by its own rules (engine.brokerage.figures): a row
    # per task overdue or at risk now and per task closed late this month (a few hundred
    # thousand at most: a task's ageing is worked out once, not once per cut), with a row per
    # candidate group of the task (the figure counts a task in each group offered it).
    config = figures.load_config(session)
    rules = figures.task_rules(figures.Scope(start=start, end=end), now, config)
    ages = Ageing(calendar_store.CALENDARS.get(session, config.business_hours), config.ageing_buckets, now)
    spans = figures.bucket_spans(config.ageing_buckets)
    stopped = type_coerce(rules.clock, UTCDateTime())
    columns = (Task.id, Task.branch_code, Task.process_key, Task.assignee, Task.element_id, TaskCandidate.group_key)
    late = (select(*columns, case((rules.overdue, 1), else_=0), case((rules.at_risk, 1), else_=0),
                   case((and_(rules.overdue, rules.regulatory), 1), else_=0), literal(0), Task.due_at, stopped)
            .outerjoin(SlaPolicy, SlaPolicy.id == Task.sla_policy_id)
            .where(rules.maybe, or_(rules.overdue, rules.at_risk)))
    closed = select(*columns, literal(0), literal(0), literal(0), literal(1), Task.due_at, Task.due_at).where(
        rules.closed_late, Task.due_at.is_not(None))
    seen: set[int] = set()
    for stmt in (late, closed):
        stmt = stmt.outerjoin(TaskCandidate, TaskCandidate.task_id == Task.id)
        for task_id, b, process, person, element, group_key, overdue, at_risk, regulatory, closed_late, due, clock in (
                session.execute(stmt)):
            bucket = ages.bucket(due, clock) if overdue else None
            keys = [("group", group_key)]
            if task_id not in seen:  # its other rows are its other groups
                seen.add(task_id)
                keys += [("branch", b), ("person", person), ("process", process), ("step", f"{process}/{element}")]
            for dimension, key in keys:
                target = cell(dimension, b, process, key)
                target["overdue"] += overdue
                target["late_at_risk"] += at_risk
                target["regulatory"] += regulatory
                target["closed_late"] += closed_late
                if bucket is not None:
                    if target["ageing"] is None:
                        target["ageing"] = [0] * len(spans)
                    target["ageing"][bucket] += 1
    for target in cells.values():
        if target["ageing"] is not None:
            target["ageing"] = [[low, high, n] for (low, high), n in zip(spans, target["ageing"], strict=True)]
    if cells:
        session.execute(insert(BoardCell), list(cells.values()))
    weeks = boards.weekly(session, now=now, where=[], by_branch=True)
    week_rows = [{"snapshot_id": snapshot.id, "branch_code": b, "week_start": w.start, "breached": w.breached,
                  "completed": w.completed, "on_time": w.on_time} for b, found in weeks.items() for w in found]
    if week_rows:
        session.execute(insert(BoardWeek), week_rows)
    snapshot.took_ms = round((time.perf_counter() - started) * 1000)
    _prune(session)
    return snapshot


class Ageing:
    """Which ageing bucket an overdue task is in (:func:`figures.age_bucket`), for many tasks
    whose clocks stand at one moment ``at``: the working days from a due time to ``at`` only
    shrink as the due time moves later, so each bucket's edge is one due time, found once by
    halving (to the microsecond), and a task's bucket is how many edges its due time is not
    after. A task whose clock stopped elsewhere (paused) is worked out by itself."""

    def __init__(self, calendar: Any, edges: Sequence[int], at: datetime) -> None:
        self.calendar, self.edges, self.at = calendar, edges, at
        self.bounds = [self._latest_older_than(edge) for edge in edges]

    def bucket(self, due: datetime, clock: datetime) -> int:
        if clock != self.at:
            return figures.age_bucket(self.calendar, self.edges, due, clock)
        return sum(1 for bound in self.bounds if due <= bound)

    def _older(self, due: datetime, edge: int) -> bool:
        return figures.age_bucket(self.calendar, [edge], due, self.at) == 1

    def _latest_older_than(self, edge: int) -> datetime:
        """The latest due time more than ``edge`` whole working days before ``at``."""
        span = timedelta(days=7 * (edge + 1) + 30)
        for _ in range(8):  # long holidays: look further back, up to about 35 years
            if self._older(self.at - span, edge):
                break
            span *= 2
        else:
            return self.at - span  # no working days on record back then: nothing that old
        low, high = self.at - span, self.at  # older at low, not at high
        while high - low > timedelta(microseconds=1):
            middle = low + (high - low) / 2
            low, high = (middle, high) if self._older(middle, edge) else (low, middle)
        return low


def _add_ageing(into: list[list[Any]] | None, more: list[list[Any]]) -> list[list[Any]]:
    """Overdue tasks per ageing bucket, added bucket by bucket ([from, to, count] each)."""
    if into is None:
        return [list(b) for b in more]
    return [[low, high, n + m[2]] for (low, high, n), m in zip(into, more, strict=True)]


def _prune(session: Session) -> None:
    kept = select(BoardSnapshot.id).order_by(BoardSnapshot.as_of.desc(), BoardSnapshot.id.desc()).limit(KEEP)
    old = list(session.execute(select(BoardSnapshot.id).where(BoardSnapshot.id.not_in(kept))).scalars())
    if old:
        session.execute(delete(BoardCell).where(BoardCell.snapshot_id.in_(old)))
        session.execute(delete(BoardWeek).where(BoardWeek.snapshot_id.in_(old)))
        session.execute(delete(BoardSnapshot).where(BoardSnapshot.id.in_(old)))


def latest(session: Session, *, now: datetime, max_age: timedelta = MAX_AGE) -> BoardSnapshot | None:
    """The newest snapshot taken at or before ``now`` and no older than ``max_age``."""
    found = session.execute(select(BoardSnapshot).where(BoardSnapshot.as_of <= now)
                            .order_by(BoardSnapshot.as_of.desc(), BoardSnapshot.id.desc()).limit(1)).scalar()
    return found if found is not None and now - found.as_of <= max_age else None


# -- reading -------------------------------------------------------------------------------
def view(session: Session, *, actor: Actor, by: str, now: datetime, process_key: str | None = None,
         with_figures: bool = True, max_age: timedelta = MAX_AGE) -> BoardView:
    """The board page's counts for ``actor``: from the latest snapshot when there is one young
    enough, else counted live at ``now``. ``with_figures``: the overdue figure and the trend
    as well (the page shows them; an export is the table alone)."""
    boards.require_supervisor(actor)
    boards.check_dimension(by)
    snapshot = latest(session, now=now, max_age=max_age)
    if snapshot is None:
        found = boards.board(session, actor=actor, by=by, now=now, process_key=process_key)
        if not with_figures:
            return BoardView(found, None, [], from_snapshot=False)
        return BoardView(found, live_late_work(session, actor=actor, by=by, now=now),
                         boards.trend(session, actor=actor, now=now), from_snapshot=False)
    # The tasks the reader may not see: taken out of the board's counts and of the trend's.
    recused = boards.recusing(session, actor)
    found = _board(session, snapshot, actor=actor, by=by, process_key=process_key, recused=recused)
    if not with_figures:
        return BoardView(found, None, [], from_snapshot=True)
    return BoardView(found, _late_work(session, snapshot, actor=actor, by=by),
                     _weeks(session, snapshot, actor=actor, recused=recused), from_snapshot=True)


def live_late_work(session: Session, *, actor: Actor, by: str, now: datetime) -> LateWork:
    """The overdue figure by the board's row keys, counted now: overdue work on regulatory
    deadlines, work closed late this month, and how long the overdue work has been overdue
    (the configured ageing buckets); the figure of ``GET /figures/overdue-tasks``."""
    dimension = FIGURE_DIMENSION[by]
    found = figures.overdue_tasks(session, scope=figure_scope(actor, now), by=[dimension], now=now,
                                  config=figures.load_config(session))

    def key(row: figures.TaskFigureRow) -> str:
        if by == "step":
            return f"{row.key.get('process') or ''}/{row.key.get('step') or ''}"
        return str(row.key.get(dimension) or "")

    return LateWork({key(row): row for row in found.rows}, found.total)


def _cells(snapshot: BoardSnapshot, dimension: str, branches: list[str] | None,
           process_key: str | None = None) -> list[Any]:
    where = [BoardCell.snapshot_id == snapshot.id, BoardCell.dimension == dimension]
    if branches is not None:
        where.append(BoardCell.branch_code.in_(branches))
    if process_key:
        where.append(BoardCell.process_key == process_key)
    return where


def _board_branches(actor: Actor) -> list[str] | None:
    """The cells of a branch supervisor's board: their branch's and those tied to none."""
    branch = tasks.supervised_branch(actor)
    return None if branch is None else [branch, ""]


def _board(session: Session, snapshot: BoardSnapshot, *, actor: Actor, by: str, process_key: str | None,
           recused: list[int]) -> boards.Board:
    branches = _board_branches(actor)
    sums = [func.sum(getattr(BoardCell, name)) for name in _COUNTS]
    stmt = (select(BoardCell.key, *sums, func.min(BoardCell.oldest_breach), func.max(BoardCell.name))
            .where(*_cells(snapshot, by, branches, process_key), BoardCell.open > 0).group_by(BoardCell.key))
    counted = {row[0]: (list(row[1:7]), row[7]) for row in session.execute(stmt)}
    # Take out what recuses the reader, counted live at the snapshot's moment.
    hidden = [Task.id.in_(recused), Task.status.in_(ACTIVE_TASK_STATES), *boards.in_branch_scope(actor)]
    taken_out = (boards.counted(session, by=by, now=snapshot.as_of, where=hidden, process_key=process_key)
                 if recused else [])
    recount: list[str] = []
    for row in taken_out:
        values, _ = counted.get(row.key, ([0] * 6, None))
        values[:5] = [max(0, v - d) for v, d in zip(values[:5], (row.open, row.breached, row.at_risk, row.paused,
                                                                 row.no_deadline), strict=True)]
        if row.oldest_breach is not None and values[5] is not None and row.oldest_breach <= values[5]:
            recount.append(row.key)  # the row's longest breach is hidden from the reader
    for key in recount:
        again = boards.counted(session, by=by, now=snapshot.as_of, process_key=process_key, only_key=key,
                               where=[Task.status.in_(ACTIVE_TASK_STATES), *boards.scoped(actor)])
        counted[key][0][5] = again[0].oldest_breach if again else None
    rows = boards.named(session, by, [(k, v) for k, (v, _) in counted.items() if v[0] > 0],
                        {k: name for k, (_, name) in counted.items()})
    if by != "group":
        return boards.Board(by, rows, boards.total_of(by, rows), snapshot.as_of)
    # A task offered to two groups is in both groups' rows: the total is the branches'.
    totals = session.execute(select(*sums).where(*_cells(snapshot, "branch", branches, process_key))).one()
    out = (boards.counted(session, by="branch", now=snapshot.as_of, where=hidden, process_key=process_key)
           if recused else [])
    less = [sum(getattr(r, name) for r in out) for name in ("open", "breached", "at_risk", "paused", "no_deadline")]
    oldest = [r.oldest_breach for r in rows if r.oldest_breach is not None]
    total = boards.row_of(by, "", "", [*(max(0, int(v or 0) - d) for v, d in zip(totals, less, strict=True)),
                                       min(oldest) if oldest else None])
    return boards.Board(by, rows, total, snapshot.as_of)


def _late_work(session: Session, snapshot: BoardSnapshot, *, actor: Actor, by: str) -> LateWork:
    """The overdue figure from the snapshot: not recusal-filtered, as the figure itself is
    not; a branch's reader sees their branch's (not the tasks tied to none, as the figure)."""
    scope = figure_scope(actor, snapshot.as_of)
    branches = [scope.branch] if scope.branch else None
    late = [BoardCell.overdue, BoardCell.late_at_risk, BoardCell.closed_late, BoardCell.regulatory]
    stmt = (select(BoardCell.key, *late, BoardCell.ageing)
            .where(*_cells(snapshot, by, branches), (BoardCell.overdue + BoardCell.late_at_risk
                                                      + BoardCell.closed_late) > 0))
    rows: dict[str, list[Any]] = {}
    for key, *values, ageing in session.execute(stmt):
        into = rows.setdefault(key, [0, 0, 0, 0, None])
        into[:4] = [a + int(b) for a, b in zip(into[:4], values, strict=True)]
        into[4] = _add_ageing(into[4], ageing) if ageing else into[4]
    # Every task is in exactly one branch cell: the total is theirs.
    total: list[Any] = [0, 0, 0, 0, None]
    for *values, ageing in session.execute(select(*late, BoardCell.ageing).where(*_cells(snapshot, "branch",
                                                                                        branches))):
        total[:4] = [a + int(b) for a, b in zip(total[:4], values, strict=True)]
        total[4] = _add_ageing(total[4], ageing) if ageing else total[4]
    empty = _empty_ageing(session)
    return LateWork({k: _figure_row(v, empty) for k, v in rows.items()}, _figure_row(total, empty))


def _empty_ageing(session: Session) -> list[list[Any]]:
    return [[low, high, 0] for low, high in figures.bucket_spans(figures.load_config(session).ageing_buckets)]


def _figure_row(values: list[Any], empty: list[list[Any]]) -> figures.TaskFigureRow:
    overdue, at_risk, closed_late, regulatory, ageing = values
    return figures.TaskFigureRow(key={}, overdue=overdue, at_risk=at_risk, closed_late=closed_late,
                                 regulatory_overdue=regulatory,
                                 ageing=[figures.Bucket(low, high, n) for low, high, n in ageing or empty])


def _weeks(session: Session, snapshot: BoardSnapshot, *, actor: Actor, recused: list[int]) -> list[boards.Week]:
    branches = _board_branches(actor)
    where = [BoardWeek.snapshot_id == snapshot.id, *([BoardWeek.branch_code.in_(branches)] if branches else [])]
    counted = {start: [int(b or 0), int(c or 0), int(t or 0)] for start, b, c, t in session.execute(
        select(BoardWeek.week_start, func.sum(BoardWeek.breached), func.sum(BoardWeek.completed),
               func.sum(BoardWeek.on_time)).where(*where).group_by(BoardWeek.week_start))}
    hidden = boards.weekly(session, now=snapshot.as_of, where=[Task.id.in_(recused), *boards.in_branch_scope(actor)]
                           ) if recused else {}
    less = {w.start: (w.breached, w.completed, w.on_time) for w in hidden.get("", [])}
    weeks = []
    for week in boards.week_starts(snapshot.as_of):
        values = counted.get(week.start, [0, 0, 0])
        minus = less.get(week.start, (0, 0, 0))
        weeks.append(boards.Week(week.start, *(max(0, v - m) for v, m in zip(values, minus, strict=True))))
    return weeks


# -- refreshing ----------------------------------------------------------------------------
class Refresher:
    """Counts a snapshot every :data:`EVERY` while the app (the embedded default) or a timer
    worker runs: one thread, which skips a round when another process counted recently."""

    def __init__(self, db: Any, now: Callable[[], datetime], *, every: timedelta = EVERY) -> None:
        self.db, self.now, self.every = db, now, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> BoardSnapshot | None:
        """Count one if the newest is older than the wait (less a tenth, for the sleep's
        drift); return it, or None when it was not due."""
        now = self.now()
        with self.db.transaction() as session:
            newest = session.execute(select(BoardSnapshot.as_of, BoardSnapshot.took_ms).where(
                BoardSnapshot.as_of <= now).order_by(BoardSnapshot.as_of.desc()).limit(1)).first()
            if newest is not None and now - newest.as_of < self.wait(newest.took_ms) * 0.9:
                return None
            snapshot = build(session, now=now)
        log.info("board snapshot counted in %d ms", snapshot.took_ms)
        return snapshot

    def wait(self, took_ms: int) -> timedelta:
        """Between two counts: ``every``, or :data:`SHARE` times as long as the last one took."""
        return max(self.every, timedelta(milliseconds=took_ms * SHARE))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bpm-board", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        backoff = self.every.total_seconds()
        while not self._stop.is_set():
            try:
                counted = self.run_once()
                backoff = self.every.total_seconds()
                wait = self.wait(counted.took_ms).total_seconds() if counted is not None else backoff
            except Exception as exc:  # noqa: BLE001 - database away: the board is counted live meanwhile
                log.warning("board snapshot failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc, backoff)
                wait, backoff = backoff, min(backoff * 2, 600.0)
            self._stop.wait(wait)

