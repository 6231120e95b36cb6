"""The inbox's and the board's numbers against a brute-force recount, on generated data.

The inbox reads each "who may see it" condition as a branch of a UNION, the queues through
the candidate rows still active (kept so by a trigger on the task's status), and the board
counts in the database: all three are checked here against the product's own per-task rules
(:func:`tasks.can_see`, :func:`sla_clock.state`) applied to every task in Python, on a few
hundred tasks generated with every combination that matters (branch or none, one or two
candidate groups, claimed, delegated, completed, cancelled, paused, breached, at risk,
undated, recused, recused case-wide), on PostgreSQL and SQLite.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select, update

from engine.access.identity import Actor
from engine.brokerage import board_snapshot
from engine.models import (
    ACTIVE_TASK_STATES,
    BoardCell,
    BoardSnapshot,
    ProcessInstance,
    ProcessVersion,
    Task,
    TaskCandidate,
    TaskExclusion,
    TaskStatus,
)
from engine.process import board as boards
from engine.process import tasks
from engine.sla import clock as sla_clock

# On both stores: the SQLite default keeps the same index branches and trigger.
pytestmark = pytest.mark.sqlite

N = 360
BRANCHES = ["HZ01", "NB02", None]
CANDIDATES = [["clerks"], ["managers"], ["clerks", "managers"], ["compliance"], ["ningbo_clerks"],
              ["call_center_agent"]]
ASSIGNEES = [None, None, "li", "wang", "chen"]

ACTORS = {
    "li": Actor(username="li", groups=frozenset({"clerks"}), branch_code="HZ01"),
    "wang": Actor(username="wang", groups=frozenset({"managers"}), branch_code="HZ01"),
    "chen": Actor(username="chen", groups=frozenset({"ningbo_clerks"}), branch_code="NB02"),
    "boss": Actor(username="boss", groups=frozenset({"supervisor"}), branch_code="HZ01"),
    "hq": Actor(username="hq", groups=frozenset({"supervisor", "call_center_agent"}), branch_code=None),
    "officer": Actor(username="officer", groups=frozenset({"compliance", "clerks"}), branch_code="HZ01"),
    "agent": Actor(username="agent", groups=frozenset({"call_center_agent"}), branch_code=None),
}


def generate(db: Any, rt: Any) -> None:
    """N tasks on N / 3 cases, each property cycling at its own period: every combination
    turns up. Tasks are written open and then closed by an UPDATE of their status, as the
    engine closes them (the trigger must mark their candidate rows inactive)."""
    now = rt.now()
    with db.transaction() as s:
        version = s.execute(select(ProcessVersion.id, ProcessVersion.process_key).limit(1)).one()
        instance_ids = s.execute(insert(ProcessInstance).returning(ProcessInstance.id), [
            {"process_version_id": version.id, "process_key": version.process_key, "business_key": f"GEN-{k:04d}",
             "status": "running", "branch_code": BRANCHES[k % 3], "state": b"", "projected": {},
             "started_by": "gen", "started_at": now, "updated_at": now, "audit_seq": 0, "audit_head": ""}
            for k in range(N // 3)]).scalars().all()
        rows = []
        for i in range(N):
            assignee = ASSIGNEES[i % 5]
            due = None if i % 9 == 0 else now + timedelta(hours=i % 13 - 6)
            excluded = ["user:boss"] if i % 19 == 4 else ["group:clerks"] if i % 29 == 6 else None
            rows.append({
                "task_uuid": str(uuid.uuid4()), "instance_id": instance_ids[i // 3], "process_key": version.process_key,
                "element_id": ["a", "b", "c"][i % 3], "name": ["甲", "乙", "丙"][i % 3],
                "candidate_groups": CANDIDATES[i % 6], "assignee": assignee,
                "owner": "li" if i % 17 == 3 and assignee not in (None, "li") else None,
                "status": TaskStatus.CLAIMED if assignee else TaskStatus.OPEN, "priority": 50 + (i % 3) * 10,
                "created_at": now - timedelta(minutes=i), "due_at": due,
                "at_risk_at": due - timedelta(hours=2) if due else None,
                "breached_at": (now - timedelta(hours=1) if i % 23 == 0 else
                                due if due and i % 4 == 0 and due < now else None),
                "sla_paused_at": now - timedelta(minutes=30) if i % 10 == 5 and due else None,
                "business_key": f"GEN-{i // 3:04d}", "branch_code": BRANCHES[(i // 3) % 3], "kind": "bpmn",
                "sla_paused_seconds": 0, "calendar_incomplete": False, "excluded": excluded})
        task_ids = s.execute(insert(Task).returning(Task.id), rows).scalars().all()
        s.execute(insert(TaskCandidate), [{"task_id": t, "group_key": g}
                                          for t, r in zip(task_ids, rows, strict=True) for g in r["candidate_groups"]])
        exclusions = [{"task_id": t, "principal": p, "case_wide": False}
                      for t, r in zip(task_ids, rows, strict=True) for p in r["excluded"] or []]
        # One case recuses the HQ supervisor case-wide (a complaint about them): none of its
        # three tasks exists for them.
        exclusions.append({"task_id": task_ids[30], "principal": "user:hq", "case_wide": True})
        s.execute(insert(TaskExclusion), exclusions)
        for i, task_id in enumerate(task_ids):
            if i % 7 == 0:
                # Completing claims: whoever completed it holds it.
                done_by = ASSIGNEES[i % 5] or "li"
                s.execute(update(Task).where(Task.id == task_id).values(
                    status=TaskStatus.COMPLETED, completed_at=now, completed_by=done_by, assignee=done_by))
            elif i % 11 == 0:
                s.execute(update(Task).where(Task.id == task_id).values(status=TaskStatus.CANCELLED, completed_at=now))


def everything(db: Any) -> tuple[list[Task], set[int]]:
    """Every task, and the cases recusing ``hq`` case-wide."""
    with db.transaction() as s:
        found = list(s.execute(select(Task).order_by(Task.id)).scalars())
        case_wide = set(s.execute(select(Task.instance_id).join(TaskExclusion, TaskExclusion.task_id == Task.id)
                                  .where(TaskExclusion.case_wide.is_(True))).scalars())
        s.expunge_all()
    return found, case_wide


def hidden(task: Task, actor: Actor, case_wide: set[int]) -> bool:
    return actor.username == "hq" and task.instance_id in case_wide


def expected_inbox(found: list[Task], case_wide: set[int], actor: Actor, query: tasks.InboxQuery,
                   now: Any) -> list[int]:
    """The tasks the query should list, in its order, by the per-task rules."""
    keep = []
    for t in found:
        if t.status not in query.status or hidden(t, actor, case_wide) or not tasks.can_see(t, actor):
            continue
        if query.assignee_me and t.assignee != actor.username:
            continue
        if query.candidate_me and (t.assignee is not None or tasks.is_excluded(t, actor)
                                   or not tasks._is_candidate(t, actor)):
            continue
        if query.overdue and not (t.due_at is not None and t.due_at < now):
            continue
        if query.at_risk and not (t.due_at is not None and t.due_at >= now and t.at_risk_at is not None
                                  and t.at_risk_at <= now):
            continue
        if query.due_within is not None and not (t.due_at is not None and now <= t.due_at < now + query.due_within):
            continue
        if query.group and query.group not in (t.candidate_groups or []):
            continue
        if query.branch and t.branch_code != query.branch:
            continue
        if query.assignee and t.assignee != query.assignee:
            continue
        keep.append(t)
    far = now + timedelta(days=36500)
    if query.sort == "due":
        keep.sort(key=lambda t: (t.due_at is None, t.due_at or far, -t.priority, t.id))
    elif query.sort == "priority":
        keep.sort(key=lambda t: (-t.priority, t.due_at is None, t.due_at or far, t.id))
    else:
        keep.sort(key=lambda t: (-t.created_at.timestamp(), -t.id))
    return [t.id for t in keep]


QUERIES = {
    "default": tasks.InboxQuery(),
    "mine": tasks.InboxQuery(assignee_me=True),
    "my groups": tasks.InboxQuery(candidate_me=True),
    "overdue": tasks.InboxQuery(overdue=True),
    "my groups at risk": tasks.InboxQuery(candidate_me=True, at_risk=True),
    "due within 3 h": tasks.InboxQuery(due_within=timedelta(hours=3)),
    "group clerks": tasks.InboxQuery(group="clerks"),
    "branch HZ01 by priority": tasks.InboxQuery(branch="HZ01", sort="priority"),
    "held by wang, newest": tasks.InboxQuery(assignee="wang", sort="created"),
    "completed too": tasks.InboxQuery(status=("open", "claimed", "completed")),
    # A firm-wide group's queue is read from its candidate rows in the list's order.
    "my groups by priority": tasks.InboxQuery(candidate_me=True, sort="priority"),
    "my groups overdue by priority": tasks.InboxQuery(candidate_me=True, overdue=True, sort="priority"),
    "my groups due within 3 h": tasks.InboxQuery(candidate_me=True, due_within=timedelta(hours=3)),
    "my groups, newest": tasks.InboxQuery(candidate_me=True, sort="created"),
    "default by priority": tasks.InboxQuery(sort="priority"),
}


@pytest.mark.parametrize("who", sorted(ACTORS))
def test_inbox_lists_and_counts_equal_a_recount(db: Any, rt: Any, review: str, who: str) -> None:
    generate(db, rt)
    found, case_wide = everything(db)
    actor, now = ACTORS[who], rt.now()
    for name, query in QUERIES.items():
        want = expected_inbox(found, case_wide, actor, query, now)
        with db.transaction() as s:
            every = [t.id for batch in tasks.each(s, actor=actor, query=query, now=now) for t in batch]
            page, total = tasks.inbox(s, actor=actor, query=replace(query, limit=7, offset=3), now=now)
            capped = tasks.count(s, actor=actor, query=query, now=now, cap=5)
            exact = tasks.count(s, actor=actor, query=query, now=now, cap=10_000)
        assert every == want, name
        assert [t.id for t in page] == want[3:10], name
        assert total == len(want), name
        assert (capped, exact) == (min(5, len(want)), len(want)), name
    # The data reaches every branch of the rule: the recount is not of empty lists.
    assert expected_inbox(found, case_wide, actor, QUERIES["default"], now)


def test_a_closed_task_leaves_its_groups_queues(db: Any, rt: Any, review: str) -> None:
    """The trigger: completing or cancelling a task marks its candidate rows inactive, and
    re-opening one (an escalation handed back) marks them active again."""
    generate(db, rt)
    with db.transaction() as s:
        rows = s.execute(select(Task.status, TaskCandidate.active, Task.id)
                         .join(TaskCandidate, TaskCandidate.task_id == Task.id)).all()
    assert {(status in ACTIVE_TASK_STATES, bool(active)) for status, active, _ in rows} == {(True, True),
                                                                                            (False, False)}
    closed = next(task_id for status, _, task_id in rows if status == TaskStatus.COMPLETED)
    with db.transaction() as s:
        s.execute(update(Task).where(Task.id == closed).values(status=TaskStatus.OPEN))
    with db.transaction() as s:
        assert set(s.execute(select(TaskCandidate.active).where(TaskCandidate.task_id == closed)).scalars()) == {True}


def test_a_queues_order_follows_its_tasks_due_dates_and_priorities(db: Any, rt: Any, review: str) -> None:
    """The trigger keeps each open task's due date and priority on its candidate rows (a row
    written without them takes them from its task), so a queue read from them lists the tasks
    in the order a recount gives, after an SLA recompute or an escalation changed them."""
    generate(db, rt)

    def pairs(s: Any) -> set[tuple[bool, bool]]:
        rows = s.execute(select(Task.priority, Task.due_at, TaskCandidate.priority, TaskCandidate.due_at)
                         .join(TaskCandidate, TaskCandidate.task_id == Task.id)
                         .where(TaskCandidate.active.is_(True))).all()
        return {(tp == cp, td == cd) for tp, td, cp, cd in rows}

    with db.transaction() as s:
        assert pairs(s) == {(True, True)}
        queued = s.execute(select(Task.id).join(TaskCandidate, TaskCandidate.task_id == Task.id)
                           .where(TaskCandidate.group_key == "call_center_agent", TaskCandidate.active.is_(True),
                                  Task.assignee.is_(None)).order_by(Task.id)).scalars().all()
        assert len(queued) >= 4
        # The last of the queue becomes the most urgent; the first loses its deadline.
        s.execute(update(Task).where(Task.id == queued[-1]).values(priority=99, due_at=rt.now() - timedelta(hours=9)))
        s.execute(update(Task).where(Task.id == queued[0]).values(due_at=None, priority=1))
    with db.transaction() as s:
        assert pairs(s) == {(True, True)}
    found, case_wide = everything(db)
    agent, now = ACTORS["agent"], rt.now()
    for sort in ("due", "priority"):
        query = tasks.InboxQuery(candidate_me=True, sort=sort)
        want = expected_inbox(found, case_wide, agent, query, now)
        with db.transaction() as s:
            page, _ = tasks.inbox(s, actor=agent, query=replace(query, limit=3), now=now)
        assert [t.id for t in page] == want[:3], sort
        assert page[0].id == queued[-1], sort
        assert want[-1] == queued[0], sort


_STATE_COLUMN = {"on_track": "on_track", "at_risk": "at_risk", "breached": "breached", "paused": "paused",
                 "none": "no_deadline"}


def expected_board(found: list[Task], case_wide: set[int], actor: Actor, by: str, now: Any) -> dict[str, Counter[str]]:
    branch = tasks.supervised_branch(actor)
    rows: dict[str, Counter[str]] = defaultdict(Counter)
    for t in found:
        if (t.status not in ACTIVE_TASK_STATES or tasks.is_excluded(t, actor) or hidden(t, actor, case_wide)
                or (branch is not None and t.branch_code not in (None, branch))):
            continue
        state, _ = sla_clock.state(t, now)
        if by == "group":
            keys = [""] if t.assignee else list(t.candidate_groups or [""])
        else:
            keys = [{"branch": t.branch_code or "", "person": t.assignee or "", "process": t.process_key,
                     "step": f"{t.process_key}/{t.element_id}"}[by]]
        for key in [*keys, "<total>"] if by != "group" else [*keys]:
            rows[key]["open"] += 1
            rows[key][_STATE_COLUMN[state]] += 1
        if by == "group":
            rows["<total>"]["open"] += 1
            rows["<total>"][_STATE_COLUMN[state]] += 1
    return rows


@pytest.mark.parametrize("who", ["boss", "hq"])
@pytest.mark.parametrize("by", boards.DIMENSIONS)
def test_board_counts_equal_a_recount(db: Any, rt: Any, review: str, who: str, by: str) -> None:
    generate(db, rt)
    found, case_wide = everything(db)
    actor, now = ACTORS[who], rt.now()
    with db.transaction() as s:
        board = boards.board(s, actor=actor, by=by, now=now)
    got = {row.key: Counter({k: v for k, v in (("open", row.open), ("on_track", row.on_track),
                                                ("at_risk", row.at_risk), ("breached", row.breached),
                                                ("paused", row.paused), ("no_deadline", row.no_deadline)) if v})
           for row in [*board.rows, replace(board.total, key="<total>")]}
    want = expected_board(found, case_wide, actor, by, now)
    assert got == {k: +v for k, v in want.items()}
    assert got["<total>"]["breached"] and got["<total>"]["paused"] and got["<total>"]["at_risk"]


def _counts(row: boards.BoardRow) -> tuple[Any, ...]:
    return (row.open, row.on_track, row.at_risk, row.breached, row.paused, row.no_deadline, row.oldest_breach)


@pytest.mark.parametrize("who", ["boss", "hq"])
@pytest.mark.parametrize("by", boards.DIMENSIONS)
def test_the_board_read_from_a_snapshot_equals_a_recount(db: Any, rt: Any, review: str, who: str, by: str) -> None:
    """A snapshot counts the whole firm once; the reader's board is its scope's cells less the
    tasks recusing the reader (``boss`` is recused from some, ``hq`` from a whole case): the
    same numbers, longest breaches included, as the live count and the task-by-task recount."""
    generate(db, rt)
    found, case_wide = everything(db)
    actor, now = ACTORS[who], rt.now()
    with db.transaction() as s:
        board_snapshot.build(s, now=now)
    with db.transaction() as s:
        shown = board_snapshot.view(s, actor=actor, by=by, now=now + timedelta(seconds=30), with_figures=False)
        live = boards.board(s, actor=actor, by=by, now=now)
    assert shown.from_snapshot and shown.board.as_of == now
    got = {row.key: Counter({k: v for k, v in (("open", row.open), ("on_track", row.on_track),
                                                ("at_risk", row.at_risk), ("breached", row.breached),
                                                ("paused", row.paused), ("no_deadline", row.no_deadline)) if v})
           for row in [*shown.board.rows, replace(shown.board.total, key="<total>")]}
    assert got == {k: +v for k, v in expected_board(found, case_wide, actor, by, now).items()}
    assert {r.key: _counts(r) for r in shown.board.rows} == {r.key: _counts(r) for r in live.rows}
    assert [r.key for r in shown.board.rows] == [r.key for r in live.rows]  # the board's order
    assert _counts(shown.board.total) == _counts(live.total)
    assert [r.name for r in shown.board.rows] == [r.name for r in live.rows]


def test_a_longest_breach_that_recuses_the_reader_is_not_theirs_in_a_snapshot(db: Any, rt: Any, review: str) -> None:
    """The longest-breached task of a row recuses the branch head: their row shows the next
    longest, as the live count does; a reader it does not recuse sees it."""
    generate(db, rt)
    now = rt.now()
    with db.transaction() as s:
        hidden_task = s.execute(select(Task).join(TaskExclusion, TaskExclusion.task_id == Task.id).where(
            TaskExclusion.principal == "user:boss", Task.status.in_(ACTIVE_TASK_STATES),
            Task.sla_paused_at.is_(None)).order_by(Task.id).limit(1)).scalar_one()
        hidden_task.due_at = now - timedelta(days=30)  # longer breached than any other task
        hidden_task.branch_code = "HZ01"
        board_snapshot.build(s, now=now)
    for who, sees_it in (("boss", False), ("hq", True)):
        with db.transaction() as s:
            shown = board_snapshot.view(s, actor=ACTORS[who], by="branch", now=now, with_figures=False).board
            live = boards.board(s, actor=ACTORS[who], by="branch", now=now)
        row = next(r for r in shown.rows if r.key == "HZ01")
        assert (row.oldest_breach == now - timedelta(days=30)) is sees_it
        assert row.oldest_breach == next(r for r in live.rows if r.key == "HZ01").oldest_breach


@pytest.mark.parametrize("who", ["boss", "hq"])
@pytest.mark.parametrize("by", boards.DIMENSIONS)
def test_the_overdue_figure_and_trend_read_from_a_snapshot_equal_the_live_ones(db: Any, rt: Any, review: str,
                                                                                who: str, by: str) -> None:
    generate(db, rt)
    actor, now = ACTORS[who], rt.now()
    with db.transaction() as s:
        board_snapshot.build(s, now=now)
    with db.transaction() as s:
        shown = board_snapshot.view(s, actor=actor, by=by, now=now)
        late = board_snapshot.live_late_work(s, actor=actor, by=by, now=now)
        weeks = boards.trend(s, actor=actor, now=now)
    assert shown.from_snapshot and shown.late is not None

    def figure(row: Any) -> tuple[Any, ...]:
        return (row.overdue, row.at_risk, row.closed_late, row.regulatory_overdue,
                [(b.from_days, b.to_days, b.count) for b in row.ageing])

    assert {k: figure(r) for k, r in shown.late.rows.items()} == {k: figure(r) for k, r in late.rows.items()}
    assert figure(shown.late.total) == figure(late.total)
    assert late.total.overdue and late.total.closed_late  # the generated data has both
    assert shown.weeks == weeks
    assert weeks[-1].completed and weeks[-1].breached


def test_a_stale_snapshot_is_not_shown_and_the_refresher_counts_every_minute(db: Any, rt: Any, review: str) -> None:
    generate(db, rt)
    now = rt.now()
    boss = ACTORS["boss"]
    refresher = board_snapshot.Refresher(db, lambda: clock[0])
    clock = [now]
    first = refresher.run_once()
    assert first is not None and first.as_of == now
    clock[0] = now + timedelta(seconds=20)
    assert refresher.run_once() is None  # counted 20 s ago: not due
    with db.transaction() as s:
        before = board_snapshot.view(s, actor=boss, by="branch", now=clock[0], with_figures=False)
        task = next(t for t in s.execute(select(Task).where(Task.status.in_(ACTIVE_TASK_STATES),
                                                            Task.branch_code == "HZ01").order_by(Task.id)).scalars()
                    if not t.excluded)
        task.status, task.completed_at = TaskStatus.COMPLETED, clock[0]
    with db.transaction() as s:
        still = board_snapshot.view(s, actor=boss, by="branch", now=clock[0], with_figures=False)
    # Until the next count the board is the snapshot's, as of the moment it shows.
    assert still.from_snapshot and still.board.as_of == now
    assert _counts(still.board.total) == _counts(before.board.total)
    clock[0] = now + timedelta(minutes=1)
    second = refresher.run_once()
    assert second is not None and second.as_of == clock[0]
    with db.transaction() as s:
        after = board_snapshot.view(s, actor=boss, by="branch", now=clock[0], with_figures=False)
        live = boards.board(s, actor=boss, by="branch", now=clock[0])
        late = board_snapshot.view(s, actor=boss, by="branch", now=clock[0] + board_snapshot.MAX_AGE
                                   + timedelta(seconds=1), with_figures=False)
    assert after.board.total.open == before.board.total.open - 1 == live.total.open
    assert not late.from_snapshot and late.board.as_of > clock[0]  # too old: counted live
    for minute in range(2, 2 + board_snapshot.KEEP + 1):
        clock[0] = now + timedelta(minutes=minute)
        refresher.run_once()
    with db.transaction() as s:
        kept = s.execute(select(BoardSnapshot.id)).scalars().all()
        cells = s.execute(select(func.count()).select_from(BoardCell)
                          .where(BoardCell.snapshot_id.not_in(kept))).scalar()
    assert len(kept) == board_snapshot.KEEP and cells == 0


def test_the_snapshot_tables_migrate_down_and_up_and_match_the_model(database_url: str, db: Any) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from engine.db import Base
    from engine.schema import alembic_config

    config = alembic_config(database_url)
    db.dispose()
    try:
        command.downgrade(config, "0024")  # the revision before the snapshot's tables
        assert not {"bpm_board_snapshot", "bpm_board_cell", "bpm_board_week"} & set(
            inspect(db.engine).get_table_names())
        assert "ix_task_completed_at" not in {i["name"] for i in inspect(db.engine).get_indexes("bpm_task")}
    finally:
        command.upgrade(config, "head")
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    mine = ("bpm_board", "ix_task_completed_at", "ix_task_exclusion_principal", "ix_task_completed_by",
            "claimed")
    assert [d for d in differences if any(name in repr(d) for name in mine)] == []


def test_the_snapshots_ageing_buckets_are_the_figures_for_every_due_time(db: Any, rt: Any) -> None:
    """The snapshot finds each ageing bucket's edge once (a due time) instead of counting the
    working days of every overdue task: for due times every 53 minutes over 40 days, weekends
    and nights included, and a clock stopped by a pause, the bucket is the figure's."""
    from engine.brokerage import figures
    from engine.sla import calendar_store

    now = rt.now()
    with db.transaction() as s:
        config = figures.load_config(s)
        calendar = calendar_store.CALENDARS.get(s, config.business_hours)
    edges = config.ageing_buckets
    ages = board_snapshot.Ageing(calendar, edges, now)
    paused = now - timedelta(days=3, hours=5)
    seen = Counter()
    for step in range(0, 40 * 24 * 60, 53):
        due = now - timedelta(minutes=step)
        bucket = ages.bucket(due, now)
        assert bucket == figures.age_bucket(calendar, edges, due, now), due
        seen[bucket] += 1
        if due < paused:
            assert ages.bucket(due, paused) == figures.age_bucket(calendar, edges, due, paused)
    assert sorted(seen) == list(range(len(edges) + 1))  # every bucket was reached
    for bound in ages.bounds:  # each edge to the microsecond
        assert ages.bucket(bound, now) > ages.bucket(bound + timedelta(microseconds=1), now)


