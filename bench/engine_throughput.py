"""Engine throughput benchmark (issue 2, "Benchmark"); run by ``make bench``.

One diagram (``bench/bundle/throughput.bpmn``: start, one service task calling the built-in
``echo`` function, three user tasks with JSON Schema forms, end), driven to completion
sequentially from one client process in three ways:

* plain in-memory SpiffWorkflow on the same parsed spec and the engine's safe script engine;
* the engine's service layer on PostgreSQL: ``instances.start`` in one transaction, then per
  user task the inbox query (filtered by business key, as a client finds its task) and
  ``tasks.complete``, each in its own transaction;
* the HTTP API served by gunicorn (``-w 2``): start, inbox query, complete, three times.

Beside them it replays the SQL the service layer sent for one instance through raw psycopg
(``sql_floor``): what that statement plan costs with no engine at all, on this machine.

It prints instances/s for each, the ratios, the targets, statements and transactions per
instance and the bytes stored per completed instance. It never asserts on speed: it exits 0
after printing (1 only if the engine misbehaves, e.g. an instance does not complete).

The run uses its own database (``bench``, created when missing, its public schema dropped
and migrated afresh on every run) on the test server, so it never disturbs the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import io
import json
import os
import platform
import pstats
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import sql_floor
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.util.task import TaskState
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url

from engine.access import identity
from engine.access.identity import Actor
from engine.bootstrap import build_runtime
from engine.bpmn import bundle as bundles
from engine.bpmn.parser import parse_files
from engine.bpmn.serializer import dump_state, load_state
from engine.config import Settings
from engine.db import Database
from engine.process import deployments, instances, tasks
from engine.process.runtime import Runtime
from engine.schema import upgrade

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(__file__).resolve().parent / "bundle"
PROCESS_KEY = "throughput"
GROUP = "bench_clerks"
USERNAME, PASSWORD = "bench_clerk", "bench-clerk-pw"
# The audit trail is keyed on PostgreSQL, as in production (engine/audit.py): the figures
# include the HMAC of every event.
BENCH_AUDIT_KEY = "bench-audit-key-not-secret-0123456789abcdef"
DEFAULT_SERVER_URL = os.environ.get("BPM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

START_DATA = {"client_id": "C0001", "branch_code": "HZ01", "channel": "counter"}
# One form payload per user task, in diagram order (register, check, approve).
FORM_DATA: list[dict[str, Any]] = [
    {"amount": 1200.5, "summary": "account opening"},
    {"documents_ok": True, "note": "ID checked"},
    {"approved": True, "comment": "ok"},
]
TARGET_SERVICE, TARGET_HTTP = 200.0, 60.0
ISSUE_IN_MEMORY = 1300  # in-memory instances/s on the machine the targets were set for (issue 2)
TABLES = ("bpm_process_instance", "bpm_task", "bpm_task_candidate", "bpm_audit_event",
          "bpm_message_subscription", "bpm_timer")


class BenchError(Exception):
    """The engine did not do what the benchmark drives it to do (not a speed problem)."""


# -- database ---------------------------------------------------------------------------
def bench_url(args: argparse.Namespace) -> URL:
    if args.database_url:
        return make_url(args.database_url)
    return make_url(DEFAULT_SERVER_URL).set(database="bench")


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def prepare_database(url: URL) -> None:
    """Create the bench database if missing (connected to the server's test database), then
    drop and recreate its public schema and run the migrations."""
    maintenance = url.set(database=make_url(DEFAULT_SERVER_URL).database or "postgres")
    admin = create_engine(url_string(maintenance), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        found = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": url.database}).first()
        if not found:
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    engine = create_engine(url_string(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(url_string(url))


def server_version(url: URL) -> str:
    engine = create_engine(url_string(url))
    with engine.connect() as conn:
        version = str(conn.execute(text("SHOW server_version")).scalar_one())
    engine.dispose()
    return version.split(" ")[0]


def committed_transactions(url: URL) -> int:
    """pg_stat_database.xact_commit of the bench database. Backends flush their counters when
    they exit, so callers close their connections first; a short sleep lets the flush land."""
    time.sleep(0.7)
    engine = create_engine(url_string(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        value = conn.execute(text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
        result = int(value.scalar_one())
    engine.dispose()
    return result


def analyze(url: URL) -> None:
    """Give the planner statistics, as autovacuum does within a minute of a table's first rows
    in production. Without them the planner takes the freshly created tables for empty and
    drives the inbox query from the candidate-group index, a plan whose cost grows with every
    task ever created (a real database has statistics; the benchmark measures that state)."""
    engine = create_engine(url_string(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
    engine.dispose()


@dataclass
class StatementCounter:
    """SQLAlchemy cursor executions and pool checkouts (one per transaction). Each transaction
    also costs a BEGIN and a COMMIT, which the cursor events do not see."""

    statements: int = 0
    checkouts: int = 0

    def attach(self, engine: Engine) -> None:
        event.listen(engine, "before_cursor_execute", self._on_execute)
        event.listen(engine.pool, "checkout", self._on_checkout)

    def _on_execute(self, *_: Any) -> None:
        self.statements += 1

    def _on_checkout(self, *_: Any) -> None:
        self.checkouts += 1


def setup_identity_and_deploy(db: Database, rt: Runtime) -> Actor:
    with db.transaction() as s:
        identity.ensure_group(s, key=GROUP, name="Benchmark clerks", kind="role")
        # Also a call-centre agent: a role that starts cases for any client, as the bench does
        # for a client (C0001) the registry does not hold.
        identity.create_user(s, username=USERNAME, display_name="Benchmark clerk", now=rt.now(),
                             password=PASSWORD, groups=[GROUP, "call_center_agent"], actor="bench")
    with db.transaction() as s:
        results = deployments.deploy(s, rt, bundles.from_directory(BUNDLE), actor=Actor.system("bench"))
        if not any(r.version.process_key == PROCESS_KEY for r in results):
            raise BenchError(f"the bundle did not deploy process {PROCESS_KEY!r}")
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, USERNAME))


# -- in-memory SpiffWorkflow --------------------------------------------------------------
def parsed_spec() -> tuple[Any, dict[str, Any]]:
    bundle = bundles.from_directory(BUNDLE)
    processes, problems = parse_files(bundle.bpmn)
    if problems:
        raise BenchError("; ".join(p.format() for p in problems))
    process = next(p for p in processes if p.key == PROCESS_KEY)
    return process.spec, process.subprocess_specs


def run_in_memory(spec: Any, subprocess_specs: dict[str, Any], script_engine: Any, n: int, *,
                  round_trip: bool = False) -> None:
    """``round_trip``: also serialize and restore the state after every step, as the service
    layer does (the serialization floor, without any database)."""
    for _ in range(n):
        workflow = BpmnWorkflow(spec, subprocess_specs, script_engine=script_engine)
        workflow.get_next_task(spec_name="Start").data.update(START_DATA)
        workflow.do_engine_steps()
        for form in FORM_DATA:
            if round_trip:
                workflow = load_state(dump_state(workflow), spec, subprocess_specs, script_engine)
            ready = workflow.get_tasks(state=TaskState.READY, manual=True)
            if len(ready) != 1:
                raise BenchError(f"in-memory: expected one ready user task, found {len(ready)}")
            ready[0].set_data(**form)
            ready[0].run()
            workflow.do_engine_steps()
        if round_trip:
            dump_state(workflow)
        if not workflow.is_completed():
            raise BenchError("in-memory: the workflow did not complete")


# -- service layer --------------------------------------------------------------------------
@dataclass
class OpStats:
    seconds: float = 0.0
    count: int = 0
    statements: int = 0
    checkouts: int = 0


@dataclass
class ServiceStats:
    ops: dict[str, OpStats] = field(default_factory=lambda: {k: OpStats() for k in ("start", "inbox", "complete")})


def drive_service_instance(db: Database, rt: Runtime, actor: Actor, business_key: str,
                           counter: StatementCounter, stats: ServiceStats | None, *,
                           inbox_each_step: bool = False) -> None:
    """Start, find the first task with an inbox query, complete the three tasks: each next
    task is the one the completion hands its user (``tasks.opened``), as the API's
    ``next_tasks`` does. ``inbox_each_step``: query the inbox before every completion instead."""
    @contextlib.contextmanager
    def op(name: str) -> Iterator[None]:
        t0, s0, c0 = time.perf_counter(), counter.statements, counter.checkouts
        yield
        if stats is not None:
            entry = stats.ops[name]
            entry.seconds += time.perf_counter() - t0
            entry.count += 1
            entry.statements += counter.statements - s0
            entry.checkouts += counter.checkouts - c0

    def from_inbox() -> int:
        with op("inbox"), db.transaction() as s:
            found, _total = tasks.inbox(s, actor=actor, query=query, now=rt.now())
            task_ids = [t.id for t in found]
        if len(task_ids) != 1:
            raise BenchError(f"service layer: {business_key}: expected one task in the inbox, found {len(task_ids)}")
        return task_ids[0]

    with op("start"), db.transaction() as s:
        instances.start(s, rt, process_key=PROCESS_KEY, business_key=business_key, actor=actor,
                        data=START_DATA)
    query = tasks.InboxQuery(candidate_me=True, business_key=business_key)
    task_id: int | None = from_inbox()
    for step, form in enumerate(FORM_DATA):
        if task_id is None or (inbox_each_step and step > 0):
            task_id = from_inbox()
        with op("complete"), db.transaction() as s:
            tasks.complete(s, rt, task_id=task_id, actor=actor, data=form)
            handed = [t.id for t in tasks.opened(s, actor)]
        if len(handed) != (0 if step == len(FORM_DATA) - 1 else 1):
            raise BenchError(f"service layer: {business_key}: step {step + 1} handed over {len(handed)} tasks")
        task_id = handed[0] if handed else None


def run_service(db: Database, rt: Runtime, actor: Actor, prefix: str, n: int, counter: StatementCounter,
                stats: ServiceStats | None = None, *, inbox_each_step: bool = False) -> None:
    for i in range(n):
        drive_service_instance(db, rt, actor, f"{prefix}-{i:06d}", counter, stats, inbox_each_step=inbox_each_step)


# -- HTTP -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def gunicorn(url: URL, workers: int) -> Iterator[str]:
    port = free_port()
    # api.wsgi is the production entry point: it does not start without a secret key.
    env = dict(os.environ, BPM_DATABASE_URL=url_string(url),
               BPM_SECRET_KEY=os.environ.get("BPM_SECRET_KEY") or "bench-only-secret-key-0123456789",
               BPM_AUDIT_KEY=BENCH_AUDIT_KEY)
    env.pop("BPM_REDIS_URL", None)
    log = tempfile.NamedTemporaryFile(prefix="bench-gunicorn-", suffix=".log", delete=False)  # noqa: SIM115
    gunicorn_bin = Path(sys.executable).parent / "gunicorn"
    proc = subprocess.Popen(
        [str(gunicorn_bin), "-w", str(workers), "-b", f"127.0.0.1:{port}", "api.wsgi:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise BenchError(f"gunicorn exited with {proc.returncode}; log: {log.name}\n"
                                 + Path(log.name).read_text(errors="replace")[-3000:])
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{base}/openapi.json", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise BenchError(f"gunicorn did not answer within 60 s; log: {log.name}")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


class HttpClient:
    """A keep-alive JSON client on ``http.client``: what the benchmark's own side costs should
    be small next to the server's (``requests`` spent about 1 ms of CPU per call, on the same
    two CPUs as the server and PostgreSQL). The client's CPU is printed with the figures."""

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        self.prefix = parts.path
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=60)
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}

    def call(self, what: str, status: int, method: str, path: str, *, body: Any = None,
             params: dict[str, str] | None = None) -> Any:
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        payload = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, target, body=payload, headers=self.headers)
        response = self.conn.getresponse()
        raw = response.read()
        if response.status != status:
            raise BenchError(f"HTTP {what}: expected {status}, got {response.status}: {raw[:500]!r}")
        return json.loads(raw)

    def close(self) -> None:
        self.conn.close()


