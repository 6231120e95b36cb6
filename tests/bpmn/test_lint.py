"""Deploy lint: every finding is a located Problem, and a rejected deployment stores nothing."""

from __future__ import annotations

import pytest

from engine.bootstrap import build_runtime
from engine.config import Settings
from engine.errors import DeploymentRejected, Problem
from engine.process import deployments, instances
from tests.support.bpmn import (
    bundle_of,
    flow,
    line_of,
    linear,
    process,
    row_counts,
    user_task,
)

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent



def _script(task_id: str, script: str) -> str:
    return f'    <bpmn:scriptTask id="{task_id}" name="脚本"><bpmn:script>{script}</bpmn:script></bpmn:scriptTask>\n'


def _gateway(condition: str) -> str:
    return ('    <bpmn:startEvent id="start"/>\n' + flow("start", "gw")
            + '    <bpmn:exclusiveGateway id="gw" name="判断" default="f_gw_other"/>\n'
            + flow("gw", "yes", condition=condition)
            + flow("gw", "other")
            + '    <bpmn:endEvent id="yes"/>\n    <bpmn:endEvent id="other"/>\n')


def _timer(kind: str, value: str) -> str:
    return linear(("wait", f'    <bpmn:intermediateCatchEvent id="wait" name="等待"><bpmn:timerEventDefinition>'
                           f"<bpmn:{kind}>{value}</bpmn:{kind}></bpmn:timerEventDefinition>"
                           "</bpmn:intermediateCatchEvent>\n"))


def _service(topic_attrs: str) -> str:
    return linear(("call", f'    <bpmn:serviceTask id="call" name="调用" {topic_attrs}/>\n'))


# (case id, process body, element the problem must name, words the message must contain)
CASES = [
    ("script_task", linear(("calc", _script("calc", "total = 1"))), "calc", "BPM_ALLOW_SCRIPT_TASKS"),
    ("user_task_without_form", linear(("ask", user_task("ask", form=None))), "ask", "camunda:formKey"),
    ("form_file_missing", linear(("ask", user_task("ask", form="no_such_form"))), "ask",
     "forms/no_such_form.json"),
    ("candidate_group_unknown", linear(("ask", user_task("ask", groups="ghosts"))), "ask", "'ghosts' does not exist"),
    ("user_task_offered_to_nobody", linear(("ask", user_task("ask", groups=None))), "ask", "nobody could ever see"),
    ("gateway_syntax", _gateway("${amount &gt;}"), "gw", "syntax error"),
    ("gateway_import", _gateway("${__import__('os').system('id')}"), "gw", "__import__"),
    ("gateway_dunder_attribute", _gateway("${amount.__class__.__mro__}"), "gw", "is not allowed"),
    ("gateway_open", _gateway("${open('/etc/passwd')}"), "gw", "open"),
    ("timer_not_iso", _timer("timeDuration", "PT4X"), "wait", "not ISO 8601"),
    ("timer_naive_date", _timer("timeDate", "2026-12-01T09:00:00"), "wait", "no UTC offset"),
    ("timer_expression_import", _timer("timeDuration", "${__import__('os')}"), "wait", "__import__"),
    ("service_topic_unknown", _service('camunda:type="external" camunda:topic="transfer_money"'), "call",
     "'transfer_money' is not registered"),
    ("service_without_topic", _service(""), "call", "camunda:topic"),
    ("assignee_expression_dunder", linear(("ask", user_task("ask", extra='camunda:assignee="${x.__globals__}"'))),
     "ask", "__globals__"),
    ("due_date_expression_syntax", linear(("ask", user_task("ask", extra='camunda:dueDate="${due +}"'))),
     "ask", "camunda:dueDate"),
    ("sla_policy_unknown", linear(("ask", '    <bpmn:userTask id="ask" name="审批" camunda:candidateGroups="clerks" '
                                          'camunda:formKey="any"><bpmn:extensionElements><camunda:properties>'
                                          '<camunda:property name="slaPolicy" value="no_such_policy"/>'
                                          "</camunda:properties></bpmn:extensionElements></bpmn:userTask>\n")),
     "ask", "SLA policy 'no_such_policy' does not exist"),
]


