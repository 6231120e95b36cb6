"""The monthly evaluation: classification changes become VIP cases, run by hand or by the
first-working-day schedule (a schedule job). The evaluation records the evaluated tier; the
client's effective tier changes only when the case activates it (after the welcome call and
any approval) or applies the downgrade on its effective date."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.brokerage import demo, vip_evaluation
from engine.calendars import SHANGHAI
from engine.errors import InvalidInput
from engine.models import AuditEvent, Client, ProcessInstance, Schedule, Task, User
from engine.process import instances, tasks
from engine.timers import firing, schedules
from tests.brokerage.test_vip import WELCOMED
from tests.conftest import load_demo

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent


@pytest.fixture
def registry(db, rt, snapshot):
    # Loaded on Thursday 2025-09-25, so the demo's monthly evaluation schedule waits for the
    # first working day of October (after the National Day holiday).
    load_demo(db, rt, snapshot, at=datetime(2025, 9, 25, 12, tzinfo=SHANGHAI))


def _set_assets(db, **assets: int) -> None:
    with db.transaction() as s:
        for client_id, amount in assets.items():
            s.get(Client, client_id).assets = Decimal(amount)


def _vip_cases(db) -> dict[str, ProcessInstance]:
    with db.transaction() as s:
        rows = s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "vip_onboarding")).scalars()
        return {r.client_id: r for r in rows}


def _vip_schedule(s) -> Schedule:
    # The demo has other schedules too (the quarterly callback batch).
    return next(schedule for schedule in schedules.get_all(s) if schedule.key == demo.VIP_SCHEDULE_KEY)


def _run(db, rt, as_of: date) -> vip_evaluation.Outcome:
    at = datetime.combine(as_of, datetime.min.time(), SHANGHAI).replace(hour=9)
    with time_machine.travel(at, tick=False), db.transaction() as s:
        return vip_evaluation.run(s, rt, as_of=as_of, evaluated_at=at)


def _tier(db, client_id: str) -> tuple[str | None, date | None, str | None, date | None]:
    """Effective tier, since when, the evaluated tier, and a pending downgrade's grace end."""
    with db.transaction() as s:
        c = s.get(Client, client_id)
        return c.vip_tier, c.tier_since, c.evaluated_tier, c.downgrade_grace_until


def _open_task(db, case: ProcessInstance) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.instance_id == case.id, Task.kind == "bpmn",
                                            Task.status.in_(("open", "claimed")))).scalar_one()


def _do(db, rt, case: ProcessInstance, element: str, username: str, data: dict, at: datetime) -> None:
    """``username`` completes the case's one open task, ``element``, at ``at``."""
    task = _open_task(db, case)
    assert task.element_id == element, task.element_id
    with time_machine.travel(at, tick=False), db.transaction() as s:
        actor = identity.actor_for(s, s.execute(select(User).where(User.username == username)).scalar_one())
        tasks.complete(s, rt, task_id=task.id, actor=actor, data=data)


def _fire(db, rt, at: datetime) -> None:
    with time_machine.travel(at, tick=False):
        firing.fire_due(db, rt)


def _status(db, case: ProcessInstance) -> str:
    with db.transaction() as s:
        return s.get(ProcessInstance, case.id).status


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


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