def login(client: HttpClient) -> None:
    body = client.call("login", 200, "POST", "/auth/login", body={"username": USERNAME, "password": PASSWORD})
    client.headers["Authorization"] = f"Bearer {body['token']}"


def drive_http_instance(client: HttpClient, business_key: str, times: dict[str, list[float]], *,
                        inbox_each_step: bool = False) -> None:
    """The issue's sequence: start, an inbox query, three completions (each names the next
    task in ``next_tasks``); ``inbox_each_step``: an inbox query before every completion."""
    def call(name: str, status: int, method: str, path: str, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        body = client.call(name, status, method, path, **kwargs)
        times.setdefault(name, []).append(time.perf_counter() - t0)
        return body

    def from_inbox() -> int:
        page = call("inbox", 200, "GET", "/tasks", params={"business_key": business_key, "candidate": "me"})
        if len(page["items"]) != 1:
            raise BenchError(f"HTTP: {business_key}: expected one task in the inbox, found {len(page['items'])}")
        return int(page["items"][0]["id"])

    call("start", 201, "POST", f"/processes/{PROCESS_KEY}/instances",
         body={"business_key": business_key, "data": START_DATA})
    task_id: int | None = from_inbox()
    for step, form in enumerate(FORM_DATA):
        if task_id is None or (inbox_each_step and step > 0):
            task_id = from_inbox()
        done = call("complete", 200, "POST", f"/tasks/{task_id}/complete", body={"data": form})
        handed = [t["id"] for t in done["next_tasks"]]
        if len(handed) != (0 if step == len(FORM_DATA) - 1 else 1):
            raise BenchError(f"HTTP: {business_key}: step {step + 1} handed over {len(handed)} tasks")
        task_id = handed[0] if handed else None


def run_http(client: HttpClient, prefix: str, n: int, times: dict[str, list[float]] | None = None, *,
             inbox_each_step: bool = False) -> None:
    times = {} if times is None else times
    for i in range(n):
        drive_http_instance(client, f"{prefix}-{i:06d}", times, inbox_each_step=inbox_each_step)


# -- storage --------------------------------------------------------------------------------
@dataclass
class TableSize:
    table: str
    rows: int
    avg_row: float
    total_as_run: int
    total_compact: int


def storage(url: URL, *, sample: int = 200) -> tuple[int, int, float, float, list[TableSize]]:
    """Completed instances, all instances, average state blob (stored and decompressed) and
    per table: rows, average row bytes (pg_column_size), pg_total_relation_size as run and
    after VACUUM FULL (heap + indexes + TOAST)."""
    engine = create_engine(url_string(url), isolation_level="AUTOCOMMIT")
    sizes: list[TableSize] = []
    with engine.connect() as conn:
        completed = int(conn.execute(text(
            "SELECT count(*) FROM bpm_process_instance WHERE status = 'completed'")).scalar_one())
        total = int(conn.execute(text("SELECT count(*) FROM bpm_process_instance")).scalar_one())
        state_avg = float(conn.execute(text(
            "SELECT coalesce(avg(octet_length(state)), 0) FROM bpm_process_instance WHERE status = 'completed'"
        )).scalar_one())
        blobs = conn.execute(text(
            "SELECT state FROM bpm_process_instance WHERE status = 'completed' ORDER BY id LIMIT :n"
        ), {"n": sample}).scalars().all()
        raw_avg = sum(len(zlib.decompress(b)) for b in blobs) / len(blobs) if blobs else 0.0
        as_run = {t: int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar_one())
                  for t in TABLES}
        for table in TABLES:
            conn.execute(text(f"VACUUM FULL ANALYZE {table}"))
        for table in TABLES:
            rows = int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
            avg_row = float(conn.execute(text(
                f"SELECT coalesce(avg(pg_column_size(t.*)), 0) FROM {table} t")).scalar_one())
            compact = int(conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table}).scalar_one())
            sizes.append(TableSize(table, rows, avg_row, as_run[table], compact))
    engine.dispose()
    return completed, total, state_avg, raw_avg, sizes


