"""The registry through the HTTP API: clients and service groups scoped by who asks
(brief §6.3), identifiers masked in every response (§6.2), the audited reveal, CSV upload
and classification rule versions.

The demo registry (brief §4: engine/demo_data, loaded by ``demo.load``) provides the
people; tokens are issued directly, so no test pays for a password hash per login.
"""

from __future__ import annotations

import csv
import io
from datetime import date

import pytest
from sqlalchemy import select

from engine.access import identity
from engine.access.identity import Actor
from engine.bpmn import bundle
from engine.brokerage import demo, registry
from engine.models import AuditEvent, Task
from engine.process import deployments, instances, tasks
from tests.support.api import API, assert_problem

CLIENT_ROWS = list(csv.DictReader(io.StringIO(demo.FILES["clients"].read_text(encoding="utf-8"))))
RAW = {row["client_id"]: {f: row[f] for f in ("id_number", "phone", "account_number")} for row in CLIENT_ROWS}
ALL = {f"C{n:02}" for n in range(1, 11)}
HZ01 = {"C01", "C02", "C06", "C10"}
# The masks of brief §4.4 (ID: first 4 + last 4; mobile: first 3 + last 4).
MASKED = {
    "C01": ("3301**********2315", "139****0421"), "C02": ("3301**********0548", "137****7720"),
    "C03": ("3302**********3391", "135****1688"), "C04": ("3302**********116X", "186****3302"),
    "C05": ("3306**********4027", "133****9015"), "C06": ("3301**********6682", "150****2276"),
    "C07": ("3306**********5154", "158****6640"), "C08": ("3302**********7203", "177****5089"),
    "C09": ("3306**********8836", "131****4472"), "C10": ("3301**********9910", "138****1201"),
}
CALLBACK = """<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
                  xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="d" targetNamespace="http://example.com/bpm">
  <bpmn:process id="callback" name="回访 (test)" isExecutable="true">
    <bpmn:startEvent id="start"/>
    <bpmn:sequenceFlow id="f1" sourceRef="start" targetRef="call"/>
    <bpmn:userTask id="call" name="回访" camunda:candidateGroups="call_center_agent" camunda:formKey="call"/>
    <bpmn:sequenceFlow id="f2" sourceRef="call" targetRef="done"/>
    <bpmn:endEvent id="done"/>
  </bpmn:process>
</bpmn:definitions>
"""


@pytest.fixture
def registry_data(demo_registry) -> None:
    """The demo's branches, people, service groups and clients."""


@pytest.fixture
def token(db, rt, registry_data):
    issued: dict[str, dict[str, str]] = {}

    def headers(username: str) -> dict[str, str]:
        if username not in issued:
            with db.transaction() as s:
                issued[username] = {"Authorization": "Bearer " + identity.issue_token(s, username=username,
                                                                                      now=rt.now())}
        return issued[username]

    return headers


def listed(client, headers, **query) -> list[dict]:
    response = client.get(f"{API}/clients", query_string={"limit": 500, **query}, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["total"] == len(response.json["items"])
    return response.json["items"]


def ids(items) -> set[str]:
    return {item["client_id"] for item in items}


def access_events(db, kind):
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent).where(AuditEvent.kind == kind, AuditEvent.stream == "client_access")
                              .order_by(AuditEvent.id)).scalars())


# -- scope -------------------------------------------------------------------------------
@pytest.mark.sqlite
@pytest.mark.parametrize(("username", "expected"), [
    ("s104", HZ01),  # counter staff: own branch
    ("s106", {"C01", "C02", "C10"}),  # account manager in HZ01-G1: own group + HZ01's pool (C10)
    ("s105", {"C01", "C02", "C06", "C10"}),  # counter staff in HZ01-G1: the whole branch anyway
    ("s108", {"C06", "C10"}),  # HZ01-G2 + pool
    ("s205", {"C03", "C04"}),  # NB01-G1; NB01 has no pool clients
    ("s303", {"C05", "C07", "C09"}),  # SX01-G1 + SX01's pool (C09)
    ("s101", HZ01),  # branch head
    ("s202", {"C03", "C04", "C08"}),  # branch ops director
    ("s109", HZ01),  # branch compliance: own branch [A]
    ("s006", ALL),  # HQ compliance
    ("s001", ALL),  # hq_brokerage_mgmt
    ("s007", ALL),  # hq_complaint_dept
    ("s003", set()),  # call centre agent: only clients of their own tasks (none yet)
    ("admin", ALL),  # masked, no assets, no reveal
])
def test_clients_are_scoped_by_who_asks(client, token, username, expected):
    assert ids(listed(client, token(username))) == expected


