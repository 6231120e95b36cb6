"""Functions rq workers run. Each job is one unit of work over the engine services.

rq stores a job's function by its dotted path, so jobs queued by an earlier release name
``engine.jobs.fire_timer_job``: this module keeps that path (``timers.queueing.FIRE_JOB``).
"""

from __future__ import annotations

from functools import lru_cache

from engine.bootstrap import build_runtime, rq_scheduler
from engine.config import Settings
from engine.db import Database
from engine.process.runtime import Runtime
from engine.timers import firing
from engine.timers.queueing import RqScheduler


@lru_cache(maxsize=1)
def _context() -> tuple[Database, Runtime]:
    settings = Settings.from_env()
    settings.require_audit_key()
    return (Database(settings.database_url, audit_key=settings.audit_key),
            build_runtime(settings, scheduler=rq_scheduler(settings)))


def fire_timer_job(timer_id: int) -> bool:
    """Fires the timer and, in the same transaction, other due ones (``firing.fire_batch``),
    then drops the jobs of those others, which would change nothing. Raises only when the
    database is unreachable, so rq retries with backoff."""
    db, rt = _context()
    fired, others = firing.fire_batch_once(db, rt, timer_id)
    if others and isinstance(rt.scheduler, RqScheduler):
        rt.scheduler.forget(others)
    return fired
