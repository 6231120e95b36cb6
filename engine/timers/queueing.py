"""The rq timer backend: Redis delivers wake-ups, the database keeps the truth.

Every timer is enqueued at its due time (just after it, see :func:`wake_time`) under a
deterministic job id, ``bpm-timer-<id>``. A periodic sweep (``sweep``, one worker at a time)
enqueues timers that are due or about to be, are not fired and have no live job in Redis:
so a Redis that was flushed or restarted, an enqueue that failed after commit, or a worker
killed mid-job loses nothing. A timer
delivered twice fires once (``firing.fire`` claims its row). Enqueueing and the sweep live
here; the rq worker that runs the jobs is an adapter (``api/worker.py``, ``bpm worker``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.db import Database
from engine.models import Timer, TimerStatus
from engine.process.runtime import Runtime
from engine.timers.firing import FIRE_DELAY

log = logging.getLogger(__name__)
QUEUE_NAME = "bpm-timers"
FIRE_JOB = "engine.jobs.fire_timer_job"
# Job retries cover short outages; the sweep covers everything longer.
RETRY = Retry(max=5, interval=[1, 2, 4, 8, 16])


def job_id(timer_id: int) -> str:
    return f"bpm-timer-{timer_id}"


@lru_cache(maxsize=8)
def connect(redis_url: str) -> Redis:
    return Redis.from_url(redis_url)


class RqScheduler:
    def __init__(self, redis_url: str, queue_name: str = QUEUE_NAME) -> None:
        self.queue = Queue(queue_name, connection=connect(redis_url))

    def timer_created(self, timer_id: int, due_at: datetime) -> None:
        """Called after commit. A Redis failure here is logged, not raised: the change is
        already committed and the sweep will deliver the timer."""
        try:
            self.enqueue(timer_id, due_at)
        except RedisError as exc:
            log.warning("could not enqueue timer %s (%s); the sweep will deliver it", timer_id, exc)

    def forget(self, timer_ids: list[int]) -> int:
        """Drop the jobs of timers fired by another timer's delivery (a batch, see
        ``firing.fire_batch``): each would cost rq's whole bookkeeping to change nothing. Only a
        job still waiting (in rq's scheduled registry or its queue) is dropped; one a worker already
        took finishes as a no-op. Best effort: a Redis failure leaves the jobs, which then change nothing."""
        if not timer_ids:
            return 0
        ids = [job_id(t) for t in timer_ids]
        try:
            return int(self._forget(keys=[Job.key_for(i) for i in ids],
                                    args=[self.queue.scheduled_job_registry.key, self.queue.key, *ids]))
        except RedisError as exc:
            log.warning("could not drop the jobs of %d timers fired in a batch (%s); they run as no-ops",
                        len(ids), exc)
            return 0

    @property
    def _forget(self) -> Any:
        script = getattr(self, "_forget_script", None)
        if script is None:
            script = self._forget_script = self.queue.connection.register_script(_FORGET)
        return script

    def enqueue(self, timer_id: int, due_at: datetime, *, pipeline: Any = None) -> None:
        self.queue.enqueue_at(wake_time(due_at), FIRE_JOB, timer_id, job_id=job_id(timer_id), retry=RETRY,
                              result_ttl=0, failure_ttl=7 * 24 * 3600, pipeline=pipeline)


# Atomic in Redis. A job is dropped only when it is taken out of rq's scheduled registry or out
# of the queue here: one a worker already popped (it then runs as a no-op) keeps its record,
# since rq's bookkeeping fails on a job whose record vanished while it ran. rq's scheduler and
# its dequeue skip a job id whose record is gone.
_FORGET = """
local dropped = 0
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 2]
  local taken = redis.call('ZREM', ARGV[1], id) + redis.call('LREM', ARGV[2], 1, id)
  if taken > 0 then
    redis.call('DEL', key)
    dropped = dropped + 1
  end
