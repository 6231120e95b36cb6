"""`make run` loads the demo people, deploys workflows/ and its SLA policies: that must work
on a fresh database and again on a loaded one."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from engine import demo
from engine.config import PROJECT_ROOT
from engine.models import Group, GroupMember, ProcessVersion, SlaPolicy


@pytest.mark.sqlite
def test_the_demo_loads_and_reloads_without_changes(db, rt):
    workflows = PROJECT_ROOT / "workflows"
    with db.transaction() as s:
        assert demo.load(s, rt) == len(demo.STAFF) + 1
        results, policies = demo.load_workflows(s, rt, workflows)
    assert all(r.created for r in results)
    assert len(results) == len(list(workflows.glob("*.bpmn")))  # one process per diagram
    with db.transaction() as s:
        assert demo.load(s, rt) == 0
        again, _ = demo.load_workflows(s, rt, workflows)
        assert not any(r.created for r in again)
        assert s.execute(select(func.count()).select_from(ProcessVersion)).scalar_one() == len(results)
        assert s.execute(select(func.count()).select_from(SlaPolicy)).scalar_one() == policies


@pytest.mark.sqlite
def test_every_demo_service_group_has_two_or_three_members(db, rt):
    with db.transaction() as s:
        demo.load(s, rt)
        sizes = dict(s.execute(select(Group.key, func.count()).join(GroupMember, GroupMember.group_id == Group.id)
                               .where(Group.kind == "service_group").group_by(Group.key)).all())
    assert sizes == {"HZ01-G1": 3, "HZ01-G2": 2, "NB01-G1": 2, "NB01-G2": 2, "SX01-G1": 3}  # brief §4.3
