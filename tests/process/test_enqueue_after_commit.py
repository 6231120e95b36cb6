"""Enqueue after commit (architecture, core invariant 1): a timer row written in a
transaction reaches rq only once that transaction has committed, and never if it rolls
back. Otherwise a worker could be woken for a row it cannot see yet, or for one that never
existed.

Real Redis and the real database. Redis database 12 belongs to this module alone (the
fault tests own 15, the timer benchmark 14): it is flushed around each test, and the tests
run in one xdist worker so they never flush each other's jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import time_machine
from redis import Redis
from rq.job import Job
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.bootstrap import build_runtime
from engine.config import Settings
from engine.models import Timer
from engine.process import instances, tasks
from engine.process.runtime import Runtime
from engine.sla import admin as sla_admin
from engine.timers.queueing import RqScheduler, job_id, wake_time
from tests.conftest import People, redis_db

pytestmark = pytest.mark.xdist_group("redis-12")
REDIS_12 = redis_db(2)  # a database of its own: these tests count what is in it
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai
POLICY = {"key": "review.register", "name": "登记", "position": 10, "process_key": "review",
          "element_id": "register", "target_amount": 2, "target_unit": "WD",
          "milestones": [{"at": 0.5, "action": "notify", "to": "assignee"},
                         {"at": 1.0, "action": "escalate", "to": "managers"}]}


class Rollback(Exception):
    """Raised inside the transaction to roll it back."""


@pytest.fixture
def redis() -> Iterator[Redis]:
    connection = Redis.from_url(REDIS_12)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def rq_rt(settings: Settings, redis: Redis) -> Runtime:
    return build_runtime(settings, scheduler=RqScheduler(REDIS_12))


def _boundary_timer(s: Session, rt: Runtime, people: People) -> None:
    """Completing the approval leaves the instance waiting on its 15-day boundary timer."""
    task = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(business_key="R-1"), now=rt.now())[0][0]
    tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data={"approved": True})


def _sla_milestones(s: Session, rt: Runtime, people: People) -> None:
    """Starting a case whose first task has an SLA policy arms its milestone timers."""
    instances.start(s, rt, process_key="review", business_key="R-2", actor=people.clerk,
                    data={"priority": 50, "due_at": None})


@pytest.fixture
def ready(db, rq_rt: Runtime, people: People, review: str, redis: Redis) -> Runtime:
    """R-1 one step before its boundary timer, then the SLA policy for the first task of the
    case the next test starts; no timer exists yet, in the database or in Redis."""
    with time_machine.travel(START, tick=False):
        with db.transaction() as s:
            instances.start(s, rq_rt, process_key="review", business_key="R-1", actor=people.clerk,
                            data={"priority": 50, "due_at": None})
        with db.transaction() as s:
            task = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(business_key="R-1"),
                               now=rq_rt.now())[0][0]
            tasks.complete(s, rq_rt, task_id=task.id, actor=people.clerk, data={"amount": 10, "summary": "小额"})
        with db.transaction() as s:
            sla_admin.upsert_policy(s, rq_rt, data=POLICY, actor=people.owner)
    with db.transaction() as s:
        assert s.execute(select(Timer.id)).first() is None
    assert redis.dbsize() == 0
    return rq_rt


def _scheduled(redis: Redis, rt: Runtime) -> dict[str, datetime]:
    """Jobs waiting in rq's scheduled registry, by job id, with their wake-up times."""
    assert isinstance(rt.scheduler, RqScheduler)
    registry = rt.scheduler.queue.scheduled_job_registry
    return {job: registry.get_scheduled_time(job) for job in registry.get_job_ids()}


MAKERS = {"bpmn boundary timer": _boundary_timer, "sla milestones": _sla_milestones}


@pytest.mark.parametrize("make", list(MAKERS))
def test_a_timer_is_enqueued_only_after_its_transaction_commits(db, ready, redis, people, make):
    create: Callable[[Session, Runtime, People], None] = MAKERS[make]
    with time_machine.travel(START, tick=False), db.transaction() as s:
        create(s, ready, people)
        s.flush()
        new = {t.id: t.due_at for t in s.execute(select(Timer).where(Timer.status == "waiting")).scalars()}
        assert new  # the rows exist in the transaction ...
        assert redis.dbsize() == 0  # ... and rq has not heard of them
    assert _scheduled(redis, ready) == {job_id(t): wake_time(due) for t, due in new.items()}
    assert all(Job.exists(job_id(t), connection=redis) for t in new)


@pytest.mark.parametrize("make", list(MAKERS))
def test_a_rolled_back_transaction_enqueues_nothing(db, ready, redis, people, make):
    create: Callable[[Session, Runtime, People], None] = MAKERS[make]
    with pytest.raises(Rollback), time_machine.travel(START, tick=False), db.transaction() as s:
        create(s, ready, people)
        s.flush()
        new = list(s.execute(select(Timer.id).where(Timer.status == "waiting")).scalars())
        assert new
        raise Rollback
    with db.transaction() as s:
        assert s.execute(select(Timer.id).where(Timer.id.in_(new))).first() is None
    assert redis.dbsize() == 0  # no job, no registry entry, no queue