@pytest.mark.sqlite
def test_a_client_outside_the_scope_does_not_exist_for_the_caller(client, token):
    assert_problem(client.get(f"{API}/clients/C06", headers=token("s106")), 404, "client_not_found")  # other group
    assert_problem(client.get(f"{API}/clients/C01", headers=token("s204")), 404, "client_not_found")  # other branch
    assert_problem(client.get(f"{API}/clients/C99", headers=token("s006")), 404, "client_not_found")
    assert client.get(f"{API}/clients/C10", headers=token("s106")).status_code == 200  # the branch pool


@pytest.mark.sqlite
def test_call_centre_agents_see_their_tasks_clients_and_the_supervisor_the_callback_queue(db, rt, client, token):
    system = Actor.system("crm")
    with db.transaction() as s:
        b = bundle.Bundle(name="test")
        b.add_file("callback.bpmn", CALLBACK.encode())
        b.add_file("forms/call.json", b'{"type": "object"}')
        deployments.deploy(s, rt, b, actor=system)
        instances.start(s, rt, process_key="callback", business_key="CB-1", actor=system, client_id="C08",
                        branch_code="NB01")
        # A call-centre supervisor without the system-wide supervisor role: the queue only.
        registry.create_staff(s, values={"username": "s009", "name": "队列主管",
                                         "job_roles": ["call_center_supervisor"]}, actor=system, now=rt.now())
    assert ids(listed(client, token("s009"))) == {"C08"}
    assert ids(listed(client, token("s003"))) == set()  # a queue task is not theirs until claimed
    with db.transaction() as s:
        task_id = s.execute(select(Task.id).where(Task.business_key == "CB-1")).scalar_one()
        tasks.claim(s, rt, task_id=task_id, actor=identity.actor_for(s, identity.get_user(s, "s003")))
    assert ids(listed(client, token("s003"))) == {"C08"}
    assert ids(listed(client, token("s004"))) == set()
    detail = client.get(f"{API}/clients/C08", headers=token("s003")).json
    assert detail["assets"] is None  # the call centre does not see assets (§6.2)


# -- masking -------------------------------------------------------------------------------
@pytest.mark.sqlite
@pytest.mark.parametrize("username", ["s006", "s104", "s106", "s101", "admin"])
def test_identifiers_are_masked_in_every_client_response(client, token, username):
    headers = token(username)
    items = listed(client, headers)
    bodies = [client.get(f"{API}/clients", query_string={"limit": 500}, headers=headers).get_data(as_text=True)]
    for item in items:
        detail = client.get(f"{API}/clients/{item['client_id']}", headers=headers)
        assert detail.status_code == 200
        bodies.append(detail.get_data(as_text=True))
        assert (detail.json["id_number_masked"], detail.json["phone_masked"]) == MASKED[item["client_id"]]
        assert detail.json["account_number_masked"] == "**** " + RAW[item["client_id"]]["account_number"][-4:]
        assert not {"id_number", "phone", "account_number"} & set(detail.json)
    for body in bodies:
        for raw in RAW.values():
            for value in raw.values():
                assert value not in body
    assert items and all(i["id_number_masked"] == MASKED[i["client_id"]][0] for i in items)


