"""What the form editor checks, function by function: what the task page's renderer cannot
show (``worklist_ui.forms.unsupported``), every way a form breaks the JSON Schema meta-schema
(``engine.bpmn.forms.schema_errors``), and that every form the product ships renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.bpmn.forms import condition_problems, schema_errors
from worklist_ui.forms import unsupported

FORMS = sorted((Path(__file__).resolve().parents[2] / "workflows" / "forms").glob("*.json"))


@pytest.fixture
def english(app):
    with app.test_request_context(headers={"Accept-Language": "en"}):
        yield


@pytest.mark.parametrize("path", FORMS, ids=[p.stem for p in FORMS])
def test_every_shipped_form_renders_and_passes_its_own_checks(english, path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert [s for s in unsupported(schema) if s.severity == "error"] == []
    assert schema_errors(schema) == [] and condition_problems(schema) == []


@pytest.mark.parametrize(("spec", "field", "severity"), [
    ({"type": "object", "properties": {}}, "a", "error"),
    ({"type": ["string", "null"]}, "a", "error"),
    ({"type": "string", "format": "phone"}, "a", "error"),
    ({"type": "string", "format": "email"}, "a", "warning"),
    ({"type": "string", "x-widget": "rich"}, "a", "error"),
    ({"type": "array", "items": {"type": "object"}}, "a", "error"),
    ({"type": "array", "items": {"type": "integer"}}, "a", "error"),
    ({"type": "string", "oneOf": [{"title": "no const"}]}, "a", "error"),
    ({"type": "string", "pattern": "(?i)^ab$"}, "a", "warning"),
    ({"title": "no type"}, "a", "error"),
], ids=["object", "type-list", "unchecked-format", "checked-format", "widget", "list-of-objects",
        "free-number-list", "oneof-without-const", "inline-flags", "no-type"])
def test_what_the_renderer_cannot_show_is_named_by_field(english, spec, field, severity):
    found = unsupported({"type": "object", "properties": {"a": spec, "ok": {"type": "string"}}})
    assert [(s.field, s.severity) for s in found] == [(field, severity)], found


def test_a_form_without_fields_or_with_a_rule_the_page_cannot_show(english):
    assert [s.severity for s in unsupported({"type": "array"})] == ["error"]
    assert [s.severity for s in unsupported({"type": "object"})] == ["error"]
    rule = {"if": {"not": {"required": ["a"]}}, "then": {"required": ["b"]}}
    found = unsupported({"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                         "allOf": [rule]})
    assert [(s.field, s.severity) for s in found] == [("", "warning")]


def test_schema_errors_lists_every_break_with_its_path():
    found = schema_errors({"type": "object", "properties": {"a": {"type": "strin"}, "b": {"minimum": "1"}},
                           "required": "a"})
    assert [f.split(":")[0] for f in found] == ["/properties/a/type", "/properties/b/minimum", "/required"]


def test_a_field_without_an_object_schema_is_left_out_of_the_page_not_an_error(english):
    """A version deployed before the lint refused such fields still opens its task page."""
    from worklist_ui.forms import fields_of

    shown = fields_of({"type": "object", "properties": {"note": True, "amount": {"type": "number"}}})
    assert [f.name for f in shown] == ["amount"]
