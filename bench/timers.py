"""Timer benchmark (issue 3, "Benchmark"): fire lag through real rq workers, and the cost of
a million pending timers.

Part A. 10,000 BPMN timers falling due within one minute are fired by two real ``bpm worker``
processes (rq workers with the rq scheduler and the engine's sweep, ``--sweep-interval 1``) on
PostgreSQL and Redis. The timers are real: a tiny diagram (``bench/timers_bundle``: start,
an intermediate timer catch event with ``timeDate ${fire_at}``, end) is started 10,000 times
through ``instances.start`` with ``fire_at`` spread uniformly over a one-minute window that
opens once they all exist; each start enqueues its timer in rq after commit. The starts run in
a few parallel processes. Reported: fire lag (``fired_at - due_at``; ``fired_at`` is the claim
time in the firing transaction) p50, p99 and max, duplicates (instances with more than one
``timer.fired`` audit event) and losses (timers not fired 30 s after the window closed; the
benchmark keeps waiting up to ``--drain`` seconds so that late and never-fired timers are told
apart). The whole of Part A runs twice: undisturbed, then with Redis ``FLUSHDB`` halfway
through the window (the sweep must re-deliver everything). For diagnosis it also prints rq job
runs per timer (from the workers' logs), the worst backlog of due timers, and where the CPU
went from the window opening on (the workers' job loops, their sweep threads, rq's scheduler
process, PostgreSQL, Redis, everything else on the host); ``--sweep-interval 100000`` turns the
sweep off to show its share.

Part B. 1,000,000 pending SLA milestone rows spread over 30 days (bulk-inserted with
``generate_series``): the cost of one ``queueing.sweep`` run, its query plan, the idle CPU
of one ``bpm worker`` with nothing due, and one ``EmbeddedRunner.run_once``.

It prints figures and targets and never asserts: it exits 0 after printing (1 only when the
setup itself fails). It uses its own database (``bench_timers``, created when missing, its
public schema dropped and migrated afresh for every scenario) and Redis database 14 (flushed
at the start of each scenario, ``--redis-url`` to choose another spare one); it never touches
another Redis database, and warns when other clients are connected to its own (another run's
rq workers would take its jobs).

``--busy N`` keeps N cores busy (one spinning process each) from the window opening until the
benchmark stops waiting, as another service on the host would; the load average when the
window opened and closed is printed beside the figures, and so is every error line of the
workers' logs, each traceback whole.

    .venv/bin/python bench/timers.py            # full: 10,000 timers, 1,000,000 pending
    .venv/bin/python bench/timers.py --part a --no-flush-run --busy 1   # firing with a core taken
    .venv/bin/python bench/timers.py --quick    # smoke: 1,000 timers, 100,000 pending
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import create_engine, event, func, select, text
from sqlalchemy.engine import URL, make_url

from engine.access.identity import Actor
from engine.bootstrap import build_runtime
from engine.bpmn import bundle as bundles
from engine.config import Settings
from engine.db import Database
from engine.models import AuditEvent, ProcessInstance, Timer
from engine.process import deployments, instances
from engine.process.runtime import Runtime
from engine.schema import upgrade
from engine.timers.firing import EmbeddedRunner
from engine.timers.queueing import QUEUE_NAME, RqScheduler, sweep

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = Path(__file__).resolve().parent / "timers_bundle"
PROCESS_KEY = "timer_only"
SERVER_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DATABASE = "bench_timers"
REDIS_URL = "redis://127.0.0.1:6379/14"
WORKER = [sys.executable, "-c", "from api.cli import run; run()", "worker"]
SWEEP_INTERVAL = 0.5  # the bpm worker default
# Keyed as in production (engine/audit.py): the workers refuse to start on PostgreSQL without it.
BENCH_AUDIT_KEY = "bench-audit-key-not-secret-0123456789abcdef"
ACTOR = Actor.system("bench")
TARGET_P99_MS, TARGET_MAX_MS = 2000.0, 5000.0
LOSS_GRACE = 30.0  # a timer not fired this long after the window closed is lost
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The setup failed (not a speed problem)."""


# -- database and Redis ---------------------------------------------------------------------
def bench_url(server_url: str, database: str = DATABASE) -> URL:
    return make_url(server_url).set(database=database)


