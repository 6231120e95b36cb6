"""The rq worker process (``bpm worker``): an adapter like the API and the CLI.

It runs rq's worker and scheduler (which move ``enqueue_at`` jobs) and, beside them, the
engine's sweep (:class:`engine.timers.queueing.Sweeper`): the database is the source of
truth, so a flushed Redis or a killed worker loses no timer. Only this module imports rq's
worker; the engine only enqueues.
"""

from __future__ import annotations

import ctypes
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from datetime import timedelta

from redis import Redis
from rq import Queue, SimpleWorker
from rq.exceptions import InvalidJobOperation
from rq.job import Job
from rq.job_lifecycle import call_exception_handlers

from engine.bootstrap import build_runtime
from engine.brokerage.board_snapshot import Refresher
from engine.config import Settings
from engine.db import Database
from engine.timers.notify import Notifier
from engine.timers.queueing import QUEUE_NAME, RqScheduler, Sweeper


def run(settings: Settings, db: Database, *, sweep_interval: float, stale_after: float, burst: bool,
        on_sweep_error: Callable[[Exception, float], None] | None = None) -> None:
    """Work the timer queue until stopped (or, with ``burst``, until it is empty)."""
    assert settings.redis_url is not None
    scheduler = RqScheduler(settings.redis_url)
    rt = build_runtime(settings, scheduler=scheduler)
    notifier = Notifier.from_settings(rt)
    sweeper = Sweeper(db, rt, scheduler, owner=f"{socket.gethostname()}:{os.getpid()}", interval=sweep_interval,
                      stale_after=timedelta(seconds=stale_after),
                      after_sweep=lambda: notifier.deliver_pending(db, rt), on_error=on_sweep_error)
    sweeper.start()
    board = None if burst else Refresher(db, rt.now)  # the supervisors' board, once a minute
    if board is not None:
        board.start()
    die_with_parent()
    try:
        make_worker(settings.redis_url).work(with_scheduler=True, burst=burst)
    finally:
        sweeper.stop()
        if board is not None:
            board.stop()


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


log = logging.getLogger(__name__)
# rq keeps one "execution" record per run of a job, under the job's id. Two runs of one job id
# at once (the sweep handing over a due timer while another worker still runs the same job, a
# Redis flush under load) share those records: the first to finish deletes the job with every
# execution record, and the second, finishing a moment later, finds its own gone and raises
# this from rq's success bookkeeping, after the job itself returned.
_LOST_EXECUTION = re.compile(r"Execution \S+ not found in Redis")
# The same when the job's own record is gone: a run of a job id queued twice (the sweep's hand-
# over beside rq's scheduler) while a batch that fired the timer dropped the other copy's record.
_LOST_STATUS = re.compile(r"Failed to retrieve status for job")


class TimerWorker(SimpleWorker):
    """rq's SimpleWorker, for whom a duplicate delivery's lost bookkeeping is expected."""

    def handle_exception(self, job: Job, *exc_info: object) -> None:
        exc = exc_info[1]
        if (isinstance(exc, ValueError) and _LOST_EXECUTION.search(str(exc))) or (
                isinstance(exc, InvalidJobOperation) and _LOST_STATUS.search(str(exc))):
            # The timer's firing committed, or found the occurrence claimed, before this was
            # raised (the database's claim fires it once): rq's retry runs again and changes
            # nothing. A warning with the timer's id, not a traceback nobody reads.
            log.warning("timer %s: a concurrent delivery of job %s removed rq's record of this run (%s); "
                        "the timer fires once, the job's retry changes nothing", _timer_id(job), job.id, exc)
            call_exception_handlers(self._exc_handlers, job, *exc_info)
            return
        super().handle_exception(job, *exc_info)


def _timer_id(job: Job) -> object:
    try:
        return job.args[0]
    except Exception:  # noqa: BLE001 - a job that cannot be read still gets its warning
        return job.id


def make_worker(redis_url: str, queue_name: str = QUEUE_NAME) -> SimpleWorker:
    """An rq worker on its own Redis client.

    rq blocks on the queue for minutes (its dequeue timeout) and widens its client's socket
    timeout to match, but only for connections opened afterwards. The shared client of
    :func:`engine.timers.queueing.connect` already has connections with redis-py's default 5 s timeout (the sweep
    thread opened them): on one of those, every idle dequeue ends in a socket timeout that
    rq treats as Redis being down, and it sleeps 1, 2, 4... up to 60 s before listening again,
    while due timers wait. SimpleWorker runs jobs in this process: no fork per job, and the
    database pool and the spec cache survive between jobs."""
    connection = Redis.from_url(redis_url)
    return TimerWorker([Queue(queue_name, connection=connection)], connection=connection)
