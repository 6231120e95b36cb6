"""BPMN timers: projected rows, idempotent firing, the embedded runner. Time moves with
time-machine; nothing sleeps for a timer."""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import OperationalError

from engine.access.identity import Actor
from engine.bootstrap import build_runtime
from engine.db import Database
from engine.errors import InvalidInput, PermissionDenied
from engine.models import AuditEvent, ProcessInstance, Task, Timer
from engine.process import instances, tasks
from engine.sla import admin as sla_admin
from engine.timers import firing
from tests.support import probe

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai


def _to_waiting_for_ack(db, rt, people, key="R-1"):
    instance_id = _start_review_case(db, rt, people, key)
    with db.transaction() as s:
        task = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(business_key=key), now=rt.now())[0][0]
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data={"amount": 10, "summary": "小额"})
    with db.transaction() as s:
        task = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(business_key=key), now=rt.now())[0][0]
        tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data={"approved": True})
    return instance_id


def _timer(db, instance_id):
    with db.transaction() as s:
        return s.execute(select(Timer).where(Timer.instance_id == instance_id)).scalar_one()


def _timer_row(db, timer_id):
    with db.transaction() as s:
        return s.get(Timer, timer_id)


def _deploy_cycle(db, rt, people):
    """The fixture diagram whose waiting task has a cycle timer: R5/PT1H."""
    from tests.conftest import deploy_fixture

    deploy_fixture(db, rt, "cycle", people.owner)


def _start_cycle_case(db, rt, people):
    with db.transaction() as s:
        return instances.start(s, rt, process_key="cycle", business_key="C-1", actor=people.clerk, data={}).id


def _review_policy(db, rt, people, milestone):
    """The review diagram's registration step timed by a 2-working-day policy with one milestone."""
    policy = {"key": "review.register", "name": "登记 2 个工作日", "position": 10, "process_key": "review",
              "element_id": "register", "target_amount": 2, "target_unit": "WD", "business_hours": "default",
              "milestones": [milestone]}
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=policy, actor=people.owner)


def _start_review_case(db, rt, people, key="R-1"):
    with db.transaction() as s:
        return instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data={"priority": 50, "due_at": None}).id


def _status(db, instance_id):
    with db.transaction() as s:
        return s.get(ProcessInstance, instance_id).status


@pytest.mark.sqlite
def test_a_waiting_boundary_timer_has_a_row_due_fifteen_days_later(db, rt, people, review):
    with time_machine.travel(START, tick=False):
        instance_id = _to_waiting_for_ack(db, rt, people)
    timer = _timer(db, instance_id)
    assert timer.status == "waiting" and timer.element_id == "ack_timeout"
    assert timer.due_at == START + timedelta(days=15)


