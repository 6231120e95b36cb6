"""A brokerage's worth of data in a database of its own (``bpm_scale``), for bench/scale.py.

Built once through the product's own migrations and tables, set-based (``INSERT … SELECT
generate_series``, never the ORM a row at a time), and kept: a marker table
(``bench_scale_marker``) records what was generated, and a later run with the same sizes
reuses it (``--rebuild`` starts again). What it holds, by default:

* the demo (its people, diagrams, clients and nine cases: people to sign in as);
* 300 branches (B001…B300), 2,000 service groups (SG0001…, six or seven per branch),
  10,000 staff (u00001…: 30 per branch — a head, 12 counter clerks, 15 account managers,
  2 back office — and 1,000 at headquarters: 600 call-centre agents, 50 call-centre
  supervisors, 200 in the complaint department, 100 compliance, 50 brokerage management),
  every staff member with the demo's password;
* 1,000,000 open tasks, each on a running case with its ``instance.started`` event: 100,000
  offered to the firm-wide ``call_center_agent`` group (a tenth of them claimed), 30,000 to the
  HQ complaint department, 20,000 to compliance, the rest a branch's (its counter clerks' group
  or a service group; about half of them claimed) — 1 % tied to no branch, 5 % without a due
  date, about one in six overdue, 1 % paused, one in a thousand recusing its branch's head;
* 5,000,000 completed cases with their history: two completed steps each (with their candidate
  rows, inactive) and six audit events each (started, claimed, completed, claimed, completed,
  case completed), spread over the last five years.

The audit events' hashes are placeholders (the chain is not verifiable): the bench reads the
trail, it does not verify it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

# This checkout's engine, whichever directory the script is started from.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DATABASE = "bpm_scale"
CHUNK = 250_000
AUDIT_KEY = "bench-audit-key-not-secret-0123456789abcdef"
OPEN_KEY, HISTORY_KEY = "^S[0-9]{8}$", "^H[0-9]{9}$"  # the generated cases' business keys


@dataclass(frozen=True)
class Size:
    branches: int = 300
    service_groups: int = 2000
    staff: int = 10_000
    open_tasks: int = 1_000_000
    completed_instances: int = 5_000_000


def url_of(server: str | None, database: str = DATABASE) -> str:
    return make_url(server or SERVER).set(database=database).render_as_string(hide_password=False)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure(server: str | None, size: Size, *, rebuild: bool = False, database: str = DATABASE) -> str:
    """The scale database, built unless it already holds ``size``; returns its URL."""
    admin = create_engine(make_url(server or SERVER), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if rebuild:
            conn.execute(text(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}).first():
            conn.execute(text(f"CREATE DATABASE {database}"))
    admin.dispose()
    url = url_of(server, database)
    from alembic.runtime.migration import MigrationContext

    from engine.schema import upgrade

    engine = create_engine(url)
    with engine.connect() as conn:
        before = MigrationContext.configure(conn).get_current_revision()
    upgrade(url)  # new migrations apply to a kept database too
    with engine.connect() as conn:
        after = MigrationContext.configure(conn).get_current_revision()
    if before not in (None, after):
        # A migration that rewrote rows (0024 fills the candidate rows' order) leaves them
        # without the visibility map the index-only scans need, and without statistics: the
        # bench would measure that, not the product. Autovacuum gets there in time.
        log(f"{database}: migrated {before} -> {after}; VACUUM (ANALYZE) of the task tables")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in ("bpm_task", "bpm_task_candidate"):
                conn.execute(text(f"VACUUM (ANALYZE) {table}"))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE IF NOT EXISTS bench_scale_marker (key text PRIMARY KEY, value bigint NOT NULL,"
                          " at timestamptz NOT NULL DEFAULT now())"))
        done = dict(conn.execute(text("SELECT key, value FROM bench_scale_marker")).all())
    wanted = asdict(size)
    if done.get("complete") == 1 and all(done.get(k) == v for k, v in wanted.items()):
        log(f"reusing {database}: {', '.join(f'{k} {v:,}' for k, v in wanted.items())}")
        engine.dispose()
        return url
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM bench_scale_marker"))
        opened = conn.execute(text(f"SELECT count(*) FROM bpm_process_instance WHERE business_key ~ '{OPEN_KEY}'"))\
            .scalar_one()
    engine.dispose()
    if opened and opened == size.open_tasks:
        # People and open work are there; history is written a committed chunk at a time, so
        # a build stopped part-way (or built to a smaller size) goes on from its last chunk.
        log(f"{database}: going on with the history")
        finish(url, size)
        return url
    if opened:
        log(f"{database} was left half-built: building it again")
        return ensure(server, size, rebuild=True, database=database)
    build(url, size)
    return url


def build(url: str, size: Size) -> None:
    from engine.bootstrap import build_runtime
    from engine.brokerage import demo, demo_cases
    from engine.config import PROJECT_ROOT, Settings
    from engine.db import Database

    settings = Settings.from_env({"BPM_DATABASE_URL": url, "BPM_AUDIT_KEY": AUDIT_KEY})
    db = Database(url, audit_key=settings.audit_key)
    rt = build_runtime(settings)
    log("demo: people, diagrams, cases")
    with db.transaction() as s:
        demo.load(s, rt)
        demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")
    with db.transaction() as s:
        demo_cases.load_cases(s, rt, now=rt.now())
    db.dispose()
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SET synchronous_commit = off"))
        conn.execute(text("SET maintenance_work_mem = '512MB'"))
        conn.commit()
        people(conn, size)
        conn.commit()
        log("people done")
        open_work(conn, size)
        conn.commit()
    engine.dispose()
    finish(url, size)


def finish(url: str, size: Size) -> None:
    """The completed cases (going on from the last committed chunk), then the statistics."""
    started = time.perf_counter()
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SET synchronous_commit = off"))
        history(conn, size)
        size = replace(size, completed_instances=int(conn.execute(text(
            f"SELECT count(*) FROM bpm_process_instance WHERE business_key ~ '{HISTORY_KEY}'")).scalar_one()))
        log("ANALYZE, VACUUM of the task tables (the visibility map lets the inbox read index-only)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM (ANALYZE) bpm_task_candidate"))
        conn.execute(text("VACUUM (ANALYZE) bpm_task"))
        conn.execute(text("ANALYZE"))
    with engine.begin() as conn:
        for key, value in {**asdict(size), "complete": 1}.items():
            conn.execute(text("INSERT INTO bench_scale_marker (key, value) VALUES (:k, :v)"), {"k": key, "v": value})
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in (
            "bpm_user", "bpm_group", "bpm_service_group", "bpm_branch", "bpm_process_instance", "bpm_task",
            "bpm_task_candidate", "bpm_audit_event")}
        for table, n in counts.items():
            conn.execute(text("INSERT INTO bench_scale_marker (key, value) VALUES (:k, :v)"), {"k": f"rows:{table}",
                                                                                               "v": n})
        bytes_ = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
        conn.execute(text("INSERT INTO bench_scale_marker (key, value) VALUES ('bytes', :v)"), {"v": bytes_})
    engine.dispose()
    log(f"built in {time.perf_counter() - started:,.0f} s: {counts}, {bytes_ / 2**30:.1f} GiB")


def _next_id(conn: Connection, table: str) -> int:
    return int(conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()) + 1000


def _bump(conn: Connection, table: str) -> None:
    conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))


# A branch's number b (1..300) as its code, and its k-th service group (b + 300 k).
BRANCH = "'B' || lpad(({b})::text, 3, '0')"
SG = "'SG' || lpad(({g})::text, 4, '0')"
USER = "'u' || lpad(({u})::text, 5, '0')"


def people(conn: Connection, size: Size) -> None:
    from engine.access.passwords import hash_password
    from engine.brokerage.demo import PASSWORD

    nb, ng = size.branches, size.service_groups
    x: dict[str, Any] = {"nb": nb, "ng": ng, "hash": hash_password(PASSWORD)}
    conn.execute(text(f"""INSERT INTO bpm_branch (code, name, city, created_at, updated_at)
        SELECT {BRANCH.format(b='b')}, '某某证券第' || b || '营业部', '城市' || (b % 40), now(), now()
        FROM generate_series(1, :nb) b"""), x)
    role_kind = "role"
    for role in ("counter_staff", "account_manager", "branch_head", "back_office"):
        conn.execute(text(f"""INSERT INTO bpm_group (key, name, kind)
            SELECT {BRANCH.format(b='b')} || ':' || '{role}', {BRANCH.format(b='b')} || ' {role}', '{role_kind}'
            FROM generate_series(1, :nb) b"""), x)
    conn.execute(text(f"""INSERT INTO bpm_group (key, name, kind)
        SELECT {SG.format(g='g')}, '服务小组 ' || {SG.format(g='g')}, 'service_group'
        FROM generate_series(1, :ng) g"""), x)
    conn.execute(text(f"""INSERT INTO bpm_service_group (key, group_id, branch_code, created_at, updated_at)
        SELECT g.key, g.id, {BRANCH.format(b="((substr(g.key, 3)::int - 1) % :nb) + 1")}, now(), now()
        FROM bpm_group g WHERE g.key ~ '^SG[0-9]{{4}}$'"""), x)
    branch_staff = nb * 30
    # u <= 30 nb: branch b = (u-1) % nb + 1, rank r = (u-1) / nb: 0 head, 1-12 clerks, 13-27
    # account managers (each in service group b + nb (r % groups of b)), 28-29 back office.
    # Above that, headquarters.
    conn.execute(text(f"""CREATE TEMP TABLE scale_staff AS
        SELECT u, {USER.format(u='u')} AS username,
               CASE WHEN u <= {branch_staff} THEN (u - 1) % :nb + 1 END AS b,
               CASE WHEN u <= {branch_staff} THEN (u - 1) / :nb END AS r
        FROM generate_series(1, :staff) u"""), {**x, "staff": size.staff})
    conn.execute(text("ALTER TABLE scale_staff ADD COLUMN roles text[]"))
    conn.execute(text(f"""UPDATE scale_staff SET roles = CASE
          WHEN b IS NOT NULL AND r = 0 THEN ARRAY['branch_head', 'supervisor']
          WHEN b IS NOT NULL AND r <= 12 THEN ARRAY['counter_staff']
          WHEN b IS NOT NULL AND r <= 27 THEN ARRAY['account_manager']
          WHEN b IS NOT NULL THEN ARRAY['back_office']
          WHEN u - {branch_staff} <= 600 THEN ARRAY['call_center_agent']
          WHEN u - {branch_staff} <= 650 THEN ARRAY['call_center_supervisor', 'supervisor']
          WHEN u - {branch_staff} <= 850 THEN ARRAY['hq_complaint_dept']
          WHEN u - {branch_staff} <= 950 THEN ARRAY['compliance']
          ELSE ARRAY['hq_brokerage_mgmt', 'supervisor'] END"""))
    conn.execute(text(f"""INSERT INTO bpm_user (username, display_name, password_hash, branch_code, active, created_at)
        SELECT username, '员工' || lpad(u::text, 5, '0'), :hash, {BRANCH.format(b='b')}, true, now()
        FROM scale_staff"""), x)
    groups_of_b = "(CASE WHEN b <= :ng % :nb THEN :ng / :nb + 1 ELSE :ng / :nb END)"
    service_group = f"CASE WHEN r BETWEEN 13 AND 27 THEN {SG.format(g=f'b + :nb * (r % {groups_of_b})')} END"
    conn.execute(text(f"""INSERT INTO bpm_staff (user_id, staff_no, branch_code, job_roles, back_office,
                                                 service_group_key, updated_at)
        SELECT usr.id, 'S' || lpad(s.u::text, 6, '0'), {BRANCH.format(b='s.b')},
               to_json(array_remove(s.roles, 'supervisor')), coalesce(s.r >= 28, false), {service_group}, now()
        FROM scale_staff s JOIN bpm_user usr ON usr.username = s.username"""), x)
    # Memberships: each job role's group, the branch's role group, the service group.
    conn.execute(text(f"""INSERT INTO bpm_group_member (group_id, user_id)
        SELECT DISTINCT grp.id, usr.id FROM (
            SELECT username, unnest(roles) AS key FROM scale_staff
            UNION ALL SELECT username, {BRANCH.format(b='b')} || ':' || roles[1] FROM scale_staff WHERE b IS NOT NULL
            UNION ALL SELECT username, {service_group} FROM scale_staff WHERE r BETWEEN 13 AND 27
        ) m JOIN bpm_group grp ON grp.key = m.key JOIN bpm_user usr ON usr.username = m.username"""), x)
    conn.execute(text(f"""INSERT INTO bpm_client (client_id, name, branch_code, assets, turnover, c1_lowest,
                                                  classification, vip_tier, created_at, updated_at)
        SELECT 'C' || lpad(c::text, 7, '0'), '客户' || c, {BRANCH.format(b='c % :nb + 1')}, 100000 + c, 1.0, false,
               (ARRAY['A', 'B', 'C', 'D'])[c % 4 + 1], CASE WHEN c % 10 = 0 THEN 'gold' END, now(), now()
        FROM generate_series(1, 100000) c"""), x)


def _processes(conn: Connection) -> list[tuple[int, str]]:
    return [(int(i), str(k)) for i, k in conn.execute(text(
        "SELECT max(id), process_key FROM bpm_process_version WHERE process_key NOT LIKE 'job:%' "
        "GROUP BY process_key ORDER BY process_key"))]


STEPS = ("ARRAY['review', 'callback', 'register', 'verify', 'approve']",
         "ARRAY['复核 Review', '回访 Callback', '登记 Register', '核实 Verify', '审批 Approve']")


def open_work(conn: Connection, size: Size) -> None:
    processes = _processes(conn)
    versions = "ARRAY[" + ", ".join(str(i) for i, _ in processes) + "]"
    keys = "ARRAY[" + ", ".join(f"'{k}'" for _, k in processes) + "]"
    x = {"nb": size.branches, "ng": size.service_groups, "np": len(processes), "n": size.open_tasks,
         "staff0": size.branches * 30}
    ib, tb = _next_id(conn, "bpm_process_instance"), _next_id(conn, "bpm_task")
    log(f"open work: {size.open_tasks:,} tasks on as many running cases")
    # The task's category by m = i % 100: every tenth the call centre's, 1-3 the complaint
    # department's, 4-5 compliance's, the rest a branch's by m % 4 (clerks' queue, service
    # group's queue, an account manager's, a clerk's).
    conn.execute(text("""CREATE TEMP TABLE scale_open AS
        SELECT i::bigint AS i, i % 100 AS m,
               CASE WHEN i % 100 = 50 THEN NULL ELSE i % :nb + 1 END AS b,
               (i / 7) AS k
        FROM generate_series(1, :n) i"""), x)
    groups_of_b = "(CASE WHEN b <= :ng % :nb THEN :ng / :nb + 1 ELSE :ng / :nb END)"
    conn.execute(text("ALTER TABLE scale_open ADD COLUMN grp text, ADD COLUMN assignee text"))
    conn.execute(text(f"""UPDATE scale_open SET
          grp = CASE
            WHEN m % 10 = 0 THEN 'call_center_agent'
            WHEN m <= 3 THEN 'hq_complaint_dept'
            WHEN m <= 5 THEN 'compliance'
            WHEN b IS NULL THEN 'call_center_agent'
            WHEN m % 4 IN (0, 3) THEN {BRANCH.format(b='b')} || ':' || 'counter_staff'
            WHEN m % 4 = 1 THEN {SG.format(g=f'b + :nb * (k % {groups_of_b})')}
            ELSE {SG.format(g=f'b + :nb * ((13 + k % 15) % {groups_of_b})')} END,
          assignee = CASE
            WHEN m = 0 THEN {USER.format(u=':staff0 + 1 + k % 600')}
            WHEN m = 3 THEN {USER.format(u=':staff0 + 651 + k % 200')}
            WHEN m % 10 = 0 OR m <= 5 OR b IS NULL THEN NULL
            WHEN m % 4 = 2 THEN {USER.format(u='(13 + k % 15) * :nb + b')}
            WHEN m % 4 = 3 THEN {USER.format(u='(1 + k % 12) * :nb + b')} END"""), x)
    conn.execute(text(f"""INSERT INTO bpm_process_instance (id, process_version_id, process_key, business_key, status,
            client_id, branch_code, state, projected, started_by, started_at, updated_at, audit_seq, audit_head)
        SELECT {ib} + i, ({versions})[i % :np + 1], ({keys})[i % :np + 1], 'S' || lpad(i::text, 8, '0'), 'running',
               'C' || lpad((i % 100000 + 1)::text, 7, '0'), {BRANCH.format(b='b')}, ''::bytea, '{{}}', 'bench',
               now() - ((i * 31) % 720) * interval '1 hour', now(), 1, md5(i::text) || md5('h' || i)
        FROM scale_open"""), x)
    due = "now() + (((i * 7919) % 1000) - 150) * interval '42 minutes'"
    conn.execute(text(f"""INSERT INTO bpm_task (id, task_uuid, instance_id, process_key, element_id, name,
            candidate_groups, assignee, owner, status, priority, created_at, due_at, business_key, client_id,
            branch_code, kind, due_source, sla_started_at, sla_paused_at, sla_paused_seconds, at_risk_at, breached_at,
            calendar_incomplete, excluded)
        SELECT {tb} + i, gen_random_uuid()::text, {ib} + i, ({keys})[i % :np + 1], ({STEPS[0]})[k % 5 + 1],
               ({STEPS[1]})[k % 5 + 1], json_build_array(grp), assignee,
               CASE WHEN assignee IS NOT NULL AND i % 1000 = 2 THEN {USER.format(u='14 * :nb + b')} END,
               CASE WHEN assignee IS NULL THEN 'open' ELSE 'claimed' END, 30 + (i % 5) * 10,
               now() - ((i * 31) % 720) * interval '1 hour',
               CASE WHEN i % 20 = 7 THEN NULL ELSE {due} END,
               'S' || lpad(i::text, 8, '0'), 'C' || lpad((i % 100000 + 1)::text, 7, '0'), {BRANCH.format(b='b')},
               'bpmn', CASE WHEN i % 20 = 7 THEN NULL ELSE 'policy' END,
               now() - ((i * 31) % 720) * interval '1 hour',
               CASE WHEN i % 97 = 5 THEN now() - interval '1 day' END, 0,
               CASE WHEN i % 20 = 7 THEN NULL ELSE {due} - interval '8 hours' END,
               CASE WHEN i % 20 <> 7 AND i % 2 = 0 AND {due} < now() THEN {due} END, false,
               CASE WHEN i % 1000 = 501 AND b IS NOT NULL THEN json_build_array('user:' || {USER.format(u='b')}) END
        FROM scale_open"""), x)
    # The candidate rows carry their task's order (migration 0024), written here rather than
    # left to the insert trigger, which would look each task up again.
    conn.execute(text(f"""INSERT INTO bpm_task_candidate (task_id, group_key, active, priority, due_at)
        SELECT t.id, s.grp, true, t.priority, t.due_at FROM scale_open s JOIN bpm_task t ON t.id = {tb} + s.i"""))
    conn.execute(text(f"""INSERT INTO bpm_task_exclusion (task_id, principal, case_wide)
        SELECT {tb} + i, 'user:' || {USER.format(u='b')}, false
        FROM scale_open WHERE i % 1000 = 501 AND b IS NOT NULL"""))
    conn.execute(text(f"""INSERT INTO bpm_audit_event (stream, seq, occurred_at, actor, kind, instance_id,
                                             task_uuid, data, prev_hash, hash)
        SELECT 'instance:' || ({ib} + i), 1, now() - ((i * 31) % 720) * interval '1 hour', 'bench', 'instance.started',
               {ib} + i, NULL, json_build_object('process_key', ({keys})[i % :np + 1]), '',
               md5(i::text) || md5('h' || i)
        FROM scale_open"""), x)
    for table in ("bpm_process_instance", "bpm_task"):
        _bump(conn, table)
    conn.execute(text("DROP TABLE scale_open"))


def history(conn: Connection, size: Size) -> None:
    """Completed cases, a chunk per transaction (progress is visible, memory stays flat)."""
    processes = _processes(conn)
    versions = "ARRAY[" + ", ".join(str(i) for i, _ in processes) + "]"
    keys = "ARRAY[" + ", ".join(f"'{k}'" for _, k in processes) + "]"
    first = conn.execute(text(
        f"SELECT min(id), max(id) FROM bpm_process_instance WHERE business_key ~ '{HISTORY_KEY}'")).one()
    if first[0] is None:
        ib, tb, start = _next_id(conn, "bpm_process_instance"), _next_id(conn, "bpm_task"), 1
    else:
        # Going on: case j is instance ib + j and tasks tb + 2 j, tb + 2 j + 1.
        ib = int(first[0]) - 1
        tb = int(conn.execute(text("SELECT min(id) FROM bpm_task WHERE business_key = 'H000000001'")).scalar_one()) - 2
        start = int(first[1]) - ib + 1
        log(f"history: {start - 1:,} cases there already")
    x = {"nb": size.branches, "np": len(processes)}
    for low in range(start, size.completed_instances + 1, CHUNK):
        high = min(low + CHUNK - 1, size.completed_instances)
        t0 = time.perf_counter()
        y = {**x, "lo": low, "hi": high}
        # Case j of branch b, ended (j * 13) % 43,800 hours ago (five years), opened three
        # days before; its two steps done by a clerk and an account manager of the branch.
        ended = "now() - ((j * 13) % 43800) * interval '1 hour'"
        conn.execute(text(f"""INSERT INTO bpm_process_instance (id, process_version_id, process_key, business_key,
                status, client_id, branch_code, state, projected, started_by, started_at, ended_by, ended_at,
                updated_at, audit_seq, audit_head)
            SELECT {ib} + j, ({versions})[j % :np + 1], ({keys})[j % :np + 1], 'H' || lpad(j::text, 9, '0'),
                   'completed', 'C' || lpad((j % 100000 + 1)::text, 7, '0'), {BRANCH.format(b='j % :nb + 1')},
                   ''::bytea,
                   '{{}}', 'bench', {ended} - interval '3 days', {USER.format(u=':nb * 13 + j % :nb + 1')}, {ended},
                   {ended}, 6, md5(j::text) || md5('c' || j)
            FROM generate_series(CAST(:lo AS bigint), :hi) j"""), y)
        for step, (offset, element, who, group) in enumerate((
                ("3 days", "register", ":nb * (1 + j % 12) + j % :nb + 1", "':' || 'counter_staff'"),
                ("1 day", "review", ":nb * 13 + j % :nb + 1", "':' || 'account_manager'"))):
            # One step in ten completed after its deadline (closed late).
            conn.execute(text(f"""INSERT INTO bpm_task (id, task_uuid, instance_id, process_key, element_id, name,
                    candidate_groups, assignee, status, priority, created_at, due_at, completed_at, completed_by,
                    business_key, client_id, branch_code, kind, sla_paused_seconds, calendar_incomplete)
                SELECT {tb} + 2 * j + {step}, gen_random_uuid()::text, {ib} + j, ({keys})[j % :np + 1], '{element}',
                       '{element}', json_build_array({BRANCH.format(b='j % :nb + 1')} || {group}),
                       {USER.format(u=who)}, 'completed', 50,
                       {ended} - interval '{offset}', {ended} - interval '{offset}'
                           + CASE WHEN j % 10 = {step} THEN interval '20 hours' ELSE interval '30 hours' END,
                       {ended} - interval '{offset}' + interval '{"22 hours" if step == 0 else "23 hours"}',
                       {USER.format(u=who)}, 'H' || lpad(j::text, 9, '0'),
                       'C' || lpad((j % 100000 + 1)::text, 7, '0'), {BRANCH.format(b='j % :nb + 1')}, 'bpmn', 0, false
                FROM generate_series(CAST(:lo AS bigint), :hi) j"""), y)
            conn.execute(text(f"""INSERT INTO bpm_task_candidate (task_id, group_key, active, priority)
                SELECT {tb} + 2 * j + {step}, {BRANCH.format(b='j % :nb + 1')} || {group}, false, 50
                FROM generate_series(CAST(:lo AS bigint), :hi) j"""), y)
        conn.execute(text(f"""INSERT INTO bpm_audit_event (stream, seq, occurred_at, actor, kind, instance_id,
                task_uuid, data, prev_hash, hash)
            SELECT 'instance:' || ({ib} + j), e.seq, {ended} - interval '3 days' + e.seq * interval '10 hours',
                   CASE WHEN e.seq IN (2, 3) THEN t1.assignee WHEN e.seq IN (4, 5) THEN t2.assignee ELSE 'bench' END,
                   e.kind, {ib} + j,
                   CASE WHEN e.seq IN (2, 3) THEN t1.task_uuid WHEN e.seq IN (4, 5) THEN t2.task_uuid END,
                   CASE WHEN e.seq = 1 THEN json_build_object('process_key', ({keys})[j % :np + 1])
                        WHEN e.seq IN (3, 5) THEN json_build_object('task_id', {tb} + 2 * j + (e.seq - 3) / 2,
                            'element_id', CASE WHEN e.seq = 3 THEN 'register' ELSE 'review' END,
                            'data', json_build_object('outcome', 'done', 'note', '已处理'))
                        WHEN e.seq IN (2, 4) THEN json_build_object('task_id', {tb} + 2 * j + (e.seq - 2) / 2)
                        ELSE '{{}}'::json END,
                   md5(j || ':' || (e.seq - 1)) || md5('p' || j), md5(j || ':' || e.seq) || md5('q' || j)
            FROM generate_series(CAST(:lo AS bigint), :hi) j
            JOIN bpm_task t1 ON t1.id = {tb} + 2 * j
            JOIN bpm_task t2 ON t2.id = {tb} + 2 * j + 1
            CROSS JOIN (VALUES (1, 'instance.started'), (2, 'task.claimed'), (3, 'task.completed'), (4, 'task.claimed'),
                               (5, 'task.completed'), (6, 'instance.completed')) e(seq, kind)"""), y)
        conn.commit()
        rate = (high - low + 1) / (time.perf_counter() - t0)
        log(f"history: cases {low:,}–{high:,} ({rate:,.0f} cases/s, 11 rows each)")
    for table in ("bpm_process_instance", "bpm_task", "bpm_audit_event"):
        _bump(conn, table)
    conn.commit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--server", help=f"a PostgreSQL server (default {SERVER}; the database is {DATABASE})")
    parser.add_argument("--open-tasks", type=int, default=Size.open_tasks)
    parser.add_argument("--completed", type=int, default=Size.completed_instances, help="completed cases")
    parser.add_argument("--rebuild", action="store_true", help="drop the database and build it again")
    parser.add_argument("--database", default=DATABASE, help=f"the database's name (default {DATABASE})")
    args = parser.parse_args(argv)
    ensure(args.server, Size(open_tasks=args.open_tasks, completed_instances=args.completed), rebuild=args.rebuild,
           database=args.database)
    return 0


if __name__ == "__main__":
    sys.exit(main())