end
return dropped
"""


def wake_time(due_at: datetime) -> datetime:
    """Just after the due time, rounded *up* to a whole second: rq keeps scheduled times in
    whole seconds, rounded down, so an unrounded 12:00:00.700 would run at 12:00:00 and find
    the timer not yet due (SpiffWorkflow fires only when due < now)."""
    wake = due_at + FIRE_DELAY
    whole = wake.replace(microsecond=0)
    return whole if whole == wake else whole + timedelta(seconds=1)


def sweep(session: Session, scheduler: RqScheduler, now: datetime, *,
          horizon: timedelta = timedelta(seconds=10), stale_after: timedelta = timedelta(seconds=30),
          limit: int = 1000) -> int:
    """Enqueue unfired timers due before ``now + horizon`` that Redis does not hold (a
    flush, a restart, an enqueue that failed after commit, a job rq gave up on); returns
    how many were enqueued.

    Uses the (status, due_at) index, so its cost depends on what is due soon, not on how
    many timers are pending. Jobs still queued or scheduled are left alone, so a backlog is
    not multiplied by re-deliveries; a job "started" on a timer overdue by more than
    ``stale_after`` belongs to a worker that died (firing takes milliseconds) and is
    delivered again. A live duplicate is harmless: the timer row is claimed once.

    At most ``limit`` timers, oldest due first, are looked at per run (the sweep runs twice a
    second): under a backlog of thousands of due timers, checking each one's job on every run
    cost the worker as much CPU as firing them, while a backlog is drained oldest first by the
    batches (``firing.fire_batch``), which fire due timers whatever became of their jobs.
    """
    rows = session.execute(
        select(Timer.id, Timer.due_at).where(Timer.status == TimerStatus.WAITING, Timer.due_at < now + horizon)
        .order_by(Timer.due_at).limit(limit)
    ).all()
    if not rows:
        return 0
    redis = scheduler.queue.connection
    with redis.pipeline(transaction=False) as pipe:
        for timer_id, _ in rows:
            pipe.hget(Job.key_for(job_id(timer_id)), "status")
        statuses = pipe.execute()
    missing = [(t, due) for (t, due), status in zip(rows, statuses, strict=True)
               if _lost(status) or (status == b"started" and due < now - stale_after)
               # Due now but still parked in rq's scheduler, which moves jobs once a second:
               # hand it to the workers directly (the parked copy later finds it fired).
               or (status == b"scheduled" and due < now)]
    if missing:
        # A due timer handed over directly leaves rq's scheduler first: it would otherwise move
        # the parked copy onto the queue while a worker runs this one, two runs of one job id at
        # once. Should this process die in between, the job still reads "scheduled" and the
        # next sweep hands it over.
        parked = scheduler.queue.scheduled_job_registry
        with redis.pipeline(transaction=False) as pipe:
            for timer_id, due_at in missing:
                if due_at < now:
                    parked.remove(job_id(timer_id), pipeline=pipe)
            pipe.execute()
        with redis.pipeline() as pipe:
            for timer_id, due_at in missing:
                if due_at < now:
                    scheduler.queue.enqueue(FIRE_JOB, timer_id, job_id=job_id(timer_id), retry=RETRY,
                                            result_ttl=0, failure_ttl=7 * 24 * 3600, pipeline=pipe)
                else:
                    scheduler.enqueue(timer_id, due_at, pipeline=pipe)
            pipe.execute()
    return len(missing)


_ALIVE = {b"queued", b"scheduled", b"started", b"deferred"}  # "started" checked for staleness too


def _lost(status: bytes | None) -> bool:
    return status not in _ALIVE


def acquire_sweep_lock(scheduler: RqScheduler, owner: str, seconds: float) -> bool:
    """One sweeper at a time across all workers: the others skip this round."""
    redis = scheduler.queue.connection
    return bool(redis.set("bpm:sweep-lock", owner, nx=True, px=max(int(seconds * 1000), 100)))


class Sweeper:
    """The sweep loop a worker process runs beside rq: every ``interval`` seconds, if no
    other worker holds the sweep lock, enqueue the due timers Redis lost and deliver pending
    notifications. A failure (the database or Redis away) is reported and retried with
    backoff, up to a minute, instead of ending the loop."""

    def __init__(self, db: Database, rt: Runtime, scheduler: RqScheduler, *, owner: str, interval: float,
                 stale_after: timedelta, after_sweep: Callable[[], object] | None = None,
                 on_error: Callable[[Exception, float], None] | None = None) -> None:
        self.db, self.rt, self.scheduler = db, rt, scheduler
        self.owner, self.interval, self.stale_after = owner, interval, stale_after
        self.after_sweep, self.on_error = after_sweep, on_error
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        if acquire_sweep_lock(self.scheduler, self.owner, self.interval):
            with self.db.transaction() as session:
                sweep(session, self.scheduler, self.rt.now(), stale_after=self.stale_after)
            if self.after_sweep is not None:
                self.after_sweep()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bpm-sweep", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        backoff = self.interval
        while not self._stop.is_set():
            try:
                self.run_once()
                backoff = self.interval
            except Exception as exc:  # noqa: BLE001 - database or Redis away: back off, retry
                if self.on_error is not None:
                    self.on_error(exc, backoff)
                else:
                    log.warning("sweep failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, backoff)
                backoff = min(backoff * 2, 60.0)
            self._stop.wait(backoff)
