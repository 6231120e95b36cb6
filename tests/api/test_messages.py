"""Messages from outside systems through ``POST /api/v1/messages``."""

import pytest
from sqlalchemy import func, select

from engine.models import AuditEvent, MessageSubscription, ProcessInstance, Task
from tests.conftest import FIXTURES, deploy_fixture
from tests.support.api import API, assert_problem


def start_review(client, headers, business_key):
    body = {"business_key": business_key, "data": {"priority": None, "due_at": None}}
    response = client.post(f"{API}/processes/review/instances", json=body, headers=headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json


def drive_to_the_ack(client, headers, business_key):
    """Start a review and complete its two tasks: it then waits for the client_ack message."""
    instance = start_review(client, headers, business_key)
    for data in ({"amount": 100, "summary": "小额业务"}, {"approved": True}):
        (task,) = client.get(f"{API}/tasks?business_key={business_key}", headers=headers).json["items"]
        response = client.post(f"{API}/tasks/{task['id']}/complete", json={"data": data}, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
    return instance


def snapshot(db):
    """Everything a message could change."""
    with db.transaction() as s:
        return (
            s.execute(select(ProcessInstance.id, ProcessInstance.status, ProcessInstance.audit_seq,
                             ProcessInstance.state).order_by(ProcessInstance.id)).all(),
            s.execute(select(MessageSubscription.instance_id, MessageSubscription.message_name,
                             MessageSubscription.correlation_key)).all(),
            s.execute(select(Task.id, Task.status)).all(),
            s.execute(select(func.count()).select_from(AuditEvent)).scalar_one(),
        )


def send(client, headers, name, key, payload=None):
    body = {"name": name, "correlation_key": key, **({"payload": payload} if payload is not None else {})}
    return client.post(f"{API}/messages", json=body, headers=headers)


@pytest.mark.sqlite
def test_a_message_is_delivered_to_the_waiting_instance_which_completes(client, auth, db, review):
    instance = drive_to_the_ack(client, auth("li"), "MSG-1")
    with db.transaction() as s:
        subscriptions = s.execute(select(MessageSubscription.message_name, MessageSubscription.correlation_key,
                                         MessageSubscription.element_id)).all()
    assert subscriptions == [("client_ack", "MSG-1", "wait_ack")]

    # zhao, li's teammate, was offered both steps but took neither: the case is not his to tell.
    before = snapshot(db)
    assert_problem(send(client, auth("zhao"), "client_ack", "MSG-1", {"ack_channel": "短信"}), 404,
                   "message_not_correlated")
    assert snapshot(db) == before
    response = send(client, auth("li"), "client_ack", "MSG-1", {"ack_channel": "短信"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.json["id"] == instance["id"]
    assert response.json["status"] == "completed" and response.json["ended_at"]

    detail = client.get(f"{API}/instances/{instance['id']}", headers=auth("li")).json
    assert detail["status"] == "completed"
    assert detail["data"]["ack_channel"] == "短信"  # the payload became process variables
    history = client.get(f"{API}/instances/{instance['id']}/history", headers=auth("li")).json
    received = [e for e in history if e["kind"] == "message.received"]
    assert len(received) == 1 and received[0]["actor"] == "li"
    assert received[0]["data"]["correlation_key"] == "MSG-1"
    assert history[-1]["kind"] == "instance.completed"
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(MessageSubscription)).scalar_one() == 0

    # delivered once: the same message again finds nobody
    assert_problem(send(client, auth("li"), "client_ack", "MSG-1"), 404, "message_not_correlated")


@pytest.mark.sqlite
def test_a_message_nobody_waits_for_is_404_and_changes_nothing(client, auth, db, review):
    drive_to_the_ack(client, auth("li"), "MSG-2")
    start_review(client, auth("li"), "MSG-3")  # running, but not yet waiting for the message
    before = snapshot(db)
    for name, key in [("client_ack", "MSG-404"),  # right message, wrong key
                      ("client_ack", "MSG-3"),  # an instance that is not waiting yet
                      ("no_such_message", "MSG-2"),  # right key, wrong message
                      ("payment_received", "MSG-2")]:
        problem = assert_problem(send(client, auth("li"), name, key, {"x": 1}), 404, "message_not_correlated")
        assert name in problem["detail"] and key in problem["detail"]
    assert snapshot(db) == before
    # the waiting instance is still reachable afterwards
    assert send(client, auth("li"), "client_ack", "MSG-2").json["status"] == "completed"


@pytest.mark.sqlite
def test_a_message_that_starts_a_process_creates_an_instance(client, auth, db, people, rt):
    deploy_fixture(db, rt, "api_notify", people.owner)
    assert (FIXTURES / "api_notify" / "notify.bpmn").exists()
    response = send(client, auth("li"), "complaint_filed", "TS-2026-07", {"渠道": "12386"})
    assert response.status_code == 200, response.get_data(as_text=True)
    started = response.json
    assert (started["process_key"], started["business_key"], started["status"]) == (
        "complaint", "TS-2026-07", "running")
    kinds = [e["kind"] for e in client.get(f"{API}/instances/{started['id']}/history", headers=auth("li")).json]
    assert kinds == ["instance.started", "message.received", "event.start"]  # started by its message start event
    # the same complaint twice is a duplicate, not a second instance
    assert_problem(send(client, auth("li"), "complaint_filed", "TS-2026-07"), 409, "duplicate_business_key")
    closed = send(client, auth("li"), "complaint_closed", "TS-2026-07")
    assert (closed.json["id"], closed.json["status"]) == (started["id"], "completed")


def test_message_body_is_validated(client, auth):
    # A name alone is a valid body: a message that starts a numbered case needs no key.
    for body, field in (({}, "name"), ({"correlation_key": "K"}, "name"),
                        ({"name": "", "correlation_key": "K"}, "name"),
                        ({"name": "m", "correlation_key": ""}, "correlation_key"),
                        ({"name": "m", "correlation_key": "K", "payload": [1, 2]}, "payload")):
        problem = assert_problem(client.post(f"{API}/messages", json=body, headers=auth("li")),
                                 422, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == [field], body
