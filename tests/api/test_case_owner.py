"""POST /instances/{id}/owner: a complaint's client contact (首办责任人) handed over for an
absence by whoever supervises it, audited, the open contact step moving with it (issue 13
item 1); every refusal a 4xx with its reason."""

from __future__ import annotations

import pytest
import time_machine
from sqlalchemy import select

from engine.models import AuditEvent, Task
from tests.brokerage.test_complaint import COUNTER_VISIT, MONDAY_9, Case, registration
from tests.support.api import API, assert_problem

pytestmark = pytest.mark.store_independent

ABSENCE = "年假 3/3-3/6，客户联系由魏强接手"


def _registered(db, rt, staff, key: str) -> Case:
    """A counter complaint about 杜娟 (s107, HZ01-G1), registered by 蒋芳 (s104), who owns the contact."""
    case = Case(db, rt, staff, key)
    case.receive("complaint_received", COUNTER_VISIT, sender="s104")
    case.do("register", "s104", registration(channel="counter", client_id="C01", subject_staff_ids=["s107"]))
    return case


def _owner(client, headers, instance_id, **body):
    return client.post(f"{API}/instances/{instance_id}/owner", json=body, headers=headers)


def test_the_branch_head_hands_the_contact_over_for_an_absence_and_the_open_step_moves(client, db, rt, staff, auth):
    with time_machine.travel(MONDAY_9, tick=False):
        case = _registered(db, rt, staff, "CMP-20260302-0951")
        ack = case.open_task()
        assert (ack.element_id, ack.assignee) == ("acknowledge", "s104")
        answer = _owner(client, auth("s101"), case.instance_id, username="s108", reason=ABSENCE)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert answer.json == {"instance_id": case.instance_id, "business_key": case.key, "previous_owner": "s104",
                               "owner": "s108", "reason": ABSENCE, "moved_tasks": [ack.id]}
        with db.transaction() as s:
            moved = s.get(Task, ack.id)
            assert (moved.assignee, moved.status) == ("s108", "claimed")
        assert case.data()["first_contact_owner"] == "s108"
        case.do("acknowledge", "s108", {"contact_at": "2026-03-02T10:30:00+08:00", "contact_channel": "phone",
                                        "contact_result": "reached", "client_expectation": "说明", "recording_id": "R"})
        # The call centre's supervisor (firm-wide) hands it back once 蒋芳 is back.
        back = _owner(client, auth("s002"), case.instance_id, username="s104", reason="休假结束")
        assert back.status_code == 200 and back.json["moved_tasks"] == []  # nothing of the owner's is open now
    with db.transaction() as s:
        events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{case.instance_id}",
                                                    AuditEvent.kind == "case.owner_handed_over")
                           .order_by(AuditEvent.seq)).scalars().all()
    assert [(e.actor, e.data["previous_owner"], e.data["owner"], e.data["reason"]) for e in events] == [
        ("s101", "s104", "s108", ABSENCE), ("s002", "s108", "s104", "休假结束")]
    history = client.get(f"{API}/instances/{case.instance_id}/history", headers=auth("s103")).json
    assert [e["data"]["owner"] for e in history if e["kind"] == "case.owner_handed_over"] == ["s108", "s104"]


def test_every_bad_handover_is_refused_with_its_reason(client, db, rt, staff, auth):
    with time_machine.travel(MONDAY_9, tick=False):
        case = _registered(db, rt, staff, "CMP-20260302-0952")
        head = auth("s101")
        assert_problem(_owner(client, head, case.instance_id, username="s108"), 422, "invalid_request")  # no reason
        assert_problem(_owner(client, head, case.instance_id, username="s108", reason="  "), 400, "invalid_input")
        body = assert_problem(_owner(client, head, case.instance_id, username="nobody", reason=ABSENCE), 400,
                              "invalid_input")
        assert "nobody" in body["detail"]
        for recused in ("s107", "s106"):  # the subject, and a member of her service group
            body = assert_problem(_owner(client, head, case.instance_id, username=recused, reason=ABSENCE), 400,
                                  "invalid_input")
            assert "recused" in body["detail"]
        body = assert_problem(_owner(client, head, case.instance_id, username="s205", reason=ABSENCE), 400,
                              "invalid_input")  # an NB01 account manager: another branch
        assert "NB01" in body["detail"]
        assert "owns the client contact" in assert_problem(
            _owner(client, head, case.instance_id, username="s104", reason=ABSENCE), 409, "conflict")["detail"]
        # A branch head of another branch does not see the case at all; a counter clerk who
        # sees it does not supervise its contact.
        assert_problem(_owner(client, auth("s201"), case.instance_id, username="s108", reason=ABSENCE), 404,
                       "instance_not_found")
        assert_problem(_owner(client, auth("s104"), case.instance_id, username="s108", reason=ABSENCE), 403,
                       "forbidden")
        assert_problem(_owner(client, head, 987654, username="s108", reason=ABSENCE), 404, "instance_not_found")
        # A complaint received but not registered has no owner yet.
        fresh = Case(db, rt, staff, "CMP-20260302-0953")
        fresh.receive("complaint_received", COUNTER_VISIT, sender="s104")
        assert "no first-contact owner" in assert_problem(
            _owner(client, head, fresh.instance_id, username="s108", reason=ABSENCE), 409, "conflict")["detail"]
    assert case.data()["first_contact_owner"] == "s104"  # nothing refused changed anything
    with db.transaction() as s:
        assert s.execute(select(AuditEvent).where(AuditEvent.kind == "case.owner_handed_over")).first() is None