def count_status(url: URL, prefix: str) -> tuple[int, int]:
    engine = create_engine(url_string(url))
    with engine.connect() as conn:
        row = conn.execute(text(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM bpm_process_instance "
            "WHERE business_key LIKE :p"), {"p": f"{prefix}-%"}).one()
    engine.dispose()
    return int(row[0]), int(row[1])


# -- timing and report -----------------------------------------------------------------------
def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def verdict(rate: float, target: float) -> str:
    return "PASS" if rate >= target else "BELOW"


def profile_report(profiler: cProfile.Profile, limit: int) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    out.write("-- by own time (tottime) --\n")
    stats.sort_stats("tottime").print_stats(limit)
    out.write("-- by cumulative time --\n")
    stats.sort_stats("cumulative").print_stats(limit)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--instances", type=int, default=500, help="instances per path (default 500)")
    parser.add_argument("--http-instances", type=int, default=None, help="HTTP instances (default: --instances)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed instances before each path (default 20)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--database-url", default=os.environ.get("BPM_BENCH_DATABASE_URL"),
                        help="bench database (default: database 'bench' on the test server)")
    parser.add_argument("--skip-http", action="store_true", help="measure in-memory and service layer only")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the service-layer run and print the top functions")
    args = parser.parse_args(argv)
    n = args.instances
    n_http = args.http_instances if args.http_instances is not None else n
    url = bench_url(args)

    try:
        return _run(args, url, n, n_http)
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1


