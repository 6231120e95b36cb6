"""The complaint, retention and VIP processes run end to end from the API on the demo data
(engine/demo.py, engine/demo_data/): each case starts the way it does in production (an
outside system's message, sent by a user holding the integration role, or a staff member's
start), the demo people sign in with the demo password, find each task in their inbox and
complete it over HTTP, and people who must not see a task do not. Time moves with
time-machine; the timer runner (``timers.fire_due``) fires what falls due, as it does in
``make run``. The form data is the engine-level tests' (tests/test_process_*.py), so both
levels drive the same cases."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import time_machine
from flask.testing import FlaskClient

from engine.access import identity
from engine.access.roles import INTEGRATION
from engine.brokerage import demo
from engine.brokerage.services import callback as callback_services
from engine.calendars import SHANGHAI
from engine.db import Database
from engine.models import Task
from engine.process.runtime import Runtime
from engine.timers import firing
from tests.brokerage.test_callback import ANSWERS_OK, IDENTITY_OK, REACHED
from tests.brokerage.test_complaint import COMMUNICATED, CONTACTED, PHONE_CALL, registration
from tests.brokerage.test_retention import ACCEPT_TRANSFER, C05, COMPLETED, NOT_RETAINED, REVIEWED, SUBMITTED
from tests.brokerage.test_vip import WELCOMED, evaluation
from tests.support.api import API, assert_problem

pytestmark = pytest.mark.sqlite

# The outside systems that talk to the engine, each a user holding the integration role.
SYSTEMS = {
    "hotline": "客服热线系统",  # the call centre's telephony: complaints and withdrawals by phone
    "counter_system": "柜台系统",  # the branch counter system: transfer and closure requests
    "csdc_gateway": "中国结算回报接口",  # the exchange's and CSDC's returns on instructions
    "app_gateway": "APP",  # what clients do in the app (withdraw a request, decline a tier)
}
# A token from POST /auth/login lives 12 hours; the cases below run over days and weeks.
TOKEN_REUSE = timedelta(hours=1)


def body(response: Any) -> Any:
    """The JSON of a response that must have one."""
    payload = response.get_json()
    assert payload is not None, response.get_data(as_text=True)
    return payload


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=SHANGHAI)


class Http:
    """The HTTP side of a test: who is signed in, their inboxes, and the outside systems."""

    def __init__(self, client: FlaskClient, rt: Runtime, systems: dict[str, dict[str, str]], db: Database) -> None:
        self.client, self.rt, self.systems, self.db = client, rt, systems, db
        self._logins: dict[str, tuple[datetime, dict[str, str]]] = {}
        # Each step taken as it was offered: (element, candidate groups, assignee, excluded, due in Beijing time).
        self.offered_steps: list[tuple[str, list[str], str | None, list[str], datetime | None]] = []

    def login(self, username: str) -> dict[str, str]:
        """A demo person signs in with the demo password (again once the last token is old)."""
        now = self.rt.now()
        known = self._logins.get(username)
        if known is None or now - known[0] > TOKEN_REUSE or now < known[0]:
            response = self.client.post(f"{API}/auth/login", json={"username": username, "password": demo.PASSWORD})
            assert response.status_code == 200, response.get_data(as_text=True)
            known = (now, {"Authorization": f"Bearer {body(response)['token']}"})
            self._logins[username] = known
        return known[1]

    def get(self, username: str, path: str, **query: Any) -> Any:
        return self.client.get(f"{API}{path}", query_string=query, headers=self.login(username))

    def tasks(self, username: str, key: str, **filters: str) -> list[dict[str, Any]]:
        """The tasks of case ``key`` that ``username`` sees (their inbox, filtered)."""
        page = self.get(username, "/tasks", business_key=key, **filters)
        assert page.status_code == 200, page.get_data(as_text=True)
        return list(body(page)["items"])

    def sees(self, username: str, key: str) -> list[str]:
        """Every task of the case the person can see at all, unfiltered."""
        return [t["element_id"] for t in self.tasks(username, key)]

    def offered(self, username: str, key: str) -> list[dict[str, Any]]:
        """The person's inbox for the case: unclaimed tasks of their groups and their own."""
        return self.tasks(username, key, candidate="me") + self.tasks(username, key, assignee="me")

    def take(self, username: str, key: str, element: str, data: dict[str, Any]) -> dict[str, Any]:
        """``username`` finds ``element`` in their inbox and completes it with ``data``."""
        found = [t for t in self.offered(username, key) if t["element_id"] == element]
        assert len(found) == 1, f"{element} is not in {username}'s inbox: {self.offered(username, key)}"
        with self.db.transaction() as s:
            kept = s.get(Task, found[0]["id"])
            assert kept is not None
            excluded = sorted(kept.excluded or [])
        self.offered_steps.append((element, list(found[0]["candidate_groups"]), found[0]["assignee"], excluded,
                                   due(found[0]) if found[0]["due_at"] else None))
        done = self.client.post(f"{API}/tasks/{found[0]['id']}/complete", json={"data": data},
                                headers=self.login(username))
        assert done.status_code == 200, done.get_data(as_text=True)
        return found[0]

    def refused(self, username: str, task: dict[str, Any]) -> None:
        """``task`` is not in ``username``'s inbox, and they can neither claim nor complete it:
        for them it does not exist (404). A 403 would tell a recused person that the task is
        there, and so that the case about them is."""
        headers = self.login(username)
        offered = [t["id"] for t in self.offered(username, task["business_key"])]
        assert task["id"] not in offered, f"{task['element_id']} is offered to {username}"
        for command, body in (("claim", None), ("complete", {"data": {}})):
            response = self.client.post(f"{API}/tasks/{task['id']}/{command}", json=body, headers=headers)
            assert_problem(response, 404, "task_not_found")

    def open_task(self, username: str, key: str, element: str) -> dict[str, Any]:
        [task] = [t for t in self.tasks(username, key) if t["element_id"] == element]
        return task

    def send(self, system: str, name: str, payload: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """An outside system delivers a message (to the case ``key``, or starting a new case)."""
        message: dict[str, Any] = {"name": name, "payload": payload}
        if key is not None:
            message["correlation_key"] = key
        response = self.client.post(f"{API}/messages", json=message, headers=self.systems[system])
        assert response.status_code == 200, response.get_data(as_text=True)
        assert body(response)["status"] != "failed", body(response)["error"]
        return dict(body(response))

    def instance(self, username: str, instance_id: int) -> dict[str, Any]:
        response = self.get(username, f"/instances/{instance_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return dict(body(response))

    def history(self, username: str, instance_id: int) -> list[dict[str, Any]]:
        response = self.get(username, f"/instances/{instance_id}/history")
        assert response.status_code == 200, response.get_data(as_text=True)
        return list(body(response))

    def completed_by(self, username: str, instance_id: int) -> list[tuple[str, str]]:
        """(who, element) of every task completion, oldest first, from the case's history."""
        return [(e["actor"], e["data"]["element_id"]) for e in self.history(username, instance_id)
                if e["kind"] == "task.completed"]


@pytest.fixture
def http(db, rt, client, demo_loaded) -> Http:
    """The demo loaded as ``bpm demo load`` does (people, registry, workflows and SLA
    policies), and one integration user with a token per outside system."""
    systems = {}
    with db.transaction() as s:
        identity.ensure_group(s, key=INTEGRATION)
        for username, name in SYSTEMS.items():
            identity.create_user(s, username=username, display_name=name, now=rt.now(), groups=[INTEGRATION])
            token = identity.issue_token(s, username=username, now=rt.now())
            systems[username] = {"Authorization": f"Bearer {token}"}
    return Http(client, rt, systems, db)


def due(task: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(task["due_at"]).astimezone(SHANGHAI)


# -- 投诉纠纷 complaint.bpmn (brief §2.1) -----------------------------------------------------------
# Brief §4.5 CMP-20250612-0001: 王秀兰 (C02, 67, HZ01-G1) says her account manager 杜娟 (s107,
# HZ01-G1) sold her, a C3 client, an R4 product; she claims ¥38,000. Here she phones the hotline.
MIS_SELLING = registration(
    received_at="2025-06-12T10:00:00+08:00", client_id="C02", client_age=67, business_line="product_sales",
    subject_staff_ids=["s107"], summary="客户称客户经理杜娟向其（C3）推荐 R4 级代销产品，产品亏损，要求赔偿",
    client_request="compensation", amount_claimed=38000, alleged_violations=["suitability_mismatch"])
INVESTIGATED = {"facts_found": "风险测评 C3，产品 R4，无风险不匹配警示确认记录", "root_cause": "suitability",
                "staff_at_fault": True, "loss_amount_claimed": 38000, "loss_amount_assessed": 30000}
COMPLIANCE_OPINION = {"violation_confirmed": True, "violation_type": "suitability", "regulatory_report_required": False,
                      "disciplinary_referral": True, "opinion": "适当性管理违规，建议按核定损失补偿并问责"}
RECUSED = ("s107", "s106", "s105")  # the subject, and the other members of her group HZ01-G1
INTAKE = ["call_center_agent", "HZ01:counter_staff"]
HANDLERS = ["HZ01:branch_cs_director", "HZ01:account_manager"]
SUBJECT = ["group:HZ01-G1", "user:s107"]  # what every step after the registration excludes


def _complaint_call(http: Http) -> dict[str, Any]:
    """王秀兰 phones the hotline; 高晨 (s003) takes the call and registers the complaint. The
    telephony system's message names the agent who answered: the first-contact owner."""
    case = http.send("hotline", "complaint_received", {**PHONE_CALL, "client_id": "C02"})
    http.take("s003", case["business_key"], "register", MIS_SELLING)
    return case


def _investigated(http: Http, key: str) -> None:
    """The call is acknowledged by its owner, and 彭涛 (s103, the branch's 客服总监) investigates."""
    http.take("s003", key, "acknowledge", CONTACTED)
    http.take("s103", key, "investigate", INVESTIGATED)
    http.take("s109", key, "compliance_review", COMPLIANCE_OPINION)  # 叶青, HZ01's compliance officer


def test_a_mis_selling_complaint_is_investigated_without_the_accused_group_and_resolved(http, rt, db):
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False) as clock:
        case = _complaint_call(http)
        key, instance_id = case["business_key"], case["id"]
        assert re.fullmatch(r"CMP-\d{8}-\d{4}", key) and key == "CMP-20250612-0001"  # brief §2.0
        # 高晨 took the call, so he owns the contact with the client (首办负责制).
        acknowledge = http.open_task("s003", key, "acknowledge")
        assert (acknowledge["assignee"], acknowledge["status"]) == ("s003", "claimed")
        http.take("s003", key, "acknowledge", CONTACTED)
        investigate = http.open_task("s103", key, "investigate")
        # Major (a suitability violation is alleged; she is 67): 10 working days, 06-12 → 06-26.
        assert due(investigate) == sh(2025, 6, 26, 10)
        # Recusal: 杜娟 and her group neither see the investigation nor can read the case.
        for username in RECUSED:
            http.refused(username, investigate)
            assert http.sees(username, key) == []
            assert http.get(username, f"/instances/{instance_id}").status_code == 404
        assert "investigate" in [t["element_id"] for t in http.offered("s108", key)]  # HZ01-G2's manager may
        clock.move_to(sh(2025, 6, 13, 15))
        http.take("s103", key, "investigate", INVESTIGATED)  # 彭涛, the branch's 客服总监
        http.take("s109", key, "compliance_review", COMPLIANCE_OPINION)
        http.take("s103", key, "propose_resolution", {"resolution_type": "compensation", "compensation_amount": 30000,
                                                      "resolution_text": "按核定损失补偿 3 万元并致歉"})
        approve = http.open_task("s007", key, "approve_hq")
        # Above the branch's ¥5,000: HQ approves; not offered to 黄建华 (a supervisor, who sees it).
        assert approve["candidate_groups"] == ["hq_complaint_dept"]
        assert "approve_hq" not in [t["element_id"] for t in http.offered("s101", key)]
        http.take("s007", key, "approve_hq", {"decision": "approve", "comment": "同意按核定损失补偿"})
        clock.move_to(sh(2025, 6, 17, 10))
        http.take("s003", key, "communicate_result", {**COMMUNICATED, "communicated_at": "2025-06-17T10:00:00+08:00"})
        http.take("s008", key, "close_case_hq", {"closure_reason": "resolved",
                                                 "lessons_learned": "代销产品须复核适当性"})  # major: HQ closes it
        # The satisfaction call waits a day after closure (complaint.satisfaction_delay).
        assert http.sees("s004", key) == []
        clock.shift(timedelta(days=1, minutes=1))
        assert firing.fire_due(db, rt) >= 1
        http.take("s004", key, "satisfaction_callback", {"csat": 4, "resolved_in_client_view": True})
        # The disciplinary referral opened its follow-up for the branch head at the review (C8),
        # due in 10 WD; it does not hold up the resolution, and the case ends when it is done.
        followup = http.open_task("s101", key, "disciplinary_followup")
        assert (followup["candidate_groups"], datetime.fromisoformat(followup["due_at"])) == (
            ["HZ01:branch_head"], sh(2025, 6, 27, 15))
        assert http.instance("s007", instance_id)["status"] == "running"
        http.take("s101", key, "disciplinary_followup", {"disciplinary_action": "warning",
                                                         "disciplinary_note": "书面警告并重新培训适当性管理"})
        done = http.instance("s007", instance_id)
    assert done["status"] == "completed"
    assert (done["facts"]["severity"], done["facts"]["closure_reason"], done["facts"]["csat"]) == (
        "major", "resolved", 4)
    assert done["data"]["severity_reasons"] == ["alleged_violation", "elderly_client"]
    assert done["data"]["notifications"] == [{"to": "compliance", "reason": "major"}]  # C4: compliance is told
    assert http.completed_by("s007", instance_id) == [
        ("s003", "register"), ("s003", "acknowledge"), ("s103", "investigate"), ("s109", "compliance_review"),
        ("s103", "propose_resolution"), ("s007", "approve_hq"), ("s003", "communicate_result"),
        ("s008", "close_case_hq"), ("s004", "satisfaction_callback"), ("s101", "disciplinary_followup")]
    # Who was offered each step, and when it was due (Thursday 12 June 2025 10:00 onwards; no
    # holiday in the window): registration 4 business hours; contact 1 WD; the major track's
    # 10 WD investigation; review 3 WD and proposal 2 WD from 06-13 15:00; HQ's approval 2 WD
    # without the investigator-proposer s103; 反馈客户 when the case is (30 WD: 07-24, brief
    # §4.5); HQ's close 1 WD from 06-17 10:00; the satisfaction call 3 WD from 06-18 10:01; the
    # disciplinary follow-up 10 WD from the review. 杜娟 and her group are kept off every step.
    assert http.offered_steps == [
        ("register", INTAKE, None, [], sh(2025, 6, 12, 14)),
        ("acknowledge", INTAKE, "s003", SUBJECT, sh(2025, 6, 13, 10)),
        ("investigate", HANDLERS, None, SUBJECT, sh(2025, 6, 26, 10)),
        ("compliance_review", ["compliance"], None, SUBJECT, sh(2025, 6, 18, 15)),
        ("propose_resolution", HANDLERS, None, SUBJECT, sh(2025, 6, 17, 15)),
        ("approve_hq", ["hq_complaint_dept"], None, ["group:HZ01-G1", "user:s103", "user:s107"], sh(2025, 6, 17, 15)),
        ("communicate_result", INTAKE, "s003", SUBJECT, sh(2025, 7, 24, 10)),
        ("close_case_hq", ["hq_complaint_dept"], None, SUBJECT, sh(2025, 6, 18, 10)),
        ("satisfaction_callback", ["call_center_agent"], None, SUBJECT, sh(2025, 6, 23, 10, 1)),
        ("disciplinary_followup", ["HZ01:branch_head"], None, SUBJECT, sh(2025, 6, 27, 15))]


def test_the_accused_and_her_group_are_not_offered_the_resolution_of_the_complaint_either(http):
    # Brief §6.3: a case's subject_staff_ids and their service group are excluded from the
    # candidate groups (not only of the investigation) and from the case. 拟定处理方案 goes to
    # the branch's account managers too, 杜娟 among them.
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False):
        key = _complaint_call(http)["business_key"]
        _investigated(http, key)
        propose = http.open_task("s103", key, "propose_resolution")
        for username in RECUSED:
            http.refused(username, propose)
            assert http.sees(username, key) == []
    assert http.offered_steps == [
        ("register", INTAKE, None, [], sh(2025, 6, 12, 14)),
        ("acknowledge", INTAKE, "s003", SUBJECT, sh(2025, 6, 13, 10)),
        ("investigate", HANDLERS, None, SUBJECT, sh(2025, 6, 26, 10)),
        ("compliance_review", ["compliance"], None, SUBJECT, sh(2025, 6, 17, 10))]
    assert (propose["candidate_groups"], due(propose)) == (HANDLERS, sh(2025, 6, 16, 10))  # 2 WD


def test_the_client_withdraws_her_complaint_by_phone_during_the_investigation(http):
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False) as clock:
        case = _complaint_call(http)
        key, instance_id = case["business_key"], case["id"]
        http.take("s003", key, "acknowledge", CONTACTED)
        investigate = http.open_task("s103", key, "investigate")
        clock.move_to(sh(2025, 6, 16, 11))
        # She calls the hotline again: the telephony system tells the case (客户撤诉).
        told = http.send("hotline", "client_withdraws", {"withdrawal_note": "客户来电表示已与营业部协商解决"}, key=key)
        assert told["id"] == instance_id
        assert "investigate" not in http.sees("s103", key)  # the handling was interrupted
        # A step that is over is its holder's and the supervisors' to look up, not its candidates'.
        assert http.get("s103", f"/tasks/{investigate['id']}").status_code == 404
        assert body(http.get("s101", f"/tasks/{investigate['id']}"))["status"] == "cancelled"
        http.take("s003", key, "confirm_withdrawal", {"withdrawal_reason": "resolved_privately",
                                                      "withdrawal_confirmed_by_client": True, "recording_id": "REC-W1"})
        http.take("s008", key, "close_case_hq", {"closure_reason": "withdrawn"})  # major: HQ closes it
        verify = http.open_task("s005", key, "withdrawal_verify")
        # A withdrawal after staff contact is verified by an independent call (3 WD): 06-16 → 06-19.
        assert verify["candidate_groups"] == ["call_center_agent"] and due(verify) == sh(2025, 6, 19, 11)
        http.take("s005", key, "withdrawal_verify", {"withdrawal_voluntary": True})
        done = http.instance("s007", instance_id)
    assert (done["status"], done["facts"]["closure_reason"]) == ("completed", "withdrawn")
    assert http.completed_by("s007", instance_id) == [
        ("s003", "register"), ("s003", "acknowledge"), ("s003", "confirm_withdrawal"), ("s008", "close_case_hq"),
        ("s005", "withdrawal_verify")]
    withdrawals = [(e["actor"], e["data"]["payload"]) for e in http.history("s007", instance_id)
                   if e["kind"] == "message.received" and e["data"]["message"] == "client_withdraws"]
    assert withdrawals == [("hotline", {"withdrawal_note": "客户来电表示已与营业部协商解决"})]
    # 确认撤诉 has no deadline (none in the brief or the SLA policies); HQ's close 1 WD from
    # 06-16 11:00; the verification call 3 WD, never by the owner who took the withdrawal.
    assert http.offered_steps == [
        ("register", INTAKE, None, [], sh(2025, 6, 12, 14)),
        ("acknowledge", INTAKE, "s003", SUBJECT, sh(2025, 6, 13, 10)),
        ("confirm_withdrawal", INTAKE, "s003", SUBJECT, None),
        ("close_case_hq", ["hq_complaint_dept"], None, SUBJECT, sh(2025, 6, 17, 11)),
        ("withdrawal_verify", ["call_center_agent"], None, ["group:HZ01-G1", "user:s003", "user:s107"],
         sh(2025, 6, 19, 11))]