@pytest.mark.sqlite
def test_nothing_fires_before_the_due_time_and_it_fires_just_after(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        traveller.move_to(START + timedelta(days=15))  # exactly due: SpiffWorkflow needs due < now
        assert firing.fire_due(db, rt) == 0
        assert _status(db, instance_id) == "running"
        traveller.shift(timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
    assert _status(db, instance_id) == "completed"
    assert _timer(db, instance_id).status == "fired"


@pytest.mark.sqlite
def test_the_fired_timer_is_audited_with_its_step_its_task_and_its_due_time(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer = _timer(db, instance_id)
        traveller.move_to(START + timedelta(days=15, seconds=1))
        assert firing.fire_due(db, rt) == 1
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "timer.fired")).scalar_one()
    assert (event.instance_id, event.actor, event.task_uuid) == (instance_id, "timer", timer.task_uuid)
    assert event.data == {"element_id": "ack_timeout", "due_at": timer.due_at.isoformat()}


@pytest.mark.sqlite
def test_a_second_delivery_of_the_same_timer_changes_nothing(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer_id = _timer(db, instance_id).id
        traveller.move_to(START + timedelta(days=16))
        with db.transaction() as s:
            assert firing.fire(s, rt, timer_id) is True
        with db.transaction() as s:
            before = s.execute(select(func.count()).select_from(AuditEvent)).scalar_one()
            assert firing.fire(s, rt, timer_id) is False
            assert s.execute(select(func.count()).select_from(AuditEvent)).scalar_one() == before


@pytest.mark.sqlite
def test_a_timer_whose_instance_was_cancelled_does_nothing(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        with db.transaction() as s:
            instances.cancel(s, rt, instance_id=instance_id, actor=people.supervisor, reason="duplicate")
        assert _timer(db, instance_id).status == "cancelled"
        traveller.move_to(START + timedelta(days=16))
        assert firing.fire_due(db, rt) == 0
    assert _status(db, instance_id) == "cancelled"


@pytest.mark.sqlite
def test_the_message_arriving_first_cancels_the_timer_row(db, rt, people, review):
    from engine.process import messages

    with time_machine.travel(START, tick=False):
        instance_id = _to_waiting_for_ack(db, rt, people)
        with db.transaction() as s:
            messages.correlate(s, rt, name="client_ack", correlation_key="R-1", actor=people.system)
    assert _timer(db, instance_id).status == "cancelled"


def test_two_racing_firings_of_one_timer_fire_it_once(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer_id = _timer(db, instance_id).id
        traveller.move_to(START + timedelta(days=16))
        barrier = threading.Barrier(2)
        results: list[bool] = []

        def worker():
            with db.transaction() as s:
                barrier.wait()
                results.append(firing.fire(s, rt, timer_id))

        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert sorted(results) == [False, True]
    with db.transaction() as s:
        fired = s.execute(select(func.count()).select_from(AuditEvent)
                          .where(AuditEvent.instance_id == instance_id, AuditEvent.kind == "timer.fired")).scalar_one()
    assert fired == 1


@pytest.mark.sqlite
def test_the_embedded_runner_sleeps_until_the_next_due_timer(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        runner = firing.EmbeddedRunner(db, rt, max_sleep=3600 * 24 * 30)
        wait = runner.run_once()
        assert wait == timedelta(days=15, milliseconds=5).total_seconds()  # just after the due instant
        traveller.move_to(START + timedelta(days=15, seconds=1))
        assert runner.run_once() == 3600 * 24 * 30  # nothing left to wait for
    assert _status(db, instance_id) == "completed"


def _fired_events(db, instance_id):
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent.data).where(AuditEvent.instance_id == instance_id,
                                                             AuditEvent.kind == "timer.fired")
                              .order_by(AuditEvent.id)).scalars())


@pytest.mark.sqlite
def test_a_cycle_timer_catching_up_once_audits_the_occurrences_it_skipped(db, rt, people):
    _deploy_cycle(db, rt, people)
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_cycle_case(db, rt, people)
        traveller.move_to(START + timedelta(hours=4, minutes=30))  # down while +1 h … +4 h were due
        assert firing.fire_due(db, rt) == 1
        traveller.move_to(START + timedelta(hours=5, seconds=1))  # the fifth, on time
        assert firing.fire_due(db, rt) == 1
    caught_up, on_time = _fired_events(db, instance_id)
    moments = {key: datetime.fromisoformat(caught_up[key])
               for key in ("due_at", "first_skipped_at", "last_skipped_at", "occurrence_at")}
    assert moments == {"due_at": START + timedelta(hours=1), "first_skipped_at": START + timedelta(hours=1),
                       "last_skipped_at": START + timedelta(hours=3), "occurrence_at": START + timedelta(hours=4)}
    assert (caught_up["skipped_occurrences"], caught_up["catch_up"]) == (3, "once")
    assert set(on_time) == {"element_id", "due_at"}  # nothing skipped, nothing to say
    assert datetime.fromisoformat(on_time["due_at"]) == START + timedelta(hours=5)


@pytest.mark.sqlite
def test_a_cycle_timer_delivered_at_an_occurrence_instant_fires_the_one_before_and_leaves_that_one_due(
        db, rt, people):
    _deploy_cycle(db, rt, people)
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_cycle_case(db, rt, people)
        traveller.move_to(START + timedelta(hours=3))  # the third occurrence is due now, not yet past
        assert firing.fire_due(db, rt) == 1
        waiting = _timer(db, instance_id)
    (caught_up,) = _fired_events(db, instance_id)
    assert (caught_up["skipped_occurrences"], datetime.fromisoformat(caught_up["occurrence_at"])) == (
        1, START + timedelta(hours=2))
    assert (waiting.status, waiting.due_at) == ("waiting", START + timedelta(hours=3))


@pytest.mark.sqlite
def test_a_cycle_timer_behind_by_all_its_occurrences_fires_the_last_once_and_ends(db, rt, people):
    _deploy_cycle(db, rt, people)
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_cycle_case(db, rt, people)
        traveller.move_to(START + timedelta(hours=10))  # down while all five were due
        assert firing.fire_due(db, rt) == 1
        assert firing.fire_due(db, rt) == 0
    (caught_up,) = _fired_events(db, instance_id)
    assert caught_up["skipped_occurrences"] == 4
    assert datetime.fromisoformat(caught_up["occurrence_at"]) == START + timedelta(hours=5)
    assert _timer(db, instance_id).status == "fired"  # no sixth occurrence to wait for


@pytest.mark.sqlite
def test_a_worker_that_has_loaded_nothing_yet_fires_a_timer(db, settings, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        traveller.move_to(START + timedelta(days=15, seconds=1))
        worker = build_runtime(settings)  # another process: no workflow, diagram or calendar cached
        assert firing.fire_due(db, worker) == 1
    assert _status(db, instance_id) == "completed"


@pytest.mark.sqlite
def test_a_fired_cycle_occurrence_tells_the_scheduler_of_the_next(db, rt, people):
    _deploy_cycle(db, rt, people)
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_cycle_case(db, rt, people)
        runner = firing.EmbeddedRunner(db, rt)
        rt.scheduler = runner  # as ``bpm serve`` does
        traveller.move_to(START + timedelta(hours=1, seconds=1))
        assert firing.fire_due(db, rt) == 1
    assert runner._wake.is_set()
    assert _timer(db, instance_id).due_at == START + timedelta(hours=2)


@pytest.mark.sqlite
def test_a_sweep_fires_at_most_its_limit_oldest_due_first_and_says_how_many_fired(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        later_ids = [_to_waiting_for_ack(db, rt, people, key=key) for key in ("R-1", "R-2")]
        traveller.shift(timedelta(minutes=1))
        earlier_id = _to_waiting_for_ack(db, rt, people, key="R-3")
        with db.transaction() as s:  # R-3's timer, the last made, is due first
            s.execute(update(Timer).where(Timer.instance_id == earlier_id)
                      .values(due_at=START + timedelta(days=15) - timedelta(minutes=1)))
        traveller.move_to(START + timedelta(days=16))
        assert firing.fire_due(db, rt, limit=1) == 1
        assert [_status(db, i) for i in (earlier_id, *later_ids)] == ["completed", "running", "running"]
        assert firing.fire_due(db, rt) == 2
    assert [_status(db, i) for i in later_ids] == ["completed", "completed"]


@pytest.mark.sqlite
def test_a_sweep_takes_at_most_five_hundred_timers(db, rt):
    with db.transaction() as s:  # 501 due runs of a schedule since deleted: each is only settled
        s.execute(insert(Timer), [{"kind": "schedule", "element_id": "gone", "payload": {"schedule_id": 0},
                                   "due_at": START + timedelta(seconds=i), "status": "waiting", "created_at": START}
                                  for i in range(501)])
    with time_machine.travel(START + timedelta(hours=1), tick=False):
        firing.fire_due(db, rt)
    with db.transaction() as s:
        left = s.execute(select(Timer.due_at).where(Timer.status == "waiting")).scalars().all()
    assert left == [START + timedelta(seconds=500)]


@pytest.mark.sqlite
def test_a_schedules_timer_waits_until_past_its_instant_and_one_whose_schedule_is_gone_is_only_settled(db, rt):
    with db.transaction() as s:
        timer_id = s.execute(insert(Timer).returning(Timer.id), {
            "kind": "schedule", "element_id": "CBQ", "payload": {"schedule_id": 0}, "due_at": START,
            "status": "waiting", "created_at": START}).scalar_one()
    for moment in (START - timedelta(minutes=1), START):
        with time_machine.travel(moment, tick=False), db.transaction() as s:
            assert firing.fire(s, rt, timer_id) is False
        assert (_timer_row(db, timer_id).status, _timer_row(db, timer_id).fired_at) == ("waiting", None)
    with db.transaction() as s:
        assert firing.fire(s, rt, timer_id + 1) is False  # no such timer
    with time_machine.travel(START + timedelta(seconds=1), tick=False), db.transaction() as s:
        assert firing.fire(s, rt, timer_id) is False  # due, but its schedule was deleted: only settled
    assert (_timer_row(db, timer_id).status, _timer_row(db, timer_id).fired_at) == (
        "fired", START + timedelta(seconds=1))


@pytest.mark.sqlite
def test_a_sweeps_limit_is_spent_on_waiting_timers_only(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        fired_id = _to_waiting_for_ack(db, rt, people, key="R-1")
        traveller.shift(timedelta(minutes=1))
        due_id = _to_waiting_for_ack(db, rt, people, key="R-2")
        traveller.move_to(START + timedelta(days=16))
        with db.transaction() as s:  # R-1's timer, due first, fired already
            assert firing.fire(s, rt, _timer(db, fired_id).id) is True
        assert firing.fire_due(db, rt, limit=1) == 1
    assert _status(db, due_id) == "completed"


@pytest.mark.sqlite
def test_a_firing_that_raises_is_counted_with_its_error_type_and_at_most_2000_characters_of_it(
        db, rt, people, review, monkeypatch, caplog):
    def broken(*_args, **_kwargs):
        raise ValueError("x" * 3000)

    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer_id = _timer(db, instance_id).id
        traveller.move_to(START + timedelta(days=16))
        monkeypatch.setattr(firing, "fire", broken)
        with caplog.at_level(logging.ERROR, logger=firing.__name__):
            assert firing.fire_once(db, rt, timer_id) is False
    assert [r.getMessage() for r in caplog.records if r.name == firing.__name__] == [
        f"timer {timer_id} could not be fired"]
    timer = _timer(db, instance_id)
    assert (timer.status, timer.attempts) == ("waiting", 1)
    assert timer.last_error == "ValueError: " + "x" * 1988


@pytest.mark.sqlite
def test_a_failure_of_a_timer_that_no_longer_exists_is_logged_not_raised(db, rt, monkeypatch):
    def broken(*_args, **_kwargs):
        raise ValueError("its instance was purged meanwhile")

    monkeypatch.setattr(firing, "fire", broken)
    assert firing.fire_once(db, rt, 999_999) is False


@pytest.mark.sqlite
def test_an_sla_milestone_delivered_early_or_at_its_due_instant_does_nothing_and_fires_just_after(
        db, rt, people, review):
    # A delivery may come early (another host's clock): the row's due time decides, strictly.
    _review_policy(db, rt, people, {"at": 0.5, "action": "raise_priority", "by": 20})
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_review_case(db, rt, people)
        milestone = _timer(db, instance_id)
        for moment in (START + timedelta(minutes=1), milestone.due_at):
            traveller.move_to(moment)
            with db.transaction() as s:
                assert firing.fire(s, rt, milestone.id) is False
                assert s.get(Timer, milestone.id).status == "waiting"
        traveller.move_to(milestone.due_at + timedelta(seconds=1))
        with db.transaction() as s:
            assert firing.fire(s, rt, milestone.id) is True
        with db.transaction() as s:
            fired = s.get(Timer, milestone.id)
            assert (fired.status, fired.fired_at) == ("fired", milestone.due_at + timedelta(seconds=1))


@pytest.mark.sqlite
def test_a_waiting_timer_of_an_instance_that_ended_is_settled_as_cancelled_when_delivered(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        running_id = _to_waiting_for_ack(db, rt, people, key="R-2")
        timer_id = _timer(db, instance_id).id
        with db.transaction() as s:  # ended without settling its timer (a row an older release left)
            s.execute(update(ProcessInstance).where(ProcessInstance.id == instance_id).values(status="completed"))
        traveller.move_to(START + timedelta(days=16))
        with db.transaction() as s:
            assert firing.fire(s, rt, timer_id) is False
    assert _timer(db, instance_id).status == "cancelled"
    assert _fired_events(db, instance_id) == []
    assert _timer(db, running_id).status == "waiting"  # only that row is settled


@pytest.mark.sqlite
def test_a_fired_sla_milestone_evaluates_the_expression_naming_its_groups(db, rt, people, review):
    _review_policy(db, rt, people, {"at": 0.5, "action": "reassign", "to": "${'managers'}"})
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_review_case(db, rt, people)
        milestone = _timer(db, instance_id)
        traveller.move_to(milestone.due_at + timedelta(seconds=1))
        with db.transaction() as s:
            assert firing.fire(s, rt, milestone.id) is True
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id, Task.element_id == "register")
                         ).scalar_one()
        assert task.candidate_groups == ["managers"]


@pytest.mark.sqlite
def test_a_failed_cases_timer_delivered_when_due_waits_and_its_retry_passes_it_once(db, rt, people):
    probe.deploy(db, rt)
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = probe.start(db, rt, "P-1", None)
        probe.fail(db, rt, instance_id, Actor(username="handler", groups=frozenset({probe.HANDLERS})))
        timer = probe.timer_of(db, instance_id)
        traveller.move_to(timer.due_at + timedelta(seconds=1))
        with db.transaction() as s:
            assert firing.fire(s, rt, timer.id) is False
        # The claim is put back: the row waits as before, and nothing happened in the case.
        waiting = _timer_row(db, timer.id)
        assert (waiting.status, waiting.due_at, waiting.fired_at) == ("waiting", timer.due_at, None)
        assert (_status(db, instance_id), _fired_events(db, instance_id)) == ("failed", [])
        with db.transaction() as s:
            instances.correct_data(s, rt, instance_id=instance_id, actor=people.supervisor, set={"amount": 5},
                                   reason="补录金额")
            instances.retry(s, rt, instance_id=instance_id, actor=people.supervisor)
        assert firing.fire_due(db, rt) == 0  # the retried run passed the due timer itself
    fired = _timer_row(db, timer.id)
    assert (fired.status, fired.fired_at) == ("fired", timer.due_at + timedelta(seconds=1))
    with db.transaction() as s:
        passed = s.execute(select(AuditEvent.data["element_id"].as_string()).where(
            AuditEvent.instance_id == instance_id, AuditEvent.kind == "event.intermediate")).scalars().all()
    assert (passed, _status(db, instance_id)) == (["nap"], "running")


@pytest.mark.sqlite
def test_a_timer_its_process_does_not_yet_hold_due_is_put_back_and_fires_when_the_process_does(
        db, rt, people, review):
    # The row says due a day before the diagram does (the skew between a host's clock and the
    # one that wrote it): SpiffWorkflow's time decides, and the row waits for the next delivery.
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer_id = _timer(db, instance_id).id
        early = START + timedelta(days=14)
        with db.transaction() as s:
            s.execute(update(Timer).where(Timer.id == timer_id).values(due_at=early))
        traveller.move_to(early + timedelta(seconds=1))
        with db.transaction() as s:
            assert firing.fire(s, rt, timer_id) is False
        waiting = _timer_row(db, timer_id)
        assert (waiting.status, waiting.due_at, waiting.fired_at) == ("waiting", early, None)
        assert (_status(db, instance_id), _fired_events(db, instance_id)) == ("running", [])
        traveller.move_to(START + timedelta(days=15, seconds=1))
        assert firing.fire_due(db, rt) == 1
    fired = _timer_row(db, timer_id)
    assert (fired.status, fired.fired_at) == ("fired", START + timedelta(days=15, seconds=1))
    assert _status(db, instance_id) == "completed" and len(_fired_events(db, instance_id)) == 1


def away_database() -> Database:
    """A database nobody answers at: a port just given back, so each connection is refused at once."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
    return Database(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test")


def run_loop(runner: firing.EmbeddedRunner, scene) -> list[tuple[float | None, bool]]:
    """Run the runner's loop in this thread. Instead of sleeping, ``scene(n)`` plays what
    happens during the n-th sleep, and the sleep is noted: how long, and whether it was woken
    (which would end it early). The loop stops after the sleep in which ``scene`` returns False."""
    waits: list[tuple[float | None, bool]] = []

    def wait(timeout: float | None = None) -> bool:
        if scene(len(waits) + 1) is False:
            runner._stop.set()
        waits.append((timeout, runner._wake.is_set()))
        return waits[-1][1]

    runner._wake.wait = wait  # type: ignore[method-assign]
    runner._loop()
    return waits


@pytest.mark.sqlite
def test_the_embedded_runner_backs_off_while_the_database_is_away_and_starts_again_once_it_is_back(
        db, rt, people, review, caplog):
    away, errors = away_database(), []
    with time_machine.travel(START, tick=False):
        _to_waiting_for_ack(db, rt, people)  # due in 15 days: the runner sleeps its longest
        runner = firing.EmbeddedRunner(away, rt, max_sleep=600.0, on_error=errors.append)

        def scene(n: int) -> bool:
            runner.db = db if n == 8 else away  # back for one round after eight failures
            return n < 11

        with caplog.at_level(logging.WARNING, logger=firing.__name__):
            waits = run_loop(runner, scene)
    assert [seconds for seconds, _ in waits] == [1, 2, 4, 8, 16, 32, 60, 60, 600, 1, 2]
    assert len(errors) == 10 and all(isinstance(exc, OperationalError) for exc in errors)
    retries = [r.getMessage() for r in caplog.records if r.name == firing.__name__]
    assert len(retries) == 10 and all(m.startswith("timer runner: (psycopg.OperationalError)") for m in retries)
    assert [m.rsplit("; ", 1)[1] for m in retries[:3]] == ["retrying in 1 s", "retrying in 2 s", "retrying in 4 s"]


@pytest.mark.sqlite
def test_a_new_timer_wakes_the_embedded_runner_once(db, rt, people, review):
    with time_machine.travel(START, tick=False):
        runner = firing.EmbeddedRunner(db, rt, max_sleep=600.0)

        def scene(n: int) -> bool:
            if n == 1:  # a timer is made while the runner sleeps
                runner.timer_created(1, START + timedelta(minutes=1))
            return n < 3

        waits = run_loop(runner, scene)
    # That sleep ends early; the next ones do not: the wake-up is used up.
    assert waits == [(600.0, True), (600.0, False), (600.0, False)]


@pytest.mark.sqlite
def test_with_nothing_due_the_embedded_runner_looks_again_after_thirty_seconds(db, rt):
    # As ``bpm serve`` makes it: a timer made by another process (the CLI, another app) wakes no
    # one here, so it is seen within that bound.
    assert firing.EmbeddedRunner(db, rt).run_once() == 30.0


@pytest.mark.sqlite
def test_the_embedded_runner_does_not_wait_for_a_timer_already_due(db, rt, people, review):
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer_id = _timer(db, instance_id).id
        with db.transaction() as s:  # due by the row, not yet by the diagram: it stays waiting
            s.execute(update(Timer).where(Timer.id == timer_id).values(due_at=START + timedelta(minutes=1)))
        traveller.move_to(START + timedelta(minutes=2))
        runner = firing.EmbeddedRunner(db, rt, max_sleep=600.0)
        assert runner.run_once() == 0.0
        assert _timer_row(db, timer_id).status == "waiting"


@pytest.mark.sqlite
def test_the_timer_list_is_soonest_first_at_most_its_limit_filtered_by_status_and_refused_to_a_clerk(
        db, rt, people, review):
    with time_machine.travel(START, tick=False):
        first, second, third = (_timer(db, _to_waiting_for_ack(db, rt, people, key=key)).id
                                for key in ("R-1", "R-2", "R-3"))
        with db.transaction() as s:  # the last made is due first; the other two at the same instant
            s.execute(update(Timer).where(Timer.id == third).values(due_at=START + timedelta(days=1)))
        with db.transaction() as s:
            instances.cancel(s, rt, instance_id=_timer_row(db, second).instance_id, actor=people.supervisor,
                             reason="重复登记")
        with db.transaction() as s:
            listed = [t.id for t in firing.visible(s, actor=people.supervisor)]
            two = [t.id for t in firing.visible(s, actor=people.supervisor, limit=2)]
            waiting = [t.id for t in firing.visible(s, actor=people.supervisor, status="waiting")]
        with pytest.raises(PermissionDenied) as refused, db.transaction() as s:
            firing.visible(s, actor=people.clerk)
    assert (listed, two, waiting) == ([third, first, second], [third, first], [third, first])
    assert str(refused.value) == "the timer list is for supervisors and process owners"


@pytest.mark.sqlite
def test_the_timer_list_holds_at_most_a_hundred_unless_asked_for_more(db, rt, people):
    with db.transaction() as s:  # 101 schedules' next runs, a minute apart
        s.execute(insert(Timer), [{"kind": "schedule", "element_id": f"S{i:03}", "due_at": START + timedelta(minutes=i),
                                   "status": "waiting", "created_at": START} for i in range(101)])
    with db.transaction() as s:
        listed = [t.element_id for t in firing.visible(s, actor=people.owner)]
        assert len(firing.visible(s, actor=people.owner, limit=200)) == 101
    assert listed == [f"S{i:03}" for i in range(100)]


# -- moving a timer (the API's and the CLI's POST /timers/{id}/reschedule, bpm timer reschedule) -----
def _reschedule(db, rt, timer_id, due_at, actor):
    with db.transaction() as s:
        return firing.reschedule(s, rt, timer_id=timer_id, due_at=due_at, actor=actor).due_at


@pytest.mark.sqlite
def test_a_moved_cycle_timer_fires_at_its_new_time_and_keeps_its_period_from_there(db, rt, people):
    _deploy_cycle(db, rt, people)
    with time_machine.travel(START, tick=False) as traveller:
        instance_id = _start_cycle_case(db, rt, people)
        timer_id = _timer(db, instance_id).id
        moved = START + timedelta(minutes=30)  # the first occurrence was due at START + 1 h
        assert _reschedule(db, rt, timer_id, moved, people.supervisor) == moved
        for due in (moved, moved + timedelta(hours=1)):
            traveller.move_to(due + timedelta(seconds=1))
            assert firing.fire_due(db, rt) == 1
            again = _timer_row(db, timer_id)
            assert (again.status, again.due_at) == ("waiting", due + timedelta(hours=1))
    assert [datetime.fromisoformat(e["due_at"]) for e in _fired_events(db, instance_id)] == [
        moved, moved + timedelta(hours=1)]


@pytest.mark.sqlite
def test_a_failed_cases_timer_can_be_moved_the_move_is_audited_with_its_task_and_wakes_the_runner(db, rt, people):
    probe.deploy(db, rt)
    runner = firing.EmbeddedRunner(db, rt)
    rt.scheduler = runner  # as ``bpm serve`` does
    with time_machine.travel(START, tick=False):
        instance_id = probe.start(db, rt, "P-1", None)
        probe.fail(db, rt, instance_id, Actor(username="handler", groups=frozenset({probe.HANDLERS})))
        timer = probe.timer_of(db, instance_id)
        runner._wake.clear()  # whatever the start announced
        later = timer.due_at + timedelta(days=1)
        assert _reschedule(db, rt, timer.id, later, people.supervisor) == later
    assert runner._wake.is_set()  # it sleeps until the new time, not the old
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "timer.rescheduled")).scalar_one()
    assert (event.instance_id, event.task_uuid, event.actor) == (instance_id, timer.task_uuid, "boss")
    assert (_status(db, instance_id), _timer_row(db, timer.id).due_at) == ("failed", later)


@pytest.mark.sqlite
def test_a_timer_whose_task_no_longer_waits_in_its_process_cannot_be_moved(db, rt, people, review):
    with time_machine.travel(START, tick=False):
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer = _timer(db, instance_id)
        with db.transaction() as s:  # a row left waiting for a step the case has passed
            done = s.execute(select(Task.task_uuid).where(Task.instance_id == instance_id,
                                                          Task.element_id == "register")).scalar_one()
            s.execute(update(Timer).where(Timer.id == timer.id).values(task_uuid=done))
        with pytest.raises(InvalidInput) as refused:
            _reschedule(db, rt, timer.id, START + timedelta(days=1), people.supervisor)
    assert str(refused.value) == f"timer {timer.id} is no longer waiting in its process"
    assert _timer_row(db, timer.id).due_at == timer.due_at


@pytest.mark.sqlite
def test_a_timer_naming_a_step_its_workflow_does_not_have_is_refused_not_an_error(db, rt, people, review):
    """A row left naming a step the workflow has no trace of (restored from a backup, edited by
    hand) is refused with the reason, as a step no longer waiting is: a 400, never a 500."""
    with time_machine.travel(START, tick=False):
        instance_id = _to_waiting_for_ack(db, rt, people)
        timer = _timer(db, instance_id)
        with db.transaction() as s:
            s.execute(update(Timer).where(Timer.id == timer.id).values(task_uuid=str(uuid.uuid4())))
        with pytest.raises(InvalidInput) as refused:
            _reschedule(db, rt, timer.id, START + timedelta(days=1), people.supervisor)
    assert str(refused.value) == f"timer {timer.id} is no longer waiting in its process"
    assert _timer_row(db, timer.id).due_at == timer.due_at


@pytest.mark.sqlite
def test_moving_a_timer_is_refused_to_a_clerk_and_for_a_time_without_an_offset_with_the_reason(
        db, rt, people, review):
    with time_machine.travel(START, tick=False):
        timer = _timer(db, _to_waiting_for_ack(db, rt, people))
        with pytest.raises(PermissionDenied) as refused:
            _reschedule(db, rt, timer.id, START + timedelta(days=1), people.clerk)
        assert str(refused.value) == "rescheduling a timer needs the supervisor or admin role"
        with pytest.raises(ValueError) as naive:
            _reschedule(db, rt, timer.id, datetime(2026, 3, 3, 9), people.supervisor)
        assert str(naive.value).startswith("due_at must be timezone-aware, got datetime")
    assert _timer_row(db, timer.id).due_at == timer.due_at
