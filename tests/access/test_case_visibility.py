"""Who may read a case (brief §6.3), on the demo registry: branch management their branch,
a service group its clients' cases, counter staff and agents only cases they took part in,
HQ every case; recusal on top."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.errors import InstanceNotFound, TaskNotFound
from engine.models import Task
from engine.process import deployments, instances, tasks
from engine.process.tasks import InboxQuery
from tests.support.bpmn import bundle_of, linear, process, user_task

pytestmark = pytest.mark.sqlite

# Worked by HQ complaint staff (who see every case anyway), so nobody else below is
# "involved" through a candidate group.
CASE = process(linear(("review", user_task("review", groups="hq_complaint_dept"))), key="case")


@pytest.fixture
def cases(db, rt, demo_registry) -> dict[str, int]:
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(CASE), actor=Actor.system("owner"))
    started = {}
    with db.transaction() as s:
        starter = _actor(s, "s004")  # a call-centre agent registers every case
        for client in ("C06", "C01", "C10", "C04"):  # HZ01-G2, HZ01-G1, HZ01 pool, NB01-G1
            started[client] = instances.start(s, rt, process_key="case", business_key=f"K-{client}",
                                              actor=starter, data={"client_id": client}).id
    return started


def _actor(session, username: str) -> Actor:
    return identity.actor_for(session, identity.get_user(session, username))


def _visible(db, username: str, cases: dict[str, int]) -> set[str]:
    with db.transaction() as s:
        listed = {i.id for i in instances.get_all(s, actor=_actor(s, username), limit=500)}
    return {client for client, instance_id in cases.items() if instance_id in listed}


@pytest.mark.parametrize(("username", "expected"), [
    ("s101", {"C06", "C01", "C10"}),  # HZ01 branch head: the whole branch
    ("s103", {"C06", "C01", "C10"}),  # HZ01 branch CS director
    ("s109", {"C06", "C01", "C10"}),  # HZ01 compliance: its branch
    ("s201", {"C04"}),  # NB01 branch head
    ("s108", {"C06", "C10"}),  # HZ01-G2 account manager: own group's clients and the branch pool
    ("s104", {"C06", "C10"}),  # counter staff in HZ01-G2: as a group member
    ("s106", {"C01", "C10"}),  # HZ01-G1
    ("s003", set()),  # call-centre agent with no task on these cases
    ("s007", {"C06", "C01", "C10", "C04"}),  # HQ complaint department
    ("s006", {"C06", "C01", "C10", "C04"}),  # HQ compliance
    ("s004", {"C06", "C01", "C10", "C04"}),  # registered them all (started_by)
    ("s302", set()),  # SX01 counter staff: none of these is theirs
])
def test_each_role_reads_the_cases_of_its_scope(db, cases, username, expected):
    assert _visible(db, username, cases) == expected


def test_a_group_member_of_no_branch_reads_the_groups_clients_cases(db, cases):
    # No branch, so no branch pool: the group's clients alone.
    member = Actor(username="hq-member", groups=frozenset({"HZ01-G2"}), branch_code=None)
    with db.transaction() as s:
        listed = {i.id for i in instances.get_all(s, actor=member, limit=500)}
    assert {client for client, instance_id in cases.items() if instance_id in listed} == {"C06"}


def test_a_case_outside_the_scope_does_not_exist_for_the_reader(db, cases):
    with pytest.raises(InstanceNotFound), db.transaction() as s:
        instances.get(s, cases["C04"], actor=_actor(s, "s101"))
    with db.transaction() as s:
        assert instances.get(s, cases["C04"], actor=_actor(s, "s201")).id == cases["C04"]


def test_a_branch_supervisor_supervises_the_tasks_of_their_branch_only(db, rt, cases):
    with db.transaction() as s:
        by_client = {t.client_id: t.id for t in s.execute(select(Task).where(Task.process_key == "case")).scalars()}
        hz_head, hq = _actor(s, "s101"), _actor(s, "s007")  # both hold the supervisor role
        listed, _ = tasks.inbox(s, actor=hz_head, query=InboxQuery(process_key="case"), now=rt.now())
        everything, _ = tasks.inbox(s, actor=hq, query=InboxQuery(process_key="case"), now=rt.now())
    assert {t.client_id for t in listed} == {"C06", "C01", "C10"}
    assert {t.client_id for t in everything} == {"C06", "C01", "C10", "C04"}
    with pytest.raises(TaskNotFound), db.transaction() as s:
        tasks.assign(s, rt, task_id=by_client["C04"], username="s008", actor=_actor(s, "s101"))
    with db.transaction() as s:
        tasks.assign(s, rt, task_id=by_client["C04"], username="s008", actor=_actor(s, "s201"))
