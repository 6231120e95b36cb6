"""The complaint's behaviours from outside and its automatic follow-ups (brief §2.1, issue 13):
the client chasing, new evidence and escalating to 12386 (non-interrupting messages on the
running case), contact retries on other half-days then an SMS, no answer after 10 working
days, group complaints detected from the complaints on the same matter, compliance told by
notification, and the compliance review's follow-ups. Each walk asserts who was offered
every step and its due date."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import time_machine
from sqlalchemy import select

from engine.access import identity
from engine.errors import FormValidationError
from engine.models import AuditEvent, Notification, Task, Timer
from engine.sla import case_clock
from engine.timers import firing
from engine.timers.notify import Notifier
from tests.brokerage.test_complaint import (
    COMMUNICATED,
    CONTACTED,
    COUNTER_VISIT,
    HANDLERS,
    INTAKE,
    MONDAY_9,
    Case,
    registration,
    sh,
)

pytestmark = pytest.mark.store_independent

COMPLIANCE_HZ01 = ["s006", "s109"]  # HQ compliance and the branch's: not NB01's s207 nor SX01's s305


def _notices(db, case: Case, reason: str | None = None) -> list[tuple[str, str]]:
    """(recipient, subject) of the case's notices that are not step reminders."""
    with db.transaction() as s:
        rows = s.execute(select(Notification).where(Notification.instance_id == case.instance_id,
                                                    Notification.task_id.is_(None),
                                                    Notification.channel == "default")
                         .order_by(Notification.id)).scalars().all()
        events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{case.instance_id}",
                                                    AuditEvent.kind == "case.notified")
                           .order_by(AuditEvent.seq)).scalars().all()
        told = {(u, e.occurred_at) for e in events if reason is None or e.data["reason"] == reason
                for u in e.data["recipients"]}
        return [(n.recipient, n.subject.split("] ", 1)[1]) for n in rows if (n.recipient, n.created_at) in told]


def _history(db, case: Case, kind: str) -> list[dict[str, Any]]:
    with db.transaction() as s:
        return [e.data for e in s.execute(select(AuditEvent).where(
            AuditEvent.stream == f"instance:{case.instance_id}", AuditEvent.kind == kind)
            .order_by(AuditEvent.seq)).scalars()]


def _registered(db, rt, staff, key: str, **changes: Any) -> Case:
    """A general complaint of C01 at HZ01's counter, registered and acknowledged by 蒋芳 (s104)."""
    case = Case(db, rt, staff, key)
    case.receive("complaint_received", COUNTER_VISIT, sender="s104")
    case.do("register", "s104", registration(channel="counter", client_id="C01", **changes))
    case.do("acknowledge", "s104", CONTACTED)
    return case


CHASE = {"inbound_contact_at": "2026-03-03T10:15:00+08:00", "chase_summary": "客户询问处理进度",
         "chase_channel": "phone"}