@dataclass
class Measured:
    """One timed run of n instances along one path."""

    n: int
    seconds: float
    cpu: float  # this process's CPU: the engine itself, or the HTTP client
    xacts: int  # committed transactions (pg_stat_database), service layer only
    statements: int = 0
    checkouts: int = 0
    ops: dict[str, OpStats] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def measure_service(db: Database, rt: Runtime, actor: Actor, url: URL, counter: StatementCounter, prefix: str,
                    n: int, *, inbox_each_step: bool, profiler: cProfile.Profile | None = None) -> Measured:
    stats = ServiceStats()
    db.dispose()
    xact0 = committed_transactions(url)
    s0, c0 = counter.statements, counter.checkouts
    if profiler:
        profiler.enable()
    cpu0 = time.process_time()
    seconds = timed(lambda: run_service(db, rt, actor, prefix, n, counter, stats, inbox_each_step=inbox_each_step))
    cpu = time.process_time() - cpu0
    if profiler:
        profiler.disable()
    statements, checkouts = counter.statements - s0, counter.checkouts - c0
    db.dispose()
    xacts = committed_transactions(url) - xact0
    done, started = count_status(url, prefix)
    if done != n or started != n:
        raise BenchError(f"service layer ({prefix}): {done} of {started} instances completed, expected {n}")
    return Measured(n, seconds, cpu, xacts, statements, checkouts, ops=stats.ops)


