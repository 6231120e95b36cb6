"""The inbox and the board at a brokerage's size; run by ``make bench-scale``.

On the database bench/scale_data.py builds (and keeps): 1,000,000 open tasks, 5,000,000
completed cases with their history, 300 branches, 10,000 staff, 2,000 service groups. For each
persona (a firm-wide group member: a call-centre agent; a branch's counter clerk; a service
group's account manager; a branch head; the HQ call-centre supervisor) and each inbox tab and
filter, it times the engine's calls (what the page asks the engine for: the list's page with
its rows, and the tab badges' capped counts) and the page itself (Flask's test client, signed
in: the server's own time); then the board (engine and page, firm-wide and for a branch), a
drill-down list, and a CSV export of 100,000 rows, streamed, with the memory it took. It prints
p50/p95 per case against the issue's targets, and EXPLAIN (ANALYZE, BUFFERS) of the slowest
statement of every case over its target (``--plans all``: of every case). It never asserts
on speed.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import event, select, text

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import scale_data

# In the generated data a branch's open work is of one kind (bench/scale_data.py): B009's is its
# counter clerks' queue, B010's its service groups' queues, B012's tasks its clerks hold.
PERSONAS = {
    "u09001": "firm-wide group member (call-centre agent)",
    "u00309": "branch clerk (B009 counter)",
    "u03910": "group member (B010 account manager, SG1810)",
    "u00009": "branch head (B009)",
    "u09601": "HQ supervisor (call centre)",
}
SUPERVISORS = ("u00009", "u09601")
TARGET_TAB_ENGINE, TARGET_TAB_PAGE = 20.0, 50.0
TARGET_BOARD_FIRM, TARGET_BOARD_BRANCH, TARGET_DRILL = 200.0, 50.0, 50.0


@dataclass
class Case:
    name: str
    persona: str
    target: float | None
    times: list[float] = field(default_factory=list)
    statements: list[tuple[float, str, Any]] = field(default_factory=list)  # slowest first, one run's

    def p(self, q: float) -> float:
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


class Recorder:
    """Times each statement the engine sends during one call (to pick the slow one to EXPLAIN)."""

    def __init__(self, engine: Any) -> None:
        self.on = False
        self.found: list[tuple[float, str, Any]] = []
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        conn.info["bench_started"] = time.perf_counter()

    def _after(self, conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if self.on:
            self.found.append(((time.perf_counter() - conn.info["bench_started"]) * 1000, statement, parameters))

    @contextmanager
    def recording(self) -> Any:
        self.found, self.on = [], True
        try:
            yield self
        finally:
            self.on = False


def timed(case: Case, call: Callable[[], Any], runs: int, recorder: Recorder) -> Case:
    for _ in range(3):  # warm the caches and the prepared statements
        call()
    with recorder.recording() as rec:
        call()
    case.statements = sorted(rec.found, key=lambda s: -s[0])
    for _ in range(runs):
        started = time.perf_counter()
        call()
        case.times.append((time.perf_counter() - started) * 1000)
    return case


def show(case: Case) -> None:
    verdict = "" if case.target is None else ("ok" if case.p(0.95) <= case.target else f"OVER {case.target:g}")
    print(f"{case.name:44} {case.persona:44} {statistics.median(case.times):8.1f} {case.p(0.95):8.1f} "
          f"{max(case.times):8.1f}  {verdict}", flush=True)


def explain(db: Any, case: Case) -> None:
    if not case.statements:
        return
    ms, statement, parameters = case.statements[0]
    print(f"\n--- {case.name} / {case.persona}: slowest statement {ms:.1f} ms of {len(case.statements)}")
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        for (line,) in cursor.fetchall():
            print("    " + line)
        raw.rollback()
    finally:
        raw.close()


def signed_in(app: Any, username: str) -> Any:
    client = app.test_client()
    page = client.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()  # type: ignore[union-attr]
    answer = client.post("/login", data={"username": username, "password": "demo", "csrf_token": token})
    assert answer.status_code == 302, answer.data[:300]
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--server", help="a PostgreSQL server (default: the test server; the database is bpm_scale)")
    parser.add_argument("--runs", type=int, default=30, help="timed calls per case (default 30)")
    parser.add_argument("--plans", choices=("slow", "all", "none"), default="slow")
    parser.add_argument("--only", help="run only cases whose name contains this")
    parser.add_argument("--database", help="an already generated database of another size (default: build or reuse "
                                           f"{scale_data.DATABASE} at the issue's size)")
    parser.add_argument("--completed", type=int, default=scale_data.Size.completed_instances,
                        help="completed cases to generate (default 5,000,000)")
    args = parser.parse_args(argv)
    url = (scale_data.url_of(args.server, args.database) if args.database
           else scale_data.ensure(args.server, scale_data.Size(completed_instances=args.completed)))

    from api import create_app
    from engine.access.identity import actor_for, get_user
    from engine.bootstrap import build_runtime
    from engine.brokerage import board_snapshot as snapshots
    from engine.config import Settings
    from engine.db import Database
    from engine.process import board as boards
    from engine.process import tasks, worklist

    settings = Settings.from_env({"BPM_DATABASE_URL": url, "BPM_AUDIT_KEY": scale_data.AUDIT_KEY})
    db = Database(url, audit_key=settings.audit_key)
    rt = build_runtime(settings)
    app = create_app(settings, runtime=rt, database=db)
    recorder = Recorder(db.engine)
    now = rt.now()
    with db.transaction() as s:
        sizes = dict(s.execute(text("SELECT key, value FROM bench_scale_marker")).all())
    print(f"scale bench: {sizes.get('open_tasks', 0):,} open tasks, {sizes.get('completed_instances', 0):,} completed "
          f"cases ({sizes.get('rows:bpm_task', 0):,} task rows, {sizes.get('rows:bpm_audit_event', 0):,} audit events, "
          f"{sizes.get('bytes', 0) / 2**30:.1f} GiB); {args.runs} timed calls each")
    print(f"load average: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} cores")
    print(f"{'case':44} {'persona':44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    cases: list[Case] = []

    def run(name: str, persona: str, target: float | None, call: Callable[[], Any]) -> None:
        if args.only and args.only not in name:
            return
        case = timed(Case(name, PERSONAS.get(persona, persona), target), call, args.runs, recorder)
        show(case)
        cases.append(case)

    tabs: dict[str, tasks.InboxQuery] = {
        "mine": tasks.InboxQuery(assignee_me=True),
        "my groups": tasks.InboxQuery(candidate_me=True),
        "default (everything I may see)": tasks.InboxQuery(),
        "my groups, due within 24 h": tasks.InboxQuery(candidate_me=True, due_within=timedelta(hours=24)),
        "my groups, overdue": tasks.InboxQuery(candidate_me=True, overdue=True),
        "default, overdue": tasks.InboxQuery(overdue=True),
        "default, at risk": tasks.InboxQuery(at_risk=True),
        "default, due within 24 h": tasks.InboxQuery(due_within=timedelta(hours=24)),
        "default, by priority": tasks.InboxQuery(sort="priority"),
    }
    page_tabs = {"mine": "/?tab=mine", "my groups": "/?tab=group", "my groups, overdue": "/?tab=group&due=overdue",
                 "my groups, due today": "/?tab=group&due=today", "mine, at risk": "/?tab=mine&due=at_risk",
                 "watched": "/?tab=watched", "done": "/?tab=done"}
    supervisor_tabs = {"team": "/?tab=team", "team, overdue": "/?tab=team&due=overdue",
                       "team, at risk": "/?tab=team&due=at_risk", "team, due today": "/?tab=team&due=today"}
    for username in PERSONAS:
        with db.transaction() as s:
            person = actor_for(s, get_user(s, username))

        def listing(query: tasks.InboxQuery, person: Any = person) -> None:
            with db.transaction() as s:
                found, _ = tasks.inbox(s, actor=person, query=replace_limit(query), now=now, count_total=False)
                worklist.rows_of(s, found[:50], now=now)

        def badges(person: Any = person, supervisor: bool = username in SUPERVISORS) -> None:
            with db.transaction() as s:
                for query in (tasks.InboxQuery(assignee_me=True), tasks.InboxQuery(candidate_me=True),
                              *([tasks.InboxQuery()] if supervisor else [])):
                    tasks.count(s, actor=person, query=query, now=now, cap=1000)

        for name, query in tabs.items():
            run(f"engine: {name}", username, TARGET_TAB_ENGINE, lambda q=query: listing(q))
        run("engine: tab badges (capped counts)", username, TARGET_TAB_ENGINE, badges)

        def watched(person: Any = person) -> None:
            with db.transaction() as s:
                worklist.rows_of(s, worklist.watched(s, actor=person, now=now, limit=50)[0], now=now)

        def done(person: Any = person) -> None:
            with db.transaction() as s:
                worklist.rows_of(s, worklist.done(s, actor=person, now=now, limit=50)[0], now=now)

        run("engine: watched", username, TARGET_TAB_ENGINE, watched)
        run("engine: done", username, TARGET_TAB_ENGINE, done)
        client = signed_in(app, username)
        for name, path in {**page_tabs, **(supervisor_tabs if username in SUPERVISORS else {})}.items():
            run(f"page: {name}", username, TARGET_TAB_PAGE, lambda p=path, c=client: ok(c.get(p)))

    # The board: counting the whole firm once (what the refresher does every minute), then a
    # reader's board from that snapshot, in the engine and as the page (with the overdue figure
    # and the trend), beside the same counts made live over the open tasks.
    board_cases = ("engine: board by branch (snapshot, with figures)", "page: board")
    if not args.only or "board" in args.only or any(args.only in name for name in board_cases):
        took = []
        for _ in range(3):  # each a full count: seconds at this size
            with db.transaction() as s:
                took.append(snapshots.build(s, now=rt.now()).took_ms)
        print(f"{'board: count the whole firm (a snapshot)':44} {'the refresher, every minute':44} "
              f"{statistics.median(took):8.0f} {'':>8} {max(took):8.0f}  ({', '.join(f'{t:,}' for t in took)} ms)")
    for username, target in (("u09601", TARGET_BOARD_FIRM), ("u00009", TARGET_BOARD_BRANCH)):
        with db.transaction() as s:
            person = actor_for(s, get_user(s, username))
        for by in ("branch", "group", "person", "step"):
            def from_snapshot(by: str = by, person: Any = person) -> None:
                with db.transaction() as s:
                    shown = snapshots.view(s, actor=person, by=by, now=rt.now())
                    assert shown.from_snapshot, "the snapshot is older than board_snapshot.MAX_AGE"

            def live(by: str = by, person: Any = person) -> None:
                with db.transaction() as s:
                    boards.board(s, actor=person, by=by, now=now)
            run(f"engine: board by {by} (snapshot, with figures)", username, target, from_snapshot)
            run(f"engine: board by {by}, counted live", username, None, live)
        client = signed_in(app, username)
        run("page: board", username, target, lambda c=client: ok(c.get("/board")))
        run("page: board by group", username, target, lambda c=client: ok(c.get("/board?by=group")))
    hq = signed_in(app, "u09601")
    head = signed_in(app, "u00009")
    for name, client, path in (("drill-down: branch B009, overdue", hq, "/?tab=team&branch=B009&due=overdue"),
                               ("drill-down: group SG1810", hq, "/?tab=team&group=SG1810"),
                               ("drill-down: person u00312", hq, "/?tab=team&assignee=u00312"),
                               ("drill-down: B009 head, group B009 clerks", head,
                                "/?tab=team&group=B009%3Acounter_staff"),
                               ("drill-down: step callback/review", hq, "/?tab=team&process=callback&step=review")):
        run(f"page: {name}", "u09601" if client is hq else "u00009", TARGET_DRILL,
            lambda c=client, p=path: ok(c.get(p)))

    # The archive: one case completed years ago, found by its business key, with its steps
    # and its audit trail (what the case page reads), among all the history generated.
    with db.transaction() as s:
        person = actor_for(s, get_user(s, "u09601"))
        old = s.execute(text("SELECT business_key FROM bpm_process_instance WHERE business_key ~ '^H[0-9]{9}$' "
                             "ORDER BY ended_at LIMIT 1")).scalar()

    def archive(person: Any = person) -> None:
        from engine.models import Task
        from engine.process import instances

        with db.transaction() as s:
            case = worklist.readable_case(s, business_key=old, actor=person)
            events = instances.history(s, case.id, actor=person)
            steps = list(s.execute(select(Task).where(Task.instance_id == case.id)).scalars())
            assert events and steps

    if old is not None:
        run(f"archive: one old case ({old})", "u09601", TARGET_DRILL, archive)
    if not args.only or "export" in args.only:
        export(hq)
    if args.plans != "none":
        for case in cases:
            if args.plans == "all" or (case.target is not None and case.p(0.95) > case.target):
                explain(db, case)
    db.dispose()
    return 0


def replace_limit(query: Any) -> Any:
    from dataclasses import replace

    return replace(query, limit=51, offset=0)  # the page asks one row past its 50


def ok(response: Any) -> Any:
    assert response.status_code == 200, (response.status_code, response.data[:300])
    return response


def export(client: Any) -> None:
    """The HQ supervisor's drill-down to the call-centre queue (100,000 open tasks) as CSV,
    read a chunk at a time as a browser would: rows, bytes, time, and the memory it took."""
    path = "/?tab=team&group=call_center_agent&format=csv"
    for traced in (False, True):
        gc.collect()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if traced:
            tracemalloc.start()
        started = time.perf_counter()
        response = client.get(path, buffered=False)
        rows = size = 0
        for chunk in response.response:
            data = chunk if isinstance(chunk, bytes) else chunk.encode()
            rows += data.count(b"\n")
            size += len(data)
        response.close()
        elapsed = time.perf_counter() - started
        if traced:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            print(f"export CSV (traced): {rows - 1:,} rows, {size / 2**20:.1f} MiB; Python heap peak "
                  f"{peak / 2**20:.1f} MiB while streaming (the file is {size / 2**20:.1f} MiB: rows are not all held)")
        else:
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            print(f"export CSV: {rows - 1:,} rows, {size / 2**20:.1f} MiB in {elapsed:.1f} s "
                  f"({(rows - 1) / elapsed:,.0f} rows/s); peak RSS grew by {(rss_after - rss_before) / 1024:.1f} MiB")


if __name__ == "__main__":
    sys.exit(main())
