"""The processes run end to end from the API on the demo data: demo people sign in with the
demo password and work their inboxes over HTTP, an outside system sends its message."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
import time_machine

from engine.brokerage import demo
from engine.calendars import SHANGHAI
from tests.brokerage.test_callback import ANSWERS_OK, IDENTITY_OK, QA_OK, REACHED
from tests.support.api import API

pytestmark = pytest.mark.sqlite


def _login(client, username: str) -> dict[str, str]:
    response = client.post(f"{API}/auth/login", json={"username": username, "password": demo.PASSWORD})
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"Authorization": f"Bearer {response.json['token']}"}


def _take(client, headers: dict[str, str], key: str, element: str, data: dict[str, Any]) -> dict[str, Any]:
    """Find the task in the person's inbox (offered to their groups, or given to them, as the
    callback's identity check and questionnaire are to the agent on the call) and complete it."""
    items = []
    for mine in ({"candidate": "me"}, {"assignee": "me"}):
        page = client.get(f"{API}/tasks", query_string={**mine, "business_key": key}, headers=headers)
        assert page.status_code == 200, page.get_data(as_text=True)
        items += page.json["items"]
    [task] = [t for t in items if t["element_id"] == element]
    done = client.post(f"{API}/tasks/{task['id']}/complete", json={"data": data}, headers=headers)
    assert done.status_code == 200, done.get_data(as_text=True)
    return task


def test_a_new_account_callback_runs_from_the_account_systems_message_to_qa_over_http(client, demo_app):
    with time_machine.travel(datetime(2025, 6, 3, 10, tzinfo=SHANGHAI), tick=False):
        sent = client.post(f"{API}/messages", headers=demo_app,
                           json={"name": "account_opened", "payload": {"client_id": "C08", "opened_at": "2025-06-03",
                                                                   "qa_sample_rate": 1.0}})
        assert sent.status_code == 200, sent.get_data(as_text=True)
        key, instance_id = sent.json["business_key"], sent.json["id"]
        assert key == "CB-20250603-0001"
        agent, supervisor, manager = _login(client, "s003"), _login(client, "s002"), _login(client, "s206")
        # The client's own account manager (NB01-G2) is never offered the call.
        page = client.get(f"{API}/tasks", query_string={"candidate": "me", "business_key": key}, headers=manager)
        assert page.json["items"] == []
        attempt = _take(client, agent, key, "call_attempt", REACHED)
        assert attempt["due_at"].startswith("2025-07-03")  # 1 calendar month from the opening
        _take(client, agent, key, "verify_identity", IDENTITY_OK)
        _take(client, agent, key, "questionnaire", {**ANSWERS_OK})
        _take(client, supervisor, key, "qa_review", QA_OK)  # sampled at 100 % for this case
        case = client.get(f"{API}/instances/{instance_id}", headers=supervisor)
    assert case.status_code == 200 and case.json["status"] == "completed"
    assert case.json["facts"]["callback_type"] == "new_account"
    supervisor = _login(client, "s002")  # the sign-in of 3 June 2025 expired 12 hours later
    history = client.get(f"{API}/instances/{instance_id}/history", headers=supervisor).json
    completed_by = [(e["actor"], e["data"]["element_id"]) for e in history if e["kind"] == "task.completed"]
    assert completed_by == [("s003", "call_attempt"), ("s003", "verify_identity"), ("s003", "questionnaire"),
                            ("s002", "qa_review")]


def test_the_client_record_behind_a_case_is_masked_over_http(client, demo_app):
    agent = _login(client, "s104")  # HZ01 counter staff
    response = client.get(f"{API}/clients/C06", headers=agent)
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.json
    assert "phone" not in body and "id_number" not in body
    assert body["phone_masked"] == "150****2276"
