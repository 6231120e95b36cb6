"""Functions rq workers run. Each job is one unit of work over the engine services."""

from __future__ import annotations

from functools import lru_cache

from engine import timers
from engine.config import Settings
from engine.db import Database
from engine.queueing import RqScheduler
from engine.runtime import Runtime


@lru_cache(maxsize=1)
def _context() -> tuple[Database, Runtime]:
    settings = Settings.from_env()
    scheduler = RqScheduler(settings.redis_url) if settings.redis_url else None
    return Database(settings.database_url), Runtime(settings, scheduler=scheduler)


def fire_timer_job(timer_id: int) -> bool:
    """Raises only when the database is unreachable, so rq retries with backoff."""
    db, rt = _context()
    return timers.fire_once(db, rt, timer_id)