def test_the_withdrawal_is_verified_by_an_agent_who_did_not_take_it(http):
    # Brief §2.1: a withdrawal that follows a staff member's contact is verified by an
    # independent callback (against pressured withdrawals). 高晨 contacted the client and
    # confirmed her withdrawal: another agent must make the verification call.
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False):
        key = _complaint_call(http)["business_key"]
        http.take("s003", key, "acknowledge", CONTACTED)
        http.send("hotline", "client_withdraws", {}, key=key)
        http.take("s003", key, "confirm_withdrawal", {"withdrawal_reason": "no_longer_interested",
                                                      "withdrawal_confirmed_by_client": True})
        http.take("s008", key, "close_case_hq", {"closure_reason": "withdrawn"})
        verify = http.open_task("s004", key, "withdrawal_verify")
        http.refused("s003", verify)
    assert http.offered_steps == [
        ("register", INTAKE, None, [], sh(2025, 6, 12, 14)),
        ("acknowledge", INTAKE, "s003", SUBJECT, sh(2025, 6, 13, 10)),
        ("confirm_withdrawal", INTAKE, "s003", SUBJECT, None),
        ("close_case_hq", ["hq_complaint_dept"], None, SUBJECT, sh(2025, 6, 13, 10))]
    assert (verify["candidate_groups"], due(verify)) == (["call_center_agent"], sh(2025, 6, 17, 10))  # 3 WD


