"""Instances through the API: start, list, read, history, cancel, correct data, retry."""

import pytest
from sqlalchemy import func, select

from engine.access import identity
from engine.access.roles import INTEGRATION
from engine.models import MessageSubscription, ProcessInstance
from engine.process import deployments, passage
from tests.support.api import API, assert_problem, inbox, start, task_of
from tests.support.bpmn import bundle_of, flow, process


@pytest.mark.sqlite
def test_start_creates_a_running_instance_and_its_first_task(client, auth, db, rt, review):
    # The intake system starts cases for any client, a registered one or not (a clerk only for
    # the registry's clients they may see).
    with db.transaction() as s:
        identity.ensure_group(s, key=INTEGRATION)
        identity.create_user(s, username="intake", display_name="受理系统", now=rt.now(), groups=[INTEGRATION])
        intake = {"Authorization": f"Bearer {identity.issue_token(s, username='intake', now=rt.now())}"}
    body = {"business_key": "KH-2026-0001", "client_id": "C123", "branch_code": "HZ01",
            "data": {"priority": 80, "due_at": "2030-01-01T09:00:00+08:00", "客户": "张三"}}
    assert_problem(client.post(f"{API}/processes/review/instances", json=body, headers=auth("li")), 404,
                   "client_not_found")
    response = client.post(f"{API}/processes/review/instances", json=body, headers=intake)
    assert response.status_code == 201, response.get_data(as_text=True)
    instance = response.json
    assert instance["status"] == "running" and instance["process_key"] == "review"
    assert instance["business_key"] == "KH-2026-0001"
    assert (instance["client_id"], instance["branch_code"]) == ("C123", "HZ01")
    assert instance["started_by"] == "intake" and instance["ended_at"] is None and instance["error"] is None
    task = task_of(client, auth("li"), "KH-2026-0001")
    assert task["instance_id"] == instance["id"] and task["element_id"] == "register"
    assert task["priority"] == 80 and task["due_at"] == "2030-01-01T01:00:00+00:00"
    assert (task["client_id"], task["branch_code"]) == ("C123", "HZ01")


def test_start_of_an_unknown_process_is_404_and_creates_nothing(client, auth, db, review):
    response = client.post(f"{API}/processes/nope/instances", json={"business_key": "B-1"}, headers=auth("li"))
    assert_problem(response, 404, "process_not_found")
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one() == 0


@pytest.mark.sqlite
def test_a_duplicate_business_key_is_409_naming_the_existing_instance(client, auth, db, review):
    first = start(client, auth("li"), "DUP-1")
    response = client.post(f"{API}/processes/review/instances",
                           json={"business_key": "DUP-1", "data": {"priority": None, "due_at": None}},
                           headers=auth("zhao"))
    problem = assert_problem(response, 409, "duplicate_business_key")
    assert problem["instance_id"] == first["id"]
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one() == 1


