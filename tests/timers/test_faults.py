"""Timer delivery through real rq workers on real Redis and PostgreSQL, under faults:
Redis flushed, two workers racing, a worker SIGKILLed mid-firing, the database away.

Timers here are due in the (real) past when the workers start, because they were created
under time-machine: nothing sleeps for a timer. The tests wait only for worker processes,
polling the database with a deadline.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import time_machine
from redis import Redis
from rq.exceptions import InvalidJobOperation
from sqlalchemy import func, select

from engine.bootstrap import build_runtime
from engine.config import Settings
from engine.db import Database
from engine.models import AuditEvent, ProcessInstance, Timer
from engine.process import instances
from engine.timers.queueing import RqScheduler
from tests.conftest import REDIS_URL, deploy_fixture, redis_db
from tests.support.cli import AUDIT_KEY
from tests.timers.test_firing import _to_waiting_for_ack

# Every test here owns Redis database 15 (it flushes it): run them all in one xdist worker.
pytestmark = pytest.mark.xdist_group("redis")
ROOT = Path(__file__).resolve().parents[2]
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
# Only the scheduler-process test uses it (it runs in the "redis" group with the others).
OWN_REDIS_URL = redis_db(1)
WORKER = [sys.executable, "-c", "from api.cli import run; run()", "worker", "--sweep-interval", "0.3",
          "--stale-after", "1"]


@pytest.fixture
def redis():
    connection = Redis.from_url(REDIS_URL)
    connection.flushdb()
    yield connection
    connection.flushdb()


@pytest.fixture
def rq_rt(settings, redis):
    settings = Settings.from_env({"BPM_DATABASE_URL": settings.database_url, "BPM_REDIS_URL": REDIS_URL,
                                  "BPM_SERVICE_MODULES": "tests.support.service_functions"})
    return build_runtime(settings, scheduler=RqScheduler(REDIS_URL))


class Workers:
    def __init__(self, database_url: str) -> None:
        # `bpm worker` is a production entry point: it does not start without a secret key.
        self.env = {**os.environ, "BPM_DATABASE_URL": database_url, "BPM_REDIS_URL": REDIS_URL,
                    "BPM_SECRET_KEY": "test-only-secret-key-0123456789",
                    "BPM_SERVICE_MODULES": "tests.support.service_functions", "PYTHONPATH": str(ROOT),
                    "BPM_AUDIT_KEY": AUDIT_KEY}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, database_url: str | None = None, log: Path | None = None,
              redis_url: str | None = None) -> subprocess.Popen[bytes]:
        env = dict(self.env)
        if database_url:
            env["BPM_DATABASE_URL"] = database_url
        if redis_url:
            env["BPM_REDIS_URL"] = redis_url
        # Its own process group: rq runs its scheduler in a child process, which outlives a
        # SIGKILLed worker and would go on draining this Redis database in later tests.
        with log.open("wb") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as output:
            proc = subprocess.Popen(WORKER, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group


@pytest.fixture
def workers(settings):
    pool = Workers(settings.database_url)
    yield pool
    pool.stop_all()


def wait_until(predicate, *, timeout: float = 60.0, what: str = "condition", log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    tail = f"; the worker's log ends:\n{log.read_text(errors='replace')[-3000:]}" if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}{tail}")


def _fired_counts(db: Database, instance_ids: list[int]) -> dict[int, int]:
    with db.transaction() as s:
        rows = s.execute(select(AuditEvent.instance_id, func.count()).where(
            AuditEvent.kind == "timer.fired", AuditEvent.instance_id.in_(instance_ids))
            .group_by(AuditEvent.instance_id)).all()
    counts = {i: 0 for i in instance_ids}
    counts.update({i: n for i, n in rows})
    return counts


def _all_completed(db: Database, instance_ids: list[int]) -> bool:
    with db.transaction() as s:
        statuses = s.execute(select(ProcessInstance.status).where(ProcessInstance.id.in_(instance_ids))).scalars()
        return all(status == "completed" for status in statuses)


def _waiting_instances(db, rt, people, n: int) -> list[int]:
    deploy_fixture(db, rt, "review", people.owner)
    with time_machine.travel(START, tick=False):
        return [_to_waiting_for_ack(db, rt, people, key=f"R-{i}") for i in range(n)]


def test_timers_enqueued_then_lost_in_a_redis_flush_all_fire_after_the_sweep(db, rq_rt, people, redis, workers):
    ids = _waiting_instances(db, rq_rt, people, 12)
    # The timers were enqueued in rq after each commit (rq_rt announces them); whatever Redis
    # holds of them now, the flush loses it, and the sweep must bring every one back.
    redis.flushdb()
    workers.start()
    wait_until(lambda: _all_completed(db, ids), what="all timers to fire after the flush")
    assert set(_fired_counts(db, ids).values()) == {1}


def test_a_worker_idle_for_longer_than_a_socket_timeout_still_listens_and_fires_at_once(
        db, rq_rt, people, redis, workers, tmp_path):
    # redis-py closes a read after 5 s by default. A worker whose blocking dequeue ran on such a
    # connection took every idle spell for Redis being down and slept 1, 2, 4... up to 60 s
    # before listening again: a quiet night made the morning's timers late by up to a minute.
    log = tmp_path / "worker.log"
    workers.start(log=log)
    wait_until(lambda: b"Listening on" in log.read_bytes(), timeout=30, what="the worker to listen")
    time.sleep(7)  # idle past redis-py's 5 s socket timeout (what is tested is the idle spell)
    ids = _waiting_instances(db, rq_rt, people, 3)  # due in the past, announced to rq on commit
    wait_until(lambda: _all_completed(db, ids), timeout=5, what="the timers to fire after the idle spell")
    assert b"could not connect to Redis" not in log.read_bytes()


def test_two_workers_and_duplicate_deliveries_fire_each_timer_exactly_once(db, rq_rt, people, redis, workers):
    ids = _waiting_instances(db, rq_rt, people, 20)
    with db.transaction() as s:
        timers = s.execute(select(Timer.id, Timer.due_at).where(Timer.instance_id.in_(ids))).all()
    scheduler = RqScheduler(REDIS_URL)
    for timer_id, due_at in timers:  # a second delivery of every timer
        scheduler.queue.enqueue("engine.jobs.fire_timer_job", timer_id)
        scheduler.enqueue(timer_id, due_at)
    workers.start()
    workers.start()
    wait_until(lambda: _all_completed(db, ids), what="all timers to fire")
    time.sleep(1.0)  # let the duplicate deliveries run too: they must change nothing
    assert set(_fired_counts(db, ids).values()) == {1}


def test_a_worker_killed_while_firing_leaves_the_timer_to_fire_exactly_once_later(
        db, rq_rt, people, redis, workers, tmp_path):
    marker, release = tmp_path / "attempts.txt", tmp_path / "release"
    deploy_fixture(db, rq_rt, "timer_block", people.owner)
    with time_machine.travel(START, tick=False), db.transaction() as s:
        instance_id = instances.start(s, rq_rt, process_key="timer_block", business_key="K-1", actor=people.system,
                                      data={"marker": str(marker), "release": str(release)}).id
    first = workers.start()
    wait_until(lambda: marker.exists() and marker.read_text().count("attempt") == 1, what="the first attempt")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    with db.transaction() as s:
        assert s.execute(select(Timer.status).where(Timer.instance_id == instance_id)).scalar_one() == "waiting"
        assert s.get(ProcessInstance, instance_id).status == "running"
    assert _fired_counts(db, [instance_id]) == {instance_id: 0}

    release.touch()
    workers.start()
    wait_until(lambda: _all_completed(db, [instance_id]), what="the timer to fire after the restart")
    assert _fired_counts(db, [instance_id]) == {instance_id: 1}
    assert marker.read_text().count("attempt") == 2  # the killed attempt was rolled back


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in found.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait() is missing


def test_rqs_scheduler_process_ends_with_a_worker_killed_by_sigkill(db, rq_rt, people, redis, workers, tmp_path):
    # rq forks its scheduler; nothing told it that its worker had died, and it went on
    # moving jobs in Redis for a worker that no longer existed. A Redis database of its own:
    # rq starts a scheduler only where no other holds the queue's scheduler lock.
    own = Redis.from_url(OWN_REDIS_URL)
    own.flushdb()
    log = tmp_path / "worker.log"
    worker = workers.start(log=log, redis_url=OWN_REDIS_URL)
    wait_until(lambda: bool(_children(worker.pid)), timeout=60, what="rq's scheduler process", log=log)
    [scheduler] = _children(worker.pid)
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=10)
    wait_until(lambda: not _alive(scheduler), timeout=10, what="the scheduler to end with its worker")
    own.flushdb()
    own.close()


class PausableProxy:
    """A TCP proxy to PostgreSQL that can drop every connection and refuse new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def resume(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def pause(self) -> None:
        with self._lock:
            if self._server is not None:
                # shutdown() first: close() alone does not wake a thread blocked in accept(),
                # which would go on accepting connections while the "database" is away.
                with contextlib.suppress(OSError):
                    self._server.shutdown(socket.SHUT_RDWR)
                self._server.close()
                self._server = None
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._conns.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.close()


def test_workers_retry_while_the_database_is_away_and_fire_everything_when_it_returns(
        db, rq_rt, people, redis, workers, settings):
    proxy = PausableProxy(("127.0.0.1", 5432))
    proxy.resume()
    proxied_url = settings.database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    try:
        deploy_fixture(db, rq_rt, "review", people.owner)
        workers.start(database_url=proxied_url)
        time.sleep(1.5)  # the worker is up and has swept once through the proxy
        proxy.pause()
        with time_machine.travel(START, tick=False):
            ids = [_to_waiting_for_ack(db, rq_rt, people, key=f"D-{i}") for i in range(5)]
        time.sleep(3.0)  # deliveries and sweeps fail meanwhile
        assert _fired_counts(db, ids) == {i: 0 for i in ids}
        proxy.resume()
        wait_until(lambda: _all_completed(db, ids), timeout=90, what="timers to fire once the database is back")
        assert set(_fired_counts(db, ids).values()) == {1}
    finally:
        proxy.pause()


def test_the_sweep_takes_a_due_timer_it_hands_over_out_of_rqs_scheduler(db, rq_rt, people, redis, review):
    # A due timer still parked in rq's scheduler is handed to the workers directly; the parked
    # copy must go, or the scheduler queues the same job id again while a worker runs it.
    from engine.timers import queueing

    with time_machine.travel(START, tick=False):
        instance_id = _to_waiting_for_ack(db, rq_rt, people)
    with db.transaction() as s:
        timer = s.execute(select(Timer).where(Timer.instance_id == instance_id)).scalar_one()
    scheduler = rq_rt.scheduler
    # Parked by the commit that created it (the runtime enqueues after commit).
    assert queueing.job_id(timer.id) in scheduler.queue.scheduled_job_registry.get_job_ids()
    with time_machine.travel(timer.due_at.replace(microsecond=0).timestamp() + 5, tick=False), \
            db.transaction() as s:
        assert queueing.sweep(s, scheduler, rq_rt.now()) == 1
    assert scheduler.queue.scheduled_job_registry.get_job_ids() == []
    assert scheduler.queue.get_job_ids() == [queueing.job_id(timer.id)]


@pytest.mark.parametrize("lost", [
    ValueError("Execution 6c2f51f7434f4a219340043131e94d26 not found in Redis"),
    # A job id queued twice, whose other copy's record a batch dropped (seen in the busy bench).
    InvalidJobOperation("Failed to retrieve status for job: bpm-timer-4242"),
])
def test_a_run_whose_rq_record_a_concurrent_run_removed_is_a_logged_retry_not_a_traceback(redis, caplog, lost):
    from rq import Queue

    from api.worker import make_worker

    worker = make_worker(REDIS_URL)
    job = Queue("bpm-timers", connection=redis).enqueue("engine.jobs.fire_timer_job", 4242, job_id="bpm-timer-4242")
    try:
        raise lost
    except (ValueError, InvalidJobOperation) as exc:
        exc_info = (type(exc), exc, exc.__traceback__)
    with caplog.at_level("DEBUG"):
        worker.handle_exception(job, *exc_info)
    records = [r for r in caplog.records if r.levelname in ("WARNING", "ERROR")]
    assert [r.levelname for r in records] == ["WARNING"]
    assert "timer 4242" in records[0].getMessage() and "Traceback" not in caplog.text
    # Anything else a job raises is still an error with its traceback.
    caplog.clear()
    try:
        raise ValueError("something else")
    except ValueError as exc:
        exc_info = (type(exc), exc, exc.__traceback__)
    worker.handle_exception(job, *exc_info)
    assert any(r.levelname == "ERROR" and "Traceback" in r.getMessage() for r in caplog.records)
