"""workflows/complaint.bpmn (投诉纠纷处理, brief §2.1) driven through the engine services on
the demo data: who gets each task, the end state, and due dates from workflows/sla/complaint.json."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import select, update

from engine.access.identity import Actor
from engine.brokerage import departures, settings
from engine.brokerage.services.complaint import classify
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import FormValidationError, MessageNotCorrelated, TaskNotFound
from engine.models import AuditEvent, Client, MessageSubscription, Task
from engine.process import messages, tasks
from engine.timers import firing
from tests.support.cases import CaseDriver

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent

WORKFLOWS = PROJECT_ROOT / "workflows"
MONDAY_9 = datetime(2026, 3, 2, 9, 0, tzinfo=SHANGHAI)  # an ordinary working Monday
END_STATES = {"end_resolved": "E1", "end_withdrawn": "E2", "end_referred": "E3", "end_no_response": "E4",
              "end_redirected": "E5", "end_report_forwarded": "E5"}
INTAKE = ["call_center_agent", "HZ01:counter_staff"]
HANDLERS = ["HZ01:branch_cs_director", "HZ01:account_manager"]


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


class Case(CaseDriver):
    """One complaint, driven the way the worklist would: inbox, then complete."""

    def receive(self, message: str, payload: dict[str, Any], sender: str = "s003") -> None:
        with self.db.transaction() as s:
            self.instance_id = messages.correlate(s, self.rt, name=message, correlation_key=self.key,
                                                  actor=self.staff[sender], payload=payload).id

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # Each step as it was offered: (element, candidate groups, preset assignee, recused, due).
        self.offered: list[tuple[str, list[str], str | None, list[str], datetime | None]] = []

    def do(self, element: str, who: str, data: dict[str, Any], *, alone: bool = True) -> Task:
        task = next((t for t in self.open_tasks() if t.element_id == element), None)
        if task is not None:
            self.offered.append((element, list(task.candidate_groups or []), task.assignee,
                                 sorted(task.excluded or []), task.due_at))
        return super().do(element, who, data, alone=alone)

    def correlate(self, message: str, payload: dict[str, Any]) -> None:
        self.send(message, payload, actor=self.staff["s003"])

    def end_state(self) -> str:
        """The instance is completed and reached exactly one of the end states E1–E5."""
        instance = self.instance()
        assert instance.status == "completed", instance.error
        reached = set(self.ends()) & set(END_STATES)
        assert len(reached) == 1, reached
        return END_STATES[reached.pop()]


def registration(**changes: Any) -> dict[str, Any]:
    return {"received_at": "2026-03-02T09:00:00+08:00", "channel": "phone", "request_kind": "complaint",
            "client_id": "C0003", "business_line": "brokerage", "summary": "佣金收取与约定不符",
            "client_request": "explanation", "amount_claimed": 0, "consent_contact_channel": "phone", **changes}


PHONE_CALL = {"channel": "phone", "client_id": "C0003", "branch_code": "HZ01"}
CONTACTED = {"contact_at": "2026-03-02T10:30:00+08:00", "contact_channel": "phone", "contact_result": "reached",
             "client_expectation": "退还多收佣金", "recording_id": "REC-1"}
COMMUNICATED = {"communicated_at": "2026-03-05T10:00:00+08:00", "communication_channel": "phone",
                "client_response": "accepts",
                "written_reply_sent": True, "recording_id": "REC-2"}


def _satisfaction(case: Case, clock: Any, who: str = "s004", csat: int = 5) -> None:
    """The callback waits ``complaint.satisfaction_delay`` after closure, then goes to an agent."""
    with case.db.transaction() as s:
        waiting = s.execute(select(Task).where(Task.business_key == case.key, Task.kind == "bpmn",
                                               Task.status.in_(("open", "claimed")))).scalars().all()
    assert waiting == []  # the timer runs: nothing in anyone's inbox yet
    clock.shift(timedelta(days=1, minutes=1))
    assert firing.fire_due(case.db, case.rt) >= 1
    case.do("satisfaction_callback", who, {"csat": csat, "resolved_in_client_view": True, "would_recommend": 9})


def test_a_general_complaint_is_resolved_by_the_branch(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0001")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", PHONE_CALL)
        register = case.open_task()
        assert register.due_at == sh(2026, 3, 2, 13) and register.due_source == "policy"  # 4 business hours
        clock.move_to(sh(2026, 3, 2, 10))
        case.do("register", "s003", registration())
        assert case.data()["severity"] == "general"
        ack = case.open_task()
        assert (ack.assignee, ack.status) == ("s003", "claimed")  # the first-contact owner
        assert ack.due_at == sh(2026, 3, 3, 10)  # complaint.sla.ack: 1 WD from its creation
        case.do("acknowledge", "s003", CONTACTED)
        investigate = case.do("investigate", "s106", {"facts_found": "系统佣金模板配置错误", "root_cause": "fees",
                                                      "staff_at_fault": False, "loss_amount_claimed": 120})
        assert investigate.due_at == sh(2026, 3, 9, 10)  # complaint.investigate.general: 5 WD
        case.do("propose_resolution", "s103", {"resolution_type": "fee_refund", "compensation_amount": 120,
                                               "resolution_text": "退还多收佣金 120 元并致歉"})
        case.do("approve_branch", "s101", {"decision": "approve", "comment": "同意"})
        case.do("communicate_result", "s003", COMMUNICATED)
        case.do("close_case", "s103", {"closure_reason": "resolved", "lessons_learned": "佣金模板变更须复核"})
        _satisfaction(case, clock)
    assert case.end_state() == "E1"
    assert case.handled == [
        ("register", INTAKE, "s003"), ("acknowledge", INTAKE, "s003"), ("investigate", HANDLERS, "s106"),
        ("propose_resolution", HANDLERS, "s103"), ("approve_branch", ["HZ01:branch_head"], "s101"),
        ("communicate_result", INTAKE, "s003"), ("close_case", ["HZ01:branch_cs_director"], "s103"),
        ("satisfaction_callback", ["call_center_agent"], "s004"),
    ]
    data = case.data()
    # Who was offered each step and when it was due: 4 business hours from 09:00, then each
    # step's policy from its creation at 10:00 (complaint.sla.ack 1 WD, investigate.general 5 WD,
    # propose 2 WD, approve.branch 2 WD — the investigator and proposer kept off), 反馈客户 when
    # the case is (15 WD from 09:00), close 1 WD, the satisfaction call 3 WD from 03-03 10:01.
    assert case.offered == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s003", [], sh(2026, 3, 3, 10)),
        ("investigate", HANDLERS, None, [], sh(2026, 3, 9, 10)),
        ("propose_resolution", HANDLERS, None, [], sh(2026, 3, 4, 10)),
        ("approve_branch", ["HZ01:branch_head"], None, ["user:s103", "user:s106"], sh(2026, 3, 4, 10)),
        ("communicate_result", INTAKE, "s003", [], sh(2026, 3, 23, 9)),
        ("close_case", ["HZ01:branch_cs_director"], None, [], sh(2026, 3, 3, 10)),
        ("satisfaction_callback", ["call_center_agent"], None, [], sh(2026, 3, 6, 10, 1))]
    assert data["archived"] is True and data["notifications"] == []


def test_a_major_complaint_goes_through_compliance_and_headquarters(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0002")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", PHONE_CALL)
        case.do("register", "s003", registration(amount_claimed=80000, client_request="compensation",
                                                 alleged_violations=["suitability_mismatch"]))
        data = case.data()
        assert (data["severity"], data["sla_track"]) == ("major", "major")
        assert data["severity_reasons"] == ["amount_claimed", "alleged_violation"]
        assert data["notifications"] == [{"to": "compliance", "reason": "major"}]
        case.do("acknowledge", "s003", CONTACTED)
        investigate = case.open_task()
        assert investigate.due_at == sh(2026, 3, 16, 9)  # complaint.investigate.major: 10 WD
        case.do("investigate", "s106", {"facts_found": "风险等级不匹配仍完成购买", "root_cause": "suitability",
                                        "staff_at_fault": True, "loss_amount_claimed": 80000,
                                        "loss_amount_assessed": 60000})
        case.do("compliance_review", "s006", {"violation_confirmed": True, "violation_type": "suitability",
                                              "regulatory_report_required": False, "disciplinary_referral": True,
                                              "opinion": "适当性管理违规，建议补偿并问责"})
        # The disciplinary referral starts its follow-up beside the handling: the branch head's,
        # due in 10 WD (complaint.disciplinary_followup), not in the way of the resolution.
        followup = case.task("disciplinary_followup")
        assert (followup.candidate_groups, followup.due_at) == (["HZ01:branch_head"], sh(2026, 3, 16, 9))
        proposal = {"resolution_type": "compensation", "compensation_amount": 70000, "resolution_text": "补偿 7 万元"}
        case.do("propose_resolution", "s103", proposal, alone=False)
        case.do("approve_hq", "s007", {"decision": "rework", "comment": "金额依据不足，按核定损失重拟"}, alone=False)
        case.do("propose_resolution", "s103", {**proposal, "compensation_amount": 60000,
                                               "resolution_text": "按核定损失补偿 6 万元"}, alone=False)
        case.do("approve_hq", "s007", {"decision": "approve"}, alone=False)
        case.do("approve_compliance", "s006", {"decision": "approve", "comment": "会签同意"}, alone=False)
        case.do("communicate_result", "s003", COMMUNICATED, alone=False)
        case.do("close_case_hq", "s008", {"closure_reason": "resolved"}, alone=False)
        case.do("disciplinary_followup", "s101", {"disciplinary_action": "warning",
                                                  "disciplinary_note": "书面警告并培训"})
        _satisfaction(case, clock, who="s005", csat=2)
        case.do("quality_ticket", "s103", {"findings": "客户对处理时长不满", "actions": "重大投诉周报跟踪"})
    assert case.end_state() == "E1"
    assert [(e, g) for e, g, _ in case.handled] == [
        ("register", INTAKE), ("acknowledge", INTAKE), ("investigate", HANDLERS),
        ("compliance_review", ["compliance"]), ("propose_resolution", HANDLERS), ("approve_hq", ["hq_complaint_dept"]),
        ("propose_resolution", HANDLERS), ("approve_hq", ["hq_complaint_dept"]), ("approve_compliance", ["compliance"]),
        ("communicate_result", INTAKE), ("close_case_hq", ["hq_complaint_dept"]),
        ("disciplinary_followup", ["HZ01:branch_head"]),
        ("satisfaction_callback", ["call_center_agent"]), ("quality_ticket", ["HZ01:branch_cs_director"]),
    ]
    # Major: investigate.major 10 WD, compliance review 3 WD, propose/approve 2 WD (the approvers
    # never the investigator s106 nor the proposer s103), 反馈客户 when the case is (30 WD:
    # 14 April, 清明 skipped), HQ's close 1 WD, the follow-up 10 WD, the satisfaction call 3 WD
    # from 03-03 09:01, the quality ticket 10 WD from the low score (complaint.quality_ticket).
    approvers_kept_off = ["user:s103", "user:s106"]
    assert case.offered == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s003", [], sh(2026, 3, 3, 9)),
        ("investigate", HANDLERS, None, [], sh(2026, 3, 16, 9)),
        ("compliance_review", ["compliance"], None, [], sh(2026, 3, 5, 9)),
        ("propose_resolution", HANDLERS, None, [], sh(2026, 3, 4, 9)),
        ("approve_hq", ["hq_complaint_dept"], None, approvers_kept_off, sh(2026, 3, 4, 9)),
        ("propose_resolution", HANDLERS, None, [], sh(2026, 3, 4, 9)),
        ("approve_hq", ["hq_complaint_dept"], None, approvers_kept_off, sh(2026, 3, 4, 9)),
        ("approve_compliance", ["compliance"], None, approvers_kept_off, sh(2026, 3, 4, 9)),
        ("communicate_result", INTAKE, "s003", [], sh(2026, 4, 14, 9)),
        ("close_case_hq", ["hq_complaint_dept"], None, [], sh(2026, 3, 3, 9)),
        ("disciplinary_followup", ["HZ01:branch_head"], None, [], sh(2026, 3, 16, 9)),
        ("satisfaction_callback", ["call_center_agent"], None, [], sh(2026, 3, 6, 9, 1)),
        ("quality_ticket", ["HZ01:branch_cs_director"], None, [], sh(2026, 3, 17, 9, 1))]


@pytest.mark.parametrize(("kind", "element", "who", "groups", "form"), [
    ("consultation", "answer_or_forward", "s003", INTAKE,
     {"answer": "已解释两融利率计算方式", "answered_at": "2026-03-02T09:30:00+08:00"}),
    ("report", "forward_report", "s109", ["compliance"], {"received_by_compliance": True, "opinion": "立案核查"}),
], ids=["consultation", "report"])
def test_a_request_that_is_not_a_complaint_is_redirected(db, rt, staff, kind, element, who, groups, form):
    case = Case(db, rt, staff, f"CMP-20260302-{kind}")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", PHONE_CALL)
        case.do("register", "s003", registration(request_kind=kind))
        task = case.do(element, who, form)
    assert task.candidate_groups == groups
    assert case.end_state() == "E5"
    # Neither the brief (C3) nor workflows/sla/complaint.json gives the redirection a deadline.
    assert case.offered == [("register", INTAKE, None, [], sh(2026, 3, 2, 13)), (element, groups, None, [], None)]


def test_the_client_withdraws_during_the_investigation(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0004")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", PHONE_CALL)
        case.do("register", "s003", registration())
        case.do("acknowledge", "s003", CONTACTED)
        investigate = case.open_task()
        assert investigate.element_id == "investigate"
        case.correlate("client_withdraws", {"withdrawal_note": "客户来电表示不再追究"})
        with db.transaction() as s:
            assert s.get(Task, investigate.id).status == "cancelled"  # the handling sub-process was interrupted
        confirm = case.do("confirm_withdrawal", "s003", {"withdrawal_reason": "no_longer_interested",
                                                         "withdrawal_confirmed_by_client": True,
                                                         "recording_id": "REC-9"})
        assert confirm.assignee == "s003"
        case.do("close_case", "s103", {"closure_reason": "withdrawn"})
        case.do("withdrawal_verify", "s005", {"withdrawal_voluntary": True})
    assert case.end_state() == "E2"
    assert case.data()["withdrawal_note"] == "客户来电表示不再追究"
    # 确认撤诉 has no deadline of its own (none in the brief nor the SLA policies); the
    # verification call (3 WD) is never the owner who took and confirmed the withdrawal.
    assert case.offered == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s003", [], sh(2026, 3, 3, 9)),
        ("confirm_withdrawal", INTAKE, "s003", [], None),
        ("close_case", ["HZ01:branch_cs_director"], None, [], sh(2026, 3, 3, 9)),
        ("withdrawal_verify", ["call_center_agent"], None, ["user:s003"], sh(2026, 3, 5, 9))]
    with db.transaction() as s:
        assert s.execute(select(MessageSubscription).where(
            MessageSubscription.instance_id == case.instance_id)).first() is None


def test_an_extension_is_approved_and_told_to_the_client_while_the_investigation_goes_on(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0007")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", PHONE_CALL)
        case.do("register", "s003", registration())
        case.do("acknowledge", "s003", CONTACTED)
        case.correlate("complaint_extension_requested", {"extension_reason": "需调取交易所数据", "extension_days": 10})
        assert sorted(t.element_id for t in case.open_tasks()) == ["approve_extension", "investigate"]
        approve = case.do("approve_extension", "s103", {"extension_decision": "approve", "extension_days": 10},
                          alone=False)
        assert approve.candidate_groups == ["HZ01:branch_cs_director"]  # general case: the branch's 客服总监
        notify = case.do("notify_extension", "s003", {"reason": "需调取交易所数据",
                                                      "new_due_at": "2026-03-30T17:00:00+08:00"}, alone=False)
        assert notify.assignee == "s003"
        case.do("investigate", "s107", {"facts_found": "交易所数据已调取", "root_cause": "trading_system",
                                        "staff_at_fault": False})
        case.correlate("client_withdraws", {})
        case.do("confirm_withdrawal", "s003", {"withdrawal_reason": "resolved_privately",
                                               "withdrawal_confirmed_by_client": True})
        case.do("close_case", "s103", {"closure_reason": "withdrawn"})
        case.do("withdrawal_verify", "s004", {"withdrawal_voluntary": True})
    assert case.end_state() == "E2"
    # 延期审批 is due when the case is (15 WD: 23 March), 告知客户延期 when the extended case is
    # (10 WD later, 清明 skipped: 7 April); the investigation keeps its own 5 WD.
    assert case.offered == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s003", [], sh(2026, 3, 3, 9)),
        ("approve_extension", ["HZ01:branch_cs_director"], None, [], sh(2026, 3, 23, 9)),
        ("notify_extension", INTAKE, "s003", [], sh(2026, 4, 7, 9)),
        ("investigate", HANDLERS, None, [], sh(2026, 3, 9, 9)),
        ("confirm_withdrawal", INTAKE, "s003", [], None),
        ("close_case", ["HZ01:branch_cs_director"], None, [], sh(2026, 3, 3, 9)),
        ("withdrawal_verify", ["call_center_agent"], None, ["user:s003"], sh(2026, 3, 5, 9))]


def test_a_12386_transfer_meets_the_regulator_due_date_and_is_referred_to_mediation(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0005")
    due = "2026-03-20T17:00:00+08:00"
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_12386_transfer", {"channel": "12386", "regulator_ref": "12386-2026-000123",
                                                  "regulator_due_at": due, "branch_code": "HZ01"}, sender="s007")
        assert case.open_task().candidate_groups == ["hq_complaint_dept"]
        case.do("register_12386", "s007", registration(channel="12386", regulator_ref="12386-2026-000123",
                                                       regulator_due_at=due))
        assert case.data()["severity"] == "regulator"
        ack = case.open_task()
        assert (ack.element_id, ack.assignee, ack.due_at) == ("acknowledge", "s007", sh(2026, 3, 4, 9))  # 2 WD
        case.do("acknowledge", "s007", CONTACTED)
        case.do("investigate", "s107", {"facts_found": "交易系统延迟", "root_cause": "trading_system",
                                        "staff_at_fault": False})
        case.do("compliance_review", "s109", {"violation_confirmed": False, "regulatory_report_required": False,
                                              "disciplinary_referral": False, "opinion": "未见违规"})
        case.do("propose_resolution", "s107", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "系统延迟原因说明"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        case.do("communicate_result", "s007", {**COMMUNICATED, "client_response": "rejects"})
        case.do("inform_redress", "s007", {"informed_at": "2026-03-06T10:00:00+08:00", "mediation_requested": True,
                                           "dispute_channel": "sac_mediation", "external_ref": "SAC-2026-77"})
        case.do("close_case_hq", "s008", {"closure_reason": "referred"})
        report = case.open_task()
        assert (report.element_id, report.due_at, report.due_source) == \
            ("report_regulator", datetime.fromisoformat(due), "diagram")
        case.do("report_regulator", "s007", {"regulator_feedback_at": "2026-03-06T15:00:00+08:00",
                                             "feedback_summary": "已解释，客户申请协会调解"})
    assert case.end_state() == "E3"
    # Regulator-transferred: contact 2 WD, the major track's 10 WD investigation and 2 WD
    # proposal, 反馈客户 when the case is (min(30 WD, 20 March 17:00 − 2 WD) = 18 March 17:00),
    # the redress 2 WD, and the feedback by the regulator's own date. s107 investigated and
    # proposed, so she does not approve.
    assert case.offered == [
        ("register_12386", ["hq_complaint_dept"], None, [], sh(2026, 3, 2, 13)),
        ("acknowledge", INTAKE, "s007", [], sh(2026, 3, 4, 9)),
        ("investigate", HANDLERS, None, [], sh(2026, 3, 16, 9)),
        ("compliance_review", ["compliance"], None, [], sh(2026, 3, 5, 9)),
        ("propose_resolution", HANDLERS, None, [], sh(2026, 3, 4, 9)),
        ("approve_branch", ["HZ01:branch_head"], None, ["user:s107"], sh(2026, 3, 4, 9)),
        ("communicate_result", INTAKE, "s007", [], sh(2026, 3, 18, 17)),
        ("inform_redress", ["hq_complaint_dept"], "s007", [], sh(2026, 3, 4, 9)),
        ("close_case_hq", ["hq_complaint_dept"], None, [], sh(2026, 3, 3, 9)),
        ("report_regulator", ["hq_complaint_dept"], None, [], sh(2026, 3, 20, 17))]


def test_no_answer_from_the_client_closes_the_case_as_no_response(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0006")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", PHONE_CALL)
        case.do("register", "s003", registration())
        case.do("acknowledge", "s003", CONTACTED)
        case.do("investigate", "s108", {"facts_found": "服务态度问题", "root_cause": "service_attitude",
                                        "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "致歉并说明"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        case.do("communicate_result", "s003", {**COMMUNICATED, "client_response": "no_response"})
        with db.transaction() as s:
            (waiting,) = s.execute(select(MessageSubscription).where(
                MessageSubscription.instance_id == case.instance_id,
                MessageSubscription.message_name == "complaint_client_answer")).scalars()
        assert waiting.element_id == "wait_client_answer"  # the client may still answer until the timer
        clock.shift(timedelta(days=14, minutes=1))  # complaint.no_response_wd: 10 WD, here 14 days
        assert firing.fire_due(db, rt) >= 1
        case.do("close_case", "s103", {"closure_reason": "no_response"})
        _satisfaction(case, clock, who="s003")
    assert case.end_state() == "E4"
    # The closure is created when the wait ends (03-16 09:01): 1 WD; the satisfaction call a day
    # and a minute after it: 3 WD.
    assert case.offered == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s003", [], sh(2026, 3, 3, 9)),
        ("investigate", HANDLERS, None, [], sh(2026, 3, 9, 9)),
        ("propose_resolution", HANDLERS, None, [], sh(2026, 3, 4, 9)),
        ("approve_branch", ["HZ01:branch_head"], None, ["user:s108"], sh(2026, 3, 4, 9)),
        ("communicate_result", INTAKE, "s003", [], sh(2026, 3, 23, 9)),
        ("close_case", ["HZ01:branch_cs_director"], None, [], sh(2026, 3, 17, 9, 1)),
        ("satisfaction_callback", ["call_center_agent"], None, [], sh(2026, 3, 20, 9, 2))]


# What workflows/callback.bpmn sends (its throw_complaint payload) when a client complains
# on a callback: the caller's registration, not a form someone fills in again.
FROM_CALLBACK = {"client_id": "C02", "branch_code": "HZ01", "channel": "callback", "request_kind": "complaint",
                 "received_at": "2026-03-02T08:40:00+08:00", "summary": "客户称客户经理推荐了超出其风险等级的产品",
                 "business_line": "product_sales", "client_request": "compensation", "amount_claimed": 38000,
                 "alleged_violations": ["suitability_mismatch"], "subject_staff_ids": ["s107"],
                 "recording_id": "REC-CB-1", "first_contact_owner": "s004", "callback_type": "periodic",
                 "callback_findings": ["wants_to_complain"]}


def test_a_complaint_from_a_callback_is_classified_without_a_second_registration_and_recuses_the_named_staff(
        db, rt, staff):
    with time_machine.travel(MONDAY_9, tick=False):
        with db.transaction() as s:
            # As the engine delivers a thrown message: the thrower's step, not a person, starts it.
            started = messages.correlate(s, rt, name="complaint_from_callback", correlation_key=None,
                                         actor=Actor.system("s004"),
                                         payload={**FROM_CALLBACK, "origin_business_key": "CB-20260302-0009",
                                                  "origin_process": "callback"})
        case = Case(db, rt, staff, started.business_key)
        case.instance_id = started.id
        assert case.key == "CMP-20260302-0001"  # numbered by the complaint process
        data = case.data()
        # C02 is 68 on the day: elderly as well.
        assert (data["severity"], data["severity_reasons"]) == ("major", ["alleged_violation", "elderly_client"])
        assert (data["channel"], data["origin_business_key"], data["service_group"]) == \
            ("callback", "CB-20260302-0009", "HZ01-G1")
        ack = case.open_task()  # no second registration: classified, compliance told, handling begun
        assert (ack.element_id, ack.assignee, ack.status) == ("acknowledge", "s004", "claimed")
        assert data["notifications"] == [{"to": "compliance", "reason": "major"}]
        case.do("acknowledge", "s004", CONTACTED)
        # The staff member the client named, and their service group, are recused from the investigation.
        investigate = case.open_task()
        assert sorted(investigate.excluded) == ["group:HZ01-G1", "user:s107"]
        for recused in ("s107", "s106"):
            with pytest.raises(TaskNotFound), db.transaction() as s:
                tasks.claim(s, rt, task_id=investigate.id, actor=staff[recused])
        case.do("investigate", "s108", {"facts_found": "风险等级不匹配", "root_cause": "suitability",
                                        "staff_at_fault": True})
    assert [(e, who) for e, _, who in case.handled] == [("acknowledge", "s004"), ("investigate", "s108")]
    recused = ["group:HZ01-G1", "user:s107"]
    assert case.offered == [("acknowledge", INTAKE, "s004", recused, sh(2026, 3, 3, 9)),  # 1 WD
                            ("investigate", HANDLERS, None, recused, sh(2026, 3, 16, 9))]  # major: 10 WD


def test_classification_reads_its_thresholds_from_the_case_or_the_defaults():
    assert classify({"amount_claimed": 50000})["severity"] == "general"  # not above complaint.major_amount
    assert classify({"amount_claimed": 50000.01})["severity"] == "major"
    assert classify({"amount_claimed": 20000, "major_amount": 10000})["severity"] == "major"  # per-case override
    assert classify({"client_age": settings.default("complaint.elderly_age")})["severity"] == "major"
    assert classify({"same_matter_count": 3})["severity"] == "group"
    assert classify({"joint_complaint": True, "channel": "sac"})["severity"] == "regulator"
    result = classify({})
    assert result["branch_limit"] == settings.default("complaint.branch_limit")
    assert (result["severity"], result["sla_track"], result["first_contact_owner"]) == ("general", "general", None)


def test_the_diagram_parses_and_has_diagram_interchange_for_everything():
    from lxml import etree

    from engine.bpmn.parser import parse_files

    path = WORKFLOWS / "complaint.bpmn"
    processes, problems = parse_files({path.name: path.read_bytes()})
    assert problems == [] and [p.key for p in processes] == ["complaint"]
    tree = etree.parse(str(path))
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
          "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI", "di": "http://www.omg.org/spec/DD/20100524/DI"}
    shapes = {s.get("bpmnElement") for s in tree.iterfind(".//bpmndi:BPMNShape", ns)}
    edges = {e.get("bpmnElement"): len(e.findall("di:waypoint", ns)) for e in tree.iterfind(".//bpmndi:BPMNEdge", ns)}
    flows = {f.get("id") for f in tree.iterfind(".//bpmn:sequenceFlow", ns)} | {
        f.get("id") for f in tree.iterfind(".//bpmn:messageFlow", ns)}
    kinds = ("startEvent", "endEvent", "userTask", "serviceTask", "receiveTask", "exclusiveGateway",
             "intermediateCatchEvent", "boundaryEvent", "subProcess", "lane", "participant")
    nodes = {el.get("id") for kind in kinds for el in tree.iterfind(f".//bpmn:{kind}", ns)}
    assert nodes - shapes == set()
    assert flows - set(edges) == set() and min(edges.values()) >= 2
    for task in tree.iterfind(".//bpmn:userTask", ns):  # every user task has a form and candidate groups
        camunda = "{http://camunda.org/schema/1.0/bpmn}"
        form = WORKFLOWS / "forms" / f"{task.get(f'{camunda}formKey')}.json"
        assert task.get(f"{camunda}candidateGroups") and form.exists()


def test_an_elderly_client_is_known_from_the_registry_birth_date_on_the_beijing_start_day(db, rt, staff):
    """C02 turns 65 on 2 March 2026 (a birth date set for the test). A complaint received at 07:30
    Beijing time that day (still 1 March in UTC) and registered with a wrongly typed age is major:
    the age is the registry's, on the case's start day in Beijing."""
    with db.transaction() as s:
        s.execute(update(Client).where(Client.client_id == "C02").values(birth_date=date(1961, 3, 2)))
    case = Case(db, rt, staff, "CMP-20260302-0065")
    with time_machine.travel(sh(2026, 3, 2, 7, 30), tick=False) as clock:
        case.receive("complaint_received", {"channel": "phone", "client_id": "C02", "first_contact_owner": "s003"})
        assert case.data()["client_age_at_start"] == 65
        clock.move_to(MONDAY_9)
        case.do("register", "s003", registration(client_id="C02", client_age=64))
    data = case.data()
    assert data["severity"] == "major" and "elderly_client" in data["severity_reasons"]


COUNTER_VISIT = {"channel": "counter", "client_id": "C01", "branch_code": "HZ01"}


def test_the_registrar_owns_the_client_contact_and_a_departure_hands_it_to_the_branch_cs_director(db, rt, staff):
    """首办负责制: whoever registers the complaint holds every step that talks to the client; a
    name in the start message does not make someone the owner; a departure hands the contact
    on, audited, to the branch's 客服总监."""
    case = Case(db, rt, staff, "CMP-20260302-0101")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", {**COUNTER_VISIT, "first_contact_owner": "s105"}, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        assert case.data()["first_contact_owner"] == "s104"
        ack = case.open_task()
        assert (ack.assignee, ack.status) == ("s104", "claimed")
        case.do("acknowledge", "s104", CONTACTED)
        clock.move_to(sh(2026, 3, 3, 9))
        with db.transaction() as s:
            departure = departures.staff_departed(s, rt, username="s104", departed_on=sh(2026, 3, 3).date(),
                                                  actor=staff["s101"], now=rt.now())
        assert departure.handed_over == {case.key: "s103"}
        assert case.data()["first_contact_owner"] == "s103"
        case.do("investigate", "s106", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明并致歉"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        communicate = case.open_task()
        assert (communicate.assignee, communicate.status) == ("s103", "claimed")
        case.do("communicate_result", "s103", {**COMMUNICATED, "client_response": "rejects"})
        # How the result was told (by phone) does not rewrite how the complaint came in.
        assert (case.data()["channel"], case.data()["communication_channel"]) == ("counter", "phone")
        assert case.instance().facts["channel"] == "counter"
        case.do("inform_redress", "s103", {"informed_at": "2026-03-06T10:00:00+08:00", "mediation_requested": False})
    # The investigation was created on 03-02 09:00 (5 WD), the later steps on 03-03 09:00 (2 WD
    # each); 反馈客户 when the case is (15 WD).
    assert case.offered == [
        ("register", INTAKE, None, [], sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s104", [], sh(2026, 3, 3, 9)),
        ("investigate", HANDLERS, None, [], sh(2026, 3, 9, 9)),
        ("propose_resolution", HANDLERS, None, [], sh(2026, 3, 5, 9)),
        ("approve_branch", ["HZ01:branch_head"], None, ["user:s106", "user:s108"], sh(2026, 3, 5, 9)),
        ("communicate_result", INTAKE, "s103", [], sh(2026, 3, 23, 9)),
        ("inform_redress", ["hq_complaint_dept"], "s103", [], sh(2026, 3, 5, 9)),
    ]
    with db.transaction() as s:
        (handover,) = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{case.instance_id}",
                                                         AuditEvent.kind == "case.owner_handed_over")).scalars()
    assert (handover.actor, handover.data["previous_owner"], handover.data["owner"]) == ("s101", "s104", "s103")
    assert handover.data["reason"] == "staff_departed: s104"