def test_start_body_is_validated(client, auth, review):
    for body, field in (({"business_key": ""}, "business_key"), ({"business_key": "x" * 129}, "business_key"),
                        ({"business_key": "B", "data": [1]}, "data")):
        problem = assert_problem(client.post(f"{API}/processes/review/instances", json=body, headers=auth("li")),
                                 422, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == [field]
    # No key at all is allowed by the schema (a numbered process makes one), but "review"
    # declares no businessKeyFormat: the engine says so.
    problem = assert_problem(client.post(f"{API}/processes/review/instances", json={}, headers=auth("li")),
                             400, "invalid_input")
    assert "businessKeyFormat" in problem["detail"]


@pytest.mark.sqlite
def test_list_instances_with_filters_newest_first(client, auth, review):
    ids = [start(client, auth("li"), f"L-{n}")["id"] for n in range(4)]
    boss = auth("boss")
    client.post(f"{API}/instances/{ids[1]}/cancel", json={"reason": "测试"}, headers=boss)

    def listing(query=""):
        response = client.get(f"{API}/instances?{query}", headers=auth("li"))
        assert response.status_code == 200
        return [i["id"] for i in response.json]

    assert listing() == ids[::-1]
    assert listing("status=running") == [ids[3], ids[2], ids[0]]
    assert listing("status=cancelled") == [ids[1]]
    assert listing("status=completed") == []
    assert listing("business_key=L-2") == [ids[2]]
    assert listing("process=review&business_key=L-0") == [ids[0]]
    assert listing("process=other") == []
    assert listing("limit=2") == [ids[3], ids[2]]
    assert listing("limit=2&offset=2") == [ids[1], ids[0]]
    assert listing("offset=4") == []


@pytest.mark.sqlite
def test_get_instance_returns_its_variables(client, auth, review):
    instance = start(client, auth("li"), "G-1", 客户="王五", priority=10)
    response = client.get(f"{API}/instances/{instance['id']}", headers=auth("li"))
    assert response.status_code == 200
    body = response.json
    assert {k: body[k] for k in ("id", "status", "business_key", "started_at")} == {
        k: instance[k] for k in ("id", "status", "business_key", "started_at")}
    # the start data, plus what the echo service task added
    assert body["data"] == {"priority": 10, "due_at": None, "客户": "王五", "source": "intake"}
    task = task_of(client, auth("li"), "G-1")
    done = client.post(f"{API}/tasks/{task['id']}/complete", json={"data": {"amount": 5, "summary": "小额"}},
                       headers=auth("li"))
    assert done.status_code == 200, done.get_data(as_text=True)
    data = client.get(f"{API}/instances/{instance['id']}", headers=auth("li")).json["data"]
    assert data["amount"] == 5 and data["summary"] == "小额"


@pytest.mark.sqlite
def test_history_is_the_audit_trail_in_order(client, auth, review):
    instance = start(client, auth("li"), "H-1")
    li, zhao, boss = auth("li"), auth("zhao"), auth("boss")
    task = task_of(client, li, "H-1")
    assert client.post(f"{API}/tasks/{task['id']}/claim", headers=li).status_code == 200
    assert client.post(f"{API}/tasks/{task['id']}/unclaim", headers=li).status_code == 200
    assert client.post(f"{API}/tasks/{task['id']}/assign", json={"username": "zhao"}, headers=boss).status_code == 200
    assert client.post(f"{API}/tasks/{task['id']}/complete", json={"data": {"amount": 1, "summary": "ok"}},
                       headers=zhao).status_code == 200
    small = task_of(client, li, "H-1")
    assert small["element_id"] == "approve_small"
    assert client.post(f"{API}/tasks/{small['id']}/complete", json={"data": {"approved": True}},
                       headers=li).status_code == 200
    delivered = client.post(f"{API}/messages", json={"name": "client_ack", "correlation_key": "H-1"}, headers=li)
    assert delivered.status_code == 200 and delivered.json["status"] == "completed"

    response = client.get(f"{API}/instances/{instance['id']}/history", headers=li)
    assert response.status_code == 200
    trail = response.json
    assert [e["seq"] for e in trail] == list(range(1, len(trail) + 1))
    # The path the engine took is there too, by element (tests/brokerage/test_history.py).
    path = [e["kind"] for e in trail if e["kind"] in passage.KINDS]
    assert (path[0], path[-1]) == ("event.start", "event.end") and "gateway.passed" in path
    events = [e for e in trail if e["kind"] not in passage.KINDS]
    assert [e["kind"] for e in events] == [
        "instance.started", "task.claimed", "task.unclaimed", "task.assigned", "task.completed",
        "task.claimed", "task.completed", "message.received", "instance.completed"]
    assert [e["actor"] for e in events] == ["li", "li", "li", "boss", "zhao", "li", "li", "li", "li"]
    assert events[3]["data"]["assignee"] == "zhao"
    assert events[4]["data"]["data"] == {"amount": 1, "summary": "ok"}
    assert events[4]["task_uuid"] and events[4]["task_uuid"] == events[1]["task_uuid"]
    assert events[7]["data"]["message"] == "client_ack"
    times = [e["occurred_at"] for e in events]
    assert times == sorted(times)


@pytest.mark.sqlite
def test_cancel_is_for_supervisors_and_cancels_the_open_tasks(client, auth, db, review):
    instance = start(client, auth("li"), "C-1")
    other = start(client, auth("li"), "C-2")
    task = task_of(client, auth("li"), "C-1")
    client.post(f"{API}/tasks/{task['id']}/claim", headers=auth("li"))

    for username in ("li", "owner", "wang"):
        assert_problem(client.post(f"{API}/instances/{instance['id']}/cancel", json={}, headers=auth(username)),
                       403, "forbidden")
    assert client.get(f"{API}/instances/{instance['id']}", headers=auth("li")).json["status"] == "running"

    response = client.post(f"{API}/instances/{instance['id']}/cancel", json={"reason": "客户撤回申请"},
                           headers=auth("boss"))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["status"] == "cancelled"
    assert response.json["ended_by"] == "boss" and response.json["ended_at"]

    # the task is cancelled and gone from every inbox; the other instance is untouched
    after = client.get(f"{API}/tasks/{task['id']}", headers=auth("boss")).json
    assert after["status"] == "cancelled"
    assert inbox(client, auth("li"), "assignee=me")["total"] == 0
    remaining = inbox(client, auth("li"))["items"]
    assert [t["instance_id"] for t in remaining] == [other["id"]]
    assert inbox(client, auth("li"), "status=cancelled")["items"][0]["id"] == task["id"]
    assert_problem(client.post(f"{API}/tasks/{task['id']}/complete", json={"data": {"amount": 1, "summary": "ok"}},
                               headers=auth("li")), 409, "instance_not_running")

    history = client.get(f"{API}/instances/{instance['id']}/history", headers=auth("li")).json
    assert history[-1]["kind"] == "instance.cancelled" and history[-1]["actor"] == "boss"
    assert history[-1]["data"] == {"reason": "客户撤回申请"}
    assert_problem(client.post(f"{API}/instances/{instance['id']}/cancel", json={}, headers=auth("boss")),
                   409, "instance_not_running")


@pytest.mark.sqlite
def test_cancel_removes_message_subscriptions(client, auth, db, review):
    instance = start(client, auth("li"), "CM-1")
    task = task_of(client, auth("li"), "CM-1")
    client.post(f"{API}/tasks/{task['id']}/complete", json={"data": {"amount": 1, "summary": "ok"}},
                headers=auth("li"))
    small = task_of(client, auth("li"), "CM-1")
    client.post(f"{API}/tasks/{small['id']}/complete", json={"data": {"approved": False}}, headers=auth("li"))
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(MessageSubscription)).scalar_one() == 1
    assert client.post(f"{API}/instances/{instance['id']}/cancel", json={}, headers=auth("boss")).status_code == 200
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(MessageSubscription)).scalar_one() == 0
    assert_problem(client.post(f"{API}/messages", json={"name": "client_ack", "correlation_key": "CM-1"},
                               headers=auth("li")), 404, "message_not_correlated")


