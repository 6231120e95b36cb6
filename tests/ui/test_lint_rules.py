"""The draft editor's lint while drawing (worklist_ui/src/lint_rules.js), run by Node as the
browser runs it (bpmnlint over bpmn-moddle with the camunda: descriptors,
worklist_ui/tools/lint_rules.mjs): it finds, on the same element, what the deploy lint refuses
for every case of tests/bpmn/test_lint.py (expressions judged by the server's own safe
evaluator), an SLA policy key and a timer date without an offset too, and it marks nothing on
the diagrams the product ships."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ExpressionError
from tests.bpmn.test_lint import CASES
from tests.support.bpmn import linear, process, user_task
from tests.ui.test_owners import OWNER, _signed_in

ROOT = Path(__file__).resolve().parents[2]
UI = ROOT / "worklist_ui"


def _lint(context: dict[str, Any], diagrams: dict[str, str]) -> dict[str, Any]:
    node = shutil.which("node")
    assert node, "node runs the editor's lint rules (make test installs it)"
    done = subprocess.run([node, "tools/lint_rules.mjs"], cwd=UI, input=json.dumps(
        {"context": context, "diagrams": diagrams}), capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout)


def _judged(rt, context: dict[str, Any], diagrams: dict[str, str]) -> dict[str, Any]:
    """Lint twice, as the editor does: once to learn the expressions, then with the safe
    evaluator's verdicts on them."""
    verdicts = {}
    for result in _lint(context, diagrams).values():
        for expression in result["pending"]:
            try:
                rt.evaluator.check(expression)
                verdicts[expression] = None
            except ExpressionError as exc:
                verdicts[expression] = exc.message
    judged = _lint({**context, "verdicts": verdicts}, diagrams)
    assert all(result["pending"] == [] for result in judged.values())
    return judged


@pytest.mark.parametrize(("body", "element", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_editor_marks_what_the_deploy_lint_refuses_on_the_same_element(rt, body, element, words):
    context = {"groups": ["clerks"], "topics": rt.services.names(), "policies": [], "forms": ["any"]}
    issues = _judged(rt, context, {"p.bpmn": process(body)})["p.bpmn"]["issues"]
    # A gateway's condition is drawn on its outgoing flow: the mark is there.
    marked = {k: v for k, v in issues.items() if k == element or k.startswith(f"f_{element}_")}
    assert marked, issues
    assert set(issues) == set(marked), f"marked more than {element}: {issues}"


@pytest.mark.parametrize(("step", "words"), [
    ('    <bpmn:userTask id="ask" camunda:candidateGroups="clerks" camunda:formKey="any"><bpmn:extensionElements>'
     '<camunda:properties><camunda:property name="slaPolicy" value="no_such_policy"/></camunda:properties>'
     "</bpmn:extensionElements></bpmn:userTask>\n",
     "SLA policy no_such_policy does not exist"),
    ('    <bpmn:intermediateCatchEvent id="ask"><bpmn:timerEventDefinition><bpmn:timeDate>2026-12-01T09:00:00'
     "</bpmn:timeDate></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>\n", "has no UTC offset"),
    ('    <bpmn:intermediateCatchEvent id="ask"><bpmn:timerEventDefinition><bpmn:timeDuration>due_in'
     "</bpmn:timeDuration></bpmn:timerEventDefinition></bpmn:intermediateCatchEvent>\n", "wrap an expression in"),
    (user_task("ask", form="gone"), "form gone is not one of the draft's forms"),
], ids=["sla-policy", "timer-date-offset", "unquoted-timer-name", "form-not-in-draft"])
def test_the_editor_names_the_problem_in_words(rt, step, words):
    context = {"groups": ["clerks"], "topics": [], "policies": ["complaint_default"], "forms": ["any"]}
    issues = _judged(rt, context, {"p.bpmn": process(linear(("ask", step)))})["p.bpmn"]["issues"]
    assert list(issues) == ["ask"] and any(words in m for m in issues["ask"]), issues


def test_the_shipped_diagrams_pass_the_editors_lint_with_the_servers_lists(app, rt, demo_cases_loaded):
    client, _ = _signed_in(app, OWNER)
    answer = client.get("/processes/complaint/draft/lint-context")
    assert answer.status_code == 200
    context = answer.get_json()
    assert "call_center_agent" in context["groups"] and "complaint_classify" in context["topics"]
    forms = sorted(p.stem for p in (ROOT / "workflows" / "forms").glob("*.json"))
    diagrams = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "workflows").glob("*.bpmn"))}
    judged = _judged(rt, {**context, "forms": forms}, diagrams)
    assert {name: result["issues"] for name, result in judged.items()} == {name: {} for name in diagrams}