def test_a_long_count_spaces_the_next_one_out(db: Any, rt: Any, review: str) -> None:
    """A count that took 30 s is followed by the next one after 2 minutes, not 1: counting
    keeps at most a fifth of a core busy however large the firm."""
    now = rt.now()
    clock = [now]
    refresher = board_snapshot.Refresher(db, lambda: clock[0])
    first = refresher.run_once()
    assert first is not None
    with db.transaction() as s:
        s.execute(update(BoardSnapshot).where(BoardSnapshot.id == first.id).values(took_ms=30_000))
    clock[0] = now + timedelta(seconds=61)
    assert refresher.run_once() is None
    clock[0] = now + timedelta(minutes=2)
    assert refresher.run_once() is not None


def test_a_claimed_task_leaves_its_groups_queue_and_comes_back_when_released(db: Any, rt: Any, review: str) -> None:
    """The candidate rows say whether their task is held (the trigger keeps ``claimed`` on
    every change of holder), and "my groups" reads the queue from them: a claim takes the task
    out of every candidate's queue, a release, a delegation to nobody, puts it back."""
    generate(db, rt)

    def claimed_flags(s: Any) -> set[bool]:
        rows = s.execute(select(Task.assignee, TaskCandidate.claimed)
                         .join(TaskCandidate, TaskCandidate.task_id == Task.id)
                         .where(TaskCandidate.active.is_(True))).all()
        return {(assignee is not None) == claimed for assignee, claimed in rows}

    agent, now = ACTORS["agent"], rt.now()
    query = tasks.InboxQuery(candidate_me=True, limit=500)
    with db.transaction() as s:
        assert claimed_flags(s) == {True}
        before = [t.id for t in tasks.inbox(s, actor=agent, query=query, now=now)[0]]
        first = before[0]
        # Claimed the way the engine claims: holder and status in one UPDATE.
        s.execute(update(Task).where(Task.id == first).values(assignee="someone", status=TaskStatus.CLAIMED))
    with db.transaction() as s:
        assert claimed_flags(s) == {True}
        assert first not in [t.id for t in tasks.inbox(s, actor=agent, query=query, now=now)[0]]
        # Handed to someone else (the status stays claimed): still out of the queue.
        s.execute(update(Task).where(Task.id == first).values(assignee="another"))
    with db.transaction() as s:
        assert claimed_flags(s) == {True}
        assert first not in [t.id for t in tasks.inbox(s, actor=agent, query=query, now=now)[0]]
        s.execute(update(Task).where(Task.id == first).values(assignee=None, status=TaskStatus.OPEN))
    with db.transaction() as s:
        assert claimed_flags(s) == {True}
        assert [t.id for t in tasks.inbox(s, actor=agent, query=query, now=now)[0]] == before


