"""The monthly evaluation: classification changes become VIP cases, run by hand or by the
first-working-day schedule (a schedule job)."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from sqlalchemy import select

from engine import demo, instances, schedules, timers, vip_evaluation
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import InvalidInput
from engine.identity import Actor
from engine.models import AuditEvent, Client, ProcessInstance, Task

pytestmark = pytest.mark.sqlite


@pytest.fixture
def registry(db, rt):
    # Loaded on Thursday 2025-09-25, so the demo's monthly evaluation schedule waits for the
    # first working day of October (after the National Day holiday).
    with time_machine.travel(datetime(2025, 9, 25, 12, tzinfo=SHANGHAI), tick=False), db.transaction() as s:
        demo.load(s, rt)
        demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")


def _set_assets(db, **assets: int) -> None:
    with db.transaction() as s:
        for client_id, amount in assets.items():
            s.get(Client, client_id).assets = Decimal(amount)


def _vip_cases(db) -> dict[str, ProcessInstance]:
    with db.transaction() as s:
        rows = s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "vip_onboarding")).scalars()
        return {r.client_id: r for r in rows}


def _run(db, rt, as_of: date) -> vip_evaluation.Outcome:
    at = datetime.combine(as_of, datetime.min.time(), SHANGHAI).replace(hour=9)
    with time_machine.travel(at, tick=False), db.transaction() as s:
        return vip_evaluation.run(s, rt, as_of=as_of, evaluated_at=at)


def test_an_upgrade_and_a_fall_below_the_tier_each_start_a_numbered_vip_case(db, rt, registry):
    # Brief §4.4: C09 holds 32,000 (no tier), C06 is gold with 380,000.
    _set_assets(db, C09=60_000, C06=200_000)
    outcome = _run(db, rt, date(2025, 7, 1))
    assert sorted(outcome.started) == ["VIP-20250701-0001", "VIP-20250701-0002"]
    assert outcome.problems == []
    cases = _vip_cases(db)
    assert set(cases) == {"C09", "C06"}
    with db.transaction() as s:
        upgrade = instances.data_of(s, rt, cases["C09"])
        grace = instances.data_of(s, rt, cases["C06"])
        # The registry supplied branch and group; the evaluation the period and previous tier.
        assert (upgrade["branch_code"], upgrade["previous_tier"]) == ("SX01", "none")
        assert upgrade["evaluation_period"] == "2025-06"
        assert (upgrade["target_tier"], upgrade["change_type"]) == ("silver", "upgrade")
        assert (grace["previous_tier"], grace["change_type"]) == ("gold", "downgrade")
        assert grace["service_group"] == "HZ01-G2"
        welcome = s.execute(select(Task).where(Task.instance_id == cases["C09"].id, Task.status == "open")).scalar_one()
        assert welcome.element_id == "verify_welcome"


def test_assets_recovering_during_grace_end_the_waiting_case(db, rt, registry):
    _set_assets(db, C06=200_000)
    _run(db, rt, date(2025, 7, 1))
    case = _vip_cases(db)["C06"]
    _set_assets(db, C06=400_000)
    outcome = _run(db, rt, date(2025, 8, 1))
    assert outcome.told == [case.business_key] and outcome.started == []
    with db.transaction() as s:
        assert s.get(ProcessInstance, case.id).status == "completed"
        assert s.get(Client, "C06").downgrade_grace_until is None


def test_a_change_without_a_case_to_tell_is_reported_not_lost(db, rt, registry):
    # C07 is in grace until 2025-08-01 from before (demo data) but no VIP case waits for it.
    _set_assets(db, C07=350_000)
    outcome = _run(db, rt, date(2025, 7, 1))
    assert outcome.problems == ["C07: grace_cleared but no VIP case waits in grace"]
    with db.transaction() as s:
        assert s.get(Client, "C07").downgrade_grace_until is None  # the registry still changed


def test_the_first_working_day_schedule_runs_the_evaluation_once_per_slot(db, rt, registry):
    _set_assets(db, C09=60_000)
    # The demo's schedule, created on Thursday 2025-09-25: the next slot is the first working
    # day of October, after the National Day holiday: Thursday 2025-10-09 at 09:00.
    with db.transaction() as s:
        [schedule] = schedules.get_all(s)
        assert (schedule.key, schedule.process_key) == ("vip-monthly", "job:vip.monthly_evaluation")
        assert schedule.next_run_at == datetime(2025, 10, 9, 9, tzinfo=SHANGHAI)
    with time_machine.travel(datetime(2025, 10, 9, 9, tzinfo=SHANGHAI) + timedelta(seconds=1), tick=False):
        assert timers.fire_due(db, rt) == 1
        assert timers.fire_due(db, rt) == 0
    cases = _vip_cases(db)
    assert list(cases) == ["C09"] and cases["C09"].business_key == "VIP-20251009-0001"
    with db.transaction() as s:
        runs = s.execute(select(AuditEvent).where(AuditEvent.kind == "schedule.job_run")).scalars().all()
        assert [r.data["slot"] for r in runs] == ["vip-monthly-20251009"]
        assert runs[0].data["result"]["started"] == ["VIP-20251009-0001"]
        stored = schedules.get_all(s)[0]
        assert stored.next_run_at == datetime(2025, 11, 3, 9, tzinfo=SHANGHAI)
    # The same slot delivered again (a retried job after a crash) runs nothing twice.
    _set_assets(db, C08=400_000)  # a change the second run would act on if it ran
    with db.transaction() as s:
        schedules._run_job(s, rt, schedules.get_all(s)[0], "vip-monthly-20251009",
                           datetime(2025, 10, 9, 9, tzinfo=SHANGHAI), rt.now())
    assert list(_vip_cases(db)) == ["C09"]


def test_a_schedule_for_an_unknown_job_is_refused(db, rt, registry):
    with pytest.raises(InvalidInput, match="no job"), db.transaction() as s:
        schedules.create(s, rt, key="x", process_key="job:nothing", rule="every_working_day", at_time="09:00",
                         actor=Actor.system("owner"))
