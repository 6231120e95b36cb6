"""Server time of the worklist pages; run by ``make bench``.

The demo (``bpm demo load``: people, registry, diagrams, the nine open cases) in a database of
its own on the test server (``bench_pages``, migrated afresh), then, with ``--scale N``, N
more open tasks spread over the demo's branches, groups, processes and due dates, as a
brokerage's worth of work would be. Each page is requested through Flask's test client as a
signed-in person (no network, no browser: the server's own time), warm-up first, then timed;
it prints the median, p95 and max per page and persona. It never asserts on speed.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import create_engine, insert, text
from sqlalchemy.engine import make_url

from api import create_app
from engine.bootstrap import build_runtime
from engine.brokerage import demo, demo_cases
from engine.config import PROJECT_ROOT, Settings
from engine.db import Database
from engine.models import ProcessInstance, Task, TaskCandidate
from engine.schema import upgrade

TEST_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
# The audit trail is keyed on PostgreSQL, as in production: the figures include its HMACs.
BENCH_AUDIT_KEY = "bench-audit-key-not-secret-0123456789abcdef"
PERSONAS = {"s003": "call centre agent", "s101": "branch head (supervisor)", "s302": "counter clerk",
            "s002": "HQ call-centre supervisor"}
PAGES = {"inbox, mine": "/?tab=mine", "inbox, groups' queue": "/?tab=group", "inbox, all I supervise": "/?tab=team",
         "inbox, overdue filter": "/?tab=group&due=overdue", "notifications": "/notifications",
         # The supervisors' board (a supervisor's pages only: others get 403 and are skipped).
         "board, by branch": "/board", "board, by step": "/board?by=step",
         "board, CSV export": "/board?by=group&format=csv"}


def database(args: argparse.Namespace) -> str:
    url = make_url(args.database_url or TEST_SERVER).set(database="bench_pages")
    admin = create_engine(make_url(args.database_url or TEST_SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = 'bench_pages'")).first()
        if not exists:
            conn.execute(text("CREATE DATABASE bench_pages"))
    admin.dispose()
    fresh = create_engine(url)
    with fresh.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    fresh.dispose()
    rendered = url.render_as_string(hide_password=False)
    upgrade(rendered)
    return rendered


def add_tasks(db: Database, n: int) -> None:
    """N open tasks on as many running cases, over the demo's branches and groups: what the
    inbox queries meet at a brokerage's size (no workflow behind them: pages read the rows)."""
    groups = ["call_center_agent", "HZ01:counter_staff", "HZ01-G1", "HZ01-G2", "NB01:counter_staff", "SX01-G1",
              "SX01:counter_staff", "HZ01:branch_cs_director", "compliance"]
    branches = ["HZ01", "NB01", "SX01"]
    with db.transaction() as s:
        version = s.execute(text("SELECT id, process_key FROM bpm_process_version ORDER BY id LIMIT 1")).one()
        now = s.execute(text("SELECT now()")).scalar_one()
        instances = [{"process_version_id": version.id, "process_key": version.process_key,
                      "business_key": f"BENCH-{i:07d}", "status": "running", "client_id": None,
                      "branch_code": branches[i % 3], "state": b"", "projected": {}, "started_by": "bench",
                      "started_at": now, "updated_at": now, "audit_seq": 0, "audit_head": ""}
                     for i in range(n)]
        ids = s.execute(insert(ProcessInstance).returning(ProcessInstance.id), instances).scalars().all()
        rows = [{"task_uuid": str(uuid.uuid4()), "instance_id": instance_id, "process_key": version.process_key,
                 "element_id": "bench", "name": "压测 Bench", "lane": None,
                 "candidate_groups": [groups[i % len(groups)]],
                 "assignee": None, "status": "open", "priority": 50, "created_at": now,
                 "due_at": now + timedelta(hours=(i % 400) - 100), "at_risk_at": now + timedelta(hours=(i % 400) - 120),
                 "business_key": f"BENCH-{i:07d}", "branch_code": branches[i % 3], "kind": "bpmn"}
                for i, instance_id in enumerate(ids)]
        task_ids = s.execute(insert(Task).returning(Task.id), rows).scalars().all()
        s.execute(insert(TaskCandidate), [{"task_id": t, "group_key": r["candidate_groups"][0]}
                                          for t, r in zip(task_ids, rows, strict=True)])
    # As autovacuum would after such a load: the planner's estimates are of the new rows.
    with db.engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def signed_in(app: Any, username: str) -> Any:
    client = app.test_client()
    page = client.get("/login")
    token = re.search(rb'name="csrf_token" value="([^"]+)"', page.data).group(1).decode()
    answer = client.post("/login", data={"username": username, "password": "demo", "csrf_token": token})
    assert answer.status_code == 302, answer.data[:300]
    return client


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=0, help="open tasks to add to the demo's (default 0)")
    parser.add_argument("--runs", type=int, default=30, help="timed requests per page and persona (default 30)")
    parser.add_argument("--database-url", help="a PostgreSQL server (default: the test server)")
    args = parser.parse_args(argv)
    url = database(args)
    settings = Settings.from_env({"BPM_DATABASE_URL": url, "BPM_AUDIT_KEY": BENCH_AUDIT_KEY})
    db = Database(url, audit_key=settings.audit_key)
    rt = build_runtime(settings)
    with db.transaction() as s:
        demo.load(s, rt)
        demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")
    with db.transaction() as s:
        demo_cases.load_cases(s, rt, now=rt.now())
    if args.scale:
        add_tasks(db, args.scale)
    app = create_app(settings, runtime=rt, database=db)
    print(f"pages' server time: demo + {args.scale:,} open tasks, {args.runs} timed requests each "
          f"(PostgreSQL, Flask test client; targets: inbox <= 100 ms, board <= 200 ms firm-wide)")
    print(f"{'page':28} {'persona':28} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for username, who in PERSONAS.items():
        client = signed_in(app, username)
        for name, path in PAGES.items():
            if client.get(path).status_code != 200:
                continue  # not this persona's page (the supervisor's tab)
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200
            times.sort()
            p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
            print(f"{name:28} {who:28} {statistics.median(times):10.1f} {p95:8.1f} {times[-1]:8.1f}")
    db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
