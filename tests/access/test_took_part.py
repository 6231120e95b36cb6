""""Took part" in a case means did a step, holds a step, or is offered an open step: a role
offered every complaint's registration (call-centre agents, a branch's counter) follows a
complaint only while the registration waits for someone. Telling a running case something
(a message) is the case's handlers' and the outside systems', not everyone's who may read it
(docs/domain.md#case-visibility, docs/permissions.md)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.access.roles import INTEGRATION
from engine.errors import InstanceNotFound, MessageNotCorrelated, TaskNotFound
from engine.models import Task
from engine.process import instances, messages, tasks
from tests.support.bpmn import row_counts

pytestmark = pytest.mark.sqlite

REGISTRATION = {"received_at": "2026-03-02T09:00:00+08:00", "channel": "counter", "request_kind": "complaint",
                "client_id": "C02", "business_line": "brokerage", "summary": "佣金收取与约定不符",
                "client_request": "explanation", "amount_claimed": 0}


def _actor(db, username: str) -> Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


def _reads(db, username: str, instance_id: int) -> bool:
    who = _actor(db, username)
    with db.transaction() as s:
        try:
            instances.get(s, instance_id, actor=who)
        except InstanceNotFound as refused:
            assert str(refused) == f"no instance {instance_id}"  # the same as for no such case
            assert instance_id not in [i.id for i in instances.get_all(s, actor=who, limit=500)]
            return False
        assert instance_id in [i.id for i in instances.get_all(s, actor=who, limit=500)]
        return True


def _task(db, instance_id: int, element: str) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.instance_id == instance_id, Task.element_id == element)).scalar_one()


@pytest.fixture
def complaint(db, rt, demo_loaded) -> int:
    """C02 complains at the HZ01 counter (蒋芳, s104, sends it in): the registration is offered
    to every call-centre agent and to HZ01's counter."""
    with db.transaction() as s:
        return messages.correlate(s, rt, name="complaint_received", correlation_key=None, actor=_actor(db, "s104"),
                                  payload={"channel": "counter", "client_id": "C02"}).id


def test_an_agent_offered_the_registration_reads_the_complaint_until_someone_registers_it(db, rt, complaint):
    assert _reads(db, "s005", complaint)  # offered the open registration
    register = _task(db, complaint, "register")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=register.id, actor=_actor(db, "s105"), data=REGISTRATION)
    # Registered by 沈洁 (s105): the agents were offered it, took no part, and no longer read it,
    # nor see its registration step, in the inbox or by id.
    assert not _reads(db, "s005", complaint)
    agent = _actor(db, "s005")
    with db.transaction() as s:
        done, _ = tasks.inbox(s, actor=agent, query=tasks.InboxQuery(status=("completed",)), now=rt.now())
    assert register.id not in [t.id for t in done]
    with pytest.raises(TaskNotFound), db.transaction() as s:
        tasks.get(s, register.id, actor=agent)
    # Whoever registered it (its first-contact owner, who holds the acknowledgement), and whoever
    # sent it in, do.
    assert _reads(db, "s105", complaint) and _reads(db, "s104", complaint)


def test_reading_a_case_does_not_make_a_person_its_handler(db, rt, complaint):
    register = _task(db, complaint, "register")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=register.id, actor=_actor(db, "s105"), data=REGISTRATION)
    key = _business_key(db, complaint)
    withdraw = {"withdrawal_channel": "phone"}
    before = row_counts(db)
    # An agent who took no part, and HZ01's head, who reads every case of the branch: neither
    # withdraws the client's complaint, and the answer is the same as for no such case.
    for username in ("s005", "s101"):
        with pytest.raises(MessageNotCorrelated), db.transaction() as s:
            messages.correlate(s, rt, name="client_withdraws", correlation_key=key, actor=_actor(db, username),
                               payload=withdraw)
        assert row_counts(db) == before
    assert _reads(db, "s101", complaint)
    # Whoever sent it in does; so would an outside system.
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_withdraws", correlation_key=key, actor=_actor(db, "s104"),
                           payload=withdraw)
    assert "confirm_withdrawal" in [t.element_id for t in _open(db, complaint)]


def test_a_handler_of_one_complaint_is_not_a_handler_of_the_next(db, rt, complaint):
    # 沈洁 (s105) registers the first complaint: she took part in it without starting it. An
    # agent registers the second: offered its registration while it waited, she took no part.
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_task(db, complaint, "register").id, actor=_actor(db, "s105"),
                       data=REGISTRATION)
    with db.transaction() as s:
        second = messages.correlate(s, rt, name="complaint_received", correlation_key=None,
                                    actor=_actor(db, "s104"), payload={"channel": "counter", "client_id": "C02"}).id
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_task(db, second, "register").id, actor=_actor(db, "s005"), data=REGISTRATION)
    clerk = _actor(db, "s105")
    with db.transaction() as s:
        assert instances.handles(s, complaint, clerk)
        assert not instances.handles(s, second, clerk)


def test_an_outside_system_messages_any_case(db, rt, complaint):
    register = _task(db, complaint, "register")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=register.id, actor=_actor(db, "s105"), data=REGISTRATION)
    hotline = Actor(username="hotline", groups=frozenset({INTEGRATION}))
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_withdraws", correlation_key=_business_key(db, complaint),
                           actor=hotline, payload={"withdrawal_channel": "phone"})
    assert "confirm_withdrawal" in [t.element_id for t in _open(db, complaint)]


def _business_key(db, instance_id: int) -> str:
    with db.transaction() as s:
        return s.execute(select(Task.business_key).where(Task.instance_id == instance_id).limit(1)).scalar_one()


def _open(db, instance_id: int) -> list[Task]:
    with db.transaction() as s:
        return list(s.execute(select(Task).where(Task.instance_id == instance_id,
                                                 Task.status.in_(("open", "claimed")))).scalars())
