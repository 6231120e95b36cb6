"""Messages from outside: correlated by business key to the one waiting instance, or starting one."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.access.identity import Actor
from engine.errors import AmbiguousCorrelation, DuplicateBusinessKey, MessageNotCorrelated
from engine.models import AuditEvent, MessageSubscription, ProcessInstance, Task
from engine.process import deployments, instances, messages, tasks
from tests.support.bpmn import bundle_of, flow, process, row_counts, user_task

pytestmark = pytest.mark.sqlite



def _complete_open(db, rt, actor, instance_id, data):
    with db.transaction() as s:
        task = s.execute(select(Task).where(Task.instance_id == instance_id, Task.status == "open")).scalar_one()
        tasks.complete(s, rt, task_id=task.id, actor=actor, data=data)


def _waiting_for_ack(db, rt, people, key):
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data={"priority": 50, "due_at": None})
    _complete_open(db, rt, people.clerk, inst.id, {"amount": 10, "summary": "小额"})
    _complete_open(db, rt, people.clerk, inst.id, {"approved": True})
    with db.transaction() as s:
        (sub,) = s.execute(select(MessageSubscription).where(MessageSubscription.instance_id == inst.id)).scalars()
        assert (sub.message_name, sub.correlation_key, sub.element_id) == ("client_ack", key, "wait_ack")
    return inst.id


def _instance(db, instance_id):
    with db.transaction() as s:
        return s.get(ProcessInstance, instance_id)


def test_a_message_reaches_the_instance_waiting_under_its_business_key(db, rt, people, review):
    one = _waiting_for_ack(db, rt, people, "R-1")
    two = _waiting_for_ack(db, rt, people, "R-2")
    with db.transaction() as s:
        got = messages.correlate(s, rt, name="client_ack", correlation_key="R-2", actor=people.system,
                                 payload={"ack_channel": "电话"})
        assert got.id == two
    assert _instance(db, two).status == "completed"
    assert _instance(db, one).status == "running"  # the other case is untouched
    with db.transaction() as s:
        assert s.execute(select(MessageSubscription.instance_id)).scalars().all() == [one]
        history = instances.history(s, two, actor=Actor.system())
        received = [e for e in history if e.kind == "message.received"]
        assert len(received) == 1
        assert received[0].data["correlation_key"] == "R-2" and received[0].data["payload"] == {"ack_channel": "电话"}
        assert history[-1].kind == "instance.completed"


@pytest.mark.parametrize(("name", "key"), [("client_ack", "R-404"), ("no_such_message", "R-1"), ("", "")],
                         ids=["unknown_key", "unknown_message", "empty"])
def test_a_message_nobody_waits_for_changes_nothing(db, rt, people, review, name, key):
    instance_id = _waiting_for_ack(db, rt, people, "R-1")
    before = row_counts(db)
    before_instance = _instance(db, instance_id)
    with pytest.raises(MessageNotCorrelated) as caught, db.transaction() as s:
        messages.correlate(s, rt, name=name, correlation_key=key, actor=people.system, payload={"x": 1})
    assert caught.value.code == "message_not_correlated"
    assert row_counts(db) == before
    after = _instance(db, instance_id)
    assert (after.status, after.audit_seq, after.state) == (before_instance.status, before_instance.audit_seq,
                                                            before_instance.state)


def test_a_message_that_comes_too_early_or_twice_is_not_correlated(db, rt, people, review):
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="review", business_key="R-1", actor=people.clerk,
                               data={"priority": 50, "due_at": None})
    with pytest.raises(MessageNotCorrelated), db.transaction() as s:  # still at the first task
        messages.correlate(s, rt, name="client_ack", correlation_key="R-1", actor=people.system)
    assert _instance(db, inst.id).status == "running"
    _complete_open(db, rt, people.clerk, inst.id, {"amount": 10, "summary": "小额"})
    _complete_open(db, rt, people.clerk, inst.id, {"approved": True})
    with db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="R-1", actor=people.system)
    before = row_counts(db)
    with pytest.raises(MessageNotCorrelated), db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="R-1", actor=people.system)
    assert row_counts(db) == before


DOCS = process(
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "wait_docs")
    + '    <bpmn:receiveTask id="wait_docs" name="等待客户补充材料" messageRef="msg_docs"/>\n'
    + flow("wait_docs", "docs_check")
    + '    <bpmn:exclusiveGateway id="docs_check" default="f_docs_check_rejected"/>\n'
    + flow("docs_check", "verify", condition="${docs_ok and doc_count &gt;= 2}")
    + flow("docs_check", "rejected")
    + user_task("verify", name="核验材料")
    + flow("verify", "done")
    + '    <bpmn:endEvent id="done"/>\n    <bpmn:endEvent id="rejected"/>\n',
    key="docs", extra='  <bpmn:message id="msg_docs" name="docs_received"/>\n')


def test_the_payload_becomes_process_variables(db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(DOCS), actor=people.owner)
    ids = {}
    for key in ("D-1", "D-2"):
        with db.transaction() as s:
            ids[key] = instances.start(s, rt, process_key="docs", business_key=key, actor=people.clerk).id
    with db.transaction() as s:
        messages.correlate(s, rt, name="docs_received", correlation_key="D-1", actor=people.system,
                           payload={"docs_ok": True, "doc_count": 3, "files": ["身份证.pdf", "银行卡.pdf"]})
        messages.correlate(s, rt, name="docs_received", correlation_key="D-2", actor=people.system,
                           payload={"docs_ok": True, "doc_count": 1})
    with db.transaction() as s:
        waiting = s.execute(select(Task).where(Task.instance_id == ids["D-1"])).scalar_one()
        assert (waiting.element_id, waiting.status) == ("verify", "open")  # the gateway read the payload
        data = instances.data_of(s, rt, s.get(ProcessInstance, ids["D-1"]))
        assert (data["docs_ok"], data["doc_count"], data["files"]) == (True, 3, ["身份证.pdf", "银行卡.pdf"])
        assert s.get(ProcessInstance, ids["D-2"]).status == "completed"  # one document: rejected branch


def test_a_message_never_rewrites_the_engines_own_variables_and_the_audit_names_what_it_dropped(db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(DOCS), actor=people.owner)
        instance_id = instances.start(s, rt, process_key="docs", business_key="D-9", actor=people.system,
                                      data={"client_id": "C01", "branch_code": "HZ01"}).id
    with db.transaction() as s:
        messages.correlate(s, rt, name="docs_received", correlation_key="D-9", actor=people.system,
                           payload={"docs_ok": True, "doc_count": 2, "client_id": "C99", "branch_code": "SX01",
                                    "origin_business_key": "FORGED-1"})
    with db.transaction() as s:
        data = instances.data_of(s, rt, s.get(ProcessInstance, instance_id))
        assert (data["client_id"], data["branch_code"], data["docs_ok"]) == ("C01", "HZ01", True)
        assert "origin_business_key" not in data
        [received] = s.execute(select(AuditEvent).where(AuditEvent.instance_id == instance_id,
                                                        AuditEvent.kind == "message.received")).scalars().all()
        assert received.data["dropped"] == ["branch_code", "client_id", "origin_business_key"]


def test_two_instances_waiting_under_one_key_are_ambiguous(db, rt, people):
    # Two processes wait for the same message name with the same business key.
    other = DOCS.replace('id="docs"', 'id="docs_copy"')
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(DOCS), actor=people.owner)
        deployments.deploy(s, rt, bundle_of(other), actor=people.owner)
    with db.transaction() as s:
        instances.start(s, rt, process_key="docs", business_key="K-1", actor=people.clerk)
        instances.start(s, rt, process_key="docs_copy", business_key="K-1", actor=people.clerk)
    before = row_counts(db)
    with pytest.raises(AmbiguousCorrelation), db.transaction() as s:
        messages.correlate(s, rt, name="docs_received", correlation_key="K-1", actor=people.system,
                           payload={"docs_ok": True, "doc_count": 5})
    assert row_counts(db) == before


COMPLAINT = process(
    '    <bpmn:startEvent id="received" name="收到投诉"><bpmn:messageEventDefinition messageRef="msg_complaint"/>'
    "</bpmn:startEvent>\n" + flow("received", "triage")
    + user_task("triage", name="投诉分派") + flow("triage", "end") + '    <bpmn:endEvent id="end"/>\n',
    key="complaint", extra='  <bpmn:message id="msg_complaint" name="complaint_received"/>\n')


def test_a_message_start_event_starts_an_instance_keyed_by_the_correlation_key(db, rt, people):
    with db.transaction() as s:
        (deployed,) = deployments.deploy(s, rt, bundle_of(COMPLAINT), actor=people.owner)
        assert deployed.version.start_messages == ["complaint_received"]
    with db.transaction() as s:
        inst = messages.correlate(s, rt, name="complaint_received", correlation_key="CMP-20261125-0001",
                                  actor=people.system, payload={"client_id": "C0001", "channel": "12386"})
        instance_id = inst.id
    with db.transaction() as s:
        instance = s.get(ProcessInstance, instance_id)
        assert (instance.process_key, instance.business_key, instance.status) == \
            ("complaint", "CMP-20261125-0001", "running")
        assert instance.client_id == "C0001"
        task = s.execute(select(Task).where(Task.instance_id == instance_id)).scalar_one()
        assert (task.element_id, task.business_key, task.client_id) == ("triage", "CMP-20261125-0001", "C0001")
        assert instances.data_of(s, rt, instance)["channel"] == "12386"
        kinds = [e.kind for e in instances.history(s, instance_id, actor=Actor.system())]
        assert kinds == ["instance.started", "message.received", "event.start"]
    # The same complaint again is a duplicate, not a second case.
    before = row_counts(db)
    with pytest.raises(DuplicateBusinessKey), db.transaction() as s:
        messages.correlate(s, rt, name="complaint_received", correlation_key="CMP-20261125-0001",
                           actor=people.system, payload={})
    assert row_counts(db) == before


def test_a_person_cannot_message_a_case_they_may_not_read(db, rt, people, review):
    """A clerk of another branch, in none of the case's groups, cannot tell the case anything;
    an outside system (the integration role) can, and so can the clerk who started it."""
    from engine.access.roles import INTEGRATION

    one = _waiting_for_ack(db, rt, people, "R-9")
    before = row_counts(db)
    with pytest.raises(MessageNotCorrelated), db.transaction() as s:
        messages.correlate(s, rt, name="client_ack", correlation_key="R-9", actor=people.outsider, payload={})
    assert row_counts(db) == before
    gateway = Actor(username="gateway", groups=frozenset({INTEGRATION}))
    with db.transaction() as s:
        assert messages.correlate(s, rt, name="client_ack", correlation_key="R-9", actor=gateway, payload={}).id == one