def url_string(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def prepare_database(url: URL, server_url: str) -> None:
    """Create ``bench_timers`` if missing (through an AUTOCOMMIT connection to the server's
    ``test`` database), drop and recreate its public schema, run the migrations."""
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": url.database}).first():
            conn.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    engine = create_engine(url_string(url), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        # Workers of an earlier, interrupted run may still hold connections: end them.
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()
    upgrade(url_string(url))


def redis_connection(redis_url: str) -> Redis:
    connection = Redis.from_url(redis_url)
    db = connection.connection_pool.connection_kwargs.get("db", 0)
    if int(db) == 0:
        raise BenchError(f"refusing to flush Redis database 0 ({redis_url}); use a spare database such as /14")
    return connection


def foreign_clients(redis: Redis) -> int:
    """Connections to this Redis database other than ours: rq workers of another run would
    take the benchmark's jobs (and a flush here would hurt them). Checked before any worker
    or creating process of ours exists."""
    db = int(redis.connection_pool.connection_kwargs.get("db", 0))
    own = redis.client_id()
    return sum(1 for c in redis.client_list() if int(c.get("db", -1)) == db and int(c["id"]) != own)


def warn_foreign(redis: Redis, where: str) -> None:
    count = foreign_clients(redis)
    if count:
        print(f"  WARNING [{where}]: {count} other client(s) are connected to this Redis database "
              "(another run's rq workers?): they may take the benchmark's jobs; use --redis-url with a spare "
              "database", flush=True)


def make_runtime(database_url: str, redis_url: str | None) -> tuple[Database, Runtime]:
    env = {"BPM_DATABASE_URL": database_url, "BPM_AUDIT_KEY": BENCH_AUDIT_KEY}
    if redis_url:
        env["BPM_REDIS_URL"] = redis_url
    settings = Settings.from_env(env)
    scheduler = RqScheduler(redis_url) if redis_url else None
    return Database(settings.database_url, audit_key=settings.audit_key), build_runtime(settings, scheduler=scheduler)


# -- processes and CPU ----------------------------------------------------------------------
def _proc_stat(pid: int) -> tuple[int, float]:
    """(parent pid, utime + stime in seconds) from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants (rq forks its
    scheduler into a child process)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry)], cpu[int(entry)] = _proc_stat(int(entry))
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(cpu.get(p, 0.0) for p in tree)


def _stat_entry(path: str) -> tuple[str, int, float]:
    """(command name, parent pid, utime + stime seconds) from a /proc .../stat file."""
    with open(path) as f:
        raw = f.read()
    fields = raw[raw.rindex(")") + 2:].split()
    return raw[raw.index("(") + 1:raw.rindex(")")], int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


CPU_PARTS = ("worker job loops", "worker sweep threads", "rq scheduler", "postgres (all)", "redis-server",
             "everything else")


def cpu_snapshot(worker_pids: list[int]) -> dict[tuple[str, int], float]:
    """CPU seconds per (part, pid or thread id): the workers' main threads (where rq runs
    jobs), their other threads (the sweep; rq's pubsub thread is idle), their child processes
    (rq's scheduler), every postgres process, redis-server, and the host total."""
    table: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                table[int(entry)] = _stat_entry(f"/proc/{entry}/stat")
    snap: dict[tuple[str, int], float] = {}
    for pid in worker_pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    part = "worker job loops" if int(tid) == pid else "worker sweep threads"
                    snap[(part, int(tid))] = _stat_entry(f"/proc/{pid}/task/{tid}/stat")[2]
    for pid, (comm, ppid, cpu) in table.items():
        if ppid in worker_pids:
            snap[("rq scheduler", pid)] = cpu
        elif comm == "postgres":
            snap[("postgres (all)", pid)] = cpu
        elif comm.startswith("redis-server"):
            snap[("redis-server", pid)] = cpu
    busy, _ = system_cpu()
    snap[("host busy", 0)] = busy / CLK_TCK
    return snap


def cpu_split(before: dict[tuple[str, int], float], after: dict[tuple[str, int], float]) -> dict[str, float]:
    split = dict.fromkeys(CPU_PARTS, 0.0)
    for key, value in after.items():
        if key[0] in split:
            split[key[0]] += value - before.get(key, 0.0)
    host = after[("host busy", 0)] - before[("host busy", 0)]
    split["everything else"] = max(0.0, host - sum(split.values()))
    return split


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class Workers:
    """``bpm worker`` subprocesses; their logs go to temporary files (rq logs each job)."""

    def __init__(self, database_url: str, redis_url: str, sweep_interval: float = SWEEP_INTERVAL) -> None:
        self.command = [*WORKER, "--sweep-interval", f"{sweep_interval:g}"]
        # `bpm worker` is a production entry point: it does not start without a secret key.
        self.env = {**os.environ, "BPM_DATABASE_URL": database_url, "BPM_REDIS_URL": redis_url,
                    "BPM_SECRET_KEY": os.environ.get("BPM_SECRET_KEY") or "bench-only-secret-key-0123456789",
                    "PYTHONPATH": str(ROOT), "BPM_AUDIT_KEY": BENCH_AUDIT_KEY}
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = tempfile.NamedTemporaryFile(prefix="bench-timers-worker-", suffix=".log", delete=False)  # noqa: SIM115
        self.logs.append(Path(log.name))
        proc = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def cpu(self) -> float:
        total = 0.0
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    total += tree_cpu(proc.pid)
        return total

    def job_runs(self) -> int:
        """Jobs the workers started, from their logs (rq logs ``<queue>: <func>(<args>) (<id>)``)."""
        pattern = re.compile(rf"{re.escape(QUEUE_NAME)}: engine\.jobs\.fire_timer_job\(")
        return sum(len(pattern.findall(path.read_text(errors="replace"))) for path in self.logs if path.exists())

    def errors(self) -> list[str]:
        """Every error line of the workers' logs, each traceback whole (up to the exception
        it ends with): what raised under load is read from here, not guessed."""
        lines: list[str] = []
        for path in self.logs:
            if not path.exists():
                continue
            in_traceback = False
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith("Traceback"):
                    in_traceback = True
                    lines.append(line)
                elif in_traceback:
                    lines.append(line)
                    # The exception line closes a traceback: the first line not indented.
                    in_traceback = line.startswith((" ", "\t")) or not line.strip() or line.startswith(
                        ("During handling", "The above exception"))
                elif "sweep failed" in line or "ERROR" in line or "WARNING" in line:
                    lines.append(line)
        return lines

    def remove_logs(self) -> None:
        for path in self.logs:
            with contextlib.suppress(OSError):
                path.unlink()


def _spin(stop_at: float) -> None:
    """Keep one core busy (pure Python, no I/O) until ``stop_at`` (time.monotonic)."""
    n = 0
    while time.monotonic() < stop_at:
        for _ in range(10_000):
            n += 1


@contextlib.contextmanager
def cores_busy(count: int, longest: float) -> Iterator[None]:
    """``--busy N``: N processes that each keep a core busy while the block runs (at most
    ``longest`` seconds), as another service on the host would."""
    if count <= 0:
        yield
        return
    context = multiprocessing.get_context("spawn")
    spinners = [context.Process(target=_spin, args=(time.monotonic() + longest,), daemon=True) for _ in range(count)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.terminate()
        for spinner in spinners:
            spinner.join(timeout=5)


@contextlib.contextmanager
def workers_running(database_url: str, redis_url: str, sweep_interval: float = SWEEP_INTERVAL) -> Iterator[Workers]:
    workers = Workers(database_url, redis_url, sweep_interval)
    try:
        yield workers
    finally:
        workers.stop_all()


def wait_for_registered(redis: Redis, count: int, timeout: float = 180.0) -> None:
    # Generous: on a host loaded by others a worker takes tens of seconds just to import.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if redis.scard(f"rq:workers:{QUEUE_NAME}") >= count:
            return
        time.sleep(0.1)
    raise BenchError(f"{count} rq worker(s) did not register within {timeout:.0f} s")


# -- Part A: creating the timers ------------------------------------------------------------
def deploy(db: Database, rt: Runtime) -> None:
    with db.transaction() as s:
        results = deployments.deploy(s, rt, bundles.from_directory(BUNDLE), actor=ACTOR)
    if not any(r.version.process_key == PROCESS_KEY for r in results):
        raise BenchError(f"the bundle did not deploy process {PROCESS_KEY!r}")


def start_rate(database_url: str, n: int = 40) -> float:
    """Starts per second in one process, measured in a transaction that is rolled back (no
    instance, no timer, no enqueue survives)."""
    db, rt = make_runtime(database_url, None)
    try:
        with contextlib.suppress(_Rollback), db.transaction() as s:
            instances.start(s, rt, process_key=PROCESS_KEY, business_key="warm-up", actor=ACTOR,
                            data={"fire_at": (rt.now() + timedelta(days=1)).isoformat()})
            t0 = time.perf_counter()
            for i in range(n):
                instances.start(s, rt, process_key=PROCESS_KEY, business_key=f"probe-{i}", actor=ACTOR,
                                data={"fire_at": (rt.now() + timedelta(days=1)).isoformat()})
            s.flush()
            elapsed = time.perf_counter() - t0
            raise _Rollback
    finally:
        db.dispose()
    return n / elapsed


class _Rollback(Exception):
    pass


def _create_slice(args: tuple[str, str, int, int, int, str, float]) -> tuple[int, float]:
    """One creating process: start instances ``offset, offset + step, ...`` below ``n``, the
    i-th due at ``t0 + window * i / n``. Returns (how many, seconds)."""
    database_url, redis_url, offset, step, n, t0_iso, window = args
    db, rt = make_runtime(database_url, redis_url)
    t0 = datetime.fromisoformat(t0_iso)
    started = time.perf_counter()
    count = 0
    try:
        for i in range(offset, n, step):
            fire_at = t0 + timedelta(seconds=window * i / n)
            with db.transaction() as s:
                instances.start(s, rt, process_key=PROCESS_KEY, business_key=f"T-{i:06d}", actor=ACTOR,
                                data={"fire_at": fire_at.isoformat()})
            count += 1
    finally:
        db.dispose()
    return count, time.perf_counter() - started


# -- Part A: one run ------------------------------------------------------------------------
@dataclass
class FireRun:
    name: str
    timers: int = 0
    create_seconds: float = 0.0
    create_procs: int = 0
    lead_seconds: float = 0.0
    slack_seconds: float = 0.0  # from "workers registered" to the window opening
    scheduled_in_redis: int = 0
    fired: int = 0
    lags_ms: list[float] = field(default_factory=list)
    duplicates: int = 0
    losses: int = 0  # not fired LOSS_GRACE seconds after the window closed
    never: int = 0  # not fired at all before the benchmark stopped waiting
    drain_seconds: float = 0.0  # how long the benchmark waited after the window closed
    last_fired_after_window: float = 0.0
    completed: int = 0
    max_backlog: int = 0  # waiting timers already due, at worst
    lost_in_flush: int | None = None  # scheduled/queued jobs in Redis when it was flushed
    job_runs: int = 0
    worker_cpu: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by part, from the window opening
    busy_seconds: float = 0.0  # wall time from the window opening to the last poll
    system_busy: float = 0.0  # share of all CPUs busy during the window and the grace period
    worker_errors: list[str] = field(default_factory=list)
    busy_cores: int = 0  # --busy: cores kept busy by the benchmark during the window
    load_at_open: float = 0.0  # 1-minute load average when the window opened, and at its end
    load_at_end: float = 0.0

    def pct(self, q: float) -> float:
        if not self.lags_ms:
            return float("nan")
        ordered = sorted(self.lags_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run_fire(args: argparse.Namespace, url: URL, *, flush_halfway: bool) -> FireRun:
    result = FireRun(name="Redis FLUSHDB halfway" if flush_halfway else "undisturbed", timers=args.timers,
                     busy_cores=args.busy)
    database_url = url_string(url)
    prepare_database(url, args.server_url)
    redis = redis_connection(args.redis_url)
    redis.flushdb()
    warn_foreign(redis, result.name)
    db, rt = make_runtime(database_url, None)
    deploy(db, rt)

    rate = start_rate(database_url)
    procs = args.create_procs
    # Parallel starts share the CPUs with PostgreSQL (and whatever else runs on the host):
    # plan for no parallel speed-up and a margin, so the window never opens early.
    lead = args.lead if args.lead else 2.0 * args.timers / rate + 20.0
    t0 = rt.now() + timedelta(seconds=lead)
    window = args.window
    result.lead_seconds, result.create_procs = lead, procs
    print(f"  [{result.name}] one process starts {rate:.0f} instances/s; creating {args.timers:,} in {procs} "
          f"processes, window opens in {lead:.0f} s", flush=True)

    started = time.perf_counter()
    jobs = [(database_url, args.redis_url, k, procs, args.timers, t0.isoformat(), window) for k in range(procs)]
    with multiprocessing.get_context("spawn").Pool(procs) as pool:
        created = sum(count for count, _ in pool.map(_create_slice, jobs))
    result.create_seconds = time.perf_counter() - started
    if created != args.timers:
        raise BenchError(f"created {created} instances, expected {args.timers}")
    with db.transaction() as s:
        timers = s.execute(select(func.count()).select_from(Timer).where(Timer.status == "waiting")).scalar_one()
    if timers != args.timers:
        raise BenchError(f"{timers} waiting timers after creating {args.timers} instances")
    result.scheduled_in_redis = int(redis.zcard(f"rq:scheduled:{QUEUE_NAME}"))
    print(f"  [{result.name}] created in {result.create_seconds:.1f} s "
          f"({args.timers / result.create_seconds:.0f}/s); {result.scheduled_in_redis:,} scheduled in rq",
          flush=True)

    window_end = t0 + timedelta(seconds=window)
    cutoff = window_end + timedelta(seconds=LOSS_GRACE)
    # Late is not lost: keep waiting (up to --drain seconds) to tell them apart.
    deadline = window_end + timedelta(seconds=max(LOSS_GRACE, args.drain))
    result.drain_seconds = max(LOSS_GRACE, args.drain)
    busy: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    with workers_running(database_url, args.redis_url, args.sweep_interval) as workers:
        try:
            workers.start()
            workers.start()
            wait_for_registered(redis, 2)
            result.slack_seconds = (t0 - rt.now()).total_seconds()
            print(f"  [{result.name}] two workers registered {result.slack_seconds:.1f} s before the window opens",
                  flush=True)
            if result.slack_seconds < 0:
                print("  WARNING: the window opened before the workers were ready; raise --lead", flush=True)
            _sleep_until(rt, t0 - timedelta(seconds=1.0 if args.busy else 0.0))
            busy = cores_busy(args.busy, (deadline - rt.now()).total_seconds() + 5.0)
            busy.__enter__()
            _sleep_until(rt, t0)
            result.load_at_open = os.getloadavg()[0]
            cpu0, sys0 = workers.cpu(), system_cpu()
            snap0, wall0 = cpu_snapshot([p.pid for p in workers.procs]), time.monotonic()
            flushed = False
            while rt.now() < deadline:
                now = rt.now()
                if flush_halfway and not flushed and now >= t0 + timedelta(seconds=window / 2):
                    result.lost_in_flush = int(redis.zcard(f"rq:scheduled:{QUEUE_NAME}")
                                               + redis.llen(f"rq:queue:{QUEUE_NAME}"))
                    redis.flushdb()
                    flushed = True
                    print(f"  [{result.name}] FLUSHDB at +{(now - t0).total_seconds():.1f} s: "
                          f"{result.lost_in_flush:,} jobs dropped from Redis", flush=True)
                with db.transaction() as s:
                    waiting, backlog = s.execute(select(
                        func.count(), func.count().filter(Timer.due_at < now)
                    ).select_from(Timer).where(Timer.status == "waiting")).one()
                result.max_backlog = max(result.max_backlog, backlog)
                if waiting == 0 and now >= t0:
                    break
                time.sleep(0.25)
            cpu1, sys1 = workers.cpu(), system_cpu()
            result.cpu = cpu_split(snap0, cpu_snapshot([p.pid for p in workers.procs]))
            result.busy_seconds = time.monotonic() - wall0
            result.worker_cpu = cpu1 - cpu0
            result.system_busy = (sys1[0] - sys0[0]) / max(1.0, sys1[1] - sys0[1])
            result.load_at_end = os.getloadavg()[0]
            busy.__exit__(None, None, None)
            time.sleep(2.0)  # let late duplicate deliveries run: they must change nothing
        finally:
            busy.__exit__(None, None, None)  # a second exit of the spinners changes nothing
            workers.stop_all()
            result.job_runs = workers.job_runs()
            result.worker_errors = workers.errors()
            if args.keep_logs:
                print(f"  [{result.name}] worker logs: {', '.join(str(p) for p in workers.logs)}", flush=True)
            else:
                workers.remove_logs()

    with db.transaction() as s:
        rows = s.execute(select(Timer.status, Timer.due_at, Timer.fired_at)).all()
        fired_counts = s.execute(
            select(AuditEvent.instance_id, func.count()).where(AuditEvent.kind == "timer.fired")
            .group_by(AuditEvent.instance_id)
        ).all()
        result.completed = s.execute(select(func.count()).select_from(ProcessInstance)
                                     .where(ProcessInstance.status == "completed")).scalar_one()
    for status, due_at, fired_at in rows:
        if status == "fired" and fired_at is not None:
            result.fired += 1
            result.lags_ms.append((fired_at - due_at).total_seconds() * 1000.0)
            result.last_fired_after_window = max(result.last_fired_after_window,
                                                 (fired_at - window_end).total_seconds())
            if fired_at > cutoff:
                result.losses += 1
        else:
            result.losses += 1
            result.never += 1
    result.duplicates = sum(1 for _, n in fired_counts if n > 1)
    db.dispose()
    redis.flushdb()
    return result


def _sleep_until(rt: Runtime, moment: datetime) -> None:
    remaining = (moment - rt.now()).total_seconds()
    if remaining > 0:
        time.sleep(remaining)


# -- Part B: a million pending timers -------------------------------------------------------
@dataclass
class PendingRun:
    pending: int = 0
    insert_seconds: float = 0.0
    sweep_idle_ms: list[float] = field(default_factory=list)  # nothing within the horizon
    sweep_busy_ms: list[float] = field(default_factory=list)  # steady state: some due soon
    sweep_busy_rows: list[int] = field(default_factory=list)
    plan: list[str] = field(default_factory=list)
    plan_next_due: list[str] = field(default_factory=list)
    idle_seconds: float = 0.0
    idle_cpu: float = 0.0
    run_once_ms: list[float] = field(default_factory=list)
    table_mb: float = 0.0
    index_mb: float = 0.0


def run_pending(args: argparse.Namespace, url: URL) -> PendingRun:
    result = PendingRun(pending=args.pending)
    database_url = url_string(url)
    prepare_database(url, args.server_url)
    redis = redis_connection(args.redis_url)
    redis.flushdb()
    warn_foreign(redis, "Part B")
    db, rt = make_runtime(database_url, None)
    scheduler = RqScheduler(args.redis_url)
    # Due from 15 minutes from now on, over 30 days: nothing is due while the idle worker
    # runs, and the sweep's 30 s horizon holds ~N / 86,400 rows once the first is near.
    first_due = rt.now() + timedelta(minutes=15)
    span = timedelta(days=30).total_seconds()
    t = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO bpm_timer (kind, instance_id, task_uuid, element_id, payload, due_at, status, created_at) "
            "SELECT 'sla', NULL, NULL, 'bench', '{}', "
            "       :first + make_interval(secs => (g - 1) * :span / :n), 'waiting', now() "
            "FROM generate_series(1, :n) AS g"
        ), {"first": first_due, "span": span, "n": args.pending})
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE bpm_timer"))
        result.table_mb = conn.execute(text("SELECT pg_table_size('bpm_timer')")).scalar_one() / 2**20
        result.index_mb = conn.execute(text("SELECT pg_relation_size('ix_timer_status_due')")).scalar_one() / 2**20
    result.insert_seconds = time.perf_counter() - t
    print(f"  inserted {args.pending:,} pending timers in {result.insert_seconds:.1f} s", flush=True)

    captured: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "FROM bpm_timer" in statement and not captured:
            captured.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", capture)
    for i in range(args.sweep_runs + 1):
        t = time.perf_counter()
        with db.transaction() as s:
            sweep(s, scheduler, rt.now())
        if i:  # the first run warms the pool and the statement cache
            result.sweep_idle_ms.append((time.perf_counter() - t) * 1000.0)
    event.remove(db.engine, "before_cursor_execute", capture)
    for i in range(args.sweep_runs + 1):
        # As if the clock stood where the earliest pending timers fall due, one sweep
        # interval further at each run: the sweep enqueues what lies within its horizon.
        now = first_due + timedelta(seconds=i)
        t = time.perf_counter()
        with db.transaction() as s:
            rows = sweep(s, scheduler, now)
        if i:
            result.sweep_busy_ms.append((time.perf_counter() - t) * 1000.0)
            result.sweep_busy_rows.append(rows)
    redis.flushdb()

    statement, parameters = captured[0]
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters)
        result.plan = [row[0] for row in cursor.fetchall()]
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) SELECT min(due_at) FROM bpm_timer WHERE status = 'waiting'")
        result.plan_next_due = [row[0] for row in cursor.fetchall()]
        cursor.close()
    finally:
        raw.close()

    # One idle worker: nothing due within the horizon for the whole measurement.
    with workers_running(database_url, args.redis_url, args.sweep_interval) as workers:
        proc = workers.start()
        wait_for_registered(redis, 1)
        time.sleep(3.0)  # past start-up: imports, the scheduler fork, the first sweep
        cpu0, t0 = tree_cpu(proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        result.idle_cpu, result.idle_seconds = tree_cpu(proc.pid) - cpu0, time.monotonic() - t0
        workers.stop_all()
        workers.remove_logs()
    redis.flushdb()

    runner = EmbeddedRunner(db, rt)
    for i in range(args.sweep_runs + 1):
        t = time.perf_counter()
        runner.run_once()
        if i:
            result.run_once_ms.append((time.perf_counter() - t) * 1000.0)
    db.dispose()
    return result


# -- report ---------------------------------------------------------------------------------
def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def print_fire_table(runs: list[FireRun], window: float, sweep_interval: float) -> None:
    print()
    print(f"Part A: BPMN timers due within {window:.0f} s, fired by two rq workers "
          f"(bpm worker --sweep-interval {sweep_interval:g})")
    header = (f"  {'scenario':<24}{'timers':>8}{'fired':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
              f"{'dups':>6}{'lost':>7}{'never':>7}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for r in runs:
        print(f"  {r.name:<24}{r.timers:>8,}{r.fired:>8,}{r.pct(0.50):>9.0f}{r.pct(0.99):>9.0f}"
              f"{max(r.lags_ms, default=float('nan')):>9.0f}{r.duplicates:>6}{r.losses:>7}{r.never:>7}")
    print(f"  {'target':<24}{'':>8}{'':>8}{'':>9}{'< 2000':>9}{'< 5000':>9}{'0':>6}{'0':>7}{'0':>7}")
    print(f"  (lost: not fired {LOSS_GRACE:.0f} s after the window closed; never: not fired when the benchmark "
          "stopped waiting)")
    print()
    for r in runs:
        mx = max(r.lags_ms, default=float("inf"))
        print(f"  {r.name}: p99 {verdict(r.pct(0.99) < TARGET_P99_MS)}, max {verdict(mx < TARGET_MAX_MS)}, "
              f"duplicates {verdict(r.duplicates == 0)}, losses {verdict(r.losses == 0)}")
        done = (f"all fired {r.last_fired_after_window:+.1f} s after the window closed"
                if r.never == 0 else f"{r.never:,} NEVER fired within {r.drain_seconds:.0f} s after the window")
        if r.losses:
            done += f"; {r.losses:,} not fired by +{LOSS_GRACE:.0f} s (counted as lost), {r.never:,} never"
        print(f"    created {r.timers:,} instances in {r.create_seconds:.1f} s ({r.timers / r.create_seconds:.0f}/s, "
              f"{r.create_procs} processes; lead {r.lead_seconds:.0f} s, workers ready {r.slack_seconds:.1f} s "
              f"before the window); {done}")
        mean = statistics.fmean(r.lags_ms) if r.lags_ms else float("nan")
        print(f"    lag mean {mean:.0f} ms, p90 {r.pct(0.90):.0f} ms; worst backlog {r.max_backlog:,} due timers "
              f"waiting; {r.completed:,} instances completed")
        flush = f"; {r.lost_in_flush:,} jobs dropped by FLUSHDB" if r.lost_in_flush is not None else ""
        print(f"    rq job runs {r.job_runs:,} for {r.fired:,} firings ({r.job_runs / max(1, r.fired):.2f} per timer)"
              f"{flush}; workers used {r.worker_cpu:.1f} CPU s ({r.worker_cpu * 1000 / max(1, r.fired):.0f} ms "
              f"per firing); all CPUs {r.system_busy:.0%} busy")
        if r.cpu:
            parts = ", ".join(f"{name} {seconds:.0f}" for name, seconds in r.cpu.items())
            print(f"    CPU s over {r.busy_seconds:.0f} s wall from the window opening: {parts}")
        print(f"    {r.busy_cores} core(s) kept busy by --busy; load average {r.load_at_open:.1f} when the window "
              f"opened, {r.load_at_end:.1f} at its end ({os.cpu_count()} CPUs)")
        print(f"    worker log: {len(r.worker_errors)} error line(s)")
        for line in r.worker_errors:
            print(f"      | {line[:300]}")


def print_pending_table(r: PendingRun, idle_sweep_interval: float) -> None:
    print()
    print(f"Part B: {r.pending:,} pending SLA timers over 30 days "
          f"(table {r.table_mb:.0f} MB, ix_timer_status_due {r.index_mb:.0f} MB; inserted in {r.insert_seconds:.1f} s)")
    rows = statistics.fmean(r.sweep_busy_rows) if r.sweep_busy_rows else 0.0
    lines = [
        ("sweep, nothing within 30 s", r.sweep_idle_ms, "per run, transaction included"),
        (f"sweep, ~{rows:.0f} rows due soon", r.sweep_busy_ms, "per run, incl. enqueueing them in rq"),
        ("EmbeddedRunner.run_once()", r.run_once_ms, "fire_due + min(due_at)"),
    ]
    print(f"  {'measure':<32}{'runs':>6}{'mean ms':>10}{'p95 ms':>10}  note")
    for name, values, note in lines:
        print(f"  {name:<32}{len(values):>6}{statistics.fmean(values):>10.2f}{p95(values):>10.2f}  {note}")
    per_minute = r.idle_cpu / r.idle_seconds * 60.0
    print(f"  idle bpm worker (sweep every {idle_sweep_interval:g} s, rq scheduler every 1 s): "
          f"{r.idle_cpu:.2f} CPU s in {r.idle_seconds:.0f} s wall = {per_minute:.2f} CPU s per minute "
          f"({per_minute / 60.0:.1%} of one core)")
    print("  EXPLAIN (ANALYZE, BUFFERS) of the sweep query:")
    for line in r.plan:
        print(f"    {line}")
    uses_index = any("ix_timer_status_due" in line for line in r.plan)
    print(f"    -> {'index scan on ix_timer_status_due' if uses_index else 'NO index scan on ix_timer_status_due'}")
    print("  EXPLAIN (ANALYZE, BUFFERS) of next_due (min(due_at), used by the embedded runner):")
    for line in r.plan_next_due:
        print(f"    {line}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1,000 timers over 20 s, 100,000 pending")
    parser.add_argument("--timers", type=int, help="Part A timers (default 10,000; quick 1,000)")
    parser.add_argument("--window", type=float, help="Part A window in seconds (default 60; quick 20)")
    parser.add_argument("--pending", type=int, help="Part B pending timers (default 1,000,000; quick 100,000)")
    parser.add_argument("--create-procs", type=int, default=3, help="processes starting instances (default 3)")
    parser.add_argument("--lead", type=float, help="seconds from now to the window (default: from a measured rate)")
    parser.add_argument("--sweep-runs", type=int, default=20, help="measured sweep / run_once runs (default 20)")
    parser.add_argument("--idle-seconds", type=float, help="idle worker measurement (default 30; quick 10)")
    parser.add_argument("--part", choices=("a", "b", "all"), default="all")
    parser.add_argument("--drain", type=float, help="seconds to keep waiting for late timers after the window "
                        "(default 300; quick 60); only those not fired by +30 s count as lost")
    parser.add_argument("--sweep-interval", type=float, default=SWEEP_INTERVAL,
                        help="the workers' --sweep-interval (default 1; a huge value turns sweeps off: diagnosis)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the Part A worker logs (paths are printed)")
    parser.add_argument("--no-flush-run", action="store_true", help="skip the Part A run with FLUSHDB halfway")
    parser.add_argument("--busy", type=int, default=0, metavar="N",
                        help="keep N cores busy (a spinning process each) while Part A's window and drain run")
    parser.add_argument("--server-url", default=SERVER_URL, help=f"maintenance database URL (default {SERVER_URL})")
    parser.add_argument("--database", default=DATABASE,
                        help=f"the benchmark's own database, dropped and migrated afresh (default {DATABASE}); "
                        "another name keeps two people's runs on one server apart")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"a spare Redis database (default {REDIS_URL})")
    args = parser.parse_args()
    args.timers = args.timers or (1_000 if args.quick else 10_000)
    args.window = args.window or (20.0 if args.quick else 60.0)
    args.pending = args.pending or (100_000 if args.quick else 1_000_000)
    args.idle_seconds = args.idle_seconds or (10.0 if args.quick else 30.0)
    args.drain = args.drain or (60.0 if args.quick else 300.0)

    url = bench_url(args.server_url, args.database)
    engine = create_engine(args.server_url)
    with engine.connect() as conn:
        pg_version = str(conn.execute(text("SHOW server_version")).scalar_one()).split(" ")[0]
    engine.dispose()
    redis_version = redis_connection(args.redis_url).info("server").get("redis_version", "?")
    print(f"Timer benchmark{' (quick)' if args.quick else ''}: Python {platform.python_version()}, "
          f"PostgreSQL {pg_version} ({url.database}), Redis {redis_version} ({args.redis_url}), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")

    runs: list[FireRun] = []
    pending: PendingRun | None = None
    try:
        if args.part in ("a", "all"):
            print("Part A ...", flush=True)
            runs.append(run_fire(args, url, flush_halfway=False))
            if not args.no_flush_run:
                runs.append(run_fire(args, url, flush_halfway=True))
        if args.part in ("b", "all"):
            print("Part B ...", flush=True)
            pending = run_pending(args, url)
    except BenchError as exc:
        print(f"benchmark setup failed: {exc}", file=sys.stderr)
        return 1
    if runs:
        print_fire_table(runs, args.window, args.sweep_interval)
    if pending is not None:
        print_pending_table(pending, args.sweep_interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
