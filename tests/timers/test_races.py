"""Two deliveries of one timer occurrence racing each other, on PostgreSQL (row locks, READ
COMMITTED): every occurrence fires once, whatever the timer does after firing.

Duplicate deliveries are normal (the sweep and several workers). The dangerous interleaving is
the one where the second delivery reads the timer row while the first holds the instance lock
and has not committed: the second then sees the row as it was (``waiting``, the old due time)
once the lock is released. Each test forces that interleaving instead of hoping for it: the
first delivery fires and keeps its transaction open until the second is blocked on the lock.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import time_machine
from sqlalchemy import func, select, text

from engine.models import AuditEvent, Task, Timer
from engine.process import instances
from engine.sla import admin as sla_admin
from engine.timers import firing
from tests.conftest import deploy_fixture

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai


def _wait_until_blocked_on_a_lock(db, pid: int, attempts: int = 1000) -> None:
    """Poll PostgreSQL until the session ``pid`` waits for a lock (other tests' sessions, in
    other schemas of the same database, may be waiting too: only this one counts)."""
    for _ in range(attempts):
        with db.engine.connect() as conn:
            waiting = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = :pid AND wait_event_type = 'Lock'"),
                {"pid": pid}).scalar_one()
        if waiting:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the second delivery never blocked on the first one's instance lock")


def _race_two_deliveries(db, rt, timer_id: int) -> list[bool]:
    """The first delivery fires and holds its transaction open until the second one, which
    started after it, is blocked on the instance lock; returns both results, first first."""
    results: list[bool | BaseException | None] = [None, None]
    first_fired, second_pid = threading.Event(), threading.Event()
    pids: list[int] = []

    def first() -> None:
        try:
            with db.transaction() as s:
                results[0] = firing.fire(s, rt, timer_id)
                first_fired.set()
                if not second_pid.wait(30):
                    raise AssertionError("the second delivery never started")
                _wait_until_blocked_on_a_lock(db, pids[0])
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[0] = exc
            first_fired.set()

    def second() -> None:
        first_fired.wait(30)
        try:
            with db.transaction() as s:
                pids.append(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
                second_pid.set()
                results[1] = firing.fire(s, rt, timer_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results[1] = exc
            second_pid.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(not t.is_alive() for t in threads), "a delivery hung: deadlock?"
    assert all(isinstance(r, bool) for r in results), results
    return results  # type: ignore[return-value]


def _events(db, instance_id: int, kind: str) -> list[dict]:
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent.data).where(AuditEvent.instance_id == instance_id,
                                                             AuditEvent.kind == kind)
                              .order_by(AuditEvent.id)).scalars())


def _timer(db, instance_id: int, kind: str = "bpmn") -> Timer:
    with db.transaction() as s:
        return s.execute(select(Timer).where(Timer.instance_id == instance_id, Timer.kind == kind,
                                             Timer.status == "waiting")).scalar_one()


def test_two_deliveries_of_one_cycle_timer_occurrence_fire_it_once(db, rt, people):
    deploy_fixture(db, rt, "cycle", people.owner)  # R5/PT1H on a waiting task; the row waits again
    with time_machine.travel(START, tick=False) as traveller:
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="cycle", business_key="C-1", actor=people.clerk,
                                          data={}).id
        timer = _timer(db, instance_id)
        assert timer.due_at == START + timedelta(hours=1)
        traveller.move_to(START + timedelta(hours=1, seconds=1))
        assert _race_two_deliveries(db, rt, timer.id) == [True, False]
    fired = _events(db, instance_id, "timer.fired")
    assert [datetime.fromisoformat(e["due_at"]) for e in fired] == [START + timedelta(hours=1)]
    again = _timer(db, instance_id)  # the next occurrence waits, on the same row
    assert (again.id, again.due_at) == (timer.id, START + timedelta(hours=2))


def test_two_deliveries_of_an_intermediate_timer_before_a_user_task_fire_it_once(db, rt, people):
    deploy_fixture(db, rt, "timer_then_task", people.owner)  # the instance goes on after the timer
    with time_machine.travel(START, tick=False) as traveller:
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="timer_then_task", business_key="T-1",
                                          actor=people.clerk, data={}).id
        timer = _timer(db, instance_id)
        traveller.move_to(START + timedelta(hours=1, seconds=1))
        assert _race_two_deliveries(db, rt, timer.id) == [True, False]
    assert len(_events(db, instance_id, "timer.fired")) == 1
    with db.transaction() as s:
        assert s.get(Timer, timer.id).status == "fired"
        open_tasks = s.execute(select(func.count()).select_from(Task).where(
            Task.instance_id == instance_id, Task.element_id == "ack")).scalar_one()
    assert open_tasks == 1


SLA_POLICY = {
    "key": "review.register", "name": "登记 2 个工作日", "position": 10, "process_key": "review",
    "element_id": "register", "target_amount": 2, "target_unit": "WD", "business_hours": "default",
    "milestones": [{"at": 0.5, "action": "raise_priority", "by": 20}],
}


def test_two_deliveries_of_an_sla_milestone_fire_it_once(db, rt, people, review):
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=SLA_POLICY, actor=people.owner)
    with time_machine.travel(START, tick=False) as traveller:
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                                          data={"priority": 50, "due_at": None}).id
        timer = _timer(db, instance_id, kind="sla")
        traveller.move_to(timer.due_at + timedelta(seconds=1))
        assert _race_two_deliveries(db, rt, timer.id) == [True, False]
    assert len(_events(db, instance_id, "sla.milestone")) == 1
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id, Task.element_id == "register")
                         ).scalar_one()
        assert task.priority == 70  # raised once, not twice
        assert s.get(Timer, timer.id).status == "fired"
