"""What a completed task's form may put into a case (docs/api.md#completing-a-task): only the
fields the form declares, and never a value that would change a variable the engine set (the
client, branch and service group, class, tier and risk level, where the case came from, who
did an earlier step): whoever completes any step would otherwise rewrite the inputs of
recusal and separation of duties."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import select

from engine.access.identity import Actor
from engine.calendars import SHANGHAI
from engine.errors import DeploymentRejected, FormValidationError
from engine.models import ProcessInstance, Task
from engine.process import deployments, instances, tasks
from tests.support.api import API, assert_problem, command, start, task_of
from tests.support.bpmn import bundle_of, linear, process, row_counts


def _props(**props: str) -> str:
    inner = "".join(f'<camunda:property name="{k}" value="{v}"/>' for k, v in props.items())
    return f"<bpmn:extensionElements><camunda:properties>{inner}</camunda:properties></bpmn:extensionElements>"


def _task(task_id: str, form: str = "any", **props: str) -> str:
    return (f'    <bpmn:userTask id="{task_id}" name="{task_id}" camunda:candidateGroups="clerks" '
            f'camunda:formKey="{form}">{_props(**props) if props else ""}</bpmn:userTask>\n')


# call (the engine records who made it in ``caller``) -> review (a form taking any field)
CALL_THEN_REVIEW = process(linear(("call", _task("call", completedByVariable="caller")), ("review", _task("review"))),
                           key="rules")
CONTEXT = {"client_id": "C01", "branch_code": "HZ01", "service_group": "HZ01-G1", "client_class": "A+",
           "vip_tier": "diamond", "risk_level": "C4", "origin_business_key": "CB-20260302-0001",
           "origin_process": "callback"}
CHANGED = {"client_id": "C02", "branch_code": "NB01", "service_group": "HZ01-G2", "client_class": "G",
           "vip_tier": "silver", "risk_level": "C1", "origin_business_key": "FORGED-1", "origin_process": "x",
           "caller": "zhao"}


def _deploy(db, rt, xml: str, forms: dict | None = None) -> None:
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml, forms), actor=Actor.system("owner"))


def _open(db, instance_id: int, element: str) -> int:
    with db.transaction() as s:
        return s.execute(select(Task.id).where(Task.instance_id == instance_id, Task.element_id == element,
                                               Task.status.in_(("open", "claimed")))).scalar_one()


def _data(db, rt, instance_id: int) -> dict:
    with db.transaction() as s:
        return instances.data_of(s, rt, s.get(ProcessInstance, instance_id))


@pytest.fixture
def at_review(db, rt, people) -> int:
    """A case the intake system started with the client's context (a client the registry does
    not hold: the context is the start data's), its call made by 李 (li)."""
    _deploy(db, rt, CALL_THEN_REVIEW)
    with db.transaction() as s:
        instance_id = instances.start(s, rt, process_key="rules", business_key="R-1", actor=Actor.system("intake"),
                                      data=CONTEXT).id
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, instance_id, "call"), actor=people.clerk, data={})
    return instance_id


def test_a_form_cannot_change_a_variable_the_engine_set_and_nothing_is_saved(db, rt, people, at_review):
    review = _open(db, at_review, "review")
    before = row_counts(db)
    with pytest.raises(FormValidationError) as refused, db.transaction() as s:
        tasks.complete(s, rt, task_id=review, actor=people.teammate, data={**CHANGED, "note": "已复核"})
    assert sorted(e.field for e in refused.value.errors) == sorted(CHANGED)
    assert all("set by the engine" in e.message for e in refused.value.errors)
    assert row_counts(db) == before
    assert {k: _data(db, rt, at_review)[k] for k in CONTEXT} == CONTEXT


def test_a_form_may_repeat_the_value_the_engine_set(db, rt, people, at_review):
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, at_review, "review"), actor=people.teammate,
                       data={**CONTEXT, "caller": "li", "note": "已复核"})
    data = _data(db, rt, at_review)
    assert {k: data[k] for k in CONTEXT} == CONTEXT and data["caller"] == "li" and data["note"] == "已复核"


def test_a_form_may_give_a_reserved_name_the_engine_has_not_set(db, rt, people):
    # A walk-in complainant has no client number when the case starts; the registration gives one.
    _deploy(db, rt, CALL_THEN_REVIEW)
    with db.transaction() as s:
        instance_id = instances.start(s, rt, process_key="rules", business_key="R-2", actor=people.clerk,
                                      data={"service_group": None}).id
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, instance_id, "call"), actor=people.clerk,
                       data={"client_id": "C0099", "service_group": "HZ01-G1"})
    data = _data(db, rt, instance_id)
    assert (data["client_id"], data["service_group"], data["caller"]) == ("C0099", "HZ01-G1", "li")