def test_the_client_chasing_is_recorded_counted_and_told_to_the_handler_and_the_first_contact_owner(db, rt, staff):
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case = _registered(db, rt, staff, "CMP-20260302-1001")
        investigate = case.task("investigate")
        with db.transaction() as s:
            from engine.process import tasks

            tasks.claim(s, rt, task_id=investigate.id, actor=staff["s106"])
        clock.move_to(sh(2026, 3, 3, 10, 15))
        case.send("complaint_client_chase", CHASE, actor=staff["s104"])
        assert case.instance().facts["chase_count"] == 1
        assert _notices(db, case, "chase:1") == [("s106", "客户第 1 次来电催办"), ("s104", "客户第 1 次来电催办")]
        with db.transaction() as s:
            assert s.get(Task, investigate.id).priority < 80
        # The event waits again: a second chase is taken, the steps go up the worklists and
        # the branch's 客服总监 (彭涛, s103) hears of it.
        clock.move_to(sh(2026, 3, 4, 9, 30))
        case.send("complaint_client_chase", {**CHASE, "inbound_contact_at": "2026-03-04T09:30:00+08:00",
                                             "chase_summary": "客户再次催办，情绪激动"}, actor=staff["s104"])
        assert case.instance().facts["chase_count"] == 2
        assert _notices(db, case, "chase:2") == [("s106", "客户第 2 次来电催办"), ("s104", "客户第 2 次来电催办"),
                                                 ("s103", "客户第 2 次来电催办")]
        with db.transaction() as s:
            assert s.get(Task, investigate.id).priority == 80
        assert [c["summary"] for c in case.data()["chases"]] == ["客户询问处理进度", "客户再次催办，情绪激动"]
        # The case history keeps each chase: the message and who was told.
        assert [e["message"] for e in _history(db, case, "message.received")][-2:] == ["complaint_client_chase"] * 2
        # A chase without what the client said is refused, naming the field; nothing is recorded.
        with pytest.raises(FormValidationError) as refused:
            case.send("complaint_client_chase", {"inbound_contact_at": "昨天"}, actor=staff["s104"])
        assert sorted(e.field for e in refused.value.errors) == ["chase_summary", "inbound_contact_at"]
        assert case.instance().facts["chase_count"] == 2
        case.do("investigate", "s106", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
    assert [(e, g, a, d) for e, g, a, _, d in case.offered] == [
        ("register", INTAKE, None, sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s104", sh(2026, 3, 3, 9)),
        ("investigate", HANDLERS, "s106", sh(2026, 3, 9, 9))]


def test_a_bad_message_payload_is_refused_over_the_api_with_the_reason(db, rt, staff, client):
    with time_machine.travel(MONDAY_9, tick=False):
        case = _registered(db, rt, staff, "CMP-20260302-1002")
        with db.transaction() as s:
            token = identity.issue_token(s, username="s104", now=rt.now())
        answer = client.post("/api/v1/messages", headers={"Authorization": f"Bearer {token}"},
                             json={"name": "complaint_client_escalated_12386", "correlation_key": case.key,
                                   "payload": {"regulator_ref": "12386-2026-9", "regulator_due_at": "2026-03-20"}})
    assert answer.status_code == 422, answer.json
    assert answer.json["code"] == "form_invalid"
    assert [e["field"] for e in answer.json["errors"]] == ["regulator_due_at"]
    assert case.data()["severity"] == "general"


def test_new_evidence_is_added_to_the_case_and_the_investigator_is_told(db, rt, staff):
    with time_machine.travel(MONDAY_9, tick=False):
        case = _registered(db, rt, staff, "CMP-20260302-1003")
        investigate = case.task("investigate")
        with db.transaction() as s:
            from engine.process import tasks

            tasks.claim(s, rt, task_id=investigate.id, actor=staff["s108"])
        evidence = {"evidence_ref": "ATT-2026-0042", "evidence_description": "客户提供的对账单截图",
                    "evidence_received_at": "2026-03-02T11:00:00+08:00"}
        case.send("complaint_new_evidence", evidence, actor=staff["s104"])
        case.send("complaint_new_evidence", {**evidence, "evidence_ref": "ATT-2026-0043"}, actor=staff["s104"])
        assert [r["ref"] for r in case.data()["evidence_refs"]] == ["ATT-2026-0042", "ATT-2026-0043"]
        assert _notices(db, case, "new_evidence") == [("s108", "客户补充了材料"), ("s108", "客户补充了材料")]
        with pytest.raises(FormValidationError) as refused:
            case.send("complaint_new_evidence", {"evidence_description": "无附件"}, actor=staff["s104"])
        assert [e.field for e in refused.value.errors] == ["evidence_ref"]
        # The investigator sees the references on the step they are working on.
        case.do("investigate", "s108", {"facts_found": "对账单显示多收佣金", "root_cause": "fees",
                                        "staff_at_fault": False})
        assert [r["ref"] for r in case.data()["evidence_refs"]] == ["ATT-2026-0042", "ATT-2026-0043"]
        # Evidence after the investigation still reaches the one who investigated.
        case.send("complaint_new_evidence", {**evidence, "evidence_ref": "ATT-2026-0044"}, actor=staff["s104"])
        assert _notices(db, case, "new_evidence")[2:] == [("s108", "客户补充了材料")]
        assert [r["ref"] for r in case.data()["evidence_refs"]][-1] == "ATT-2026-0044"
    assert [(e, a, d) for e, _, a, _, d in case.offered] == [
        ("register", None, sh(2026, 3, 2, 13)), ("acknowledge", "s104", sh(2026, 3, 3, 9)),
        ("investigate", "s108", sh(2026, 3, 9, 9))]


def test_the_client_escalating_to_12386_makes_the_case_regulator_transferred_with_its_deadline(db, rt, staff):
    """A general complaint (due in 15 WD, 23 March) is taken to 12386 with a due date of 20 March
    17:00: the case becomes regulator-transferred, linked to the 12386 record, due 2 WD before
    the regulator (18 March 17:00); compliance is told, the review is needed, HQ closes it and
    the feedback to the regulator runs before the case ends."""
    due = "2026-03-20T17:00:00+08:00"
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case = _registered(db, rt, staff, "CMP-20260302-1004")
        with db.transaction() as s:
            kept = case_clock.get(s, case.instance_id)
            assert kept is not None and kept.due_at == sh(2026, 3, 23, 9)
        clock.move_to(sh(2026, 3, 3, 9))
        case.send("complaint_client_escalated_12386", {"regulator_ref": "12386-2026-000777", "regulator_due_at": due},
                  actor=staff["s104"])
        facts = case.instance().facts
        assert (facts["severity"], facts["regulator_ref"]) == ("regulator", "12386-2026-000777")
        with db.transaction() as s:
            kept = case_clock.get(s, case.instance_id)
            assert kept is not None and (kept.due_at, kept.base_due_at, kept.extended_at) == \
                (sh(2026, 3, 18, 17), sh(2026, 3, 18, 17), None)
        assert _history(db, case, "case_clock.retargeted")[0]["to"] == sh(2026, 3, 18, 17).isoformat()
        assert sorted(r for r, _ in _notices(db, case, "compliance:regulator")) == COMPLIANCE_HZ01
        case.do("investigate", "s106", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
        # Regulator-transferred: compliance reviews although the root cause alone would not ask it.
        case.do("compliance_review", "s109", {"violation_confirmed": False, "regulatory_report_required": False,
                                              "disciplinary_referral": False, "opinion": "未见违规"})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明并致歉"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        case.do("communicate_result", "s104", {**COMMUNICATED, "client_response": "accepts"})
        case.do("close_case_hq", "s007", {"closure_reason": "resolved"})
        case.do("report_regulator", "s007", {"regulator_feedback_at": "2026-03-06T15:00:00+08:00",
                                             "feedback_summary": "已向客户说明并退还佣金"})
        # The event takes one escalation: a second finds nobody waiting.
    assert [(e, g, a, d) for e, g, a, _, d in case.offered] == [
        ("register", INTAKE, None, sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s104", sh(2026, 3, 3, 9)),
        ("investigate", HANDLERS, None, sh(2026, 3, 9, 9)),
        ("compliance_review", ["compliance"], None, sh(2026, 3, 6, 9)),
        ("propose_resolution", HANDLERS, None, sh(2026, 3, 5, 9)),
        ("approve_branch", ["HZ01:branch_head"], None, sh(2026, 3, 5, 9)),
        ("communicate_result", INTAKE, "s104", sh(2026, 3, 18, 17)),
        ("close_case_hq", ["hq_complaint_dept"], None, sh(2026, 3, 4, 9)),
        ("report_regulator", ["hq_complaint_dept"], None, sh(2026, 3, 20, 17))]


class FakeSms:
    """The SMS gateway outside the product: records what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, *, phone: str, text: str) -> None:
        self.sent.append((phone, text))


def test_an_unreachable_client_is_tried_on_two_more_half_days_then_sent_an_sms(db, rt, staff, caplog):
    unreachable = {**CONTACTED, "contact_result": "unreachable", "client_expectation": ""}
    case = Case(db, rt, staff, "CMP-20260302-1005")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        clock.move_to(sh(2026, 3, 2, 10))
        case.do("acknowledge", "s104", {**unreachable, "contact_at": "2026-03-02T10:00:00+08:00"})
        assert case.open_tasks() == []  # waiting for the next half-day
        with db.transaction() as s:
            (wait,) = s.execute(select(Timer).where(Timer.instance_id == case.instance_id,
                                                    Timer.element_id == "retry_contact_wait",
                                                    Timer.status == "waiting")).scalars()
        assert wait.due_at == sh(2026, 3, 2, 14)  # 4 hours later, in the afternoon
        clock.move_to(sh(2026, 3, 2, 14, 1))
        assert firing.fire_due(db, rt) >= 1
        case.do("acknowledge", "s104", {**unreachable, "contact_at": "2026-03-02T14:01:00+08:00"})
        with db.transaction() as s:
            (wait,) = s.execute(select(Timer).where(Timer.instance_id == case.instance_id,
                                                    Timer.element_id == "retry_contact_wait",
                                                    Timer.status == "waiting")).scalars()
        assert wait.due_at == sh(2026, 3, 3, 9)  # not in the evening: the next working morning
        clock.move_to(sh(2026, 3, 3, 9, 1))
        assert firing.fire_due(db, rt) >= 1
        case.do("acknowledge", "s104", {**unreachable, "contact_at": "2026-03-03T09:05:00+08:00"})
        # Three attempts on three half-days: the client is sent an SMS and the investigation starts.
        assert case.task("investigate").candidate_groups == HANDLERS
        assert case.instance().facts["contact_attempts"] == 3
        (queued,) = _history(db, case, "client.sms_queued")
        assert queued["to"] == "139****0421"
        gateway = FakeSms()
        with caplog.at_level(logging.INFO, logger="bpm.notify"):
            Notifier({}, sms=gateway).deliver_pending(db, rt)
    ((phone, text),) = gateway.sent
    assert phone == "13957120421"
    assert "2026-03-02 09:00（北京时间）" in text and case.key in text and "13957120421" not in text
    assert "尊敬的客户" in text and "2026-03-03 09:05" in text
    assert "139****0421" in caplog.text and "13957120421" not in caplog.text
    with db.transaction() as s:
        (row,) = s.execute(select(Notification).where(Notification.channel == "sms")).scalars()
        assert row.sent_at is not None and row.recipient == "client:C01"
        events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{case.instance_id}")).scalars()
        assert all("13957120421" not in str(e.data) for e in events)
    assert [(e, a, d) for e, _, a, _, d in case.offered] == [
        ("register", None, sh(2026, 3, 2, 13)), ("acknowledge", "s104", sh(2026, 3, 3, 9)),
        ("acknowledge", "s104", sh(2026, 3, 3, 14, 1)), ("acknowledge", "s104", sh(2026, 3, 4, 9, 1))]


def test_no_answer_from_the_client_closes_after_10_working_days_not_14_calendar_days(db, rt, staff):
    """Told the result on Monday 30 March 2026; 清明 is Monday 6 April: ten working days end on
    Tuesday 14 April, fifteen calendar days later. On the 13th (14 days) the case still waits."""
    monday = sh(2026, 3, 30, 9)
    case = Case(db, rt, staff, "CMP-20260330-1006")
    with time_machine.travel(monday, tick=False) as clock:
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01",
                                                 received_at="2026-03-30T09:00:00+08:00"))
        case.do("acknowledge", "s104", CONTACTED)
        case.do("investigate", "s108", {"facts_found": "服务态度问题", "root_cause": "service_attitude",
                                        "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "致歉并说明"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        case.do("communicate_result", "s104", {**COMMUNICATED, "communicated_at": "2026-03-30T10:00:00+08:00",
                                               "client_response": "no_response"})
        clock.move_to(sh(2026, 4, 13, 9, 1))
        firing.fire_due(db, rt)
        assert case.open_tasks() == []  # still waiting for the client
        clock.move_to(sh(2026, 4, 14, 9, 1))
        assert firing.fire_due(db, rt) >= 1
        close = case.do("close_case", "s103", {"closure_reason": "no_response"})
    assert case.data()["client_response"] == "no_response"
    assert [(e, a, d) for e, _, a, _, d in case.offered] == [
        ("register", None, sh(2026, 3, 30, 13)), ("acknowledge", "s104", sh(2026, 3, 31, 9)),
        ("investigate", None, sh(2026, 4, 7, 9)), ("propose_resolution", None, sh(2026, 4, 1, 9)),
        ("approve_branch", None, sh(2026, 4, 1, 9)), ("communicate_result", "s104", sh(2026, 4, 21, 9)),
        ("close_case", None, close.due_at)]
    assert close.due_at == sh(2026, 4, 15, 9, 1)


def test_the_third_complaint_on_one_matter_within_10_working_days_is_a_group_complaint(db, rt, staff):
    """Three clients complain of one product (matter key P-2026-01) within ten working days: the
    third is a group complaint, HQ's response plan is due in a working day, compliance is told,
    and the earlier two record the link. A complaint on another matter stays general, and one
    eleven working days after the first no longer counts it."""
    cases = []
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        for number, (day, client_id) in enumerate([((2026, 3, 2), "C01"), ((2026, 3, 9), "C06"),
                                                   ((2026, 3, 13), None)], 1):
            clock.move_to(sh(*day, 9))
            case = Case(db, rt, staff, f"CMP-20260302-20{number:02d}")
            case.receive("complaint_received", {**COUNTER_VISIT, "client_id": client_id} if client_id
                         else {"channel": "counter", "branch_code": "HZ01"}, sender="s104")
            form = registration(channel="counter", client_id=client_id, business_line="product_sales",
                                matter_key="P-2026-01")
            if client_id is None:  # a walk-in complainant who is not a client of the firm
                form = {k: v for k, v in form.items() if k != "client_id"} | {
                    "complainant_name": "张先生", "complainant_phone": "13800001111"}
            case.do("register", "s104", form)
            cases.append(case)
        first, second, third = cases
        assert [c.data()["severity"] for c in cases] == ["general", "general", "group"]
        assert third.data()["same_matter_cases"] == [first.key, second.key]
        plan = third.open_task()
        assert (plan.element_id, plan.candidate_groups, plan.due_at) == \
            ("group_plan", ["hq_complaint_dept"], sh(2026, 3, 16, 9))
        third.do("group_plan", "s007", {"plan": "统一答复口径，总部牵头处理", "update_interval_wd": 5})
        assert sorted(r for r, _ in _notices(db, third, "compliance:group")) == COMPLIANCE_HZ01
        assert [e["case"] for e in _history(db, first, "complaint.same_matter_linked")] == [second.key, third.key]
        # Another matter, and the same matter once the first complaint is 11 working days back.
        clock.move_to(sh(2026, 3, 16, 9))
        other = Case(db, rt, staff, "CMP-20260316-2004")
        other.receive("complaint_received", COUNTER_VISIT, sender="s104")
        other.do("register", "s104", registration(channel="counter", client_id="C01", matter_key="P-2026-02"))
        assert other.data()["severity"] == "general"
        later = Case(db, rt, staff, "CMP-20260316-2005")
        later.receive("complaint_received", {**COUNTER_VISIT, "client_id": "C06"}, sender="s104")
        later.do("register", "s104", registration(channel="counter", client_id="C06", matter_key="P-2026-01"))
        # 2, 9 and 13 March are within ten working days of the 16th; only 2 March is not.
        assert later.data()["same_matter_cases"] == [second.key, third.key]
    assert [(e, g, d) for e, g, _, _, d in third.offered] == [
        ("register", INTAKE, sh(2026, 3, 13, 13)), ("group_plan", ["hq_complaint_dept"], sh(2026, 3, 16, 9))]


def test_a_major_complaint_reaches_compliance_as_a_notification_of_its_branch_and_headquarters(db, rt, staff, client):
    with time_machine.travel(MONDAY_9, tick=False):
        case = Case(db, rt, staff, "CMP-20260302-3001")
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01", amount_claimed=80000))
        assert case.data()["severity"] == "major"
        assert _notices(db, case, "compliance:major") == [("s006", "重大投诉请合规关注"),
                                                          ("s109", "重大投诉请合规关注")]
        with db.transaction() as s:
            token = identity.issue_token(s, username="s109", now=rt.now())
            other = identity.issue_token(s, username="s207", now=rt.now())
        mine = client.get("/api/v1/notifications", headers={"Authorization": f"Bearer {token}"}).json
        theirs = client.get("/api/v1/notifications", headers={"Authorization": f"Bearer {other}"}).json
    assert any(case.key in n["subject"] for n in mine["items"])
    assert not any(case.key in n["subject"] for n in theirs["items"])
    assert [(e, a, d) for e, _, a, _, d in case.offered] == [("register", None, sh(2026, 3, 2, 13))]


def test_the_compliance_reviews_answers_start_a_regulatory_report_and_a_disciplinary_follow_up(db, rt, staff):
    with time_machine.travel(MONDAY_9, tick=False):
        case = Case(db, rt, staff, "CMP-20260302-4001")
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01", subject_staff_ids=["s107"],
                                                 alleged_violations=["staff_operating_account"]))
        case.do("acknowledge", "s104", CONTACTED)
        case.do("investigate", "s108", {"facts_found": "员工代客操作", "root_cause": "operating_account",
                                        "staff_at_fault": True})
        case.do("compliance_review", "s109", {"violation_confirmed": True, "violation_type": "operating_account",
                                              "regulatory_report_required": True, "disciplinary_referral": True,
                                              "opinion": "代客操作属实，须报告并问责"})
        report, discipline = case.task("regulatory_report"), case.task("disciplinary_followup")
        assert case.data()["severity"] == "major"
        assert (report.candidate_groups, report.due_at) == (["compliance"], sh(2026, 3, 9, 9))  # 5 WD
        assert (discipline.candidate_groups, discipline.due_at) == (["HZ01:branch_head"], sh(2026, 3, 16, 9))  # 10 WD
        recused = ["group:HZ01-G1", "user:s107"]
        assert sorted(report.excluded) == recused and sorted(discipline.excluded) == recused
        # The handling goes on beside them; a withdrawal does not cancel them.
        case.send("client_withdraws", {"withdrawal_note": "客户撤诉"}, actor=staff["s104"])
        assert sorted(t.element_id for t in case.open_tasks()) == [
            "confirm_withdrawal", "disciplinary_followup", "regulatory_report"]
        case.do("regulatory_report", "s006", {"reported_at": "2026-03-03T10:00:00+08:00",
                                              "report_recipient": "csrc_bureau", "report_summary": "员工代客操作"},
                alone=False)
        case.do("disciplinary_followup", "s101", {"disciplinary_action": "warning", "disciplinary_note": "警告"},
                alone=False)
    trail = [element for kind, _, element in case.trail() if kind == "task.completed"]
    assert {"regulatory_report", "disciplinary_followup"} <= set(trail)
    assert [(e, g, a, x, d) for e, g, a, x, d in case.offered] == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)),
        ("acknowledge", INTAKE, "s104", ["group:HZ01-G1", "user:s107"], sh(2026, 3, 3, 9)),
        ("investigate", HANDLERS, None, ["group:HZ01-G1", "user:s107"], sh(2026, 3, 16, 9)),
        ("compliance_review", ["compliance"], None, ["group:HZ01-G1", "user:s107"], sh(2026, 3, 5, 9)),
        ("regulatory_report", ["compliance"], None, ["group:HZ01-G1", "user:s107"], sh(2026, 3, 9, 9)),
        ("disciplinary_followup", ["HZ01:branch_head"], None, ["group:HZ01-G1", "user:s107"], sh(2026, 3, 16, 9))]


def test_the_new_events_wait_on_the_running_case_only(db, rt, staff):
    """Once the client has been answered the handling is over: chasing finds nobody waiting."""
    from engine.errors import MessageNotCorrelated

    with time_machine.travel(MONDAY_9, tick=False):
        case = _registered(db, rt, staff, "CMP-20260302-5001")
        case.do("investigate", "s106", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        case.do("communicate_result", "s104", {**COMMUNICATED, "client_response": "accepts"})
        with pytest.raises(MessageNotCorrelated):
            case.send("complaint_client_chase", CHASE, actor=staff["s104"])
    assert [e for e, *_ in case.offered][-1] == "communicate_result"


def test_a_complaint_raised_on_a_callback_counts_towards_a_group_on_the_staff_member_it_names(db, rt, staff):
    """Two complaints registered at HZ01 name 杜娟 (s107) in product sales; a third, raised on a
    callback (no registration step), names her too: it is classified a group complaint."""
    from engine.access.identity import Actor
    from engine.process import messages
    from tests.brokerage.test_complaint import FROM_CALLBACK

    earlier = []
    with time_machine.travel(MONDAY_9, tick=False):
        for number, client_id in enumerate(["C01", "C06"], 1):
            case = Case(db, rt, staff, f"CMP-20260302-60{number:02d}")
            case.receive("complaint_received", {**COUNTER_VISIT, "client_id": client_id}, sender="s104")
            case.do("register", "s104", registration(channel="counter", client_id=client_id,
                                                     business_line="product_sales", subject_staff_ids=["s107"]))
            earlier.append(case)
        assert [c.data()["severity"] for c in earlier] == ["general", "general"]
        with db.transaction() as s:
            started = messages.correlate(s, rt, name="complaint_from_callback", correlation_key=None,
                                         actor=Actor.system("s004"),
                                         payload={**FROM_CALLBACK, "client_id": "C01", "alleged_violations": [],
                                                  "amount_claimed": 0, "origin_business_key": "CB-20260302-0010",
                                                  "origin_process": "callback"})
        case = Case(db, rt, staff, started.business_key)
        case.instance_id = started.id
        data = case.data()
        assert (data["severity"], data["same_matter_cases"]) == ("group", [c.key for c in earlier])
        plan = case.open_task()
        assert (plan.element_id, plan.candidate_groups, plan.due_at, sorted(plan.excluded)) == \
            ("group_plan", ["hq_complaint_dept"], sh(2026, 3, 3, 9), ["group:HZ01-G1", "user:s107"])


def test_the_deploy_lint_accepts_the_diagram_and_refuses_a_payload_form_the_bundle_lacks(rt):
    from engine.bpmn import lint
    from engine.bpmn.bundle import from_paths
    from engine.bpmn.parser import parse_files
    from engine.config import PROJECT_ROOT

    bundle = from_paths([PROJECT_ROOT / "workflows" / "complaint.bpmn"])

    def check(forms: dict[str, Any]) -> list[tuple[str | None, str]]:
        processes, problems = parse_files(bundle.bpmn)  # parsed afresh: the lint prepares what it checked
        assert problems == []
        found = lint.lint(processes, forms=forms, evaluator=rt.evaluator, services=rt.services, allow_scripts=False,
                          known_groups=None)
        return [(p.element_id, p.message) for p in found]

    assert check(bundle.forms) == []
    forms = {k: v for k, v in bundle.forms.items() if k != "complaint_chase_message"}
    assert check(forms) == [("client_chase", "property 'payloadForm': form 'complaint_chase_message' not found: add "
                                             "forms/complaint_chase_message.json to the bundle")]
