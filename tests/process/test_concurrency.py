"""Two people acting on one task at the same moment, on PostgreSQL (row locks, READ COMMITTED).

Each thread has its own ``db.transaction()``; a barrier releases both calls together. Both
people are candidates of the same unclaimed task, so the loser must learn that the task is
gone (TaskNotOpen), not that it belongs to someone else: the winner's implicit claim and its
completion commit together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select, text

from engine import audit
from engine.access.identity import Actor
from engine.errors import BpmError, DuplicateBusinessKey, NotAssignee, TaskAlreadyClaimed, TaskNotOpen
from engine.models import AuditEvent, ProcessInstance, Task
from engine.process import instances, tasks

ROUNDS = 2



def _race(db, calls: list[Callable[[Any], Any]]) -> list[tuple[str, Any]]:
    """Run each call in its own thread and transaction, released together."""
    barrier = threading.Barrier(len(calls))
    outcomes: list[tuple[str, Any] | None] = [None] * len(calls)

    def run(index: int, call: Callable[[Any], Any]) -> None:
        try:
            with db.transaction() as s:
                barrier.wait(timeout=10)
                result = call(s)
            outcomes[index] = ("ok", result)
        except BpmError as exc:
            outcomes[index] = ("error", exc)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcomes[index] = ("crash", exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(not t.is_alive() for t in threads), "a thread hung: deadlock?"
    assert all(o is not None and o[0] != "crash" for o in outcomes), outcomes
    return outcomes  # type: ignore[return-value]


def _start(db, rt, people, key):
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data={"priority": 50, "due_at": None})
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == inst.id)).scalar_one()
    return inst.id, task.id


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_candidates_complete_the_same_task_at_once_exactly_one_wins(db, rt, people, review, round_):
    instance_id, task_id = _start(db, rt, people, f"R-{round_}")
    form = {"amount": 100, "summary": "并发完成"}
    outcomes = _race(db, [
        lambda s: tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data=form).completed_by,
        lambda s: tasks.complete(s, rt, task_id=task_id, actor=people.teammate, data=form).completed_by,
    ])

    winners = [value for kind, value in outcomes if kind == "ok"]
    losers = [value for kind, value in outcomes if kind == "error"]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], TaskNotOpen), losers[0]
    winner = winners[0]

    with db.transaction() as s:
        task = s.get(Task, task_id)
        assert (task.status, task.assignee, task.completed_by) == ("completed", winner, winner)
        following = s.execute(select(Task).where(Task.instance_id == instance_id, Task.status.in_(("open", "claimed"))))
        assert [t.element_id for t in following.scalars()] == ["approve_small"]
        events = [e.kind for e in instances.history(s, instance_id, actor=Actor.system())]
        assert events.count("task.completed") == 1
        assert events.count("task.claimed") == 1
        instance = s.get(ProcessInstance, instance_id)
        assert instance.status == "running"
        assert instance.audit_seq == len(events)
        assert instances.data_of(s, rt, instance)["summary"] == "并发完成"
        assert audit.verify(s).broken == []


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_two_concurrent_claims_exactly_one_wins(db, rt, people, review, round_):
    instance_id, task_id = _start(db, rt, people, f"C-{round_}")
    outcomes = _race(db, [
        lambda s: tasks.claim(s, rt, task_id=task_id, actor=people.clerk).assignee,
        lambda s: tasks.claim(s, rt, task_id=task_id, actor=people.teammate).assignee,
    ])
    winners = [value for kind, value in outcomes if kind == "ok"]
    losers = [value for kind, value in outcomes if kind == "error"]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert isinstance(losers[0], TaskAlreadyClaimed)
    with db.transaction() as s:
        assert s.get(Task, task_id).assignee == winners[0]
        claims = s.execute(select(func.count()).select_from(AuditEvent)
                           .where(AuditEvent.instance_id == instance_id, AuditEvent.kind == "task.claimed"))
        assert claims.scalar_one() == 1
        assert audit.verify(s).broken == []


def test_a_claim_racing_a_completion_never_leaves_a_claimed_completed_task(db, rt, people, review):
    _, task_id = _start(db, rt, people, "X-1")
    form = {"amount": 100, "summary": "并发"}
    outcomes = _race(db, [
        lambda s: tasks.complete(s, rt, task_id=task_id, actor=people.clerk, data=form).status,
        lambda s: tasks.claim(s, rt, task_id=task_id, actor=people.teammate).status,
    ])
    with db.transaction() as s:
        task = s.get(Task, task_id)
        if outcomes[0][0] == "ok":  # completion first: the claim found nothing to claim
            assert isinstance(outcomes[1][1], TaskNotOpen)
            assert (task.status, task.assignee) == ("completed", "li")
        else:  # the claim first: li is no longer the assignee
            assert isinstance(outcomes[0][1], NotAssignee)
            assert outcomes[1] == ("ok", "claimed")
            assert (task.status, task.assignee) == ("claimed", "zhao")
        assert audit.verify(s).broken == []


def test_two_starts_of_one_business_key_at_once_give_one_instance_and_a_duplicate_error(db, rt, people, review):
    """The second start passes the up-front check (the first instance is not committed yet)
    and then waits on the unique index; when the first commits it must get the product's
    409 error, not a database crash."""
    first_flushed, release_first = threading.Event(), threading.Event()
    outcome: dict[str, Any] = {}

    def first() -> None:
        with db.transaction() as s:
            outcome["first"] = instances.start(s, rt, process_key="review", business_key="DUP-1",
                                               actor=people.clerk, data={"priority": 50, "due_at": None}).id
            first_flushed.set()
            release_first.wait(timeout=10)

    def second() -> None:
        try:
            with db.transaction() as s:
                instances.start(s, rt, process_key="review", business_key="DUP-1", actor=people.teammate,
                                data={"priority": 50, "due_at": None})
            outcome["second"] = "started"
        except BpmError as exc:
            outcome["second"] = exc

    one = threading.Thread(target=first)
    one.start()
    assert first_flushed.wait(timeout=10)
    two = threading.Thread(target=second)
    two.start()
    _wait_until_blocked_on_a_lock(db)
    release_first.set()
    one.join(timeout=30)
    two.join(timeout=30)
    assert isinstance(outcome["second"], DuplicateBusinessKey), outcome
    with db.transaction() as s:
        keys = s.execute(select(ProcessInstance.id).where(ProcessInstance.business_key == "DUP-1")).scalars().all()
    assert keys == [outcome["first"]]


def _wait_until_blocked_on_a_lock(db, attempts: int = 500) -> None:
    """Poll PostgreSQL until some session of this database waits for a lock."""
    for _ in range(attempts):
        with db.engine.connect() as conn:
            waiting = conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar_one()
        if waiting:
            return
        threading.Event().wait(0.01)
    raise AssertionError("the second start never blocked on the first one's row")


def test_two_owners_deploying_one_process_at_once_get_consecutive_versions(db, rt, people):
    """The second deploy waits for the first's commit and numbers its version after it: without
    the wait both would take version 2 and one would fail on the unique number."""
    from engine.process import deployments
    from tests.conftest import deploy_fixture
    from tests.process.test_deploy import _review_changed

    deploy_fixture(db, rt, "review", people.owner)
    outcome: dict[str, Any] = {}

    def other() -> None:
        try:
            with db.transaction() as s:
                outcome["theirs"] = [d.version.version for d in deployments.deploy(
                    s, rt, _review_changed(**{"P15D": "P5D"}), actor=people.owner)]
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=other)
    with db.transaction() as first:
        mine = [d.version.version for d in deployments.deploy(
            first, rt, _review_changed(**{"P15D": "P10D"}), actor=people.owner)]
        thread.start()
        _wait_until_blocked_on_a_lock(db)
    thread.join(timeout=30)
    assert "error" not in outcome, outcome.get("error")
    assert (mine, outcome["theirs"]) == ([2], [3])


def test_locking_an_instance_the_session_already_holds_reads_what_another_transaction_committed(
        db, rt, people, review):
    """The lock re-reads the row: a session that loaded the case before another transaction
    changed it (a step completed elsewhere moves the audit chain on) must not go on from its
    stale copy once it holds the lock, or it would write over that change."""
    from sqlalchemy import update

    from engine.process.runtime import locked_instance

    instance_id, _ = _start(db, rt, people, "STALE-1")
    with db.transaction() as s:
        held = s.get(ProcessInstance, instance_id)
        seen = held.audit_seq
        with db.transaction() as other:
            other.execute(update(ProcessInstance).where(ProcessInstance.id == instance_id)
                          .values(audit_seq=ProcessInstance.audit_seq + 7))
        locked = locked_instance(s, instance_id)
        assert locked is held and locked.audit_seq == seen + 7


def test_the_lock_refuses_a_case_that_does_not_exist_or_has_ended_and_says_which_and_why(db, rt, people, review):
    """What the caller shows (a 404 or 409's message): the case's id, and for an ended case its
    status, so a person whose step lost the race learns the case was cancelled meanwhile."""
    from engine.errors import InstanceNotFound, InstanceNotRunning
    from engine.process.runtime import locked_instance

    instance_id, _ = _start(db, rt, people, "ENDED-1")
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=instance_id, actor=people.supervisor, reason="重复登记")
    with pytest.raises(InstanceNotRunning) as ended, db.transaction() as s:
        locked_instance(s, instance_id)
    assert str(ended.value) == f"instance {instance_id} is cancelled"
    with pytest.raises(InstanceNotFound) as missing, db.transaction() as s:
        locked_instance(s, instance_id + 1000)
    assert str(missing.value) == f"no instance {instance_id + 1000}"
