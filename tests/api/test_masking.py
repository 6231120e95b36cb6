"""Identifiers in case data are masked in every response that carries it (docs/domain.md#masking):
the answer to a start, the list, the case, its history, the task responses, a completion, a
refused form, a data correction and its refusal, a retry, a cancellation, a message's answer
and a message nobody waited for. One case is walked through all of them with identifiers in
its variables, its free text, its form, its failure and its messages; no response may carry
one in clear, and the ordinary values come out as they went in."""

from __future__ import annotations

from typing import Any

import pytest

from engine.process import deployments
from tests.support.api import API, assert_problem, command, task_of
from tests.support.bpmn import bundle_of, linear, process, user_task

PHONE, PHONE_MASKED = "13761547720", "137****7720"
REPLY_PHONE = "13900000421"
ID_NUMBER, ID_MASKED = "330105195801200548", "3301**********0548"
FUND_ACCOUNT, BANK_CARD = "100210015521", "6222020200001234567"
CLEAR = [PHONE, REPLY_PHONE, "13800000422", "15067382276", "17746215089", ID_NUMBER, FUND_ACCOUNT, BANK_CARD]

DATA: dict[str, Any] = {
    "complainant_phone": PHONE, "backup_phone": ["13800000422", REPLY_PHONE], "client_mobile": "15067382276",
    "refund_account_no": FUND_ACCOUNT, "bank_account_number": BANK_CARD, "idNumber": ID_NUMBER,
    "summary": f"客户电话{PHONE}，身份证{ID_NUMBER}", "dialled_number_masked": "17746215089", "contact": 13800000422,
    "opened_at": "2026-12-07T09:30:00+08:00", "claimed": 50000, "case_ref": "CMP-20261207-0001",
}
SHOWN: dict[str, Any] = {
    "complainant_phone": PHONE_MASKED, "backup_phone": ["138****0422", "139****0421"], "client_mobile": "150****2276",
    "refund_account_no": "**** 5521", "bank_account_number": "**** 4567", "idNumber": ID_MASKED,
    "summary": f"客户电话{PHONE_MASKED}，身份证{ID_MASKED}", "dialled_number_masked": "177****5089",
    "contact": "138****0422",
    # ordinary values, untouched
    "opened_at": "2026-12-07T09:30:00+08:00", "claimed": 50000, "case_ref": "CMP-20261207-0001",
}
FACTS = ["complainant_phone", "backup_phone", "summary", "reply_phone", "claimed", "case_ref"]
FORM = {"type": "object", "required": ["amount", "summary"], "additionalProperties": False,
        "properties": {"amount": {"type": "number"}, "summary": {"type": "string", "maxLength": 500},
                       "contact_tel": {"type": "string", "maxLength": 8}}}
LOOKUP = ('    <bpmn:serviceTask id="lookup" name="查询客户" camunda:type="external" camunda:topic="crm_lookup">'
          "<bpmn:extensionElements><camunda:inputOutput>"
          '<camunda:inputParameter name="phone">${complainant_phone}</camunda:inputParameter>'
          "</camunda:inputOutput></bpmn:extensionElements></bpmn:serviceTask>\n")
XML = process(
    '    <bpmn:extensionElements><camunda:properties>'
    f'<camunda:property name="reportVariables" value="{",".join(FACTS)}"/>'
    "</camunda:properties></bpmn:extensionElements>\n"
    + linear(("register", user_task("register", name="登记", form="register")), ("lookup", LOOKUP),
             ("wait", '    <bpmn:receiveTask id="wait" name="等待客户回复" messageRef="msg_reply"/>\n')),
    key="masked", name="脱敏测试 Masking", extra='  <bpmn:message id="msg_reply" name="client_reply"/>\n')


class Crm:
    """An outside system that fails once, quoting the phone number it could not find."""

    def __init__(self) -> None:
        self.down = True

    def __call__(self, data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        if self.down:
            raise LookupError(f"CRM 无此客户电话 {params['phone']}")
        return {"crm_ref": "CRM-0001"}


@pytest.fixture
def crm(db, rt, people) -> Crm:
    crm = Crm()
    rt.services.register("crm_lookup")(crm)
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(XML, {"register": FORM}), actor=people.owner)
    return crm


