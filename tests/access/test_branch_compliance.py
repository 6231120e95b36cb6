"""A step offered to ``compliance`` (a complaint's compliance review, an SLA escalation to
compliance) is a branch compliance officer's only for their branch's cases; compliance at
headquarters is offered every branch's (docs/permissions.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select

from engine.access.identity import Actor
from engine.errors import NotCandidate, TaskNotFound
from engine.models import Notification, Task
from engine.process import deployments, instances, tasks
from engine.process.tasks import InboxQuery
from engine.sla import admin as sla_admin
from engine.timers import firing
from tests.support.bpmn import bundle_of, linear, process, user_task

pytestmark = pytest.mark.sqlite

REVIEW = process(linear(("review", user_task("review", name="合规审查", groups="compliance"))), key="cr")
OWNER = Actor(username="s001", groups=frozenset({"process_owner"}), branch_code=None)


def _cases(db, rt, staff) -> dict[str, int]:
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(REVIEW), actor=OWNER)
        for branch in ("HZ01", "NB01"):
            instances.start(s, rt, process_key="cr", business_key=f"CR-{branch}", actor=staff["s006"],
                            branch_code=branch)
        return dict(s.execute(select(Task.branch_code, Task.id).where(Task.process_key == "cr")).all())


def _offered(db, rt, actor: Actor, **query) -> list[str]:
    with db.transaction() as s:
        rows, _ = tasks.inbox(s, actor=actor, query=InboxQuery(**query), now=rt.now())
    return sorted(t.branch_code for t in rows if t.process_key == "cr")


def test_branch_compliance_is_offered_its_branchs_reviews_and_headquarters_every_one(db, rt, staff):
    ids = _cases(db, rt, staff)
    assert _offered(db, rt, staff["s109"], candidate_me=True) == ["HZ01"]  # 叶青, HZ01 compliance
    assert _offered(db, rt, staff["s109"]) == ["HZ01"]
    assert _offered(db, rt, staff["s207"], candidate_me=True) == ["NB01"]  # 石磊, NB01 compliance
    assert _offered(db, rt, staff["s006"], candidate_me=True) == ["HZ01", "NB01"]  # 谢文, HQ
    with pytest.raises((TaskNotFound, NotCandidate)), db.transaction() as s:
        tasks.claim(s, rt, task_id=ids["NB01"], actor=staff["s109"])
    with db.transaction() as s:
        assert tasks.claim(s, rt, task_id=ids["NB01"], actor=staff["s207"]).assignee == "s207"


def test_an_escalation_to_compliance_reaches_the_branchs_officer_and_headquarters(db, rt, staff):
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, actor=OWNER, data={
            "key": "cr.review", "name": "审查 1 小时", "position": 1, "process_key": "cr", "element_id": "review",
            "target_amount": 1, "target_unit": "CH", "business_hours": "default",
            "milestones": [{"at": 1.0, "action": "escalate", "to": "compliance"}]})
    start = rt.now()
    with time_machine.travel(start, tick=False) as clock:
        _cases(db, rt, staff)
        clock.move_to(start + timedelta(hours=2))
        assert firing.fire_due(db, rt) == 2
    with db.transaction() as s:
        told = sorted(s.execute(select(Task.branch_code, Notification.recipient)
                                .join(Task, Task.id == Notification.task_id)).all())
        escalations = s.execute(select(Task.id).where(Task.kind == "escalation", Task.branch_code == "NB01")
                                ).scalars().all()
    assert told == [("HZ01", "s006"), ("HZ01", "s109"), ("NB01", "s006"), ("NB01", "s207")]
    assert len(escalations) == 1
    assert [b for b in _offered_escalations(db, rt, staff["s109"])] == ["HZ01"]


def _offered_escalations(db, rt, actor: Actor) -> list[str]:
    with db.transaction() as s:
        rows, _ = tasks.inbox(s, actor=actor, query=InboxQuery(candidate_me=True), now=rt.now())
    return sorted(t.branch_code for t in rows if t.kind == "escalation")