def test_a_departure_moves_the_open_contact_step_to_the_successor(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0102")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        with db.transaction() as s:
            departures.staff_departed(s, rt, username="s104", departed_on=sh(2026, 3, 2).date(),
                                      actor=staff["s101"], now=rt.now())
        ack = case.open_task()
        assert (ack.element_id, ack.assignee, ack.status) == ("acknowledge", "s103", "claimed")
        case.do("acknowledge", "s103", CONTACTED)
    assert case.offered == [("register", INTAKE, None, [], sh(2026, 3, 2, 13)),
                            ("acknowledge", INTAKE, "s103", [], sh(2026, 3, 3, 9))]


def test_every_step_after_registration_recuses_the_subject_and_their_group_from_the_whole_case():
    from lxml import etree

    tree = etree.parse(str(WORKFLOWS / "complaint.bpmn"))
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL", "camunda": "http://camunda.org/schema/1.0/bpmn"}
    steps = [t.get("id") for t in tree.iterfind(".//bpmn:userTask", ns)]
    assert len(steps) == 26  # the sub-process's steps included
    for step in steps:
        element = tree.find(f".//bpmn:userTask[@id='{step}']", ns)
        props = {p.get("name"): p.get("value") for p in element.iterfind(".//camunda:property", ns)}
        if step in ("register", "register_12386"):  # nobody is named before the registration
            continue
        assert "${subject_staff_ids}" in props.get("excludeUsers", ""), step
        assert props.get("excludeServiceGroupsOf") == "${subject_staff_ids}", step
        assert props.get("recusalScope") == "case", step


def test_on_a_12386_case_about_a_counter_operator_neither_she_nor_her_group_is_offered_any_step(db, rt, staff):
    """邵琳 (s302, SX01 counter, group SX01-G1) is named in a 12386 transfer: she is not offered
    the contact with the client, nor is 孔伟 (s303, her group); another counter operator of the
    branch is, and the whole case is hidden from both."""
    case = Case(db, rt, staff, "CMP-20260302-0201")
    due = "2026-03-27T17:00:00+08:00"
    recused = ["group:SX01-G1", "user:s302"]
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_12386_transfer", {"channel": "12386", "client_id": "C09", "regulator_ref": "R-1",
                                                  "regulator_due_at": due}, sender="s007")
        case.do("register_12386", "s007", registration(channel="12386", client_id="C09", regulator_ref="R-1",
                                                       regulator_due_at=due, subject_staff_ids=["s302"]))
        ack = case.open_task()
        assert sorted(ack.excluded) == recused and ack.assignee == "s007"
        for who in ("s302", "s303"):
            with pytest.raises(TaskNotFound), db.transaction() as s:
                tasks.claim(s, rt, task_id=ack.id, actor=staff[who])
        case.do("acknowledge", "s007", CONTACTED)
        case.send("client_withdraws", {"withdrawal_note": "客户撤回"}, actor=staff["s007"])
        confirm = case.open_task()
        assert (confirm.element_id, sorted(confirm.excluded)) == ("confirm_withdrawal", recused)
        for who in ("s302", "s303"):
            with db.transaction() as s:
                inbox, _ = tasks.inbox(s, actor=staff[who], query=tasks.InboxQuery(business_key=case.key),
                                       now=rt.now())
            assert inbox == []
        case.do("confirm_withdrawal", "s007", {"withdrawal_reason": "no_longer_interested",
                                               "withdrawal_confirmed_by_client": True})
    sx01 = ["call_center_agent", "SX01:counter_staff"]
    assert case.offered == [  # contact within 2 WD; 确认撤诉 has no deadline of its own
        ("register_12386", ["hq_complaint_dept"], None, [], sh(2026, 3, 2, 13)),
        ("acknowledge", sx01, "s007", recused, sh(2026, 3, 4, 9)), ("confirm_withdrawal", sx01, "s007", recused, None)]