@pytest.mark.parametrize(("body", "element", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_lint_rejects_with_a_located_problem_and_stores_nothing(db, rt, people, body, element, words):
    xml = process(body)
    before = row_counts(db)
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)

    problems = caught.value.problems
    assert all(isinstance(p, Problem) for p in problems)
    assert [p.element_id for p in problems] == [element], problems
    (problem,) = problems
    assert words in problem.message
    assert problem.file == "p.bpmn"
    assert problem.line == line_of(xml, element)
    assert problem.format().startswith(f"p.bpmn:{problem.line} {element}: ")
    assert caught.value.code == "deployment_invalid"
    assert row_counts(db) == before


def test_every_problem_is_reported_at_once(db, rt, people):
    xml = process(linear(
        ("calc", _script("calc", "x = 1")),
        ("ask", user_task("ask", form="missing", groups="ghosts")),
        ("call", '    <bpmn:serviceTask id="call" camunda:type="external" camunda:topic="nope"/>\n'),
    ))
    before = row_counts(db)
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)
    found = sorted((p.element_id, p.line) for p in caught.value.problems)
    assert found == sorted([("calc", line_of(xml, "calc")), ("ask", line_of(xml, "ask")),
                            ("ask", line_of(xml, "ask")), ("call", line_of(xml, "call"))])
    assert row_counts(db) == before


def test_one_bad_process_rejects_the_whole_bundle(db, rt, people):
    good = process(linear(("ask", user_task("ask"))), key="good")
    bad = process(linear(("ask", user_task("ask", form="missing"))), key="bad")
    bundle = bundle_of(good)
    bundle.bpmn["bad.bpmn"] = bad.encode()
    before = row_counts(db)
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle, actor=people.owner)
    assert [(p.file, p.element_id) for p in caught.value.problems] == [("bad.bpmn", "ask")]
    assert row_counts(db) == before


def test_a_lane_names_its_candidate_group(db, rt, people):
    def with_lane(lane_name: str) -> str:
        lanes = ('    <bpmn:laneSet id="ls"><bpmn:lane id="lane1" name="' + lane_name + '">'
                 "<bpmn:flowNodeRef>start</bpmn:flowNodeRef><bpmn:flowNodeRef>ask</bpmn:flowNodeRef>"
                 "<bpmn:flowNodeRef>end</bpmn:flowNodeRef></bpmn:lane></bpmn:laneSet>\n")
        return process(lanes + linear(("ask", user_task("ask", groups=None))))

    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(with_lane("不存在的组")), actor=people.owner)
    assert [p.element_id for p in caught.value.problems] == ["ask"]
    assert "does not exist" in caught.value.problems[0].message
    with db.transaction() as s:
        assert [d.created for d in deployments.deploy(s, rt, bundle_of(with_lane("clerks")), actor=people.owner)] \
            == [True]


def test_check_without_a_session_stores_nothing_and_skips_group_lookup(db, rt, people):
    xml = process(linear(("ask", user_task("ask", groups="ghosts", form="missing"))))
    before = row_counts(db)
    _, problems = deployments.check(None, rt, bundle_of(xml))
    assert [(p.element_id, "not found" in p.message) for p in problems] == [("ask", True)]
    assert row_counts(db) == before


# -- script tasks when allowed ------------------------------------------------------------
@pytest.fixture
def scripts_rt(database_url):
    return build_runtime(Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_ALLOW_SCRIPT_TASKS": "true"}))


SCRIPT_XML = process(linear(
    ("calc", _script("calc", "total = amount * 2\nlabel = 'big' if total &gt; 100 else 'small'")),
    ("check", user_task("check")),
), key="scripted")


def test_allowed_script_runs_through_the_safe_evaluator(db, scripts_rt, people):
    with db.transaction() as s:
        (deployed,) = deployments.deploy(s, scripts_rt, bundle_of(SCRIPT_XML), actor=people.owner)
        assert deployed.created
    with db.transaction() as s:
        inst = instances.start(s, scripts_rt, process_key="scripted", business_key="S-1", actor=people.clerk,
                               data={"amount": 60})
        assert inst.status == "running"
        data = instances.data_of(s, scripts_rt, inst)
    assert (data["total"], data["label"]) == (120, "big")


@pytest.mark.parametrize("script", [
    "import os",
    "x = open('/etc/passwd').read()",
    "for i in items:\n    x = i",
], ids=["import", "open", "loop"])
def test_allowed_scripts_are_still_only_name_equals_expression(db, scripts_rt, people, script):
    xml = process(linear(("calc", _script("calc", script))), key="scripted")
    before = row_counts(db)
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, scripts_rt, bundle_of(xml), actor=people.owner)
    assert [p.element_id for p in caught.value.problems] == ["calc"]
    assert caught.value.problems[0].line == line_of(xml, "calc")
    assert row_counts(db) == before