@pytest.mark.sqlite
def test_assets_only_for_the_group_branch_management_hq_and_compliance_and_diamond_reads_are_audited(db, client,
                                                                                                   token):
    def assets(username, client_id="C01"):
        response = client.get(f"{API}/clients/{client_id}", headers=token(username))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json["assets"], response.json["turnover"]

    assert assets("s104") == (None, None)  # counter staff
    assert assets("admin") == (None, None)
    assert assets("s106") == ("6200000.00", "4.2000")  # the client's group
    assert assets("s101") == ("6200000.00", "4.2000")  # branch head
    assert assets("s006") == ("6200000.00", "4.2000")  # compliance
    assert assets("s106", "C10") == (None, None)  # the pool client is not the group's
    readers = [(e.actor, e.data["client_ids"]) for e in access_events(db, "client.assets_read")]
    assert readers == [("s106", ["C01"]), ("s101", ["C01"]), ("s006", ["C01"])]  # C01 is diamond


@pytest.mark.sqlite
def test_classification_and_tier_are_shown_with_the_rule_version(client, token):
    c07 = client.get(f"{API}/clients/C07", headers=token("s303")).json
    assert (c07["classification"], c07["class_rules"], c07["classified_on"]) == ("D-", "company v1", "2025-06-16")
    assert (c07["vip_tier"], c07["downgrade_grace_until"], c07["service_group"]) == ("gold", "2025-08-01", "SX01-G1")


# -- reveal --------------------------------------------------------------------------------
def reveal(client, headers, client_id="C01", field="id_number", reason="identity_verification", **extra):
    return client.post(f"{API}/clients/{client_id}/reveal", json={"field": field, "reason": reason, **extra},
                       headers=headers)


@pytest.mark.sqlite
def test_counter_staff_and_compliance_may_reveal_and_every_reveal_is_audited(db, client, token):
    shown = reveal(client, token("s104"), note="柜台核对身份")
    assert shown.status_code == 200, shown.get_data(as_text=True)
    assert shown.json["value"] == RAW["C01"]["id_number"]
    assert (shown.json["field"], shown.json["remask_after_seconds"]) == ("id_number", 60)
    account = reveal(client, token("s006"), client_id="C05", field="account_number", reason="compliance_review")
    assert account.status_code == 200 and account.json["value"] == RAW["C05"]["account_number"]

    events = access_events(db, "client.revealed")
    assert [(e.actor, e.data) for e in events] == [
        ("s104", {"client_id": "C01", "branch_code": "HZ01", "field": "id_number",
                  "reason": "identity_verification", "note": "柜台核对身份"}),
        ("s006", {"client_id": "C05", "branch_code": "SX01", "field": "account_number",
                  "reason": "compliance_review", "note": None}),
    ]


@pytest.mark.sqlite
def test_reveal_is_refused_to_other_roles_for_mobiles_and_outside_the_scope(db, client, token):
    assert_problem(reveal(client, token("s106")), 403, "reveal_forbidden")  # account manager of the group
    assert_problem(reveal(client, token("s101")), 403, "reveal_forbidden")  # branch head
    assert_problem(reveal(client, token("admin")), 403, "reveal_forbidden")  # admin is not a role for data
    assert_problem(reveal(client, token("s104"), field="phone"), 403, "reveal_forbidden")  # click-to-call only
    assert_problem(reveal(client, token("s006"), field="phone"), 403, "reveal_forbidden")
    assert_problem(reveal(client, token("s204")), 404, "client_not_found")  # counter staff of NB01
    assert_problem(reveal(client, token("s104"), reason="curiosity"), 422, "invalid_request")
    assert_problem(client.post(f"{API}/clients/C01/reveal", json={"field": "id_number"}, headers=token("s104")),
                   422, "invalid_request")  # a reason is required
    assert access_events(db, "client.revealed") == []