def masked(response: Any, status: int = 200) -> Any:
    """The response, checked to carry no identifier in clear."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    leaked = [clear for clear in CLEAR if clear in text]
    assert leaked == [], f"{response.request.method} {response.request.path}: {leaked} in clear"
    return response.get_json()


def test_every_response_that_carries_case_data_masks_its_identifiers(client, auth, crm):
    li, boss = auth("li"), auth("boss")

    started = masked(client.post(f"{API}/processes/masked/instances", headers=li,
                                 json={"business_key": "MASK-1", "data": DATA}), 201)
    assert started["facts"] == {k: SHOWN[k] for k in FACTS if k in SHOWN}
    instance_id = started["id"]
    [listed] = masked(client.get(f"{API}/instances?business_key=MASK-1", headers=li))
    assert listed["facts"] == started["facts"] and listed["business_key"] == "MASK-1"
    detail = masked(client.get(f"{API}/instances/{instance_id}", headers=li))
    assert {k: detail["data"][k] for k in SHOWN} == SHOWN

    task = task_of(client, li, "MASK-1")
    masked(client.get(f"{API}/tasks?business_key=MASK-1", headers=li))
    masked(client.get(f"{API}/tasks/{task['id']}", headers=li))
    masked(command(client, li, task["id"], "claim"))

    refused = masked(command(client, li, task["id"], "complete",
                             {"data": {"amount": PHONE, "summary": 1, "contact_tel": REPLY_PHONE, PHONE: 1}}), 422)
    assert refused["code"] == "form_invalid"
    messages = {e["field"]: e["message"] for e in refused["errors"]}
    assert messages["amount"] == f"'{PHONE_MASKED}' is not of type 'number'"
    assert messages["contact_tel"] == "'139****0421' is too long"

    done = masked(command(client, li, task["id"], "complete",
                          {"data": {"amount": 90000.5, "summary": f"已回拨{REPLY_PHONE}", "contact_tel": "8765-43"}}))
    assert done["next_tasks"] == []
    failed = masked(client.get(f"{API}/instances/{instance_id}", headers=boss))
    assert failed["status"] == "failed" and f"CRM 无此客户电话 {PHONE_MASKED}" in failed["error"]
    assert failed["data"]["amount"] == 90000.5 and failed["data"]["contact_tel"] == "*******"
    [failed_listed] = masked(client.get(f"{API}/instances?status=failed", headers=boss))
    assert PHONE_MASKED in failed_listed["error"]

    bad_correction = masked(client.patch(f"{API}/instances/{instance_id}/data", headers=boss,
                                         json={"set": {PHONE: 1}, "reason": "改号"}), 422)
    assert bad_correction["code"] == "data_invalid"
    corrected = masked(client.patch(f"{API}/instances/{instance_id}/data", headers=boss,
                                    json={"set": {"spare_mobile": REPLY_PHONE},
                                          "reason": f"客户改用{REPLY_PHONE}"}))
    assert corrected["data"]["spare_mobile"] == "139****0421"
    crm.down = False
    assert masked(client.post(f"{API}/instances/{instance_id}/retry", headers=boss))["status"] == "running"

    unknown = masked(client.post(f"{API}/messages", headers=li,
                                 json={"name": "client_reply", "correlation_key": PHONE, "payload": {}}), 404)
    assert unknown["code"] == "message_not_correlated" and PHONE_MASKED in unknown["detail"]
    odd = masked(client.post(f"{API}/messages", headers=li, json={"name": "client_reply", PHONE: 1}), 422)
    assert [e["field"] for e in odd["errors"]] == [PHONE_MASKED]
    answered = masked(client.post(f"{API}/messages", headers=li, json={
        "name": "client_reply", "correlation_key": "MASK-1",
        "payload": {"reply_phone": REPLY_PHONE, "note": f"客户回电{PHONE}"}}))
    assert answered["status"] == "completed" and answered["facts"]["reply_phone"] == "139****0421"

    for reader in (li, boss):
        history = masked(client.get(f"{API}/instances/{instance_id}/history", headers=reader))
        by_kind = {e["kind"]: e["data"] for e in history}
        assert by_kind["instance.started"]["data"]["complainant_phone"] == PHONE_MASKED
        assert by_kind["instance.data_corrected"]["reason"] == "客户改用139****0421"
        assert by_kind["message.received"]["payload"] == {"reply_phone": "139****0421",
                                                          "note": f"客户回电{PHONE_MASKED}"}
        assert PHONE_MASKED in by_kind["instance.failed"]["error"]

    second = masked(client.post(f"{API}/processes/masked/instances", headers=li,
                                json={"business_key": "MASK-2", "data": DATA}), 201)
    cancelled = masked(client.post(f"{API}/instances/{second['id']}/cancel", headers=boss,
                                   json={"reason": f"客户电话{PHONE}要求撤销"}))
    assert cancelled["status"] == "cancelled"
    history = masked(client.get(f"{API}/instances/{second['id']}/history", headers=boss))
    assert history[-1]["kind"] == "instance.cancelled"
    assert history[-1]["data"]["reason"] == f"客户电话{PHONE_MASKED}要求撤销"


def test_a_refusal_quoting_a_case_number_quotes_it_whole(client, auth, crm):
    # Case numbers, ids and times are not identifiers: masking leaves them as they are.
    li = auth("li")
    ordinary = {"opened_at": "2026-12-07T09:30:00.123456+08:00", "claimed": 50000}
    first = client.post(f"{API}/processes/masked/instances", headers=li,
                        json={"business_key": "CMP-20261207-0001", "data": ordinary})
    assert first.status_code == 201
    again = client.post(f"{API}/processes/masked/instances", headers=li,
                        json={"business_key": "CMP-20261207-0001", "data": ordinary})
    problem = assert_problem(again, 409, "duplicate_business_key")
    assert "CMP-20261207-0001" in problem["detail"] and isinstance(problem["instance_id"], int)
