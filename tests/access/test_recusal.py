"""Recusal (excludeUsers / excludeGroups), "who did this step" (completedByVariable) and
messages thrown from one process to another."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from engine.access.identity import Actor
from engine.errors import DeploymentRejected, InstanceNotFound, Recused, TaskNotFound
from engine.models import AuditEvent, ProcessInstance, Task
from engine.process import deployments, instances, tasks
from engine.process.tasks import InboxQuery
from tests.support.bpmn import bundle_of, flow, linear, process, row_counts, user_task

pytestmark = pytest.mark.sqlite


def _props(**props: str) -> str:
    inner = "".join(f'<camunda:property name="{k}" value="{v}"/>' for k, v in props.items())
    return f"<bpmn:extensionElements><camunda:properties>{inner}</camunda:properties></bpmn:extensionElements>"


def _task_with(task_id: str, groups: str, **props: str) -> str:
    return (f'    <bpmn:userTask id="{task_id}" name="{task_id}" camunda:candidateGroups="{groups}" '
            f'camunda:formKey="any">{_props(**props)}</bpmn:userTask>\n')


# call (clerks; the engine records who made it) -> qa (clerks, but not the caller and not
# the subject named in the start data, nor anyone in the subject's group)
QA = process(linear(
    ("call", _task_with("call", "clerks", completedByVariable="caller")),
    ("qa", _task_with("qa", "clerks,managers", excludeUsers="${[caller, subject]}",
                      excludeGroups="${subject_group}")),
), key="qa_check")
# The same, but recusal of the subject reaches the whole case (a complaint's subject).
QA_CASE_WIDE = process(linear(
    ("call", _task_with("call", "clerks", completedByVariable="caller")),
    ("qa", _task_with("qa", "clerks,managers", excludeUsers="${[caller, subject]}",
                      excludeGroups="${subject_group}", recusalScope="case")),
), key="qa_check")


def _deploy(db, rt, people, xml):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)


def _open_task(db, instance_id, element_id):
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.instance_id == instance_id, Task.element_id == element_id,
                                            Task.status.in_(("open", "claimed")))).scalar_one()


def _start_qa(db, rt, people, *, subject="nobody", subject_group="", xml=QA):
    _deploy(db, rt, people, xml)
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="qa_check", business_key="QA-1", actor=people.clerk,
                               data={"subject": subject, "subject_group": subject_group})
    call = _open_task(db, inst.id, "call")
    with db.transaction() as s:
        # The form cannot claim someone else made the call: the engine sets the variable.
        tasks.complete(s, rt, task_id=call.id, actor=people.clerk, data={"caller": "zhao"})
    return inst.id, _open_task(db, inst.id, "qa")


def test_the_engine_records_who_completed_a_step_in_the_named_variable(db, rt, people):
    instance_id, qa = _start_qa(db, rt, people)
    with db.transaction() as s:
        data = instances.data_of(s, rt, s.get(ProcessInstance, instance_id))
    assert data["caller"] == "li"
    assert sorted(qa.excluded) == ["user:li", "user:nobody"]


def test_the_caller_cannot_see_claim_or_complete_the_qa_of_their_own_call(db, rt, people):
    _instance_id, qa = _start_qa(db, rt, people)
    before = row_counts(db)
    for operation in (tasks.claim, tasks.complete):
        with pytest.raises(TaskNotFound), db.transaction() as s:
            operation(s, rt, task_id=qa.id, actor=people.clerk)
    assert row_counts(db) == before
    with db.transaction() as s:
        mine, _ = tasks.inbox(s, actor=people.clerk, query=InboxQuery(candidate_me=True), now=rt.now())
        theirs, _ = tasks.inbox(s, actor=people.teammate, query=InboxQuery(candidate_me=True), now=rt.now())
    assert qa.id not in [t.id for t in mine]
    assert qa.id in [t.id for t in theirs]
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=qa.id, actor=people.teammate, data={})
    assert _status(db, qa.id) == ("completed", "zhao")


def test_recusal_of_a_group_keeps_every_member_out_even_a_supervisor(db, rt, people):
    # The complaint's subject works in the managers' group: nobody in it may handle it.
    _instance_id, qa = _start_qa(db, rt, people, subject="wang", subject_group="managers")
    assert sorted(qa.excluded) == ["group:managers", "user:li", "user:wang"]
    boss_in_managers = Actor(username="boss", groups=frozenset({"supervisor", "managers"}))
    for actor in (people.manager, boss_in_managers):
        with pytest.raises(TaskNotFound), db.transaction() as s:
            tasks.claim(s, rt, task_id=qa.id, actor=actor)
        with db.transaction() as s:
            listed, _ = tasks.inbox(s, actor=actor, query=InboxQuery(), now=rt.now())
        assert qa.id not in [t.id for t in listed]
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=qa.id, actor=people.teammate)


def test_a_supervisor_cannot_assign_or_a_colleague_delegate_the_task_to_someone_recused(db, rt, people):
    _instance_id, qa = _start_qa(db, rt, people, subject="wang")
    for target in ("li", "wang"):
        with pytest.raises(Recused), db.transaction() as s:
            tasks.assign(s, rt, task_id=qa.id, username=target, actor=people.supervisor)
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=qa.id, actor=people.teammate)
    with pytest.raises(Recused), db.transaction() as s:
        tasks.delegate(s, rt, task_id=qa.id, username="li", actor=people.teammate)
    assert _status(db, qa.id) == ("claimed", None)
    with db.transaction() as s:
        tasks.assign(s, rt, task_id=qa.id, username="zhao", actor=people.supervisor)


def test_someone_recused_case_wide_from_a_step_cannot_read_the_case(db, rt, people):
    instance_id, _qa = _start_qa(db, rt, people, subject="wang", xml=QA_CASE_WIDE)
    boss_as_subject = Actor(username="wang", groups=frozenset({"supervisor"}))
    with pytest.raises(InstanceNotFound), db.transaction() as s:
        instances.get(s, instance_id, actor=boss_as_subject)
    with db.transaction() as s:
        assert instance_id not in [i.id for i in instances.get_all(s, actor=boss_as_subject)]
        assert instances.get(s, instance_id, actor=people.supervisor).id == instance_id


def test_a_case_wide_recusal_hides_that_case_and_no_other(db, rt, people):
    recusing, _qa = _start_qa(db, rt, people, subject="wang", xml=QA_CASE_WIDE)
    with db.transaction() as s:
        other = instances.start(s, rt, process_key="qa_check", business_key="QA-2", actor=people.clerk,
                                data={"subject": "nobody", "subject_group": ""}).id
    boss_as_subject = Actor(username="wang", groups=frozenset({"supervisor"}))
    with db.transaction() as s:
        assert not instances.readable(s, recusing, boss_as_subject)
        assert instances.readable(s, other, boss_as_subject)


def test_separation_of_duties_on_one_step_leaves_the_case_readable(db, rt, people):
    # The default scope is the task: the caller is kept off the QA of their own call but
    # still follows the case they worked on.
    instance_id, qa = _start_qa(db, rt, people, subject="wang")
    boss_as_subject = Actor(username="wang", groups=frozenset({"supervisor"}))
    with db.transaction() as s:
        assert instances.get(s, instance_id, actor=boss_as_subject).id == instance_id
        found, _ = tasks.inbox(s, actor=boss_as_subject, query=tasks.InboxQuery(), now=rt.now())
        assert qa.id not in [t.id for t in found]
    with pytest.raises(TaskNotFound), db.transaction() as s:
        tasks.claim(s, rt, task_id=qa.id, actor=boss_as_subject)


def test_an_open_step_makes_its_case_readable_to_those_it_is_offered_to_and_not_to_those_it_recuses(db, rt, people):
    # Offered the open QA (clerks, managers), took no other part: a member reads the case by
    # that offer alone, the recused subject (a manager) does not, and the recusal reaches no
    # other case: offered the QA of a second case, the same manager reads that one.
    recusing, qa = _start_qa(db, rt, people, subject="wang")
    with db.transaction() as s:
        other = instances.start(s, rt, process_key="qa_check", business_key="QA-2", actor=people.clerk,
                                data={"subject": "nobody", "subject_group": ""}).id
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open_task(db, other, "call").id, actor=people.clerk, data={})
    member = Actor(username="offered", groups=frozenset({"clerks"}))
    subject = Actor(username="wang", groups=frozenset({"managers"}))
    with db.transaction() as s:
        assert instances.readable(s, recusing, member)
        assert not instances.readable(s, recusing, subject)
        assert instances.readable(s, other, subject)
    # No longer offered either QA, the member follows the case whose QA they handed on (its
    # owner) and the one whose QA they did.
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=qa.id, actor=member)
    with db.transaction() as s:
        tasks.delegate(s, rt, task_id=qa.id, username=people.teammate.username, actor=member)
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open_task(db, other, "qa").id, actor=member, data={})
    with db.transaction() as s:
        assert instances.readable(s, recusing, member) and instances.readable(s, other, member)
        assert not instances.readable(s, recusing, Actor(username="nobody", groups=frozenset({"clerks"})))


def test_who_held_a_step_of_a_case_no_longer_follows_it_once_the_case_is_cancelled(db, rt, people):
    # Holding a step counts while the step is active; the step of a cancelled case is not.
    instance_id, qa = _start_qa(db, rt, people)
    holder = Actor(username="holder", groups=frozenset({"clerks"}))
    with db.transaction() as s:
        tasks.claim(s, rt, task_id=qa.id, actor=holder)
    with db.transaction() as s:
        assert instances.readable(s, instance_id, holder)
    with db.transaction() as s:
        instances.cancel(s, rt, instance_id=instance_id, actor=people.supervisor, reason="重复登记")
    with db.transaction() as s:
        assert s.get(Task, qa.id).assignee == "holder"
        assert not instances.readable(s, instance_id, holder)


def test_deploy_refuses_an_unknown_recusal_scope(db, rt, people):
    bad = process(linear(("t", _task_with("t", "clerks", excludeUsers="${subject}", recusalScope="branch"))),
                  key="bad_scope")
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(bad), actor=people.owner)
    assert any("recusalScope" in p.message and "'branch'" in p.message for p in caught.value.problems)


def test_a_task_without_exclusions_stores_none(db, rt, people):
    _deploy(db, rt, people, process(linear(("t", user_task("t"))), key="plain"))
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="plain", business_key="P-1", actor=people.clerk)
    assert _open_task(db, inst.id, "t").excluded is None


def test_deploy_refuses_a_bad_exclusion_expression_or_variable_name(db, rt, people):
    bad = process(linear(("t", _task_with("t", "clerks", excludeUsers="${__import__('os')}",
                                          completedByVariable="not a name"))), key="bad")
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(bad), actor=people.owner)
    messages = [p.message for p in caught.value.problems]
    assert any("excludeUsers" in m for m in messages)
    assert any("completedByVariable" in m for m in messages)


def _status(db, task_id):
    with db.transaction() as s:
        task = s.get(Task, task_id)
        return task.status, task.completed_by


# -- messages thrown to another process -------------------------------------------------
SENDER = process(
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "close")
    + user_task("close", name="办理销户") + flow("close", "notify")
    + '    <bpmn:intermediateThrowEvent id="notify" name="发起回访">'
      '<bpmn:messageEventDefinition messageRef="msg_cb"/></bpmn:intermediateThrowEvent>\n'
    + flow("notify", "end") + '    <bpmn:endEvent id="end"/>\n',
    key="closure", extra='  <bpmn:message id="msg_cb" name="callback_requested"/>\n')
RECEIVER = process(
    '    <bpmn:extensionElements><camunda:properties>'
    '<camunda:property name="businessKeyFormat" value="CB-{yyyymmdd}-{seq:4}"/>'
    '</camunda:properties></bpmn:extensionElements>\n'
    '    <bpmn:startEvent id="received"><bpmn:messageEventDefinition messageRef="msg_cb"/></bpmn:startEvent>\n'
    + flow("received", "call") + user_task("call", name="回访", groups="managers") + flow("call", "end")
    + '    <bpmn:endEvent id="end"/>\n',
    key="callback", extra='  <bpmn:message id="msg_cb" name="callback_requested"/>\n')


def _run_sender(db, rt, people):
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="closure", business_key="XH-1", actor=Actor.system("counter"),
                               data={"client_id": "C07", "reason": "转户"})
    close = _open_task(db, inst.id, "close")
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=close.id, actor=people.clerk, data={"closed": True})
    return inst.id


def test_a_thrown_message_starts_the_process_that_starts_on_it(db, rt, people):
    _deploy(db, rt, people, SENDER)
    _deploy(db, rt, people, RECEIVER)
    sender_id = _run_sender(db, rt, people)
    with db.transaction() as s:
        sender = s.get(ProcessInstance, sender_id)
        started = s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "callback")).scalar_one()
        assert sender.status == "completed"
        # A new case, numbered by the receiving process, that knows where it came from.
        assert re.fullmatch(r"CB-\d{8}-0001", started.business_key)
        assert (started.client_id, started.status) == ("C07", "running")
        data = instances.data_of(s, rt, started)
        assert data["closed"] is True  # the thrower's data is the payload
        assert (data["origin_business_key"], data["origin_process"]) == ("XH-1", "closure")
        sent = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{sender_id}",
                                                  AuditEvent.kind == "message.sent")).scalar_one()
        assert sent.data["to_instance"] == started.id and sent.data["message"] == "callback_requested"
    assert _open_task(db, started.id, "call").candidate_groups == ["managers"]


def test_an_undeliverable_message_fails_the_sender_keeps_the_message_and_retry_sends_it(db, rt, people):
    _deploy(db, rt, people, SENDER)
    sender_id = _run_sender(db, rt, people)  # no receiver deployed yet
    with db.transaction() as s:
        sender = s.get(ProcessInstance, sender_id)
        assert sender.status == "failed"
        assert "callback_requested" in sender.error and "could not be delivered" in sender.error
        assert s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "callback")).first() is None
    _deploy(db, rt, people, RECEIVER)
    with db.transaction() as s:
        instances.retry(s, rt, instance_id=sender_id, actor=people.supervisor)
    with db.transaction() as s:
        assert s.get(ProcessInstance, sender_id).status == "completed"
        started = s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "callback")).scalars().all()
        assert len(started) == 1 and started[0].business_key.startswith("CB-")


# -- facts: the diagram's reportVariables on the instance row ------------------------------
FACTS = process(
    '    <bpmn:extensionElements><camunda:properties>'
    '<camunda:property name="reportVariables" value="severity, outcome ,amount"/>'
    '</camunda:properties></bpmn:extensionElements>\n'
    '    <bpmn:startEvent id="start"/>\n' + flow("start", "fork")
    + '    <bpmn:parallelGateway id="fork"/>\n' + flow("fork", "a") + flow("fork", "b")
    + user_task("a") + user_task("b") + flow("a", "join") + flow("b", "join")
    + '    <bpmn:parallelGateway id="join"/>\n' + flow("join", "end") + '    <bpmn:endEvent id="end"/>\n',
    key="facts")


def test_an_instance_carries_its_report_variables_latest_value_across_parallel_branches(db, rt, people):
    _deploy(db, rt, people, FACTS)
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="facts", business_key="F-1", actor=people.clerk,
                               data={"severity": "general", "secret": "x"})
    assert _facts(db, inst.id) == {"severity": "general"}
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open_task(db, inst.id, "b").id, actor=people.clerk,
                       data={"severity": "major", "amount": 12000})
    assert _facts(db, inst.id) == {"severity": "major", "amount": 12000}
    # Branch a still holds the start's copy of severity: it must not win over b's newer value.
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open_task(db, inst.id, "a").id, actor=people.clerk,
                       data={"outcome": "resolved"})
    with db.transaction() as s:
        instance = s.get(ProcessInstance, inst.id)
        assert instance.status == "completed"
        assert instance.facts == {"severity": "major", "amount": 12000, "outcome": "resolved"}


def _facts(db, instance_id):
    with db.transaction() as s:
        return s.get(ProcessInstance, instance_id).facts


def test_an_exclusion_naming_a_variable_that_is_not_set_excludes_nobody(db, rt, people):
    # A complaint about the firm's systems names no staff subject: nobody is recused, and
    # the case goes on instead of failing on an undefined name.
    xml = process(linear(("t", _task_with("t", "clerks", excludeUsers="${subject_staff_ids}",
                                          excludeServiceGroupsOf="${subject_staff_ids}"))), key="no_subject")
    _deploy(db, rt, people, xml)
    with db.transaction() as s:
        inst = instances.start(s, rt, process_key="no_subject", business_key="NS-1", actor=people.clerk)
    assert _open_task(db, inst.id, "t").excluded is None
    with db.transaction() as s:
        assert s.get(ProcessInstance, inst.id).status == "running"
