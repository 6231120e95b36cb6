"""A supervisor's commands on a case (cancel, retry, correct its data, move its timers, list
the timers) reach only the cases they may read: another branch's supervisor is told the
case does not exist, and a supervisor recused case-wide cannot touch the case that names them
(docs/permissions.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.access import identity
from engine.access.identity import Actor
from engine.errors import InstanceNotFound, NotFound, Recused
from engine.models import ProcessInstance
from engine.process import instances, messages, tasks
from engine.timers import firing
from tests.support import probe
from tests.support.bpmn import row_counts

pytestmark = pytest.mark.sqlite

HANDLER = Actor(username="handler", groups=frozenset({probe.HANDLERS}))


def _actor(db, username: str) -> Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


@pytest.fixture
def hz_cases(db, rt, demo_registry) -> tuple[int, int]:
    """Two HZ01 cases: one running (C01), one failed (C06)."""
    probe.deploy(db, rt)
    running = probe.start(db, rt, "P-RUN", "C01")
    failed = probe.start(db, rt, "P-FAIL", "C06")
    probe.fail(db, rt, failed, HANDLER)
    return running, failed


def _commands(rt, running: int, failed: int, timer_id: int):
    due = rt.now() + timedelta(days=1)
    return {
        "cancel": lambda s, who: instances.cancel(s, rt, instance_id=running, actor=who, reason="重复登记"),
        "retry": lambda s, who: instances.retry(s, rt, instance_id=failed, actor=who),
        "correct": lambda s, who: instances.correct_data(s, rt, instance_id=failed, actor=who, set={"amount": 5},
                                                         reason="补录金额"),
        "reschedule": lambda s, who: firing.reschedule(s, rt, timer_id=timer_id, due_at=due, actor=who),
    }


@pytest.mark.parametrize("command", ["cancel", "retry", "correct", "reschedule"])
def test_another_branchs_supervisor_cannot_act_on_a_case_they_cannot_read(db, rt, hz_cases, command):
    running, failed = hz_cases
    run = _commands(rt, running, failed, probe.timer_of(db, running).id)[command]
    nb_head, hz_head = _actor(db, "s201"), _actor(db, "s101")  # both hold the supervisor role
    before = row_counts(db)
    with pytest.raises(NotFound) as refused, db.transaction() as s:
        run(s, nb_head)
    # The case's own refusal, the same as for a case that does not exist; nothing changed.
    assert type(refused.value) is (NotFound if command == "reschedule" else InstanceNotFound)
    if command != "reschedule":
        assert str(refused.value) == f"no instance {running if command == 'cancel' else failed}"
    assert row_counts(db) == before
    with db.transaction() as s:
        run(s, hz_head)


def test_the_timer_list_holds_the_timers_of_the_cases_the_supervisor_may_read(db, rt, hz_cases):
    running, failed = hz_cases
    readers = {name: _actor(db, name) for name in ("s201", "s101", "s008")}  # NB01's, HZ01's heads; HQ
    with db.transaction() as s:
        listed = {name: {t.instance_id for t in firing.visible(s, actor=who)} for name, who in readers.items()}
    assert listed["s201"] == set()
    assert listed["s101"] == {running, failed}
    assert {running, failed} <= listed["s008"]


def test_a_supervisor_recused_case_wide_can_neither_cancel_retry_correct_nor_message_it(db, rt, hz_cases):
    # 黄建华 (s101), HZ01's head and a supervisor, holds a step of the case and is its subject:
    # recused from the investigation case-wide, the case is not his to read or act on.
    running = probe.start(db, rt, "P-SUBJ", "C01", holder="s101", subject="s101")
    failed = probe.start(db, rt, "P-SUBJ-F", "C10", holder="s101", subject="s101")
    probe.fail(db, rt, failed, HANDLER)
    subject = _actor(db, "s101")
    commands = _commands(rt, running, failed, probe.timer_of(db, running).id)
    commands["message"] = lambda s, who: messages.correlate(s, rt, name=probe.MESSAGE, correlation_key="P-SUBJ",
                                                            actor=who, payload={})
    before = row_counts(db)
    for name, run in commands.items():
        with pytest.raises(NotFound), db.transaction() as s:
            run(s, subject)
        assert row_counts(db) == before, name
    # A supervisor at headquarters reads the case and may act on it.
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=running, actor=_actor(db, "s008"), reason="被投诉人回避")
    with db.transaction() as s:
        assert s.get(ProcessInstance, running).status == "cancelled"


def test_nobody_is_given_a_step_of_a_case_that_recuses_them_case_wide(db, rt, hz_cases):
    # 杜娟 (s107) is the subject: the "hold" step does not recuse her itself, the case does.
    case = probe.start(db, rt, "P-SUBJ-2", "C01", subject="s107")
    hold = probe.open_task(db, case, "hold")
    hq = _actor(db, "s008")
    with pytest.raises(Recused), db.transaction() as s:
        tasks.assign(s, rt, task_id=hold.id, username="s107", actor=hq, reason="人手不足")
    with db.transaction() as s:
        tasks.assign(s, rt, task_id=hold.id, username="s106", actor=hq, reason="人手不足")