# -- service groups ------------------------------------------------------------------------
@pytest.mark.sqlite
def test_service_groups_are_listed_with_members_for_the_callers_branch(client, token):
    groups = client.get(f"{API}/service-groups", headers=token("s104")).json
    assert [g["key"] for g in groups] == ["HZ01-G1", "HZ01-G2"]
    g1 = groups[0]
    assert (g1["name"], g1["branch_code"], g1["client_count"]) == ("服务小组 HZ01-G1", "HZ01", 2)
    assert [(m["username"], m["back_office"], m["lead"]) for m in g1["members"]] == [
        ("s105", True, False), ("s106", False, True), ("s107", False, False)]
    assert [g["key"] for g in client.get(f"{API}/service-groups", headers=token("s006")).json] == [
        "HZ01-G1", "HZ01-G2", "NB01-G1", "NB01-G2", "SX01-G1"]
    assert client.get(f"{API}/service-groups", headers=token("s003")).json == []
    assert client.get(f"{API}/service-groups/SX01-G1", headers=token("s303")).json["client_count"] == 2
    assert_problem(client.get(f"{API}/service-groups/NB01-G1", headers=token("s104")), 404,
                   "service_group_not_found")


@pytest.mark.sqlite
def test_branches_are_listed(client, token):
    assert [b["code"] for b in client.get(f"{API}/branches", headers=token("s003")).json] == ["HZ01", "NB01", "SX01"]


# -- import --------------------------------------------------------------------------------
@pytest.mark.sqlite
def test_an_admin_uploads_csv_and_gets_the_report(db, client, token):
    body = ("client_id,name,branch,assets\n"
            "C11,新客户,HZ01,12000\n"
            "C12,坏客户,HZ01,-5\n")
    response = client.post(f"{API}/registry/import", headers=token("admin"), content_type="multipart/form-data",
                           data={"clients": (io.BytesIO(body.encode()), "new.csv")})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["ok"] is False and response.json["rejected"] == 1
    (report,) = response.json["files"]
    assert (report["kind"], report["source"], report["created"]) == ("clients", "new.csv", 1)
    assert report["rejected"] == [{"line": 3, "column": "assets", "reason": "assets must be at least 0 and below "
                                   "10,000,000,000,000,000"}]
    assert "C11" in ids(listed(client, token("s104")))

    refused = client.post(f"{API}/registry/import", headers=token("s101"), content_type="multipart/form-data",
                          data={"clients": (io.BytesIO(body.encode()), "new.csv")})
    assert_problem(refused, 403, "forbidden")
    assert_problem(client.post(f"{API}/registry/import", headers=token("admin"), content_type="multipart/form-data",
                               data={"people": (io.BytesIO(b"x"), "x.csv")}), 400, "invalid_input")


# -- classification rule versions ---------------------------------------------------------
@pytest.mark.sqlite
def test_rule_versions_are_listed_and_hq_adds_the_next_one(client, token):
    (v1,) = client.get(f"{API}/classification/rule-sets", headers=token("s104")).json
    assert (v1["scope"], v1["version"], v1["turnover_threshold"], v1["effective_to"]) == ("company", 1, "3.0000", None)
    assert v1["vip_thresholds"] == {"silver": "50000", "gold": "300000", "diamond": "1000000"}

    body = {"effective_from": "2026-01-01", "approved_by": "林卫东", "turnover_threshold": "3.4",
            "vip_thresholds": {"silver": "50000", "gold": "300000", "diamond": "1500000"}}
    assert_problem(client.post(f"{API}/classification/rule-sets", json=body, headers=token("s104")), 403, "forbidden")
    created = client.post(f"{API}/classification/rule-sets", json=body, headers=token("s001"))
    assert created.status_code == 201, created.get_data(as_text=True)
    assert (created.json["version"], created.json["turnover_threshold"], created.json["created_by"]) == (
        2, "3.4000", "s001")
    assert created.json["vip_thresholds"]["diamond"] == "1500000"
    assert created.json["bands"] == v1["bands"]
    versions = client.get(f"{API}/classification/rule-sets", headers=token("s104")).json
    assert [(v["version"], v["effective_to"]) for v in versions] == [(1, str(date(2026, 1, 1))), (2, None)]
    again = client.post(f"{API}/classification/rule-sets", json=body, headers=token("s001"))
    assert assert_problem(again, 400, "invalid_input")["field"] == "effective_from"