def test_retry_of_an_instance_that_has_not_failed_is_409(client, auth, review):
    instance = start(client, auth("li"), "RT-1")
    assert_problem(client.post(f"{API}/instances/{instance['id']}/retry", headers=auth("li")), 403, "forbidden")
    assert_problem(client.post(f"{API}/instances/{instance['id']}/retry", headers=auth("boss")),
                   409, "instance_not_running")
    assert_problem(client.post(f"{API}/instances/999999/retry", headers=auth("boss")), 404, "instance_not_found")
    assert client.get(f"{API}/instances/{instance['id']}", headers=auth("li")).json["status"] == "running"


@pytest.mark.sqlite
def test_the_outsider_cannot_read_other_branches_instances(client, auth, review):
    instance = start(client, auth("li"), "PRIV-1", 身份证号="330102199001011234")
    chen = auth("chen")
    assert [i["id"] for i in client.get(f"{API}/instances", headers=chen).json] == []
    assert_problem(client.get(f"{API}/instances/{instance['id']}", headers=chen), 404, "instance_not_found")
    assert_problem(client.get(f"{API}/instances/{instance['id']}/history", headers=chen), 404, "instance_not_found")


@pytest.mark.sqlite
def test_a_candidate_of_one_of_its_tasks_and_a_supervisor_can_read_an_instance(client, auth, review):
    instance = start(client, auth("li"), "PRIV-2")
    for reader in ("zhao", "boss"):  # zhao: a clerk offered the register task; boss: supervisor
        response = client.get(f"{API}/instances/{instance['id']}", headers=auth(reader))
        assert response.status_code == 200, (reader, response.get_data(as_text=True))
    assert [i["id"] for i in client.get(f"{API}/instances", headers=auth("zhao")).json] == [instance["id"]]


# -- correcting a failed instance's data -------------------------------------------------------
GATEWAY = process(
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "gw")
    + '    <bpmn:exclusiveGateway id="gw" default="f_gw_small"/>\n'
    + flow("gw", "big", condition="${amount &gt; 50000}") + flow("gw", "small")
    + '    <bpmn:endEvent id="big"/>\n    <bpmn:endEvent id="small"/>\n', key="gateway_flow")


@pytest.fixture
def gateway(db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(GATEWAY), actor=people.owner)
    return "gateway_flow"


def patch_data(client, headers, instance_id, body):
    return client.patch(f"{API}/instances/{instance_id}/data", json=body, headers=headers)


