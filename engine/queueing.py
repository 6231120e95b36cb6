"""The rq timer backend: Redis delivers wake-ups, the database keeps the truth.

Every timer is enqueued at its due time (plus :data:`timers.FIRE_DELAY`) under a
deterministic job id, ``bpm-timer-<id>``. A periodic sweep (``sweep``) re-enqueues timers
that are due or about to be and are not fired: so a Redis that was flushed or restarted,
an enqueue that failed after commit, or a worker killed mid-job loses nothing. A timer
delivered twice fires once (``timers.fire`` claims its row). Only enqueueing lives here;
the worker loop is an adapter (``bpm worker``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from functools import lru_cache

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.models import Timer
from engine.timers import FIRE_DELAY

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

    def enqueue(self, timer_id: int, due_at: datetime) -> None:
        self.queue.enqueue_at(due_at + FIRE_DELAY, FIRE_JOB, timer_id, job_id=job_id(timer_id),
                              retry=RETRY, result_ttl=0, failure_ttl=7 * 24 * 3600)


def sweep(session: Session, scheduler: RqScheduler, now: datetime, *,
          horizon: timedelta = timedelta(seconds=30), limit: int = 5000) -> int:
    """(Re-)enqueue unfired timers due before ``now + horizon``; returns how many.

    Uses the (status, due_at) index: its cost depends on what is due soon, not on how many
    timers are pending in total.
    """
    rows = session.execute(
        select(Timer.id, Timer.due_at).where(Timer.status == "waiting", Timer.due_at < now + horizon)
        .order_by(Timer.due_at).limit(limit)
    ).all()
    for timer_id, due_at in rows:
        scheduler.enqueue(timer_id, due_at)
    return len(rows)
