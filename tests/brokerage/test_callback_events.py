"""Callback messages from outside (brief §2.3, issue 13 item 3) on workflows/callback.bpmn:
a do-not-call request ends the call as refused and marks the client; a regulatory callback
then goes on in writing; a fraud or impersonation report reaches compliance at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from sqlalchemy import select

from engine.access.identity import Actor
from engine.models import AuditEvent, Client, Notification, Task
from engine.process import messages
from engine.timers import firing
from tests.brokerage.test_callback import (
    AGENT,
    ANSWERS_OK,
    IDENTITY_OK,
    NO_ANSWER,
    REACHED,
    _complete,
    _data,
    _end_events,
    _open_task,
    _retry_timers,
    _start,
    _status,
    sh,
)

pytestmark = pytest.mark.store_independent

TELEPHONY = Actor.system("telephony")  # the call centre's telephony system tells the case


def _send(db, rt, name: str, key: str, payload: dict) -> None:
    with db.transaction() as s:
        messages.correlate(s, rt, name=name, correlation_key=key, actor=TELEPHONY, payload=payload)


def _client(db, client_id: str) -> Client:
    with db.transaction() as s:
        client = s.get(Client, client_id)
        assert client is not None
        return client


def test_do_not_call_on_a_new_account_callback_ends_the_call_refused_and_goes_on_in_writing(db, rt, demo_loaded):
    key = "CB-20250616-0951"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance_id = _start(db, rt, key, "new_account", "C08", qa_sample_rate=0)
        call = _open_task(db, key, "call_attempt")
        assert _client(db, "C08").dnc_marketing is False
        _send(db, rt, "client_do_not_call", key, {"recording_id": "REC-DNC-1"})
        with db.transaction() as s:
            assert s.get(Task, call.id).status == "cancelled"  # the call task ends
        written = _open_task(db, key, "written_callback")
        # Still required by the regulator: a written channel, by the call centre, within 5 WD.
        assert (written.candidate_groups, written.due_at) == (["call_center_agent"], sh(2025, 6, 23, 10))
        assert _data(db, rt, instance_id)["result"] == "refused"
        client = _client(db, "C08")
        assert client.dnc_marketing is True and client.dnc_since == sh(2025, 6, 16, 10)
        _complete(db, rt, key, "written_callback", AGENT, {"written_channel": "letter",
                                                            "sent_at": "2025-06-17T10:00:00+08:00"})
    assert _status(db, instance_id) == "completed"
    assert _end_events(db, rt, instance_id) == ["end_refused_written"]
    with db.transaction() as s:
        (marked,) = s.execute(select(AuditEvent.data).where(AuditEvent.kind == "client.do_not_call")).scalars()
    assert marked["client_id"] == "C08" and marked["applied"] is True


def test_do_not_call_while_waiting_to_redial_ends_an_anomaly_callback_refused(db, rt, demo_loaded):
    key = "CB-20250616-0952"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance_id = _start(db, rt, key, "anomaly", "C06")
        _complete(db, rt, key, "call_attempt", AGENT, NO_ANSWER)
        assert [t.status for t in _retry_timers(db, instance_id)] == ["waiting"]
        _send(db, rt, "client_do_not_call", key, {})
    assert _retry_timers(db, instance_id)[0].status == "cancelled"  # no more redials
    assert _status(db, instance_id) == "completed"
    assert _end_events(db, rt, instance_id) == ["end_refused_dnc"]  # not a regulatory callback: no letter
    assert _client(db, "C06").dnc_marketing is True


def test_a_fraud_report_during_the_call_reaches_compliance_at_once_and_the_call_goes_on(db, rt, demo_loaded):
    key = "CB-20250616-0953"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False) as clock:
        instance_id = _start(db, rt, key, "periodic", "C03", qa_sample_rate=0)
        _complete(db, rt, key, "call_attempt", AGENT, REACHED)
        _complete(db, rt, key, "verify_identity", AGENT, IDENTITY_OK)
        _send(db, rt, "fraud_reported", key, {"fraud_summary": "有人冒充客户经理推荐荐股群"})
        report = _open_task(db, key, "fraud_report")
        assert (report.candidate_groups, report.priority, report.due_at) == (["compliance"], 90,
                                                                            sh(2025, 6, 16, 14))
        questionnaire = _open_task(db, key, "questionnaire")  # the call itself goes on
        clock.shift(timedelta(minutes=5))
        assert firing.fire_due(db, rt) >= 1
        with db.transaction() as s:
            told = sorted(n.recipient for n in s.execute(select(Notification).where(
                Notification.task_id == report.id)).scalars())
        # HQ compliance and the NB01 branch's (C03 is an NB01 client), within minutes.
        assert told == ["s006", "s207"]
        _complete(db, rt, key, "questionnaire", AGENT, ANSWERS_OK)
        assert _open_task(db, key, "fraud_report").id == report.id  # the report stays open until checked
        assert questionnaire.id != report.id
        _complete(db, rt, key, "fraud_report", "s006", {"fraud_action": "warned_client",
                                                         "fraud_finding": "非本公司员工，已提醒客户"})
    assert _status(db, instance_id) == "completed"
    assert sorted(_end_events(db, rt, instance_id)) == ["end_completed", "end_fraud_reported"]
    assert _client(db, "C03").dnc_marketing is False
