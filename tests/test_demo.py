"""`make run` loads the demo people, deploys workflows/ and its SLA policies, and schedules
the monthly VIP evaluation: that must work on a fresh database and again on a loaded one."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, or_, select

from engine import demo, schedules, timers
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.models import AuditEvent, Branch, Client, Group, GroupMember, ProcessVersion, SlaPolicy, Timer


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


@pytest.mark.sqlite
def test_the_demo_registry_is_the_briefs_and_a_reload_writes_nothing(db, rt):
    def writes(s) -> int:
        kinds = ("branch.", "staff.", "service_group.", "client.", "classification.", "user.")
        return s.execute(select(func.count()).select_from(AuditEvent).where(
            or_(*(AuditEvent.kind.startswith(k) for k in kinds)))).scalar_one()

    with db.transaction() as s:
        demo.load(s, rt)
    with db.transaction() as s:
        clients = {c.client_id: (c.branch_code, c.service_group_key, c.classification, c.vip_tier)
                   for c in s.execute(select(Client)).scalars()}
        assert [b.code for b in s.execute(select(Branch).order_by(Branch.code)).scalars()] == ["HZ01", "NB01", "SX01"]
        before = writes(s)
    # Brief §4.3 (groups; C09 and C10 in the branch pool) and §4.4 (class with T = 3, tier).
    assert clients == {
        "C01": ("HZ01", "HZ01-G1", "A+", "diamond"), "C02": ("HZ01", "HZ01-G1", "B", "diamond"),
        "C03": ("NB01", "NB01-G1", "A", "diamond"), "C04": ("NB01", "NB01-G1", "C", "gold"),
        "C05": ("SX01", "SX01-G1", "D", "gold"), "C06": ("HZ01", "HZ01-G2", "C-", "gold"),
        "C07": ("SX01", "SX01-G1", "D-", "gold"),  # below gold, in downgrade grace (VIP-20250603-0011)
        "C08": ("NB01", "NB01-G2", "E", "silver"), "C09": ("SX01", None, "F", None), "C10": ("HZ01", None, "G", None),
    }
    with db.transaction() as s:
        assert demo.load(s, rt) == 0
        assert writes(s) == before


@pytest.mark.sqlite
def test_the_demo_schedules_the_monthly_vip_evaluation_once_for_the_first_working_day(db, rt):
    # Thursday 2025-09-25: October's first working day is Thursday 10-09, after National Day.
    with time_machine.travel(datetime(2025, 9, 25, 12, tzinfo=SHANGHAI), tick=False):
        with db.transaction() as s:
            demo.load(s, rt)
            demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")
        with db.transaction() as s:
            demo.load(s, rt)  # `bpm demo load` again
    first_slot = datetime(2025, 10, 9, 9, tzinfo=SHANGHAI)
    with db.transaction() as s:
        [schedule] = schedules.get_all(s)
        assert (schedule.key, schedule.process_key, schedule.rule, schedule.at_time, schedule.active) == (
            "vip-monthly", "job:vip.monthly_evaluation", "first_working_day_of_month", "09:00", True)
        assert schedule.next_run_at == first_slot
        armed = s.execute(select(Timer.due_at).where(Timer.kind == "schedule", Timer.status == "waiting")).all()
        assert armed == [(first_slot,)]
        created = s.execute(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.kind == "schedule.created")).scalar_one()
        assert created == 1
        clients = s.execute(select(func.count()).select_from(Client)).scalar_one()
    # The running demo's timer runner fires the slot: the evaluation runs once, over every client.
    with time_machine.travel(first_slot - timedelta(seconds=1), tick=False):
        assert timers.fire_due(db, rt) == 0
    with time_machine.travel(first_slot + timedelta(seconds=1), tick=False):
        assert timers.fire_due(db, rt) == 1
    with db.transaction() as s:
        runs = s.execute(select(AuditEvent).where(AuditEvent.kind == "schedule.job_run")).scalars().all()
        assert [(r.data["slot"], r.data["job"], r.data["result"]["evaluated"]) for r in runs] == [
            ("vip-monthly-20251009", "vip.monthly_evaluation", clients)]
        # November 1 is a Saturday: the next run is Monday 11-03.
        assert schedules.get_all(s)[0].next_run_at == datetime(2025, 11, 3, 9, tzinfo=SHANGHAI)