def test_an_upgrade_that_needs_approval_takes_effect_only_when_approved_and_never_when_refused(db, rt, registry):
    # Both gold (demo); now above the diamond threshold (100万, below HQ's 1000万): diamond
    # needs the branch head's approval (brief §2.4 V4/V5).
    _set_assets(db, C06=1_200_000, C05=1_500_000)
    outcome = _run(db, rt, date(2025, 7, 1))
    assert len(outcome.started) == 2 and outcome.problems == []
    cases = _vip_cases(db)
    assert _tier(db, "C06") == ("gold", date(2025, 3, 3), "diamond", None)  # evaluated, not granted
    assert _tier(db, "C05") == ("gold", date(2024, 9, 2), "diamond", None)

    _do(db, rt, cases["C06"], "verify_welcome", "s108", WELCOMED, sh(2025, 7, 2, 10))
    _do(db, rt, cases["C05"], "verify_welcome", "s303", WELCOMED, sh(2025, 7, 2, 10))
    assert _open_task(db, cases["C06"]).element_id == "approve_branch"
    assert _tier(db, "C06")[0] == "gold"  # welcomed, waiting for the approval: still gold

    _do(db, rt, cases["C06"], "approve_branch", "s101", {"decision": "approve"}, sh(2025, 7, 4, 15))
    assert _tier(db, "C06") == ("diamond", date(2025, 7, 4), "diamond", None)  # from the approval's day
    _do(db, rt, cases["C05"], "approve_branch", "s301", {"decision": "reject", "comment": "资产来源待核实"},
        sh(2025, 7, 4, 15))
    assert _status(db, cases["C05"]) == "completed"
    assert _tier(db, "C05") == ("gold", date(2024, 9, 2), "diamond", None)  # refused: as it was

    # August finds the same tiers: the refused one is not put up again, the approved one holds.
    august = _run(db, rt, date(2025, 8, 1))
    assert (august.started, august.told) == ([], [])
    assert _tier(db, "C05")[0] == "gold" and _tier(db, "C06")[0] == "diamond"
    with db.transaction() as s:
        [applied] = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{cases['C06'].id}",
                                                       AuditEvent.kind == "client.vip_tier")).scalars()
        assert (applied.data["before"], applied.data["after"], applied.data["applied"]) == ("gold", "diamond", True)


def test_an_upgrade_that_needs_no_approval_takes_effect_at_activation(db, rt, registry):
    _set_assets(db, C09=60_000)  # 冯志强, no tier (demo), branch pool of SX01: now silver
    _run(db, rt, date(2025, 7, 1))
    case = _vip_cases(db)["C09"]
    assert _tier(db, "C09") == (None, None, "silver", None)
    _do(db, rt, case, "verify_welcome", "s303", WELCOMED, sh(2025, 7, 3, 11))
    # Activated straight after the welcome call; the branch head's group assignment follows.
    assert _tier(db, "C09") == ("silver", date(2025, 7, 3), "silver", None)
    assert _open_task(db, case).element_id == "assign_group"


def test_a_downgrade_takes_effect_on_its_effective_date_and_not_before(db, rt, registry):
    _set_assets(db, C06=200_000)  # gold since 2025-03-03 (demo), now below: silver by assets
    _run(db, rt, date(2025, 7, 1))
    case = _vip_cases(db)["C06"]
    assert _tier(db, "C06") == ("gold", date(2025, 3, 3), "silver", date(2025, 10, 1))
    assert _run(db, rt, date(2025, 8, 1)).started == []  # still below, still in grace
    # Three evaluations below (July, August, September): the grace period ends with the third.
    _fire(db, rt, sh(2025, 9, 1, 9, 0, 1))
    assert _tier(db, "C06")[0] == "gold"
    _do(db, rt, case, "pre_downgrade_contact", "s108", {"contacted": True, "client_reaction": "accepts"},
        sh(2025, 9, 2, 10))
    _fire(db, rt, sh(2025, 9, 30, 23, 59, 59))
    assert _tier(db, "C06") == ("gold", date(2025, 3, 3), "silver", date(2025, 10, 1))  # contacted, not yet due
    _fire(db, rt, sh(2025, 10, 1, 0, 0, 1))  # 1st of the month after the notice time
    assert _status(db, case) == "completed"
    assert _tier(db, "C06") == ("silver", date(2025, 10, 1), "silver", None)
    # The next evaluation finds the client at the tier they are served at: nothing to start.
    october = _run(db, rt, date(2025, 10, 9))
    assert (october.started, october.told, october.problems) == ([], [], [])