# -- 转销户挽留 retention.bpmn (brief §2.2) ---------------------------------------------------------
# Brief §4.5 RET-20250616-0002: 孙立平 (C05, SX01-G1, ¥550,000) transfers to a competitor for a
# lower commission and is open to a retention talk. Here on the Friday before National Day
# 2025, so the trading-day and working-day calendars part: Sunday 09-28 and Saturday 10-11 are
# make-up working days on which the exchanges stay closed, 10-01..10-08 is a holiday.
TRANSFER_REQUEST = {"channel": "counter", "account_status": {}, **C05}
POST_CLOSURE_ANSWERS = {**{k: v for k, v in ANSWERS_OK.items() if k not in (
    "opened_by_self", "risk_disclosed", "suitability_result_known")},  # new-account and risk questions
    "closure_reason_confirmed": "佣金费率", "obstructed": "否", "consent_marketing_contact": False}


@pytest.fixture
def calls_not_sampled(monkeypatch) -> None:
    """The callback process samples 10 % of calls for QA at random (callback.qa_sample_rate):
    pin the draw so the post-closure call takes the same path on every run."""
    monkeypatch.setattr(callback_services, "random", SimpleNamespace(random=lambda: 0.99))


def test_a_transfer_completes_beside_the_retention_talk_and_starts_its_post_closure_callback(http, calls_not_sampled):
    with time_machine.travel(sh(2025, 9, 26, 9, 30), tick=False) as clock:
        case = http.send("counter_system", "retention_request_received", TRANSFER_REQUEST)
        key, instance_id = case["business_key"], case["id"]
        assert re.fullmatch(r"RET-\d{8}-\d{4}", key) and key == "RET-20250926-0001"  # brief §2.0
        clock.move_to(sh(2025, 9, 26, 10))
        http.take("s302", key, "accept", ACCEPT_TRANSFER)  # 邵琳 at the SX01 counter
        # Both tracks open at once. The instructions are due by the close (15:00) of the trading
        # day the request became ready on; the talk within a trading day, so Monday, not the
        # make-up Sunday the branch works.
        submit = http.open_task("s302", key, "submit_instructions")
        talk = http.open_task("s303", key, "retention_conversation")
        assert due(submit) == sh(2025, 9, 26, 15) and due(talk) == sh(2025, 9, 29, 10)
        assert talk["candidate_groups"] == ["SX01-G1"]  # the client's own group, nobody else's
        http.refused("s205", talk)
        clock.move_to(sh(2025, 9, 26, 10, 20))
        http.take("s303", key, "retention_conversation", NOT_RETAINED)  # 孔伟
        # Submitted when it happened (the exchange's result is chased from T+1 10:00 after it).
        http.take("s302", key, "submit_instructions", {**SUBMITTED, "submitted_at": "2025-09-26T10:20:00+08:00"})
        assert http.sees("s301", key) == []  # nothing waits on the branch: the exchange has it
        clock.move_to(sh(2025, 9, 29, 10))  # T+1 trading day
        http.send("csdc_gateway", "retention_exchange_result",
                  {"exchange_result": "success", "returned_at": "2025-09-29T10:00:00+08:00"}, key=key)
        clock.move_to(sh(2025, 9, 29, 10, 30))
        http.take("s302", key, "complete_notify", {**COMPLETED, "completed_at": "2025-09-29T10:30:00+08:00"})
        review = http.open_task("s301", key, "review_ops")
        # The post-hoc review counts working days: 09-30, 10-09, 10-10, Saturday 10-11, 10-13.
        assert due(review) == sh(2025, 10, 13, 10, 30)
        for worked in ("s302", "s303"):  # nobody reviews a case they worked on
            http.refused(worked, review)
        http.take("s301", key, "review_ops", REVIEWED)  # 金国平, SX01's head and ops director
        http.take("s301", key, "review_head", REVIEWED)  # ¥550,000: above the ¥500,000 threshold
        done = http.instance("s301", instance_id)
        # R7: the completion started a post-closure callback in the callback process.
        [thrown] = [e["data"] for e in http.history("s301", instance_id) if e["kind"] == "message.sent"]
        callback = http.instance("s004", thrown["to_instance"])
        cb_key = callback["business_key"]
        call = http.open_task("s004", cb_key, "call_attempt")
        # To the independent call centre, due 5 working days after the completion.
        assert call["candidate_groups"] == ["call_center_agent"] and due(call) == sh(2025, 10, 13, 10, 30)
        for member in ("s303", "s304", "s302"):  # the client's service group SX01-G1
            http.refused(member, call)
        http.take("s004", cb_key, "call_attempt", {**REACHED, "attempt_at": "2025-09-30T10:00:00+08:00"})
        http.take("s004", cb_key, "verify_identity", IDENTITY_OK)
        http.take("s004", cb_key, "questionnaire", POST_CLOSURE_ANSWERS)
        callback = http.instance("s004", callback["id"])
    assert done["status"] == "completed"
    assert (done["facts"]["outcome"], done["facts"]["exchange_result"], done["facts"]["retention_outcome"]) == (
        "completed", "success", "not_retained")
    assert http.completed_by("s301", instance_id) == [
        ("s302", "accept"), ("s303", "retention_conversation"), ("s302", "submit_instructions"),
        ("s302", "complete_notify"), ("s301", "review_ops"), ("s301", "review_head")]
    returns = [e["actor"] for e in http.history("s301", instance_id) if e["kind"] == "message.received"]
    assert returns == ["counter_system", "csdc_gateway"]
    assert re.fullmatch(r"CB-\d{8}-\d{4}", cb_key) and cb_key == "CB-20250929-0001"
    assert (thrown["message"], thrown["to_process"]) == ("post_closure_callback_requested", "callback")
    assert callback["status"] == "completed" and callback["client_id"] == "C05"
    assert (callback["facts"]["callback_type"], callback["facts"]["obstructed"]) == ("post_closure", "否")
    assert callback["data"]["origin_business_key"] == key
    assert http.completed_by("s004", callback["id"]) == [
        ("s004", "call_attempt"), ("s004", "verify_identity"), ("s004", "questionnaire")]
    # Acceptance 2 business hours from 09:30; the instructions by the close of the trading day
    # (diagram); the talk and the completion notice 1 TD (the make-up Sunday is not one); the
    # reviews 5 WD without the two who worked the case; the post-closure call 5 WD, not to the
    # client's service group. Identity check and questionnaire carry no deadline of their own.
    sx01 = ["SX01:counter_staff"]
    assert http.offered_steps == [
        ("accept", sx01, None, [], sh(2025, 9, 26, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 9, 29, 10)),
        ("submit_instructions", sx01, None, [], sh(2025, 9, 26, 15)),
        ("complete_notify", sx01, None, [], sh(2025, 9, 30, 10)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302", "user:s303"], sh(2025, 10, 13, 10, 30)),
        ("review_head", ["SX01:branch_head"], None, ["user:s302", "user:s303"], sh(2025, 10, 13, 10, 30)),
        ("call_attempt", ["call_center_agent"], None, ["group:SX01-G1"], sh(2025, 10, 13, 10, 30)),
        ("verify_identity", ["call_center_agent"], "s004", ["group:SX01-G1"], None),
        ("questionnaire", ["call_center_agent"], "s004", ["group:SX01-G1"], None)]


def test_a_client_retained_by_the_talk_withdraws_the_request_in_the_app(http):
    with time_machine.travel(sh(2025, 9, 26, 9, 30), tick=False) as clock:
        case = http.send("counter_system", "retention_request_received", TRANSFER_REQUEST)
        key, instance_id = case["business_key"], case["id"]
        http.take("s302", key, "accept", ACCEPT_TRANSFER)
        submit = http.open_task("s302", key, "submit_instructions")
        http.take("s304", key, "retention_conversation", {**NOT_RETAINED, "retention_outcome": "retained",
                                                          "offers_made": ["service_upgrade"]})
        # A staff member's "retained" changes nothing: the instructions are still due.
        assert http.sees("s302", key) == ["submit_instructions"]
        clock.move_to(sh(2025, 9, 26, 11))
        http.send("app_gateway", "retention_client_withdraws",
                  {"withdrawal_requested_at": "2025-09-26T11:00:00+08:00"}, key=key)
        assert body(http.get("s301", f"/tasks/{submit['id']}"))["status"] == "cancelled"  # SX01's supervisor
        http.take("s302", key, "confirm_withdrawal", {
            "withdrawal_channel": "app", "withdrawal_confirmed_by_client": True, "recording_id": "REC-APP"})
        http.take("s301", key, "review_ops", REVIEWED)
        http.take("s301", key, "review_head", REVIEWED)
        done = http.instance("s301", instance_id)
        callbacks = body(http.get("s002", "/instances", process="callback"))
    assert (done["status"], done["facts"]["outcome"]) == ("completed", "retained")
    assert callbacks == []  # nothing was closed: no post-closure callback
    assert http.completed_by("s301", instance_id) == [
        ("s302", "accept"), ("s304", "retention_conversation"), ("s302", "confirm_withdrawal"),
        ("s301", "review_ops"), ("s301", "review_head")]
    # The withdrawal is confirmed within 4 business hours of 11:00; the reviews 5 WD from 11:00
    # (the make-up Sunday 09-28 counts, 10-01..08 does not), without the two who worked the case.
    sx01 = ["SX01:counter_staff"]
    assert http.offered_steps == [
        ("accept", sx01, None, [], sh(2025, 9, 26, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 9, 29, 9, 30)),
        ("confirm_withdrawal", sx01, None, [], sh(2025, 9, 26, 15)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302", "user:s304"], sh(2025, 10, 10, 11)),
        ("review_head", ["SX01:branch_head"], None, ["user:s302", "user:s304"], sh(2025, 10, 10, 11))]


# -- 贵宾客户 vip_onboarding.bpmn (brief §2.4) ------------------------------------------------------
# V0b: an account manager nominates a target VIP. 周晓燕 (C06, gold, HZ01-G2) brought in funds:
# ¥1,200,000 of average daily assets, diamond by the thresholds. Her group's lead 魏强 (s108)
# nominates her on the Friday before National Day; Sunday 09-28 is a make-up working day.
NOMINATION = evaluation("C06", "gold", 1_200_000, trigger="nomination", evaluation_period="2025-08",
                        evaluated_at="2025-09-26T10:00:00+08:00")
NOMINATED = {"proposed_tier": "diamond", "nomination_source": "account_manager",
             "justification": "本月转入资金 80 万，日均资产达钻石卡门槛"}


def _nominate(http: Http) -> dict[str, Any]:
    response = http.client.post(f"{API}/processes/vip_onboarding/instances", json={"data": NOMINATION},
                                headers=http.login("s108"))
    assert response.status_code == 201, response.get_data(as_text=True)
    assert body(response)["status"] != "failed", body(response)["error"]
    return dict(body(response))


def test_a_nominated_client_is_welcomed_by_her_group_and_approved_by_the_branch_head_not_the_nominator(http):
    with time_machine.travel(sh(2025, 9, 26, 10), tick=False) as clock:
        # Only account managers and HQ brokerage management start VIP cases (starter groups).
        refused = http.client.post(f"{API}/processes/vip_onboarding/instances", json={"data": NOMINATION},
                                   headers=http.login("s104"))
        assert refused.status_code == 403, refused.get_data(as_text=True)
        case = _nominate(http)
        key, instance_id = case["business_key"], case["id"]
        assert re.fullmatch(r"VIP-\d{8}-\d{4}", key) and key == "VIP-20250926-0001"  # brief §2.0
        assert case["started_by"] == "s108"
        nominate = http.open_task("s108", key, "nominate")
        assert due(nominate) == sh(2025, 9, 28, 10)  # 1 WD: the make-up Sunday counts
        clock.move_to(sh(2025, 9, 26, 11))
        http.take("s108", key, "nominate", NOMINATED)
        welcome = http.open_task("s104", key, "verify_welcome")
        assert welcome["candidate_groups"] == ["HZ01-G2"]  # her group; HZ01-G1 is not asked
        http.refused("s106", welcome)
        clock.move_to(sh(2025, 9, 28, 10))
        http.take("s104", key, "verify_welcome", WELCOMED)  # 蒋芳, the group's back-office member
        approve = http.open_task("s101", key, "approve_branch")
        # 3 WD on the working-day calendar: 09-29, 09-30, then 10-09 after the holiday.
        assert approve["candidate_groups"] == ["HZ01:branch_head"] and due(approve) == sh(2025, 10, 9, 10)
        for username in ("s108", "s104"):  # the nominator, and her group (approver ≠ nominator)
            http.refused(username, approve)
        clock.move_to(sh(2025, 10, 9, 9, 30))
        http.take("s101", key, "approve_branch", {"decision": "approve", "comment": "资产达标，同意"})
        done = http.instance("s101", instance_id)
    assert done["status"] == "completed"
    assert {k: done["facts"][k] for k in ("trigger", "change_type", "previous_tier", "vip_tier", "outcome")} == {
        "trigger": "nomination", "change_type": "upgrade", "previous_tier": "gold", "vip_tier": "diamond",
        "outcome": "activated"}
    assert (done["data"]["nominated_by"], done["data"]["approval_level"]) == ("s108", "branch")
    assert http.completed_by("s101", instance_id) == [
        ("s108", "nominate"), ("s104", "verify_welcome"), ("s101", "approve_branch")]
    # Welcome 5 WD from the evaluation (09-26 10:00: 28, 29, 30 September, 9, 10 October).
    assert http.offered_steps == [
        ("nominate", ["HZ01:account_manager"], None, [], sh(2025, 9, 28, 10)),
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 10, 10, 10)),
        ("approve_branch", ["HZ01:branch_head"], None, ["group:HZ01-G2", "user:s108"], sh(2025, 10, 9, 10))]