def test_a_step_the_diagram_makes_the_authority_for_a_fact_may_change_it(db, rt, people):
    # A risk re-assessment sets the new risk level (writesEngineVariables); the other steps may not.
    xml = process(linear(("reassess", _task("reassess", writesEngineVariables="risk_level")),
                         ("review", _task("review"))), key="rules")
    _deploy(db, rt, xml)
    with db.transaction() as s:
        instance_id = instances.start(s, rt, process_key="rules", business_key="R-3", actor=Actor.system("intake"),
                                      data=CONTEXT).id
    with pytest.raises(FormValidationError) as refused, db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, instance_id, "reassess"), actor=people.clerk,
                       data={"risk_level": "C2", "vip_tier": "gold"})
    assert [e.field for e in refused.value.errors] == ["vip_tier"]
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, instance_id, "reassess"), actor=people.clerk,
                       data={"risk_level": "C2"})
    with pytest.raises(FormValidationError), db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, instance_id, "review"), actor=people.clerk,
                       data={"risk_level": "C5"})
    assert _data(db, rt, instance_id)["risk_level"] == "C2"


@pytest.mark.parametrize("names", ["client_id", "branch_code,risk_level", "service_group", "caller"])
def test_only_a_cases_reassessable_facts_may_be_named_writable(db, rt, people, names):
    xml = process(linear(("step", _task("step", writesEngineVariables=names))), key="rules")
    with pytest.raises(DeploymentRejected) as refused, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=Actor.system("owner"))
    [problem] = refused.value.problems
    assert problem.element_id == "step" and "writesEngineVariables" in problem.message


def test_a_form_takes_only_the_fields_it_declares(db, rt, people):
    declared = {"type": "object", "required": ["approved"],
                "properties": {"approved": {"type": "boolean"}},
                "allOf": [{"if": {"properties": {"approved": {"const": False}}},
                           "then": {"properties": {"reason": {"type": "string"}}, "required": ["reason"]}}]}
    xml = process(linear(("approve", _task("approve", form="approve")), ("again", _task("again", form="open"))),
                  key="rules")
    _deploy(db, rt, xml, {"approve": declared, "open": {"type": "object", "additionalProperties": True}})
    with db.transaction() as s:
        instance_id = instances.start(s, rt, process_key="rules", business_key="R-4", actor=people.clerk).id
    with pytest.raises(FormValidationError) as refused, db.transaction() as s:
        tasks.complete(s, rt, task_id=_open(db, instance_id, "approve"), actor=people.clerk,
                       data={"approved": False, "reason": "材料不全", "amount": 1, "branch_code": "NB01"})
    assert [(e.field, e.message) for e in refused.value.errors] == [
        ("amount", "'amount' is not a field of the form 'approve'"),
        ("branch_code", "'branch_code' is not a field of the form 'approve'")]
    with db.transaction() as s:  # a field of a conditional part is declared too
        tasks.complete(s, rt, task_id=_open(db, instance_id, "approve"), actor=people.clerk,
                       data={"approved": False, "reason": "材料不全"})
    with db.transaction() as s:  # a form that says it takes anything does
        tasks.complete(s, rt, task_id=_open(db, instance_id, "again"), actor=people.clerk, data={"amount": 1})
    assert _data(db, rt, instance_id)["amount"] == 1


@pytest.mark.sqlite
def test_over_http_each_refused_field_is_listed_in_one_422_and_the_task_stays_open(client, auth, review):
    li = auth("li")
    start(client, li, "F-1")
    task = task_of(client, li, "F-1")
    registered = command(client, li, task["id"], "complete", {"data": {"amount": 10, "summary": "小额业务"}})
    assert registered.status_code == 200
    approve = task_of(client, li, "F-1")
    problem = assert_problem(command(client, li, approve["id"], "complete",
                                     {"data": {"approved": True, "client_id": "C01", "amount": 5}}),
                             422, "form_invalid")
    assert {e["field"] for e in problem["errors"]} == {"client_id", "amount"}
    assert task_of(client, li, "F-1")["id"] == approve["id"]
    assert command(client, li, approve["id"], "complete", {"data": {"approved": True}}).status_code == 200
    assert client.get(f"{API}/tasks/{approve['id']}", headers=li).json["status"] == "completed"


# A form whose fields carry JSON Schema formats: a moment, a date and an e-mail address.
FORMATS = {"type": "object", "properties": {"due_at": {"type": "string", "format": "date-time"},
                                            "on": {"type": "string", "format": "date"},
                                            "mail": {"type": "string", "format": "email"}}}