def test_watched_lists_the_open_steps_of_cases_done_a_step_of_within_half_a_year(db: Any, rt: Any, review: str) -> None:
    """已关注: the open steps, held by others or nobody, of running cases the person completed a
    step of in the last 180 days, none recusing them; a step done longer ago watches nothing."""
    from engine.process import worklist

    generate(db, rt)
    found, _ = everything(db)
    li, now = ACTORS["li"], rt.now()
    cases = {t.instance_id for t in found if t.completed_by == "li"}
    want = sorted((t for t in found if t.instance_id in cases and t.status in ACTIVE_TASK_STATES
                   and t.assignee != "li" and not tasks.is_excluded(t, li)),
                  key=lambda t: (t.due_at is None, t.due_at or now, t.id))
    assert want, "the generated data has such steps"

    def listed() -> list[int]:
        with db.transaction() as s:
            steps, total = worklist.watched(s, actor=li, now=now, limit=500)
        assert total == len(steps)
        return [t.id for t in steps]

    assert listed() == [t.id for t in want]
    for days, still in ((179, True), (181, False)):
        with db.transaction() as s:
            s.execute(update(Task).where(Task.completed_by == "li").values(completed_at=now - timedelta(days=days)))
        assert listed() == ([t.id for t in want] if still else [])


def test_the_refresher_counts_in_a_thread_of_its_own_until_stopped(db: Any, rt: Any, review: str) -> None:
    """What `bpm serve` and the timer workers start: it counts at once, then waits its minute,
    and stopping it wakes it from that wait."""
    import threading

    counted = threading.Event()

    class Told(board_snapshot.Refresher):
        def run_once(self) -> Any:
            found = super().run_once()
            counted.set()
            return found

    refresher = Told(db, rt.now)
    refresher.start()
    assert counted.wait(timeout=30)
    thread = refresher._thread
    assert thread is not None and (thread.name, thread.daemon) == ("bpm-board", True)
    refresher.stop()
    assert not thread.is_alive()
    with db.transaction() as s:
        assert board_snapshot.latest(s, now=rt.now()) is not None