def measure_http(base: str, url: URL, prefix: str, n: int, *, inbox_each_step: bool) -> Measured:
    client = HttpClient(base)
    try:
        login(client)
        times: dict[str, list[float]] = {}
        cpu0 = time.process_time()
        seconds = timed(lambda: run_http(client, prefix, n, times, inbox_each_step=inbox_each_step))
        cpu = time.process_time() - cpu0
    finally:
        client.close()
    # gunicorn's backends report their transactions only when they exit: _run counts them.
    return Measured(n, seconds, cpu, xacts=0, times=times)


def _run(args: argparse.Namespace, url: URL, n: int, n_http: int) -> int:
    print(f"preparing database {url.render_as_string(hide_password=True)} (schema dropped and migrated) ...",
          flush=True)
    load_before = os.getloadavg()[0]
    prepare_database(url)
    settings = Settings.from_env({"BPM_DATABASE_URL": url_string(url), "BPM_AUDIT_KEY": BENCH_AUDIT_KEY})
    rt = build_runtime(settings)
    db = Database(settings.database_url, audit_key=settings.audit_key)
    counter = StatementCounter()
    counter.attach(db.engine)
    actor = setup_identity_and_deploy(db, rt)

    # 1. in-memory SpiffWorkflow, same spec, same script engine
    spec, subprocess_specs = parsed_spec()
    run_in_memory(spec, subprocess_specs, rt.script_engine, args.warmup)
    mem_s = timed(lambda: run_in_memory(spec, subprocess_specs, rt.script_engine, n))
    rt_s = timed(lambda: run_in_memory(spec, subprocess_specs, rt.script_engine, n, round_trip=True))
    print(f"in-memory: {n / mem_s:.0f}/s", flush=True)

    # 2. service layer on PostgreSQL: the issue's sequence, then an inbox query before every step
    run_service(db, rt, actor, "warm-svc", args.warmup, counter)
    analyze(url)
    profiler = cProfile.Profile() if args.profile else None
    svc = measure_service(db, rt, actor, url, counter, "svc-next", n, inbox_each_step=False, profiler=profiler)
    print(f"service layer: {svc.rate:.0f}/s", flush=True)
    svc_each = measure_service(db, rt, actor, url, counter, "svc-each", n, inbox_each_step=True)
    print(f"service layer, inbox query before every step: {svc_each.rate:.0f}/s", flush=True)

    # 2b. the service layer's own statements replayed through raw psycopg: the plan's floor
    captured = sql_floor.capture(db.engine, "sqlcapture-0",
                                 lambda key: drive_service_instance(db, rt, actor, key, counter, None))
    db.dispose()
    floor_s, floor_cpu = sql_floor.replay(url_string(url.set(drivername="postgresql")), captured, "sql-floor", n)
    done, started = count_status(url, "sql-floor")
    if done != n or started != n:
        raise BenchError(f"SQL replay: {done} of {started} instances completed, expected {n}")
    floor = Floor(Measured(n, floor_s, floor_cpu, xacts=0), captured.statements, captured.commits)
    print(f"the same SQL through raw psycopg: {floor.run.rate:.0f}/s", flush=True)

    # 3. HTTP through gunicorn, the same two sequences
    http_runs: list[Measured] = []
    http_xacts = 0.0
    if not args.skip_http and n_http > 0:
        db.dispose()
        xact0 = committed_transactions(url)
        warm_n = max(args.warmup, 2 * args.workers)
        with gunicorn(url, args.workers) as base:
            warm = HttpClient(base)
            login(warm)
            run_http(warm, "warm-http", warm_n)
            warm.close()
            http_runs.append(measure_http(base, url, "http-next", n_http, inbox_each_step=False))
            print(f"HTTP: {http_runs[0].rate:.0f}/s", flush=True)
            http_runs.append(measure_http(base, url, "http-each", n_http, inbox_each_step=True))
            print(f"HTTP, inbox query before every step: {http_runs[1].rate:.0f}/s", flush=True)
        # Every HTTP instance's transactions (warm-up and both sequences, plus three logins):
        # gunicorn's backends report theirs when they exit, so they cannot be told apart.
        http_xacts = (committed_transactions(url) - xact0) / (warm_n + 2 * n_http)
        for prefix in ("http-next", "http-each"):
            done, started = count_status(url, prefix)
            if done != n_http or started != n_http:
                raise BenchError(f"HTTP ({prefix}): {done} of {started} instances completed, expected {n_http}")
    db.dispose()

    completed, total, state_avg, raw_avg, sizes = storage(url)
    if completed != total:
        raise BenchError(f"{total - completed} instances did not complete")

    report(args, url, n, n_http, load_before, mem_s, rt_s, svc, svc_each, floor, http_runs, http_xacts,
           (completed, state_avg, raw_avg, sizes))
    if profiler is not None:
        print(profile_report(profiler, 30))
    return 0


