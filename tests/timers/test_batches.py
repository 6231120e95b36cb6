"""One delivery fires other due timers in its transaction (``firing.fire_batch``), on
PostgreSQL: each occurrence still fires once, each instance's audit chain stays whole, an
instance someone else holds is left to its own delivery, and one firing that raises costs the
batch nothing but a retry of the delivered timer alone. Time moves with time-machine."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from redis import Redis
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from engine import audit
from engine.models import AuditEvent, ProcessInstance, Timer
from engine.process import instances
from engine.process.runtime import locked_instance
from engine.sla import admin as sla_admin
from engine.timers import firing
from engine.timers.queueing import RqScheduler, job_id
from tests.conftest import REDIS_URL, deploy_fixture

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai
DUE = START + timedelta(hours=1, seconds=1)  # just after the timers' one hour


def _start(db, rt, people, count: int, *, first: int = 0) -> list[tuple[int, int]]:
    """``count`` instances waiting on a one-hour timer before a user task: (instance, timer)."""
    if not first:
        deploy_fixture(db, rt, "timer_then_task", people.owner)
    found = []
    for n in range(first, first + count):
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="timer_then_task", business_key=f"B-{n}",
                                          actor=people.clerk, data={}).id
        with db.transaction() as s:
            found.append((instance_id, s.execute(select(Timer.id).where(Timer.instance_id == instance_id))
                          .scalar_one()))
    return found


def _fired_events(db) -> dict[int, int]:
    with db.transaction() as s:
        return dict(s.execute(select(AuditEvent.instance_id, func.count()).where(AuditEvent.kind == "timer.fired")
                              .group_by(AuditEvent.instance_id)).all())


def _statuses(db, timer_ids: list[int]) -> list[str]:
    with db.transaction() as s:
        by_id = dict(s.execute(select(Timer.id, Timer.status).where(Timer.id.in_(timer_ids))).all())
    return [by_id[t] for t in timer_ids]


def test_one_delivery_fires_the_other_due_timers_once_each_and_every_audit_chain_verifies(db, rt, people):
    with time_machine.travel(START, tick=False) as traveller:
        started = _start(db, rt, people, 4)
        traveller.move_to(START + timedelta(minutes=30))
        later = _start(db, rt, people, 1, first=4)[0]  # due half an hour after the others
        traveller.move_to(DUE)
        (_, delivered), others = started[0], started[1:]
        with db.transaction() as s:
            fired, batch = firing.fire_batch(s, rt, delivered)
        assert fired is True
        assert sorted(batch) == sorted(t for _, t in others)
        assert _statuses(db, [t for _, t in started]) == ["fired"] * 4
        assert _statuses(db, [later[1]]) == ["waiting"]  # not due yet: not in the batch
        # The others' own deliveries, arriving afterwards, change nothing.
        for _, timer_id in others:
            with db.transaction() as s:
                assert firing.fire(s, rt, timer_id) is False
    assert _fired_events(db) == {instance_id: 1 for instance_id, _ in started}
    with db.transaction() as s:
        report = audit.verify(s)
        assert report.ok, [b.format() for b in report.broken]
        heads = dict(s.execute(select(ProcessInstance.id, ProcessInstance.audit_seq)).all())
        seqs = dict(s.execute(select(AuditEvent.instance_id, func.max(AuditEvent.seq))
                              .where(AuditEvent.instance_id.is_not(None)).group_by(AuditEvent.instance_id)).all())
    assert heads == seqs


def test_a_batch_leaves_an_instance_someone_else_holds_to_its_own_delivery(db, rt, people):
    with time_machine.travel(START, tick=False) as traveller:
        (_, delivered), (held_instance, held_timer), (_, third) = _start(db, rt, people, 3)
        traveller.move_to(DUE)
        with db.transaction() as holder:
            locked_instance(holder, held_instance)  # a user's completion, another worker's batch
            with db.transaction() as s:
                # One thread holds both transactions: a batch that waited for the lock would wait
                # for ever, so waiting fails the test instead (it never waits when it is right).
                s.execute(text("SET LOCAL lock_timeout = '20s'"))
                fired, batch = firing.fire_batch(s, rt, delivered)
            assert (fired, batch) == (True, [third])
        assert _statuses(db, [held_timer]) == ["waiting"]
        with db.transaction() as s:
            assert firing.fire(s, rt, held_timer) is True
    assert set(_fired_events(db).values()) == {1}


def test_a_firing_that_raises_rolls_the_batch_back_is_counted_and_the_delivered_timer_fires_alone(db, rt, people):
    with time_machine.travel(START, tick=False) as traveller:
        (_, delivered), (broken_instance, broken_timer), (_, third) = _start(db, rt, people, 3)
        with db.transaction() as s:  # a state no workflow can be restored from
            s.execute(update(ProcessInstance).where(ProcessInstance.id == broken_instance)
                      .values(state=b"not a workflow"))
        traveller.move_to(DUE)
        assert firing.fire_batch_once(db, rt, delivered) == (True, [])
        assert _statuses(db, [delivered, broken_timer, third]) == ["fired", "waiting", "waiting"]
        with db.transaction() as s:
            broken = s.get(Timer, broken_timer)
            assert broken.attempts == 1 and "decompressing" in broken.last_error  # what raised, not its absence
        # The timer that raised is left to its own deliveries: the next batch goes without it.
        assert firing.fire_batch_once(db, rt, third) == (True, [])
        assert _statuses(db, [broken_timer]) == ["waiting"]
        with db.transaction() as s:
            assert s.get(Timer, broken_timer).attempts == 1
    assert sorted(_fired_events(db)) == sorted(i for i, _ in _fired_instances(db))


def test_a_cycle_timer_fired_in_a_batch_keeps_its_delivery_for_the_next_occurrence(db, rt, people):
    with time_machine.travel(START, tick=False) as traveller:
        (_, delivered), = _start(db, rt, people, 1)
        deploy_fixture(db, rt, "cycle", people.owner)  # R5/PT1H: the row waits again, an hour later
        with db.transaction() as s:
            cycle_instance = instances.start(s, rt, process_key="cycle", business_key="C-1", actor=people.clerk,
                                             data={}).id
        with db.transaction() as s:
            cycle_timer = s.execute(select(Timer.id).where(Timer.instance_id == cycle_instance)).scalar_one()
        traveller.move_to(DUE)
        with db.transaction() as s:
            assert firing.fire_batch(s, rt, delivered) == (True, [])  # its job must not be dropped
        with db.transaction() as s:
            timer = s.get(Timer, cycle_timer)
            assert (timer.status, timer.due_at) == ("waiting", START + timedelta(hours=2))
    assert _fired_events(db)[cycle_instance] == 1


def test_a_batch_takes_at_most_its_limit_oldest_due_first_and_a_limit_of_one_takes_none(db, rt, people):
    with time_machine.travel(START, tick=False) as traveller:
        started = []
        for n in range(4):  # due a minute apart: the batch's order is the due time's
            traveller.move_to(START + timedelta(minutes=n))
            started += _start(db, rt, people, 1, first=n)
        timers = [t for _, t in started]
        now = START + timedelta(hours=1, minutes=3, seconds=1)
        traveller.move_to(now)
        assert firing.fire_batch_once(db, rt, timers[0], limit=1) == (True, [])
        assert _statuses(db, timers) == ["fired", "waiting", "waiting", "waiting"]
        with db.transaction() as s:
            assert firing.fire_batch(s, rt, timers[3], limit=2) == (True, [timers[1]])
        assert _statuses(db, timers) == ["fired", "fired", "waiting", "fired"]
        with db.transaction() as s:
            assert s.get(Timer, timers[1]).fired_at == now


def test_a_delivered_timer_that_raises_in_a_batch_is_tried_once_and_counted_once(db, rt, people, caplog):
    with time_machine.travel(START, tick=False) as traveller:
        (broken_instance, delivered), (_, other) = _start(db, rt, people, 2)
        with db.transaction() as s:  # a state no workflow can be restored from
            s.execute(update(ProcessInstance).where(ProcessInstance.id == broken_instance)
                      .values(state=b"not a workflow"))
        traveller.move_to(DUE)
        with caplog.at_level(logging.ERROR, logger=firing.__name__):
            assert firing.fire_batch_once(db, rt, delivered) == (False, [])
    # Its own failure is not the batch's: not retried alone (it would fail the same way).
    assert [r.getMessage() for r in caplog.records if r.name == firing.__name__] == [
        f"timer {delivered} could not be fired (in a batch delivered for timer {delivered})"]
    assert _statuses(db, [delivered, other]) == ["waiting", "waiting"]
    with db.transaction() as s:
        assert (s.get(Timer, delivered).attempts, s.get(Timer, other).attempts) == (1, 0)
        assert "decompressing" in s.get(Timer, delivered).last_error


@pytest.mark.parametrize("failing", ["claim", "commit"])
def test_a_batch_that_fails_itself_counts_no_timer_and_fires_the_delivered_one_alone(db, rt, people, monkeypatch,
                                                                                     caplog, failing):
    failures: list[str] = []

    def fail(what: str) -> None:
        failures.append(what)
        raise RuntimeError(f"the batch's {what} failed")

    real_commit = Session.commit

    def commit_failing_once(self: Session) -> None:
        if not failures:
            fail("commit")
        real_commit(self)

    with time_machine.travel(START, tick=False) as traveller:
        timers = [t for _, t in _start(db, rt, people, 3)]
        traveller.move_to(DUE)
        if failing == "claim":
            monkeypatch.setattr(firing, "_claim_many", lambda *_args: fail("claim"))
        else:  # after every firing of the batch: the transaction's end
            monkeypatch.setattr(Session, "commit", commit_failing_once)
        with caplog.at_level(logging.ERROR, logger=firing.__name__):
            assert firing.fire_batch_once(db, rt, timers[0]) == (True, [])
    assert failures == [failing]
    assert [r.getMessage() for r in caplog.records if r.name == firing.__name__] == [
        f"timer (none in particular) could not be fired (in a batch delivered for timer {timers[0]})"]
    assert _statuses(db, timers) == ["fired", "waiting", "waiting"]
    with db.transaction() as s:
        assert [s.get(Timer, t).attempts for t in timers] == [0, 0, 0]


def test_a_batch_fires_one_timer_per_instance_and_leaves_the_instances_others_to_their_deliveries(
        db, rt, people, review):
    policy = {"key": "review.register", "name": "登记 2 个工作日", "position": 10, "process_key": "review",
              "element_id": "register", "target_amount": 2, "target_unit": "WD", "business_hours": "default",
              "milestones": [{"at": 0.5, "action": "raise_priority", "by": 20},
                             {"at": 0.8, "action": "raise_priority", "by": 10}]}
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=policy, actor=people.owner)
    with time_machine.travel(START, tick=False) as traveller:
        (_, delivered), = _start(db, rt, people, 1)
        with db.transaction() as s:
            reviewed = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                                       data={"priority": 50, "due_at": None}).id
        with db.transaction() as s:
            milestones = list(s.execute(select(Timer.id).where(Timer.instance_id == reviewed, Timer.kind == "sla")
                                        .order_by(Timer.due_at)).scalars())
            last_due = s.get(Timer, milestones[-1]).due_at
        assert len(milestones) == 2
        traveller.move_to(last_due + timedelta(seconds=1))  # both milestones of the one instance due
        with db.transaction() as s:
            assert firing.fire_batch(s, rt, delivered) == (True, [milestones[0]])
        assert _statuses(db, milestones) == ["fired", "waiting"]


def _fired_instances(db) -> list[tuple[int, int]]:
    with db.transaction() as s:
        return list(s.execute(select(Timer.instance_id, Timer.id).where(Timer.status == "fired")).all())


def test_the_waiting_jobs_of_timers_a_batch_fired_are_dropped_and_a_taken_one_is_left():
    redis = Redis.from_url(REDIS_URL)
    redis.flushdb()
    try:
        scheduler = RqScheduler(REDIS_URL)
        due = datetime.now(UTC) + timedelta(hours=1)
        for timer_id in (1, 2):
            scheduler.enqueue(timer_id, due)
        for timer_id in (3, 4):
            scheduler.queue.enqueue("engine.jobs.fire_timer_job", timer_id, job_id=job_id(timer_id))
        # A worker pops job 3 (and marks it started a moment later): its record must stay, or
        # rq's bookkeeping fails when the run ends.
        assert redis.lpop(scheduler.queue.key) == job_id(3).encode()
        assert scheduler.forget([1, 2, 3, 4]) == 3
        assert [redis.exists(f"rq:job:{job_id(t)}") for t in (1, 2, 3, 4)] == [0, 0, 1, 0]
        assert scheduler.queue.scheduled_job_registry.get_job_ids() == []
        assert scheduler.queue.get_job_ids() == []
    finally:
        redis.flushdb()
