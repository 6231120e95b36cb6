"""A case clock's milestones are policy data (issue 13 item 6): the complaint's whole-case
deadline reminders come from the SLA policy ``complaint.resolution`` (workflows/sla/
complaint.json), and changing that policy through the SLA admin path re-arms the running
clocks, audited on each case and in the policy's own event; a policy that cannot drive a
case clock is refused with its reason."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select

from engine.brokerage import complaint_clock
from engine.config import PROJECT_ROOT
from engine.errors import InvalidInput
from engine.models import AuditEvent, Notification, Timer
from engine.sla import admin as sla_admin
from engine.sla import case_clock
from engine.timers import firing
from tests.brokerage.test_complaint import COUNTER_VISIT, MONDAY_9, Case, registration, sh
from tests.support.api import API, assert_problem

pytestmark = pytest.mark.store_independent

DUE = sh(2026, 3, 23, 9)  # 15 working days after Monday 2 March 09:00


def _shipped() -> dict:
    policies = json.loads((PROJECT_ROOT / "workflows" / "sla" / "complaint.json").read_text(encoding="utf-8"))
    (policy,) = [p for p in policies if p["key"] == complaint_clock.POLICY]
    return policy


def _case(db, rt, staff, key: str) -> Case:
    case = Case(db, rt, staff, key)
    case.receive("complaint_received", COUNTER_VISIT, sender="s104")
    case.do("register", "s104", registration(channel="counter", client_id="C01"))
    return case


def _waiting(db, instance_id: int) -> list[tuple[float, list[str]]]:
    with db.transaction() as s:
        rows = s.execute(select(Timer).where(Timer.kind == "case", Timer.instance_id == instance_id,
                                             Timer.status == "waiting").order_by(Timer.due_at)).scalars()
        return [(float(t.payload["at"]), list(t.payload["to"])) for t in rows]


def test_the_clock_takes_its_milestones_from_the_stored_policy(db, rt, staff):
    with time_machine.travel(MONDAY_9, tick=False):
        case = _case(db, rt, staff, "CMP-20260302-0971")
    shipped = [(float(m["at"]), m["to"]) for m in _shipped()["milestones"]]
    assert shipped == [(0.5, ["branch:branch_cs_director"]),
                       (0.8, ["branch:branch_cs_director", "branch:compliance"]),
                       (1.0, ["branch:branch_cs_director", "branch:compliance", "hq_complaint_dept"])]
    with db.transaction() as s:
        clock = case_clock.get(s, case.instance_id)
        assert [(m["at"], m["to"]) for m in clock.milestones] == shipped
    assert _waiting(db, case.instance_id) == shipped


def test_changing_the_policy_re_arms_running_clocks_and_is_audited(db, rt, staff):
    """The process owner moves the half-way reminder to the branch head and the deadline's
    escalation to the HQ complaint department only: the running case follows, its reminders
    already sent are not sent again, and the change is on the case and in the policy's event."""
    changed = {**_shipped(), "milestones": [
        {"at": 0.5, "action": "notify", "to": ["branch:branch_head"]},
        {"at": 0.9, "action": "notify", "to": "branch:branch_cs_director, branch:compliance"},
        {"at": 1.0, "action": "escalate", "to": ["hq_complaint_dept"]}]}
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case = _case(db, rt, staff, "CMP-20260302-0972")
        _case(db, rt, staff, "CMP-20260302-0973")  # a second running clock of the policy
        clock.move_to(MONDAY_9 + (DUE - MONDAY_9) * 0.6)
        assert firing.fire_due(db, rt) >= 2  # both cases' half-way reminders, to the 客服总监
        with db.transaction() as s:
            _, recomputed = sla_admin.upsert_policy(s, rt, data=changed, actor=staff["s001"])
        assert _waiting(db, case.instance_id) == [(0.9, ["branch:branch_cs_director", "branch:compliance"]),
                                                  (1.0, ["hq_complaint_dept"])]  # 0.5 has passed: not re-sent
        clock.move_to(MONDAY_9 + (DUE - MONDAY_9) * 0.9 + timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 2
        clock.move_to(DUE + timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 2
    with db.transaction() as s:
        told = [(n.recipient, n.subject.split("] ", 1)[1]) for n in s.execute(
            select(Notification).where(Notification.instance_id == case.instance_id,
                                       Notification.task_id.is_(None)).order_by(Notification.id))
            .scalars()]
        events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{case.instance_id}",
                                                    AuditEvent.kind == "case_clock.policy_changed")).scalars().all()
        # The last save of the policy (the first is the demo's, from workflows/sla).
        saved = s.execute(select(AuditEvent).where(AuditEvent.kind == "sla.policy_saved",
                                                   AuditEvent.data["key"].as_string() == complaint_clock.POLICY)
                          .order_by(AuditEvent.seq.desc()).limit(1)).scalar_one()
    # Under the old policy the 客服总监 heard at 50 %; at 80 % nobody now (the policy says 90 %).
    assert told == [("s103", "案件办结期限已用 50%"),
                    ("s103", "案件办结期限已用 90%"), ("s109", "案件办结期限已用 90%"),
                    ("s007", "案件已超过办结期限"), ("s008", "案件已超过办结期限")]  # the HQ complaint department
    (event,) = events
    assert event.actor == "s001" and [m["at"] for m in event.data["to"]] == [0.5, 0.9, 1.0]
    assert saved.actor == "s001" and saved.data["case_clocks"] == 2 and len(saved.data["milestones"]) == 3
    assert recomputed >= 0


def test_a_policy_that_cannot_drive_a_case_clock_is_refused(client, db, rt, staff, auth):
    base = _shipped()
    for bad in ([{"at": 0.5, "action": "notify"}],  # nobody to tell: a case has no assignee
                [{"at": 0.5, "action": "reassign", "to": ["hq_complaint_dept"]}],  # no step to give away
                [{"at": 0.5, "action": "notify", "to": " , "}],
                ["0.5"]):
        with pytest.raises(InvalidInput), db.transaction() as s:
            sla_admin.upsert_policy(s, rt, data={**base, "milestones": bad}, actor=staff["s001"])
    body = {k: v for k, v in base.items() if k != "key"}
    answer = client.put(f"{API}/sla/policies/{complaint_clock.POLICY}", headers=auth("owner"),
                        json={**body, "milestones": [{"at": 0.5, "action": "notify"}]})
    assert "groups to tell" in assert_problem(answer, 400, "invalid_input")["detail"]


def test_a_case_clock_milestone_naming_its_group_by_an_expression_reaches_that_group(db, rt, staff):
    changed = {**_shipped(), "milestones": [{"at": 1.0, "action": "escalate", "to": ["${'hq_complaint_dept'}"]}]}
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=changed, actor=staff["s001"])
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case = _case(db, rt, staff, "CMP-20260302-0974")
        clock.move_to(DUE + timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 1
    with db.transaction() as s:
        told = s.execute(select(Notification.recipient).where(Notification.instance_id == case.instance_id,
                                                              Notification.task_id.is_(None))
                         .order_by(Notification.recipient)).scalars().all()
    assert told == ["s007", "s008"]  # the HQ complaint department