def test_assets_recovering_during_grace_end_the_waiting_case_and_keep_the_tier(db, rt, registry):
    _set_assets(db, C06=200_000)
    _run(db, rt, date(2025, 7, 1))
    case = _vip_cases(db)["C06"]
    assert _tier(db, "C06") == ("gold", date(2025, 3, 3), "silver", date(2025, 10, 1))
    _set_assets(db, C06=400_000)
    outcome = _run(db, rt, date(2025, 8, 1))
    assert outcome.told == [case.business_key] and outcome.started == []
    with db.transaction() as s:
        assert s.get(ProcessInstance, case.id).status == "completed"
    # Gold all along, since when it was; no downgrade pending any more.
    assert _tier(db, "C06") == ("gold", date(2025, 3, 3), "gold", None)
    _fire(db, rt, sh(2025, 10, 1, 0, 0, 1))
    assert _tier(db, "C06")[0] == "gold"


def test_the_evaluation_run_twice_for_one_date_changes_nothing_the_second_time(db, rt, registry):
    # An upgrade without approval, one with, a fall below the tier; and C07, whose grace (from
    # before the demo) ends on 2025-08-01.
    _set_assets(db, C09=60_000, C05=1_500_000, C06=200_000)

    def rows() -> dict[str, tuple]:
        with db.transaction() as s:
            return {c.client_id: (c.vip_tier, c.tier_since, c.evaluated_tier, c.downgrade_grace_until,
                                  c.classification, c.classified_on) for c in s.execute(select(Client)).scalars()}

    first = _run(db, rt, date(2025, 7, 1))
    assert len(first.started) == 3
    after_first = rows()
    again = _run(db, rt, date(2025, 7, 1))
    assert (again.evaluated, again.started, again.told, again.problems) == (10, [], [], [])
    assert rows() == after_first and len(_vip_cases(db)) == 3
    assert {c: r[0] for c, r in after_first.items() if r[0] != r[2]} == {  # effective ≠ evaluated
        "C09": None, "C05": "gold", "C06": "gold", "C07": "gold"}

    august = _run(db, rt, date(2025, 8, 1))
    assert august.problems == ["C07: grace_expired but no VIP case waits in grace"]
    assert _run(db, rt, date(2025, 8, 1)).problems == []  # said once
    assert _tier(db, "C07")[0] == "gold"


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
        schedule = _vip_schedule(s)
        assert (schedule.key, schedule.process_key) == ("vip-monthly", "job:vip.monthly_evaluation")
        assert schedule.next_run_at == datetime(2025, 10, 9, 9, tzinfo=SHANGHAI)
    with time_machine.travel(datetime(2025, 10, 9, 9, tzinfo=SHANGHAI) + timedelta(seconds=1), tick=False):
        assert firing.fire_due(db, rt) == 1
        assert firing.fire_due(db, rt) == 0
    cases = _vip_cases(db)
    assert list(cases) == ["C09"] and cases["C09"].business_key == "VIP-20251009-0001"
    with db.transaction() as s:
        runs = s.execute(select(AuditEvent).where(AuditEvent.kind == "schedule.job_run")).scalars().all()
        assert [r.data["slot"] for r in runs] == ["vip-monthly-20251009"]
        assert runs[0].data["result"]["started"] == ["VIP-20251009-0001"]
        stored = _vip_schedule(s)
        assert stored.next_run_at == datetime(2025, 11, 3, 9, tzinfo=SHANGHAI)
    # The same slot delivered again (a retried job after a crash) runs nothing twice.
    _set_assets(db, C08=400_000)  # a change the second run would act on if it ran
    with db.transaction() as s:
        schedules._run_job(s, rt, _vip_schedule(s), "vip-monthly-20251009",
                           datetime(2025, 10, 9, 9, tzinfo=SHANGHAI), rt.now())
    assert list(_vip_cases(db)) == ["C09"]


def test_a_schedule_for_an_unknown_job_is_refused(db, rt, registry):
    with pytest.raises(InvalidInput, match="no job"), db.transaction() as s:
        schedules.create(s, rt, key="x", process_key="job:nothing", rule="every_working_day", at_time="09:00",
                         actor=Actor.system("owner"))
