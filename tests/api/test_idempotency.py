"""Inbound messages are delivered at most once per idempotency key: the account-opening
system sending ``account_opened`` twenty times (it timed out, it retried) opens one callback
case, and every repeat gets the first answer. The key is the ``Idempotency-Key`` header or
the body's ``message_id``; its scope is the sender and the message name; it is remembered
for ``BPM_IDEMPOTENCY_HOURS``; the same key for a different message is 409."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import func, select, text

from engine.access import identity
from engine.access.roles import INTEGRATION
from engine.models import MessageReceipt, ProcessInstance
from engine.process import messages
from engine.process.messages import _request_digest
from tests.api.test_concurrency import _wait_until_blocked
from tests.api.test_messages import drive_to_the_ack, send
from tests.support.api import API, assert_problem

OPENED = {"name": "account_opened", "payload": {"client_id": "C08", "opened_at": "2025-06-16"}}


def _cases(db) -> int:
    with db.transaction() as s:
        return s.execute(select(func.count()).select_from(ProcessInstance)
                         .where(ProcessInstance.process_key == "callback")).scalar_one()


def _receipts(db) -> int:
    with db.transaction() as s:
        return s.execute(select(func.count()).select_from(MessageReceipt)).scalar_one()


def _post(client, headers, body, key=None):
    return client.post(f"{API}/messages", json=body, headers={**headers, **({"Idempotency-Key": key} if key else {})})


@pytest.mark.sqlite
def test_account_opened_sent_20_times_with_one_key_opens_one_case(client, db, demo_app):
    before = _cases(db)
    answers = [_post(client, demo_app, OPENED, key="OPEN-C08-20250616") for _ in range(20)]
    assert all(a.status_code == 200 for a in answers), answers[0].get_data(as_text=True)
    assert _cases(db) == before + 1
    first, repeats = answers[0], answers[1:]
    assert "Idempotent-Replayed" not in first.headers
    assert all(a.headers["Idempotent-Replayed"] == "true" for a in repeats)
    assert {(a.json["id"], a.json["business_key"]) for a in answers} == {(first.json["id"], first.json["business_key"])}


@pytest.mark.sqlite
def test_without_a_key_every_message_is_delivered(client, db, demo_app):
    """Nothing changes for senders that send no key."""
    before = _cases(db)
    assert [_post(client, demo_app, OPENED).status_code for _ in range(2)] == [200, 200]
    assert _cases(db) == before + 2


@pytest.mark.sqlite
def test_message_id_in_the_body_is_the_same_key_as_the_header(client, db, demo_app):
    before = _cases(db)
    first = _post(client, demo_app, {**OPENED, "message_id": "m-1"})
    again = _post(client, demo_app, OPENED, key="m-1")
    both = _post(client, demo_app, {**OPENED, "message_id": "m-1"}, key="m-1")
    assert first.json["id"] == again.json["id"] == both.json["id"]
    assert _cases(db) == before + 1
    disagree = _post(client, demo_app, {**OPENED, "message_id": "m-2"}, key="m-3")
    assert [e["field"] for e in assert_problem(disagree, 422, "invalid_request")["errors"]] == ["message_id"]
    assert _cases(db) == before + 1


@pytest.mark.sqlite
def test_the_same_key_for_a_different_message_is_409_and_delivers_nothing(client, db, demo_app):
    first = _post(client, demo_app, OPENED, key="K-1")
    before = _cases(db)
    other = {**OPENED, "payload": {"client_id": "C06", "opened_at": "2025-06-16"}}
    problem = assert_problem(_post(client, demo_app, other, key="K-1"), 409, "idempotency_key_reused")
    assert problem["instance_id"] == first.json["id"] and "give a new message a new key" in problem["detail"]
    assert _cases(db) == before


@pytest.mark.sqlite
def test_a_key_is_scoped_to_its_sender_and_message_name(client, db, rt, demo_app):
    with db.transaction() as s:
        identity.create_user(s, username="crm_system", display_name="CRM", now=rt.now(), groups=[INTEGRATION])
        crm = {"Authorization": f"Bearer {identity.issue_token(s, username='crm_system', now=rt.now())}"}
    before = _cases(db)
    one = _post(client, demo_app, OPENED, key="SHARED")
    two = _post(client, crm, OPENED, key="SHARED")
    three = _post(client, demo_app, {"name": "high_risk_permission_opened", "payload": {
        "client_id": "C08", "permission": "创业板", "permission_opened_at": "2025-06-16"}}, key="SHARED")
    assert [r.status_code for r in (one, two, three)] == [200, 200, 200], three.get_data(as_text=True)
    assert "Idempotent-Replayed" not in two.headers and "Idempotent-Replayed" not in three.headers
    assert len({one.json["id"], two.json["id"], three.json["id"]}) == 3
    assert _cases(db) == before + 3


@pytest.mark.sqlite
def test_a_key_is_remembered_for_the_retention_then_free_again(client, db, rt, demo_app, monkeypatch):
    first = _post(client, demo_app, OPENED, key="OLD")
    with time_machine.travel(rt.now() + timedelta(hours=167), tick=False):
        assert _post(client, demo_app, OPENED, key="OLD").json["id"] == first.json["id"]
    # Expired but not yet cleared away (no receipt is purged here): still not an answer.
    monkeypatch.setattr(messages, "PURGE_BATCH", 0)
    with time_machine.travel(rt.now() + timedelta(hours=169), tick=False):
        later = _post(client, demo_app, OPENED, key="OLD")
    assert later.status_code == 200 and "Idempotent-Replayed" not in later.headers
    assert later.json["id"] != first.json["id"]


@pytest.mark.sqlite
def test_expired_receipts_are_cleared_as_messages_come_in(client, db, rt, demo_app):
    for key in ("A", "B", "C"):
        _post(client, demo_app, OPENED, key=key)
    with time_machine.travel(rt.now() + timedelta(hours=169), tick=False):
        _post(client, demo_app, OPENED, key="D")
    with db.transaction() as s:
        assert s.execute(select(MessageReceipt.idempotency_key)).scalars().all() == ["D"]


@pytest.mark.sqlite
def test_a_refused_message_leaves_no_receipt_and_can_be_sent_again(client, auth, db, review):
    li = auth("li")
    body = {"name": "client_ack", "correlation_key": "ACK-1", "message_id": "ack-1"}
    assert_problem(client.post(f"{API}/messages", json=body, headers=li), 404, "message_not_correlated")
    assert _receipts(db) == 0
    drive_to_the_ack(client, li, "ACK-1")
    delivered = client.post(f"{API}/messages", json=body, headers=li)
    assert delivered.status_code == 200 and delivered.json["status"] == "completed"
    assert client.post(f"{API}/messages", json=body, headers=li).headers["Idempotent-Replayed"] == "true"
    assert send(client, li, "client_ack", "ACK-1").status_code == 404  # without the key: nobody waits now


@pytest.mark.sqlite
def test_a_key_that_could_not_travel_in_a_header_is_422(client, demo_app):
    for key in ("", "with space", "长", "x" * 129):
        response = _post(client, demo_app, {**OPENED, "message_id": key})
        assert [e["field"] for e in assert_problem(response, 422, "invalid_request")["errors"]] == ["message_id"]


def test_a_repeat_sent_while_the_first_is_being_delivered_waits_and_gets_its_answer(client, db, demo_app):
    """PostgreSQL: the first delivery's receipt is not committed yet; the repeat waits on it
    and answers from it once it is (SQLite runs one writer at a time: nothing to wait for)."""
    first = _post(client, demo_app, OPENED, key="EARLIER")  # an existing case the receipt will name
    before = _cases(db)
    with db.engine.connect() as blocker:
        blocker.execute(text(
            "INSERT INTO bpm_message_receipt (sender, message_name, idempotency_key, request_sha256, instance_id, "
            "received_at) VALUES ('account_system', 'account_opened', 'IN-FLIGHT', :sha, :instance, now())"),
            {"sha": _request_digest(None, OPENED["payload"]), "instance": first.json["id"]})
        answer: dict[str, Any] = {}
        repeat = threading.Thread(
            target=lambda: answer.update(response=_post(client, demo_app, OPENED, key="IN-FLIGHT")))
        repeat.start()
        _wait_until_blocked(blocker)
        blocker.commit()
        repeat.join(timeout=30)
    response = answer["response"]
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Idempotent-Replayed"] == "true" and response.json["id"] == first.json["id"]
    assert _cases(db) == before


@pytest.mark.sqlite
def test_the_receipts_table_migrates_down_and_up_and_matches_the_model(database_url, db):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from engine.db import Base
    from engine.schema import alembic_config

    config = alembic_config(database_url)
    db.dispose()
    try:
        command.downgrade(config, "0008")
        assert "bpm_message_receipt" not in inspect(db.engine).get_table_names()
    finally:
        command.upgrade(config, "head")
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in differences if "bpm_message_receipt" in repr(d)] == []
    unique = inspect(db.engine).get_unique_constraints("bpm_message_receipt")
    assert [c["column_names"] for c in unique] == [["sender", "message_name", "idempotency_key"]]