@dataclass
class Floor:
    """The service layer's statements for one instance, replayed without it (``sql_floor``)."""

    run: Measured
    statements: int
    commits: int


def report(args: argparse.Namespace, url: URL, n: int, n_http: int, load_before: float, mem_s: float, rt_s: float,
           svc: Measured, svc_each: Measured, floor: Floor, http_runs: list[Measured], http_xacts: float,
           stored: tuple[int, float, float, list[TableSize]]) -> None:
    mem_rate, rt_rate = n / mem_s, n / rt_s
    line = "-" * 100
    print()
    print(line)
    print(f"Engine throughput: diagram '{PROCESS_KEY}' (1 service task + 3 user tasks), sequential, one client")
    print(f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, PostgreSQL {server_version(url)}; "
          f"{n} instances per path ({n_http} over HTTP), {args.warmup} warm-up instances untimed")
    print(f"load average before/after the run: {load_before:.2f} / {os.getloadavg()[0]:.2f} "
          "(anything else running on the machine slows every figure)")
    print("sequence: start, one inbox query, three completions, each completion handing over the next task")
    print("(the API's next_tasks); 'inbox each step' queries the inbox before every completion instead")
    print(line)
    print(f"{'path':<50}{'instances/s':>12}{'ms/instance':>13}{'target':>11}{'result':>9}")

    def row(label: str, rate: float, target: float | None = None) -> None:
        verdict_text = verdict(rate, target) if target is not None else ""
        target_text = f">= {target:.0f}/s" if target is not None else "-"
        print(f"{label:<50}{rate:>12.1f}{1000 / rate:>13.2f}{target_text:>11}{verdict_text:>9}")

    row("in-memory SpiffWorkflow", mem_rate)
    row("  (+ state dump/load each step, no database)", rt_rate)
    row("service layer on PostgreSQL", svc.rate, TARGET_SERVICE)
    row("  inbox each step", svc_each.rate)
    row("  its SQL alone, replayed through raw psycopg", floor.run.rate)
    if http_runs:
        row(f"HTTP API (gunicorn -w {args.workers}, one keep-alive client)", http_runs[0].rate, TARGET_HTTP)
        row("  inbox each step", http_runs[1].rate)
    else:
        print(f"{'HTTP API':<50}{'skipped':>12}")
    print(line)
    print(f"ratios: service / in-memory = {svc.rate / mem_rate:.3f} ({mem_rate / svc.rate:.1f}x slower)", end="")
    if http_runs:
        print(f"; HTTP / service = {http_runs[0].rate / svc.rate:.3f} ({svc.rate / http_runs[0].rate:.1f}x slower)")
    else:
        print()
    print()
    for label, m in (("service layer per instance", svc), ("inbox each step", svc_each)):
        print(f"{label} (each operation its own transaction):")
        print(f"  {'operation':<10}{'calls':>7}{'ms/call':>10}{'ms/inst':>10}{'SQL stmts/call':>16}{'txns/call':>11}")
        for name, op in m.ops.items():
            if op.count:
                print(f"  {name:<10}{op.count / n:>7.0f}{1000 * op.seconds / op.count:>10.2f}"
                      f"{1000 * op.seconds / n:>10.2f}{op.statements / op.count:>16.1f}"
                      f"{op.checkouts / op.count:>11.1f}")
        print(f"  CPU of this Python process: {1000 * m.cpu / n:.2f} ms/instance of "
              f"{1000 * m.seconds / n:.2f} ms ({100 * m.cpu / m.seconds:.0f}%; the rest is waiting for PostgreSQL)")
        print(f"  SQL statements per instance: {m.statements / n:.1f} (SQLAlchemy cursor executions) in "
              f"{m.checkouts / n:.1f} transactions ({m.xacts / n:.1f} committed, pg_stat_database);"
              " each also costs its BEGIN and COMMIT")
    engine_s = svc.ops["start"].seconds + svc.ops["complete"].seconds
    print(f"engine calls only (start + 3 completes, inbox queries left out): {n / engine_s:.1f} instances/s")
    print(f"its SQL alone: the {floor.statements} statements and {floor.commits} COMMITs the service layer sent for "
          "one instance, replayed per instance over one raw")
    print(f"  psycopg connection (prepared statements; no SQLAlchemy, no SpiffWorkflow): "
          f"{1000 * floor.run.seconds / n:.2f} ms/instance, client CPU {1000 * floor.run.cpu / n:.2f} ms;")
    print(f"  with in-memory SpiffWorkflow's {1000 / mem_rate:.2f} ms on top (no state saved or restored), no engine "
          f"sending this plan could pass {1 / (floor.run.seconds / n + 1 / mem_rate):.0f}/s here")
    print(f"machine: the issue's figures assume in-memory SpiffWorkflow at about {ISSUE_IN_MEMORY:,}/s; this run "
          f"measured {mem_rate:,.0f}/s ({mem_rate / ISSUE_IN_MEMORY:.2f}x)")
    if http_runs:
        print()
        print(f"HTTP: committed transactions per instance, both sequences together: {http_xacts:.1f}")
        for label, m in (("HTTP", http_runs[0]), ("HTTP inbox each step", http_runs[1])):
            parts = ", ".join(f"{name} {1000 * sum(v) / len(v):.2f} ms x {len(v) / n_http:.0f}"
                              for name, v in m.times.items())
            print(f"{label}, per request (client-side latency, mean): {parts}; "
                  f"client CPU {1000 * m.cpu / n_http:.2f} ms/instance")
    completed, state_avg, raw_avg, sizes = stored
    print()
    print(f"storage per completed instance ({completed} completed instances in the bench database):")
    print(f"  state blob (bpm_process_instance.state, zlib JSON): {state_avg:,.0f} B stored, "
          f"{raw_avg:,.0f} B uncompressed")
    print(f"  {'table':<26}{'rows/inst':>10}{'avg row B':>11}{'B/inst as run':>15}{'B/inst compact':>16}")
    tot_run = tot_compact = 0.0
    for size in sizes:
        if size.rows == 0 and size.table in ("bpm_message_subscription", "bpm_timer"):
            continue
        run_per, compact_per = size.total_as_run / completed, size.total_compact / completed
        tot_run += run_per
        tot_compact += compact_per
        print(f"  {size.table:<26}{size.rows / completed:>10.2f}{size.avg_row:>11.0f}{run_per:>15,.0f}"
              f"{compact_per:>16,.0f}")
    print(f"  {'total':<26}{'':>10}{'':>11}{tot_run:>15,.0f}{tot_compact:>16,.0f}")
    print("  (pg_total_relation_size: heap + indexes + TOAST; 'as run' includes dead row versions left by")
    print("   updates before autovacuum; 'compact' is after VACUUM FULL, i.e. the live data)")
    print(line)


if __name__ == "__main__":
    sys.exit(main())