ONE_FORM = process(linear(("fill", _task("fill", form="formats")), ("then", _task("then"))), key="formats")


def _at_fill(db, rt, people) -> int:
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(ONE_FORM, {"formats": FORMATS, "any": {"type": "object"}}),
                           actor=people.owner)
        return instances.start(s, rt, process_key="formats", business_key="F-1", actor=people.clerk).id


def test_a_form_checks_the_formats_it_declares(db, rt, people):
    instance_id = _at_fill(db, rt, people)
    with db.transaction() as s:
        fill = s.execute(select(Task).where(Task.instance_id == instance_id)).scalar_one()
    with pytest.raises(FormValidationError) as refused, db.transaction() as s:
        tasks.complete(s, rt, task_id=fill.id, actor=people.clerk,
                       data={"due_at": "2027-01-08", "on": "昨天下午", "mail": "no-at-sign"})
    assert sorted(e.field for e in refused.value.errors) == ["due_at", "mail", "on"]
    with pytest.raises(FormValidationError), db.transaction() as s:
        tasks.complete(s, rt, task_id=fill.id, actor=people.clerk, data={"due_at": "2027-01-08T17:00:00"})
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=fill.id, actor=people.clerk,
                       data={"due_at": "2027-01-08T17:00:00+08:00", "on": "2027-01-08", "mail": "li@example.com"})


def test_the_deploy_lint_refuses_a_form_with_a_format_nobody_checks(db, rt, people):
    unchecked = {"type": "object", "properties": {"id_no": {"type": "string", "format": "cn-id-card"}}}
    with pytest.raises(DeploymentRejected) as refused, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(ONE_FORM, {"formats": unchecked, "any": {"type": "object"}}),
                           actor=people.owner)
    assert any("cn-id-card" in p.message and p.element_id == "fill" for p in refused.value.problems)


def test_a_date_only_due_date_is_the_end_of_that_working_day_in_beijing(db, rt, people):
    due = process(linear(("reply", _task("reply").replace('camunda:formKey', 'camunda:dueDate="${reply_by}" '
                                                                              'camunda:formKey'))), key="dated")
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(due), actor=people.owner)
        friday = instances.start(s, rt, process_key="dated", business_key="D-1", actor=people.clerk,
                                 data={"reply_by": "2026-03-20"})
        saturday = instances.start(s, rt, process_key="dated", business_key="D-2", actor=people.clerk,
                                   data={"reply_by": "2026-03-21"})
    with db.transaction() as s:
        dues = {i.business_key: s.execute(select(Task.due_at).where(Task.instance_id == i.id)).scalar_one()
                for i in (s.get(ProcessInstance, friday.id), s.get(ProcessInstance, saturday.id))}
        assert s.get(ProcessInstance, friday.id).status == "running"
    friday_close = datetime(2026, 3, 20, 17, tzinfo=SHANGHAI)
    assert dues == {"D-1": friday_close, "D-2": friday_close}  # a Saturday: the Friday before


def _form(*names: str) -> dict[str, Any]:
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}}


def test_the_deploy_lint_warns_when_a_later_form_writes_an_earlier_forms_field():
    from engine.bpmn import bundle as bundles
    from engine.config import PROJECT_ROOT
    from tests.support.bpmn import flow

    xml = process(linear(("intake", _task("intake", form="intake")), ("reply", _task("reply", form="reply"))),
                  key="overlap")
    warnings = deployments.warnings(bundle_of(xml, {"intake": _form("channel", "summary"),
                                                    "reply": _form("channel", "reply_text")}))
    assert [(w.element_id, "'channel'" in w.message) for w in warnings] == [("reply", True)]
    # Two ways in (alternatives) may share their fields: neither step follows the other.
    both = process('    <bpmn:startEvent id="start"/>\n' + flow("start", "gw")
                   + '    <bpmn:exclusiveGateway id="gw" default="f_gw_b"/>\n'
                   + flow("gw", "a", condition="${x}") + flow("gw", "b")
                   + _task("a", form="intake") + _task("b", form="reply")
                   + '    <bpmn:endEvent id="end_a"/>\n    <bpmn:endEvent id="end_b"/>\n'
                   + flow("a", "end_a") + flow("b", "end_b"), key="alternatives")
    assert deployments.warnings(bundle_of(both, {"intake": _form("channel"), "reply": _form("channel")})) == []
    shipped = bundles.from_paths([PROJECT_ROOT / "workflows" / "complaint.bpmn"])
    found = deployments.warnings(shipped)
    assert found and not [w for w in found if "'channel'" in w.message]