def test_a_script_version_fails_at_run_time_once_scripts_are_disabled(db, rt, scripts_rt, people):
    with db.transaction() as s:
        deployments.deploy(s, scripts_rt, bundle_of(SCRIPT_XML), actor=people.owner)
    with db.transaction() as s:  # rt: the default settings, scripts off
        inst = instances.start(s, rt, process_key="scripted", business_key="S-2", actor=people.clerk,
                               data={"amount": 60})
    assert inst.status == "failed"
    assert "script tasks are disabled" in inst.error and "calc" in inst.error


def test_a_duplicate_id_is_named_with_what_to_do(db, rt, people):
    # The process and a task share the id "review": XSD reports "not a valid value of the
    # atomic type 'xs:ID'", which no process owner can act on.
    xml = process(linear(("review", user_task("review"))), key="review")
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml), actor=people.owner)
    [problem] = caught.value.problems
    assert problem.element_id == "review" and problem.line == line_of(xml, "review") + 2
    assert "used by more than one element" in problem.message and "xs:ID" not in problem.message


_CONDITIONAL = {
    "type": "object",
    "properties": {
        "on_behalf": {"type": "boolean", "title": "代理"},
        "channel": {"type": "string", "oneOf": [{"const": "counter", "title": "柜台"}, {"const": "12386"}]},
        "agent_name": {"type": "string"},
    },
    "allOf": [
        {"if": {"properties": {"on_behalf": {"const": True}}, "required": ["on_behalf"]},
         "then": {"required": ["agent_name"]}},
    ],
}


@pytest.mark.parametrize(("rule", "words"), [
    ({"if": {"properties": {"on_behlaf": {"const": True}}, "required": ["on_behlaf"]},
      "then": {"required": ["agent_name"]}}, "tests 'on_behlaf', which is not a field of this form"),
    ({"if": {"not": {"required": ["client_no"]}}, "then": {"required": ["agent_name"]}},
     "tests 'client_no', which is not a field"),
    ({"if": {"properties": {"on_behalf": {"const": True}}}, "then": {"required": ["agnet_name"]}},
     "makes 'agnet_name' required, which is not a field"),
    ({"if": {"properties": {"channel": {"const": "12387"}}}, "then": {"required": ["agent_name"]}},
     "waits for 'channel' = '12387', which is not one of its options"),
], ids=["condition-field", "condition-under-not", "then-field", "condition-value"])
def test_a_conditional_field_must_name_fields_of_its_form(db, rt, people, rule, words):
    form = {**_CONDITIONAL, "allOf": [*_CONDITIONAL["allOf"], rule]}
    xml = process(linear(("ask", user_task("ask", form="intake"))))
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml, {"intake": form}), actor=people.owner)
    (problem,) = caught.value.problems
    assert problem.element_id == "ask" and "form 'intake': allOf rule 2" in problem.message
    assert words in problem.message
    # The form's own rule, on declared fields and options, passes.
    with db.transaction() as s:
        assert deployments.lint(s, rt, bundle_of(xml, {"intake": _CONDITIONAL}), actor=people.owner) == []


@pytest.mark.parametrize(("field", "words"), [
    (True, "field 'note' must be described by an object"),
    ({"type": "array", "items": False}, "field 'note': 'items' must be an object"),
], ids=["true-schema", "false-items"])
def test_a_form_field_the_task_page_cannot_show_is_refused_at_deploy(db, rt, people, field, words):
    form = {"type": "object", "properties": {"note": field}}
    xml = process(linear(("ask", user_task("ask", form="intake"))))
    with pytest.raises(DeploymentRejected) as caught, db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(xml, {"intake": form}), actor=people.owner)
    (problem,) = caught.value.problems
    assert problem.element_id == "ask" and f"form 'intake': {words}" in problem.message
