"""Field-level visibility over HTTP on the demo data (brief §6.3): demo people sign in with the
demo password and read a completed callback whose answers name staff conduct; every response
that carries case variables (the case, the list, the history, a message's answer) shows each
reader only the variables the policy in workflows/field_policy/ lets them see, and says what
it left out. An invalid policy stops the app from starting."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest
import time_machine

from api import create_app
from engine.brokerage import demo
from engine.calendars import SHANGHAI
from engine.errors import FieldPolicyInvalid
from tests.access.test_field_policy import CALLBACK_COLUMN, CALLER, CONDUCT_ANSWERS, HQ_COMPLIANCE, OTHER_AGENT, POLICY
from tests.brokerage.test_callback import IDENTITY_OK, QA_OK, REACHED
from tests.support.api import API

MONDAY = datetime(2025, 6, 16, 10, tzinfo=SHANGHAI)


class Readers:
    """Demo people signed in once each."""

    def __init__(self, client) -> None:
        self.client, self._headers = client, {}

    def headers(self, username: str) -> dict[str, str]:
        if username not in self._headers:
            response = self.client.post(f"{API}/auth/login", json={"username": username, "password": demo.PASSWORD})
            assert response.status_code == 200, response.get_data(as_text=True)
            self._headers[username] = {"Authorization": f"Bearer {response.json['token']}"}
        return self._headers[username]

    def get(self, username: str, path: str, **query: Any) -> Any:
        return self.client.get(f"{API}{path}", query_string=query, headers=self.headers(username))

    def take(self, username: str, key: str, element: str, data: dict[str, Any]) -> None:
        items = []
        for mine in ({"candidate": "me"}, {"assignee": "me"}):
            items += self.get(username, "/tasks", business_key=key, **mine).json["items"]
        [task] = [t for t in items if t["element_id"] == element]
        done = self.client.post(f"{API}/tasks/{task['id']}/complete", json={"data": data},
                                headers=self.headers(username))
        assert done.status_code == 200, done.get_data(as_text=True)


@pytest.fixture
def conduct_case(client, demo_app) -> tuple[Readers, dict[str, Any]]:
    """A new-account callback of C06 (HZ01-G2) opened by the account system's message, reached
    by 高晨 (s003), whose answers say staff operated the account: compliance (谢文) handles the
    exception, QA (许婧) reviews it, the case completes. Returns the readers and the message's
    answer (the case as the account system was shown it)."""
    readers = Readers(client)
    with time_machine.travel(MONDAY, tick=False):
        sent = client.post(f"{API}/messages", headers=demo_app, json={
            "name": "account_opened", "payload": {"client_id": "C06", "opened_at": "2025-06-16", "qa_sample_rate": 0}})
        assert sent.status_code == 200, sent.get_data(as_text=True)
        key = sent.json["business_key"]
        readers.take(CALLER, key, "call_attempt", REACHED)
        readers.take(CALLER, key, "verify_identity", IDENTITY_OK)
        readers.take(CALLER, key, "questionnaire", CONDUCT_ANSWERS)
        readers.take(HQ_COMPLIANCE, key, "handle_compliance",
                     {"finding": "客户经理代客下单，已核实", "action": "interview_staff",
                      "closed_at": "2025-06-16T15:00:00+08:00"})
        readers.take("s002", key, "qa_review", QA_OK)
    # Those sign-ins' tokens expired 12 hours after that Monday: the readers sign in again now.
    readers = Readers(client)
    case = readers.get(HQ_COMPLIANCE, f"/instances/{sent.json['id']}").json
    assert case["status"] == "completed" and case["data"]["exception_route"] == "compliance"
    return readers, sent.json


def shown(readers: Readers, username: str, instance_id: int, everything: dict[str, Any]) -> frozenset[str] | None:
    """The field groups ``username`` is shown over HTTP (None: 404), checking that each
    withheld variable is absent from data and facts and every other one is there unchanged."""
    response = readers.get(username, f"/instances/{instance_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    withheld = {name: w["group"] for w in body["withheld"] for name in w["fields"]}
    for name, value in everything["data"].items():
        assert body["data"].get(name, "(absent)") == ("(absent)" if name in withheld else value), (username, name)
    for name, value in everything["facts"].items():
        assert body["facts"].get(name, "(absent)") == ("(absent)" if name in withheld else value), (username, name)
    policy = POLICY.of("callback")
    assert policy is not None
    present = {g.key for g in policy.groups.values() if g.fields & set(everything["data"])}
    return frozenset(present - set(withheld.values()))


@pytest.mark.sqlite
def test_each_role_reads_its_column_of_a_completed_callback_with_staff_conduct_answers_over_http(conduct_case):
    readers, sent = conduct_case
    everything = readers.get(HQ_COMPLIANCE, f"/instances/{sent['id']}").json
    assert everything["withheld"] == []
    assert {u: shown(readers, u, sent["id"], everything) for u in CALLBACK_COLUMN} == CALLBACK_COLUMN


def test_the_caller_reads_their_own_calls_answers_in_full_in_the_case_the_list_and_the_history(conduct_case):
    readers, sent = conduct_case
    case = readers.get(CALLER, f"/instances/{sent['id']}").json
    assert case["withheld"] == []
    assert {k: case["data"][k] for k in CONDUCT_ANSWERS} == CONDUCT_ANSWERS
    [listed] = readers.get(CALLER, "/instances", process="callback").json
    assert listed["withheld"] == [] and listed["facts"]["exception_route"] == "compliance"
    history = readers.get(CALLER, f"/instances/{sent['id']}/history").json
    [answered] = [e for e in history if e["kind"] == "task.completed" and e["data"]["element_id"] == "questionnaire"]
    assert answered["data"]["data"] == CONDUCT_ANSWERS and answered["withheld"] == []


def test_a_group_member_reads_the_satisfaction_score_only_and_is_told_what_was_withheld(conduct_case):
    readers, sent = conduct_case
    case = readers.get("s108", f"/instances/{sent['id']}").json  # 魏强, account manager of HZ01-G2
    assert case["data"]["service_satisfaction"] == 5 and case["facts"]["service_satisfaction"] == 5
    for name in ("staff_operated_account", "discretionary_mandate", "staff_attitude", "exception_route",
                 "conduct_items", "finding", "wants_to_complain"):
        assert name not in case["data"] and name not in case["facts"]
    assert {w["group"]: w["title"] for w in case["withheld"]} == {
        "answers": "回访问卷答案 Questionnaire answers",
        "exceptions": "回访异常与处理 Exceptions found and their handling",
        "staff_conduct": "员工执业行为 Staff-conduct answers"}
    [conduct] = [w for w in case["withheld"] if w["group"] == "staff_conduct"]
    assert conduct["fields"] == ["discretionary_mandate", "opened_by_self", "risk_disclosed", "staff_attitude",
                                 "staff_operated_account"]
    [listed] = readers.get("s108", "/instances", process="callback").json
    assert listed["facts"]["service_satisfaction"] == 5 and "exception_route" not in listed["facts"]
    assert listed["withheld"] == [{"group": "exceptions", "title": "回访异常与处理 Exceptions found and their handling",
                                   "fields": ["exception_route"]}]


def test_compliance_reads_every_answer_of_the_call(conduct_case):
    readers, sent = conduct_case
    for officer in (HQ_COMPLIANCE, "s109"):  # HQ compliance, and HZ01's
        case = readers.get(officer, f"/instances/{sent['id']}").json
        assert case["withheld"] == []
        assert {k: case["data"][k] for k in CONDUCT_ANSWERS} == CONDUCT_ANSWERS
        assert case["data"]["conduct_items"] == ["staff_operated_account"]


def test_a_readers_history_leaves_the_answers_out_of_each_event_and_another_agent_has_none(conduct_case):
    readers, sent = conduct_case
    # Another agent took no part in the call: offered it once, the case is not theirs to read.
    assert readers.get(OTHER_AGENT, f"/instances/{sent['id']}/history").status_code == 404
    # HQ complaints reads every case, but none of the answers of a callback that raised no complaint.
    history = readers.get("s007", f"/instances/{sent['id']}/history").json
    [answered] = [e for e in history if e["kind"] == "task.completed" and e["data"]["element_id"] == "questionnaire"]
    assert answered["data"]["data"] == {"recording_id": "REC-0001"}
    assert {w["group"] for w in answered["withheld"]} == {"summary", "answers", "staff_conduct"}
    [handled] = [e for e in history if e["kind"] == "task.completed" and e["data"]["element_id"] == "handle_compliance"]
    assert handled["data"]["data"] == {"closed_at": "2025-06-16T15:00:00+08:00"}
    assert all("withheld" in e for e in history)
    assert next(e for e in history if e["kind"] == "instance.started")["withheld"] == []


def test_the_answer_to_a_message_is_screened_like_any_case(conduct_case):
    # The account system holds no role the callback policy names: of the new case's facts it
    # is shown the type and group, not the (still empty) exception route.
    _, sent = conduct_case
    assert sent["facts"]["callback_type"] == "new_account" and "exception_route" not in sent["facts"]
    assert sent["withheld"] == [{"group": "exceptions", "title": "回访异常与处理 Exceptions found and their handling",
                                 "fields": ["exception_route"]}]


def test_task_responses_carry_no_case_variables_and_case_responses_document_what_is_withheld(app):
    # What a task shows is its form (a JSON Schema), never the case's variables: nothing there
    # needs screening. Should a task ever carry variables, it must go through the field policy.
    spec = app.test_client().get(f"{API}/openapi.json").json["components"]["schemas"]
    for schema in ("TaskOut", "TaskDetailOut", "TaskPageOut"):
        assert not {"data", "variables", "facts"} & set(spec[schema]["properties"]), schema
    for schema in ("InstanceOut", "InstanceDetailOut", "HistoryOut"):
        assert "withheld" in spec[schema]["properties"], schema


def test_an_invalid_field_policy_stops_the_app_from_starting(settings, rt, db, tmp_path):
    policies = tmp_path / "workflows" / "field_policy"
    policies.mkdir(parents=True)
    (policies / "callback.json").write_text(
        '{"process_key": "callback", "field_groups": {"summary": {"fields": ["service_satisfaction"]}},'
        ' "roles": {"group_member": [{"see": ["summary"]}]}}', encoding="utf-8")
    with pytest.raises(FieldPolicyInvalid) as refused:
        create_app(dataclasses.replace(settings, workflows_dir=tmp_path / "workflows"), runtime=rt, database=db)
    assert refused.value.problems[0].startswith(
        "field_policy/callback.json: roles/group_member: unknown role 'group_member'")
