"""The rq timer backend: Redis delivers wake-ups, the database keeps the truth.

Every timer is enqueued at its due time (just after it, see :func:`wake_time`) under a
deterministic job id, ``bpm-timer-<id>``. A periodic sweep (``sweep``, one worker at a time)
enqueues timers that are due or about to be, are not fired and have no live job in Redis:
so a Redis that was flushed or restarted, an enqueue that failed after commit, or a worker
killed mid-job loses nothing. A timer
delivered twice fires once (``timers.fire`` claims its row). Only enqueueing lives here;
the worker loop is an adapter (``bpm worker``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry, SimpleWorker
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.models import Timer
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

    def enqueue(self, timer_id: int, due_at: datetime, *, pipeline: Any = None) -> None:
        self.queue.enqueue_at(wake_time(due_at), FIRE_JOB, timer_id, job_id=job_id(timer_id), retry=RETRY,
                              result_ttl=0, failure_ttl=7 * 24 * 3600, pipeline=pipeline)


def die_with_parent() -> None:
    """Make every child this process forks from now on (rq's scheduler) end with it.

    rq runs its scheduler in a forked child that nothing tells when the worker is killed
    with SIGKILL: it would go on moving jobs from a dead worker's Redis registries. Linux
    sends the child SIGTERM when its parent dies (PR_SET_PDEATHSIG); elsewhere this is a
    no-op and a supervisor that kills the whole process group is needed."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def in_child() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the line above took effect
            os._exit(0)

    os.register_at_fork(after_in_child=in_child)


_PR_SET_PDEATHSIG = 1


def make_worker(redis_url: str, queue_name: str = QUEUE_NAME) -> SimpleWorker:
    """An rq worker on its own Redis client.

    rq blocks on the queue for minutes (its dequeue timeout) and widens its client's socket
    timeout to match, but only for connections opened afterwards. The shared client of
    :func:`connect` already has connections with redis-py's default 5 s timeout (the sweep
    thread opened them): on one of those, every idle dequeue ends in a socket timeout that
    rq treats as Redis being down, and it sleeps 1, 2, 4... up to 60 s before listening again,
    while due timers wait. SimpleWorker runs jobs in this process: no fork per job, and the
    database pool and the spec cache survive between jobs."""
    connection = Redis.from_url(redis_url)
    return SimpleWorker([Queue(queue_name, connection=connection)], connection=connection)


def wake_time(due_at: datetime) -> datetime:
    """Just after the due time, rounded *up* to a whole second: rq keeps scheduled times in
    whole seconds, rounded down, so an unrounded 12:00:00.700 would run at 12:00:00 and find
    the timer not yet due (SpiffWorkflow fires only when due < now)."""
    wake = due_at + FIRE_DELAY
    whole = wake.replace(microsecond=0)
    return whole if whole == wake else whole + timedelta(seconds=1)


def sweep(session: Session, scheduler: RqScheduler, now: datetime, *,
          horizon: timedelta = timedelta(seconds=10), stale_after: timedelta = timedelta(seconds=30),
          limit: int = 5000) -> int:
    """Enqueue unfired timers due before ``now + horizon`` that Redis does not hold (a
    flush, a restart, an enqueue that failed after commit, a job rq gave up on); returns
    how many were enqueued.

    Uses the (status, due_at) index, so its cost depends on what is due soon, not on how
    many timers are pending. Jobs still queued or scheduled are left alone, so a backlog is
    not multiplied by re-deliveries; a job "started" on a timer overdue by more than
    ``stale_after`` belongs to a worker that died (firing takes milliseconds) and is
    delivered again. A live duplicate is harmless: the timer row is claimed once.
    """
    rows = session.execute(
        select(Timer.id, Timer.due_at).where(Timer.status == "waiting", Timer.due_at < now + horizon)
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
