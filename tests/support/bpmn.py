"""Small builders shared by the ``test_engine_*`` files: BPMN text, bundles, row counts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from engine.bpmn import bundle as bundles
from engine.bpmn.bundle import Bundle
from engine.db import Base, Database

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
CAMUNDA_NS = "http://camunda.org/schema/1.0/bpmn"
# A form that takes any field (a form that declares its fields takes only those).
ANY_FORM: dict[str, Any] = {"type": "object", "additionalProperties": True}


def definitions(body: str, *, extra: str = "") -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<bpmn:definitions xmlns:bpmn="{BPMN_NS}" xmlns:camunda="{CAMUNDA_NS}"\n'
        '                  id="defs" targetNamespace="http://example.com/bpm">\n'
        f"{extra}"
        f"{body}\n"
        "</bpmn:definitions>\n"
    )


def process(body: str, *, key: str = "p", name: str = "测试流程", executable: bool = True,
            extra: str = "") -> str:
    """One process; ``extra`` goes before it (bpmn:message declarations)."""
    flag = "true" if executable else "false"
    return definitions(f'  <bpmn:process id="{key}" name="{name}" isExecutable="{flag}">\n{body}\n  </bpmn:process>',
                       extra=extra)


def flow(source: str, target: str, *, condition: str | None = None, flow_id: str | None = None) -> str:
    flow_id = flow_id or f"f_{source}_{target}"
    if condition is None:
        return f'    <bpmn:sequenceFlow id="{flow_id}" sourceRef="{source}" targetRef="{target}"/>\n'
    return (f'    <bpmn:sequenceFlow id="{flow_id}" sourceRef="{source}" targetRef="{target}">\n'
            f"      <bpmn:conditionExpression>{condition}</bpmn:conditionExpression>\n"
            "    </bpmn:sequenceFlow>\n")


def user_task(task_id: str, *, name: str | None = None, groups: str | None = "clerks",
              form: str | None = "any", extra: str = "") -> str:
    attrs = [f'id="{task_id}"', f'name="{name or task_id}"']
    if groups is not None:
        attrs.append(f'camunda:candidateGroups="{groups}"')
    if form is not None:
        attrs.append(f'camunda:formKey="{form}"')
    return f"    <bpmn:userTask {' '.join(attrs)} {extra}/>\n"


def linear(*steps: tuple[str, str]) -> str:
    """``start`` -> steps (id, xml) -> ``end``, joined by sequence flows."""
    body = '    <bpmn:startEvent id="start"/>\n'
    previous = "start"
    for step_id, xml in steps:
        body += xml + flow(previous, step_id)
        previous = step_id
    body += '    <bpmn:endEvent id="end"/>\n' + flow(previous, "end")
    return body


def bundle_of(xml: str, forms: dict[str, Any] | None = None, *, filename: str = "p.bpmn") -> Bundle:
    return Bundle(name="test", bpmn={filename: xml.encode("utf-8")},
                  forms=copy.deepcopy(forms) if forms is not None else {"any": dict(ANY_FORM)})


def fixture_bundle(name: str) -> Bundle:
    return bundles.from_paths([FIXTURES / name])


def line_of(xml: str, element_id: str) -> int:
    """The 1-based line on which ``id="element_id"`` appears."""
    for number, text in enumerate(xml.splitlines(), start=1):
        if f'id="{element_id}"' in text:
            return number
    raise AssertionError(f"{element_id} not in the XML")


def row_counts(db: Database) -> dict[str, int]:
    with db.transaction() as s:
        return {table.name: s.execute(select(func.count()).select_from(table)).scalar_one()
                for table in Base.metadata.sorted_tables}