def test_a_registrar_in_the_subjects_group_is_not_given_the_contact_steps(db, rt, staff):
    """沈洁 (s105, HZ01-G1) registers a complaint about 杜娟 (s107, HZ01-G1): she owns the contact
    on paper, but the acknowledgement waits in the intake pool without her group."""
    case = Case(db, rt, staff, "CMP-20260302-0202")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", COUNTER_VISIT, sender="s105")
        case.do("register", "s105", registration(channel="counter", client_id="C01", subject_staff_ids=["s107"]))
        ack = case.open_task()
        assert (ack.assignee, ack.status, sorted(ack.excluded)) == (None, "open", ["group:HZ01-G1", "user:s107"])
        assert ack.due_at == sh(2026, 3, 3, 9)
        with pytest.raises(TaskNotFound), db.transaction() as s:
            tasks.claim(s, rt, task_id=ack.id, actor=staff["s105"])
        case.do("acknowledge", "s104", CONTACTED)
    assert case.offered == [("register", INTAKE, None, [], sh(2026, 3, 2, 13)),
                            ("acknowledge", INTAKE, None, ["group:HZ01-G1", "user:s107"], sh(2026, 3, 3, 9))]


def test_a_12386_registration_refuses_a_due_date_and_a_receipt_time_that_are_not_moments(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0301")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_12386_transfer", {"channel": "12386", "client_id": "C09", "regulator_ref": "R-2",
                                                  "regulator_due_at": "2027-01-08"}, sender="s007")
        register = case.open_task()
        with pytest.raises(FormValidationError) as refused, db.transaction() as s:
            tasks.complete(s, rt, task_id=register.id, actor=staff["s007"], data=registration(
                channel="12386", client_id="C09", regulator_ref="R-2", regulator_due_at="2027-01-08",
                received_at="昨天下午"))
    assert sorted(e.field for e in refused.value.errors) == ["received_at", "regulator_due_at"]


