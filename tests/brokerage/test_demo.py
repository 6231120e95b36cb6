"""`make run` loads the demo people, deploys workflows/ and its SLA policies, and schedules
the monthly VIP evaluation and the quarterly periodic callback batch: that must work on a
fresh database and again on a loaded one."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, or_, select

from engine.brokerage import demo, periodic_callbacks
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.models import (
    AuditEvent,
    Branch,
    Client,
    Group,
    GroupMember,
    ProcessInstance,
    ProcessVersion,
    Schedule,
    SlaPolicy,
    Timer,
)
from engine.timers import firing, schedules


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


def _load_twice_on_thursday_2025_09_25(db, rt) -> None:
    # October's first working day, also the fourth quarter's, is Thursday 10-09, after National Day.
    with time_machine.travel(datetime(2025, 9, 25, 12, tzinfo=SHANGHAI), tick=False):
        with db.transaction() as s:
            demo.load(s, rt)
            demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")
        with db.transaction() as s:
            demo.load(s, rt)  # `bpm demo load` again


def _schedule(s, key: str) -> Schedule:
    return next(schedule for schedule in schedules.get_all(s) if schedule.key == key)


@pytest.mark.sqlite
def test_the_demo_creates_each_of_its_schedules_once(db, rt):
    _load_twice_on_thursday_2025_09_25(db, rt)
    with db.transaction() as s:
        assert [x.key for x in schedules.get_all(s)] == ["callback-periodic", "vip-monthly"]
        armed = s.execute(select(Timer.element_id, Timer.due_at).where(Timer.kind == "schedule",
                                                                      Timer.status == "waiting")).all()
        assert sorted(armed) == [("callback-periodic", datetime(2025, 10, 9, 10, tzinfo=SHANGHAI)),
                                 ("vip-monthly", datetime(2025, 10, 9, 9, tzinfo=SHANGHAI))]
        created = s.execute(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.kind == "schedule.created")).scalar_one()
        assert created == 2


@pytest.mark.sqlite
def test_the_demo_schedules_the_monthly_vip_evaluation_once_for_the_first_working_day(db, rt):
    _load_twice_on_thursday_2025_09_25(db, rt)
    first_slot = datetime(2025, 10, 9, 9, tzinfo=SHANGHAI)
    with db.transaction() as s:
        schedule = _schedule(s, demo.VIP_SCHEDULE_KEY)
        assert (schedule.key, schedule.process_key, schedule.rule, schedule.at_time, schedule.active) == (
            "vip-monthly", "job:vip.monthly_evaluation", "first_working_day_of_month", "09:00", True)
        assert schedule.next_run_at == first_slot
        clients = s.execute(select(func.count()).select_from(Client)).scalar_one()
    # The running demo's timer runner fires the slot: the evaluation runs once, over every client.
    with time_machine.travel(first_slot - timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 0
    with time_machine.travel(first_slot + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 1  # the callback batch waits for 10:00
    with db.transaction() as s:
        runs = s.execute(select(AuditEvent).where(AuditEvent.kind == "schedule.job_run")).scalars().all()
        assert [(r.data["slot"], r.data["job"], r.data["result"]["evaluated"]) for r in runs] == [
            ("vip-monthly-20251009", "vip.monthly_evaluation", clients)]
        # November 1 is a Saturday: the next run is Monday 11-03.
        assert _schedule(s, demo.VIP_SCHEDULE_KEY).next_run_at == datetime(2025, 11, 3, 9, tzinfo=SHANGHAI)


@pytest.mark.sqlite
def test_the_demo_schedules_the_periodic_callback_batch_for_the_first_working_day_of_each_quarter(db, rt):
    _load_twice_on_thursday_2025_09_25(db, rt)
    # An hour after the VIP evaluation of the same morning, so the sample sees its classes and tiers.
    slot = datetime(2025, 10, 9, 10, tzinfo=SHANGHAI)
    with db.transaction() as s:
        schedule = _schedule(s, demo.PERIODIC_SCHEDULE_KEY)
        assert (schedule.process_key, schedule.rule, schedule.at_time, schedule.active, schedule.next_run_at) == (
            "job:callback.periodic_batch", "first_working_day_of_quarter", "10:00", True, slot)
    with time_machine.travel(slot + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 2  # the 09:00 evaluation, then the batch
    with db.transaction() as s:
        run = s.execute(select(AuditEvent).where(AuditEvent.kind == "schedule.job_run",
                                                 AuditEvent.data["slot"].as_string() == "callback-periodic-20251009")
                        ).scalar_one()
        assert run.data["job"] == periodic_callbacks.JOB_NAME
        # The demo's ten active clients at the default 2.5 % a quarter: one callback.
        assert (run.data["result"]["quota"], run.data["result"]["started"]) == (1, 1)
        [case] = s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "callback")).scalars()
        assert (case.business_key, case.facts["callback_type"]) == ("CB-20251009-0001", "periodic")
        # The next quarter's first working day is Sunday 2026-01-04, the 调休 make-up day after the
        # New Year holiday (01-01 … 01-03).
        assert _schedule(s, demo.PERIODIC_SCHEDULE_KEY).next_run_at == datetime(2026, 1, 4, 10, tzinfo=SHANGHAI)