@pytest.mark.sqlite
def test_a_supervisor_corrects_a_failed_instances_data_and_the_retry_runs_with_it(client, auth, gateway):
    failed = client.post(f"{API}/processes/gateway_flow/instances", json={"business_key": "G-1"},
                         headers=auth("li")).json
    assert failed["status"] == "failed" and "amount" in failed["error"]  # the gateway has no amount
    body = {"set": {"amount": 80000}, "reason": "漏填金额"}

    assert_problem(patch_data(client, auth("li"), failed["id"], body), 403, "forbidden")
    response = patch_data(client, auth("boss"), failed["id"], body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert (response.json["status"], response.json["data"]["amount"]) == ("failed", 80000)
    assert client.get(f"{API}/instances/{failed['id']}", headers=auth("boss")).json["data"]["amount"] == 80000
    history = client.get(f"{API}/instances/{failed['id']}/history", headers=auth("boss")).json
    assert (history[-1]["kind"], history[-1]["actor"]) == ("instance.data_corrected", "boss")
    assert history[-1]["data"] == {"keys": ["amount"], "old": {}, "new": {"amount": 80000}, "reason": "漏填金额",
                                   "error": failed["error"]}

    retried = client.post(f"{API}/instances/{failed['id']}/retry", headers=auth("boss"))
    assert retried.status_code == 200, retried.get_data(as_text=True)
    assert retried.json["status"] == "completed"
    assert_problem(patch_data(client, auth("boss"), failed["id"], body), 409, "instance_not_running")


def test_correcting_data_is_refused_for_running_unknown_and_unseen_instances(client, auth, review):
    running = start(client, auth("li"), "CD-1")
    body = {"set": {"amount": 1}, "reason": "x"}
    assert_problem(patch_data(client, auth("boss"), running["id"], body), 409, "instance_not_running")
    assert_problem(patch_data(client, auth("boss"), 999999, body), 404, "instance_not_found")
    assert_problem(patch_data(client, auth("chen"), running["id"], body), 403, "forbidden")
    assert client.get(f"{API}/instances/{running['id']}", headers=auth("li")).json["data"].get("amount") is None


@pytest.mark.sqlite
def test_a_bad_correction_is_422_naming_each_field_and_changes_nothing(client, auth, gateway):
    failed = client.post(f"{API}/processes/gateway_flow/instances", json={"business_key": "G-2"},
                         headers=auth("li")).json
    boss = auth("boss")
    problem = assert_problem(patch_data(client, boss, failed["id"], {"set": [1], "remove": "amount"}),
                             422, "invalid_request")
    assert {e["field"] for e in problem["errors"]} == {"set", "remove", "reason"}
    problem = assert_problem(patch_data(client, boss, failed["id"], {
        "set": {"origin_business_key": "CMP-1", "amount": 1}, "remove": ["client_id", "nope"], "reason": "r"}),
        422, "data_invalid")
    assert [e["field"] for e in problem["errors"]] == ["set/origin_business_key", "remove/0", "remove/1"]
    assert all(set(e) == {"field", "message"} for e in problem["errors"])
    history = client.get(f"{API}/instances/{failed['id']}/history", headers=boss).json
    assert [e["kind"] for e in history if e["kind"] not in passage.KINDS] == ["instance.started", "instance.failed"]
    assert "amount" not in client.get(f"{API}/instances/{failed['id']}", headers=boss).json["data"]


def test_the_correction_is_documented_in_openapi(client):
    spec = client.get(f"{API}/openapi.json").json
    operation = spec["paths"]["/api/v1/instances/{instance_id}/data"]["patch"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(spec["components"]["schemas"][body]["properties"]) == {"set", "remove", "reason"}
    assert spec["components"]["schemas"][body]["required"] == ["reason"]
    assert {"200", "403", "404", "409", "422"} <= set(operation["responses"])


MESSAGE_ONLY = process(
    '    <bpmn:startEvent id="by_mail" name="来信">\n'
    '      <bpmn:messageEventDefinition id="med_mail" messageRef="msg_mail"/>\n    </bpmn:startEvent>\n'
    '    <bpmn:userTask id="read" name="阅信" camunda:candidateGroups="clerks" camunda:formKey="any"/>\n'
    '    <bpmn:endEvent id="end"/>\n' + flow("by_mail", "read") + flow("read", "end"),
    key="mail_only", extra='  <bpmn:message id="msg_mail" name="mail_arrived"/>\n')


@pytest.mark.sqlite
def test_a_start_the_diagram_cannot_take_is_refused_naming_its_start_events(client, auth, db, rt, people):
    """A process that starts only by message is not numbered and saved by a plain start (no step
    would ever appear): 409 naming the message start event and the message; the deploy records
    the routes, and the process and version answers show them."""
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(MESSAGE_ONLY), actor=people.owner)
    response = client.post(f"{API}/processes/mail_only/instances", json={"business_key": "M-1"},
                           headers=auth("li"))
    problem = assert_problem(response, 409, "start_not_offered")
    assert "mail_arrived" in problem["detail"] and "by_mail" in problem["detail"]
    route = {"kind": "message", "event_id": "by_mail", "name": "来信", "message": "mail_arrived"}
    assert problem["start_routes"] == [route]
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one() == 0
    versions = client.get(f"{API}/processes/mail_only/versions", headers=auth("li")).json
    assert versions[0]["start_routes"] == [route]
    listed = {v["process_key"]: v for v in client.get(f"{API}/processes", headers=auth("li")).json}
    assert listed["mail_only"]["start_routes"] == [route]


def test_the_review_process_offers_its_none_start(client, auth, review):
    listed = {v["process_key"]: v for v in client.get(f"{API}/processes", headers=auth("li")).json}
    assert [r["kind"] for r in listed["review"]["start_routes"]] == ["none"]