def test_the_nominated_client_declines_in_the_app_while_the_approval_waits(http):
    with time_machine.travel(sh(2025, 9, 26, 10), tick=False):
        case = _nominate(http)
        key, instance_id = case["business_key"], case["id"]
        http.take("s108", key, "nominate", NOMINATED)
        http.take("s108", key, "verify_welcome", WELCOMED)
        approve = http.open_task("s101", key, "approve_branch")
        http.send("app_gateway", "vip_client_declines", {"decline_reason": "不希望接收营销信息"}, key=key)
        assert body(http.get("s101", f"/tasks/{approve['id']}"))["status"] == "cancelled"
        assert http.sees("s101", key) == []
        done = http.instance("s101", instance_id)
    assert (done["status"], done["facts"]["outcome"], done["facts"]["vip_tier"]) == ("completed", "declined", "gold")
    assert done["data"]["vip_opt_out"] is True and "benefits" not in done["data"]
    assert http.completed_by("s101", instance_id) == [("s108", "nominate"), ("s108", "verify_welcome")]
    assert http.offered_steps == [
        ("nominate", ["HZ01:account_manager"], None, [], sh(2025, 9, 28, 10)),
        ("verify_welcome", ["HZ01-G2"], None, [], sh(2025, 10, 10, 10))]
    assert (approve["candidate_groups"], due(approve)) == (["HZ01:branch_head"], sh(2025, 9, 30, 10))  # 3 WD