def test_whoever_investigated_or_proposed_does_not_approve_and_the_approval_goes_up_when_nobody_else_may(
        db, rt, staff):
    """SX01's only branch head, 金国平 (s301), is also its 客服总监: having investigated and
    proposed the resolution, he cannot approve it; with nobody else heading the branch, the
    HQ complaint department does. He still handles the case (the closure is his)."""
    case = Case(db, rt, staff, "CMP-20260302-0401")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", {"channel": "phone", "client_id": "C09"})
        case.do("register", "s003", registration(client_id="C09"))
        case.do("acknowledge", "s003", CONTACTED)
        case.do("investigate", "s301", {"facts_found": "柜台办理延误", "root_cause": "service_attitude",
                                        "staff_at_fault": False})
        case.do("propose_resolution", "s301", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明并致歉"})
        approve = case.open_task()
        assert (approve.element_id, approve.candidate_groups, approve.excluded) == \
            ("approve_branch", ["hq_complaint_dept"], ["user:s301"])
        with pytest.raises(TaskNotFound), db.transaction() as s:
            tasks.claim(s, rt, task_id=approve.id, actor=staff["s301"])
        case.do("approve_branch", "s007", {"decision": "approve"})
        case.do("communicate_result", "s003", COMMUNICATED)
        case.do("close_case", "s301", {"closure_reason": "resolved"})
    sx01 = ["call_center_agent", "SX01:counter_staff"]
    assert [(e, g, a, x) for e, g, a, x, _ in case.offered] == [
        ("register", sx01, None, []), ("acknowledge", sx01, "s003", []),
        ("investigate", ["SX01:branch_cs_director", "SX01:account_manager"], None, []),
        ("propose_resolution", ["SX01:branch_cs_director", "SX01:account_manager"], None, []),
        ("approve_branch", ["hq_complaint_dept"], None, ["user:s301"]),
        ("communicate_result", sx01, "s003", []), ("close_case", ["SX01:branch_cs_director"], None, []),
    ]
    assert [d for *_, d in case.offered] == [sh(2026, 3, 2, 13), sh(2026, 3, 3, 9), sh(2026, 3, 9, 9),
                                             sh(2026, 3, 4, 9), sh(2026, 3, 4, 9), sh(2026, 3, 23, 9),
                                             sh(2026, 3, 3, 9)]


def _notified(db, case: Case) -> list[tuple[str, str]]:
    from engine.models import Notification

    with db.transaction() as s:
        rows = s.execute(select(Notification).where(Notification.instance_id == case.instance_id,
                                                    Notification.task_id.is_(None)).order_by(Notification.id))
        return [(n.recipient, n.subject.split("] ", 1)[1]) for n in rows.scalars()]


def test_a_general_complaint_has_a_whole_case_deadline_that_warns_the_cs_director_and_compliance(
        db, rt, staff, client):
    """限时办结: 15 WD from arrival. Half-way the branch's 客服总监 hears of it, at 80 % compliance
    too; 反馈客户 is due when the case is; the case answer shows the clock."""
    from engine.access import identity

    case = Case(db, rt, staff, "CMP-20260302-0501")
    due = sh(2026, 3, 23, 9)  # 15 working days after Monday 2 March 09:00
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        case.do("acknowledge", "s104", CONTACTED)
        clock.move_to(due - (due - MONDAY_9) / 2 + timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 1
        assert _notified(db, case) == [("s103", "案件办结期限已用 50%")]
        clock.move_to(MONDAY_9 + (due - MONDAY_9) * 0.8 + timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 1
        assert _notified(db, case)[1:] == [("s103", "案件办结期限已用 80%"),
                                           ("s109", "案件办结期限已用 80%")]
        case.do("investigate", "s106", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明并致歉"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        with db.transaction() as s:
            token = identity.issue_token(s, username="s103", now=rt.now())
        body = client.get(f"/api/v1/instances/{case.instance_id}", headers={"Authorization": f"Bearer {token}"}).json
        assert datetime.fromisoformat(body["case_clock"]["due_at"]) == due
        assert body["case_clock"]["state"] == "running"
        case.do("communicate_result", "s104", COMMUNICATED)
        clock.move_to(due + timedelta(hours=1))
        firing.fire_due(db, rt)
    assert len(_notified(db, case)) == 3  # answered in time: no breach
    assert [(e, a, d) for e, _, a, _, d in case.offered] == [
        ("register", None, sh(2026, 3, 2, 13)), ("acknowledge", "s104", sh(2026, 3, 3, 9)),
        ("investigate", None, sh(2026, 3, 9, 9)), ("propose_resolution", None, sh(2026, 3, 23, 9)),
        ("approve_branch", None, sh(2026, 3, 23, 9)), ("communicate_result", "s104", due)]
    with db.transaction() as s:
        from engine.sla import case_clock

        kept = case_clock.get(s, case.instance_id)
        assert kept is not None and kept.stopped_at is not None and case_clock.state(kept, rt.now()) == "met"


def test_an_extension_moves_the_deadline_once_within_the_limit(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0502")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        case.do("acknowledge", "s104", CONTACTED)
        case.send("complaint_extension_requested", {"extension_reason": "需调取交易所数据"}, actor=staff["s104"])
        approve = case.task("approve_extension")
        assert approve.due_at == sh(2026, 3, 23, 9)  # when the case is due
        with pytest.raises(FormValidationError) as too_long, db.transaction() as s:
            tasks.complete(s, rt, task_id=approve.id, actor=staff["s103"],
                           data={"extension_decision": "approve", "extension_days": 16})
        assert [e.field for e in too_long.value.errors] == ["extension_days"]
        case.do("approve_extension", "s103", {"extension_decision": "approve", "extension_days": 10}, alone=False)
        notify = case.task("notify_extension")
        assert (notify.assignee, notify.due_at) == ("s104", sh(2026, 4, 7, 9))  # 10 WD later (清明 on 6 April)
        case.do("notify_extension", "s104", {"reason": "需调取交易所数据", "new_due_at": "2026-04-07T09:00:00+08:00"},
                alone=False)
        # The diagram takes one request: a second finds nobody waiting for it.
        with pytest.raises(MessageNotCorrelated):
            case.send("complaint_extension_requested", {"extension_reason": "再次延期"}, actor=staff["s104"])
        with db.transaction() as s:
            from engine.sla import case_clock

            kept = case_clock.get(s, case.instance_id)
            assert kept is not None and (kept.base_due_at, kept.due_at, kept.extended_by) == \
                (sh(2026, 3, 23, 9), sh(2026, 4, 7, 9), "10 WD")
        investigate = case.task("investigate")
        assert investigate.due_at == sh(2026, 3, 9, 9)  # a step's own deadline does not move
    assert [(e, g, a, d) for e, g, a, _, d in case.offered] == [
        ("register", INTAKE, None, sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s104", sh(2026, 3, 3, 9)),
        ("approve_extension", ["HZ01:branch_cs_director"], None, sh(2026, 3, 23, 9)),
        ("notify_extension", INTAKE, "s104", sh(2026, 4, 7, 9))]


def test_a_regulator_transfer_is_due_two_working_days_before_the_regulators_date(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0503")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_12386_transfer", {"channel": "12386", "client_id": "C09", "regulator_ref": "R-3",
                                                  "regulator_due_at": "2026-03-20T17:00:00+08:00"}, sender="s007")
        case.do("register_12386", "s007", registration(channel="12386", client_id="C09", regulator_ref="R-3",
                                                       regulator_due_at="2026-03-20T17:00:00+08:00"))
        with db.transaction() as s:
            from engine.sla import case_clock

            kept = case_clock.get(s, case.instance_id)
            assert kept is not None and kept.due_at == sh(2026, 3, 18, 17)


def test_a_registered_clients_complaint_is_registered_without_typing_the_client_again(db, rt, staff):
    """Started for C01 from the registry: neither the client nor their name and phone are asked
    again. A walk-in (no client) must give the complainant's name and phone."""
    typed = {k: v for k, v in registration(channel="counter").items() if k != "client_id"}
    case = Case(db, rt, staff, "CMP-20260302-0601")
    walk_in = Case(db, rt, staff, "CMP-20260302-0602")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", typed)
        assert case.data()["client_id"] == "C01" and "complainant_phone" not in case.data()
        walk_in.receive("complaint_received", {"channel": "counter", "branch_code": "HZ01"}, sender="s104")
        register = walk_in.open_task()
        with pytest.raises(FormValidationError) as refused, db.transaction() as s:
            tasks.complete(s, rt, task_id=register.id, actor=staff["s104"], data=typed)
        assert sorted(e.field for e in refused.value.errors) == ["complainant_name", "complainant_phone"]
        walk_in.do("register", "s104", {**typed, "complainant_name": "张先生", "complainant_phone": "13800001111"})
    assert [(e, g, a, d) for e, g, a, _, d in case.offered + walk_in.offered] == [
        ("register", INTAKE, None, sh(2026, 3, 2, 13)), ("register", INTAKE, None, sh(2026, 3, 2, 13))]


def test_a_withdrawal_found_involuntary_reopens_the_case_and_reaches_compliance(db, rt, staff):
    case = Case(db, rt, staff, "CMP-20260302-0701")
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        case.do("acknowledge", "s104", CONTACTED)
        case.send("client_withdraws", {"withdrawal_note": "客户来电撤诉"}, actor=staff["s104"])
        case.do("confirm_withdrawal", "s104", {"withdrawal_reason": "no_longer_interested",
                                               "withdrawal_confirmed_by_client": True})
        case.do("close_case", "s103", {"closure_reason": "withdrawn"})
        case.do("withdrawal_verify", "s005", {"withdrawal_voluntary": False, "comment": "客户称被要求撤诉"})
        assert sorted(t.element_id for t in case.open_tasks()) == ["acknowledge", "compliance_involuntary"]
        assert "archived" not in case.data()
        with db.transaction() as s:
            from engine.sla import case_clock

            kept = case_clock.get(s, case.instance_id)
            assert kept is not None and kept.stopped_at is None and kept.due_at == sh(2026, 3, 23, 9)
        case.do("compliance_involuntary", "s109", {"finding": "营业部员工要求客户撤诉", "pressure_confirmed": True},
                alone=False)
        case.do("acknowledge", "s104", CONTACTED)
    assert [(e, g, a, d) for e, g, a, _, d in case.offered] == [
        ("register", INTAKE, None, sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s104", sh(2026, 3, 3, 9)),
        ("confirm_withdrawal", INTAKE, "s104", None),
        ("close_case", ["HZ01:branch_cs_director"], None, sh(2026, 3, 3, 9)),
        ("withdrawal_verify", ["call_center_agent"], None, sh(2026, 3, 5, 9)),
        ("compliance_involuntary", ["compliance"], None, None), ("acknowledge", INTAKE, "s104", sh(2026, 3, 3, 9))]
    assert case.instance().status == "running"


def test_an_escalation_closes_when_its_step_is_done_or_cancelled(db, rt, staff):
    """The registration escalated to the call centre's supervisor closes when it is registered;
    the investigation escalated to the branch head closes when the client's withdrawal cancels it."""
    from engine.models import TaskKind

    def escalations() -> list[tuple[str, str]]:
        with db.transaction() as s:
            return [(t.element_id, t.status) for t in s.execute(
                select(Task).where(Task.instance_id == case.instance_id, Task.kind == TaskKind.ESCALATION)
                .order_by(Task.id)).scalars()]

    case = Case(db, rt, staff, "CMP-20260302-0801")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        clock.move_to(sh(2026, 3, 2, 13, 1))  # the registration was due at 13:00
        assert firing.fire_due(db, rt) >= 1
        assert escalations() == [("register.escalation", "open")]
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        assert escalations() == [("register.escalation", "cancelled")]
        case.do("acknowledge", "s104", CONTACTED)
        investigate = case.open_task()
        clock.move_to(investigate.due_at + timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 1
        assert escalations()[1:] == [("investigate.escalation", "open")]
        case.send("client_withdraws", {"withdrawal_note": "撤诉"}, actor=staff["s104"])
        assert escalations() == [("register.escalation", "cancelled"), ("investigate.escalation", "cancelled")]
    assert [(e, g, a, d) for e, g, a, _, d in case.offered] == [
        ("register", INTAKE, None, sh(2026, 3, 2, 13)), ("acknowledge", INTAKE, "s104", sh(2026, 3, 3, 13, 1))]


def test_a_major_complaint_has_a_30_working_day_whole_case_deadline_shown_on_the_case(db, rt, staff, client):
    """限时办结 for a major complaint (brief §2.1, complaint.sla.resolve.major): 30 WD from its
    arrival on Monday 2 March 2026 09:00, on the working-day calendar: March gives 21 working
    days after the 2nd, 1–3 April three more, 清明 (6 April) is skipped, 7–14 April the last six.
    Not the general 15 WD (23 March), and not 30 calendar days (1 April)."""
    from engine.access import identity
    from engine.sla import case_clock

    case = Case(db, rt, staff, "CMP-20260302-0901")
    due = sh(2026, 4, 14, 9)
    with time_machine.travel(MONDAY_9, tick=False):
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01", amount_claimed=80000))
        assert case.data()["severity"] == "major"
        with db.transaction() as s:
            kept = case_clock.get(s, case.instance_id)
            assert kept is not None and (kept.policy, kept.base_due_at, kept.due_at) == \
                ("complaint.resolution", due, due)
            token = identity.issue_token(s, username="s103", now=rt.now())
        body = client.get(f"/api/v1/instances/{case.instance_id}", headers={"Authorization": f"Bearer {token}"}).json
    assert datetime.fromisoformat(body["case_clock"]["due_at"]) == due
    assert body["case_clock"]["state"] == "running"


def test_a_low_satisfaction_score_opens_a_quality_ticket_for_the_cs_director_due_in_10_working_days(db, rt, staff):
    """服务质量整改 (brief §2.1 C17: a score ≤ 2 opens a quality ticket for the branch's 客服总监)
    comes after the case has answered, so the case's deadline is not its own: it is due 10 WD
    after the low score (complaint.quality_ticket; the brief gives no figure) — the score at
    03-03 09:01 makes it Tuesday 17 March 09:01."""
    case = Case(db, rt, staff, "CMP-20260302-0902")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        case.do("acknowledge", "s104", CONTACTED)
        case.do("investigate", "s108", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明并致歉"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        case.do("communicate_result", "s104", COMMUNICATED)
        case.do("close_case", "s103", {"closure_reason": "resolved"})
        _satisfaction(case, clock, who="s005", csat=2)
        ticket = case.open_task()
        assert (ticket.element_id, ticket.candidate_groups, ticket.assignee, ticket.due_at) == \
            ("quality_ticket", ["HZ01:branch_cs_director"], None, sh(2026, 3, 17, 9, 1))
        case.do("quality_ticket", "s103", {"findings": "客户对答复不满意", "actions": "复盘佣金模板变更"})
    assert case.end_state() == "E1"


HZ01_G1 = ("s107", "s106", "s105")  # 杜娟, the subject below, and the other members of her group HZ01-G1


class RecusedCase(Case):
    """A complaint naming 杜娟 (s107): before each step is taken, neither she nor anyone of her
    service group HZ01-G1 finds it in an inbox (theirs, or their groups') or can claim it."""

    def __init__(self, reached: set[str], *args: Any) -> None:
        super().__init__(*args)
        self.reached = reached

    def do(self, element: str, who: str, data: dict[str, Any], *, alone: bool = True) -> Task:
        task = next((t for t in self.open_tasks() if t.element_id == element), None)
        assert task is not None, f"{element} is not open"
        if element not in ("register", "register_12386"):  # nobody is named before the registration
            assert {"group:HZ01-G1", "user:s107"} <= set(task.excluded or []), (element, task.excluded)
            for username in HZ01_G1:
                for query in (tasks.InboxQuery(business_key=self.key),
                              tasks.InboxQuery(business_key=self.key, candidate_me=True)):
                    with self.db.transaction() as s:
                        inbox, _ = tasks.inbox(s, actor=self.staff[username], query=query, now=self.rt.now())
                    assert task.id not in {t.id for t in inbox}, f"{element} is offered to {username}"
                with pytest.raises(TaskNotFound), self.db.transaction() as s:
                    tasks.claim(s, self.rt, task_id=task.id, actor=self.staff[username])
            self.reached.add(element)
        return super().do(element, who, data, alone=alone)


def test_the_subject_and_their_group_are_neither_offered_nor_able_to_claim_any_step_the_complaint_reaches(
        db, rt, staff):
    """Recusal at run time (issue 13 item 2), over five walks of complaints naming 杜娟 (s107):
    (a) a general complaint with an extension, compliance's regulatory report and disciplinary
    follow-up, HQ and compliance approval, a rejected result, the redress, and a low score's
    quality ticket; (b) a 12386 transfer approved by the branch, closed by HQ and fed back to
    the regulator; (c) a withdrawal found involuntary, reopened and reviewed by compliance;
    (d) a joint complaint's group plan; (e) a consultation and a report, redirected. Together
    they reach every user task of complaint.bpmn but the two registrations, at which nobody is
    named yet."""
    from lxml import etree

    reached: set[str] = set()
    # Each complaint on another business line: three naming her on one line would be a group.
    subject = {"subject_staff_ids": ["s107"]}
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        # (a)
        a = RecusedCase(reached, db, rt, staff, "CMP-20260302-1101")
        a.receive("complaint_received", COUNTER_VISIT, sender="s104")
        a.do("register", "s104", registration(channel="counter", client_id="C01", **subject))
        a.do("acknowledge", "s104", CONTACTED)
        a.send("complaint_extension_requested", {"extension_reason": "需调取交易所数据"}, actor=staff["s104"])
        a.do("approve_extension", "s103", {"extension_decision": "approve", "extension_days": 5}, alone=False)
        a.do("notify_extension", "s104", {"reason": "需调取交易所数据", "new_due_at": "2026-03-30T09:00:00+08:00"},
             alone=False)
        a.do("investigate", "s108", {"facts_found": "员工服务态度恶劣", "root_cause": "service_attitude",
                                     "staff_at_fault": True, "loss_amount_claimed": 60000,
                                     "loss_amount_assessed": 60000})
        a.do("compliance_review", "s109", {"violation_confirmed": True, "violation_type": "service_attitude",
                                           "regulatory_report_required": True, "disciplinary_referral": True,
                                           "opinion": "须报告并问责"})
        a.do("regulatory_report", "s006", {"reported_at": "2026-03-02T10:00:00+08:00",
                                           "report_recipient": "csrc_bureau", "report_summary": "员工违规"},
             alone=False)
        a.do("disciplinary_followup", "s101", {"disciplinary_action": "warning", "disciplinary_note": "警告"},
             alone=False)
        a.do("propose_resolution", "s108", {"resolution_type": "compensation", "compensation_amount": 60000,
                                            "resolution_text": "补偿 6 万元"})
        a.do("approve_hq", "s007", {"decision": "approve"})
        a.do("approve_compliance", "s006", {"decision": "approve"})
        a.do("communicate_result", "s104", {**COMMUNICATED, "client_response": "rejects"})
        a.do("inform_redress", "s104", {"informed_at": "2026-03-02T10:00:00+08:00", "mediation_requested": False})
        closer = a.open_task().element_id
        a.do(closer, "s103" if closer == "close_case" else "s008", {"closure_reason": "resolved"})
        clock.shift(timedelta(days=1, minutes=1))
        assert firing.fire_due(db, rt) >= 1
        a.do("satisfaction_callback", "s005", {"csat": 2, "resolved_in_client_view": False})
        a.do("quality_ticket", "s103", {"findings": "客户对处理结果不满", "actions": "服务态度培训"})
        assert a.end_state() == "E1"
        # (b)
        clock.move_to(MONDAY_9)
        due = "2026-03-20T17:00:00+08:00"
        b = RecusedCase(reached, db, rt, staff, "CMP-20260302-1102")
        b.receive("complaint_12386_transfer", {"channel": "12386", "client_id": "C01", "regulator_ref": "R-11",
                                               "regulator_due_at": due}, sender="s007")
        b.do("register_12386", "s007", registration(channel="12386", client_id="C01", regulator_ref="R-11",
                                                    regulator_due_at=due, business_line="margin", **subject))
        b.do("acknowledge", "s007", CONTACTED)
        b.do("investigate", "s108", {"facts_found": "系统延迟", "root_cause": "trading_system",
                                     "staff_at_fault": False})
        b.do("compliance_review", "s109", {"violation_confirmed": False, "regulatory_report_required": False,
                                           "disciplinary_referral": False, "opinion": "未见违规"})
        b.do("propose_resolution", "s103", {"resolution_type": "explanation", "compensation_amount": 0,
                                            "resolution_text": "说明"})
        b.do("approve_branch", "s101", {"decision": "approve"})
        b.do("communicate_result", "s007", COMMUNICATED)
        b.do("close_case_hq", "s008", {"closure_reason": "resolved"})
        b.do("report_regulator", "s007", {"regulator_feedback_at": "2026-03-02T15:00:00+08:00",
                                          "feedback_summary": "已说明"})
        # (c)
        c = RecusedCase(reached, db, rt, staff, "CMP-20260302-1103")
        c.receive("complaint_received", COUNTER_VISIT, sender="s104")
        c.do("register", "s104", registration(channel="counter", client_id="C01", business_line="account_services",
                                              **subject))
        c.do("acknowledge", "s104", CONTACTED)
        c.send("client_withdraws", {"withdrawal_note": "客户撤诉"}, actor=staff["s104"])
        c.do("confirm_withdrawal", "s104", {"withdrawal_reason": "no_longer_interested",
                                            "withdrawal_confirmed_by_client": True})
        c.do("close_case", "s103", {"closure_reason": "withdrawn"})
        c.do("withdrawal_verify", "s005", {"withdrawal_voluntary": False, "comment": "客户称被要求撤诉"})
        c.do("compliance_involuntary", "s109", {"finding": "员工要求客户撤诉", "pressure_confirmed": True},
             alone=False)
        c.do("acknowledge", "s104", CONTACTED)
        # (d)
        d = RecusedCase(reached, db, rt, staff, "CMP-20260302-1104")
        d.receive("complaint_received", COUNTER_VISIT, sender="s104")
        d.do("register", "s104", registration(channel="counter", client_id="C01", joint_complaint=True,
                                              business_line="advisory", **subject))
        d.do("group_plan", "s007", {"plan": "总部牵头统一答复", "update_interval_wd": 5})
        # (e)
        for number, (kind, element, who, form) in enumerate([
                ("consultation", "answer_or_forward", "s003",
                 {"answer": "已解释", "answered_at": "2026-03-02T09:30:00+08:00"}),
                ("report", "forward_report", "s109", {"received_by_compliance": True, "opinion": "立案核查"})], 5):
            e = RecusedCase(reached, db, rt, staff, f"CMP-20260302-110{number}")
            e.receive("complaint_received", COUNTER_VISIT, sender="s104")
            e.do("register", "s104", registration(channel="counter", client_id="C01", request_kind=kind,
                                                  business_line="other", **subject))
            e.do(element, who, form)
            assert e.end_state() == "E5"
    tree = etree.parse(str(WORKFLOWS / "complaint.bpmn"))
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL"}
    steps = {t.get("id") for t in tree.iterfind(".//bpmn:userTask", ns)} - {"register", "register_12386"}
    assert len(steps) == 24 and reached == steps, sorted(steps ^ reached)


def test_a_quality_ticket_opened_after_a_late_answer_is_not_due_before_it_was_opened(db, rt, staff):
    """A general complaint (due 23 March 09:00) is answered on 25 March; the low score comes on
    26 March 09:01. Its quality ticket is due on 23 March: three days before it exists."""
    case = Case(db, rt, staff, "CMP-20260302-0903")
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        case.receive("complaint_received", COUNTER_VISIT, sender="s104")
        case.do("register", "s104", registration(channel="counter", client_id="C01"))
        case.do("acknowledge", "s104", CONTACTED)
        case.do("investigate", "s108", {"facts_found": "佣金模板错误", "root_cause": "fees", "staff_at_fault": False})
        case.do("propose_resolution", "s108", {"resolution_type": "explanation", "compensation_amount": 0,
                                               "resolution_text": "说明并致歉"})
        case.do("approve_branch", "s101", {"decision": "approve"})
        clock.move_to(sh(2026, 3, 25, 9))
        case.do("communicate_result", "s104", COMMUNICATED)
        case.do("close_case", "s103", {"closure_reason": "resolved"})
        _satisfaction(case, clock, who="s005", csat=2)
        ticket = case.open_task()
    assert ticket.element_id == "quality_ticket" and ticket.created_at == sh(2026, 3, 26, 9, 1)
    assert ticket.due_at is not None and ticket.due_at > ticket.created_at
