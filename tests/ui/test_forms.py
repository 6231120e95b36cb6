"""Every form of workflows/forms/ as the task page renders and reads it: each field gets an
input of its kind, a filled form reads back into JSON the engine's validator accepts, and
what is wrong is reported by field in the reader's language."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator
from werkzeug.datastructures import MultiDict

from worklist_ui import forms

pytestmark = pytest.mark.store_independent

FORMS = sorted((Path(__file__).resolve().parents[2] / "workflows" / "forms").glob("*.json"))


@pytest.fixture(scope="module")
def babel_app() -> Flask:
    """gettext needs an app (Chinese, the default)."""
    from flask_babel import Babel

    app = Flask(__name__)
    app.config["BABEL_TRANSLATION_DIRECTORIES"] = str(Path(forms.__file__).parent / "translations")
    Babel(app, locale_selector=lambda: "zh_CN")
    return app


def _sample(name: str, spec: dict[str, Any]) -> tuple[list[str], Any]:
    """What a person would submit for one field (the raw form values), and the JSON expected."""
    if spec.get("const") is True:
        return ["true"], True
    kind = spec.get("type")
    if kind == "boolean":
        return ["true"], True
    if kind == "array":
        items = spec.get("items", {})
        choices = [o["const"] for o in items.get("oneOf", [])] or list(items.get("enum", []))
        if choices:
            return [str(choices[0])], [choices[0]]
        if items.get("pattern"):
            return [_matching(items["pattern"])], [_matching(items["pattern"])]
        return ["第一项\n第二项"], ["第一项", "第二项"]
    choices = [o["const"] for o in spec.get("oneOf", [])] or list(spec.get("enum", []))
    if choices:
        return [str(choices[-1])], choices[-1]
    if kind in ("integer", "number"):
        value = max(spec.get("minimum", 1), 1)
        step = spec.get("multipleOf")
        if step:
            value = step * max(int(value // step), 1)
        return [str(value)], value
    if spec.get("format") == "date-time":
        return ["2026-11-25T10:35"], "2026-11-25T10:35:00+08:00"
    if spec.get("format") == "date":
        return ["2026-12-01"], "2026-12-01"
    if spec.get("pattern"):
        return [_matching(spec["pattern"])], _matching(spec["pattern"])
    text = "说明" * max(1, spec.get("minLength", 1) // 2 + 1)
    return [text], text


def _matching(pattern: str) -> str:
    known = {"^CMP-[0-9]{8}-[0-9]{4}$": "CMP-20261125-0001", "^[0-9]{6}$": "123456",
             "^[A-Z]{2}[0-9]{2}-G[0-9]+$": "HZ01-G1", "(?i)\\.(pdf|jpg|png|mp3|wav)$": "录音.MP3"}
    if pattern in known:
        return known[pattern]
    raise AssertionError(f"no sample for the pattern {pattern}: add one")


@pytest.mark.parametrize("path", FORMS, ids=[p.stem for p in FORMS])
def test_each_form_renders_every_field_and_a_filled_form_reads_back_valid(babel_app, path):
    schema = json.loads(path.read_text(encoding="utf-8"))
    with babel_app.test_request_context():
        fields = forms.fields_of(schema)
        assert [f.name for f in fields] == list(schema["properties"])
        submitted = MultiDict()
        expected: dict[str, Any] = {}
        for f in fields:
            spec = schema["properties"][f.name]
            raw, value = _sample(f.name, spec)
            for item in raw:
                submitted.add(f.name, item)
            expected[f.name] = value
            assert f.widget in ("text", "textarea", "datetime", "date", "number", "select", "radio", "boolean",
                                "confirm", "checkboxes", "lines")
            # Chinese first: a bilingual title shows its Chinese half only.
            assert f.title and not re.search(r"[A-Za-z]{3,}", f.title), (f.name, f.title)
        parsed = forms.parse(schema, submitted)
        assert parsed.errors == {}
        assert parsed.data == expected
        validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
        assert forms.errors_of(validator, parsed.data) == {}


def test_the_widgets_follow_the_schema(babel_app):
    schema = {"type": "object", "required": ["channel"], "properties": {
        "channel": {"type": "string", "oneOf": [{"const": c, "title": f"渠道{n} Channel {c}"}
                                                for c, n in zip("abcdef", "甲乙丙丁戊己", strict=True)]},
        "kind": {"type": "string", "enum": ["x", "y"]},
        "summary": {"type": "string", "maxLength": 2000}, "name": {"type": "string", "maxLength": 50},
        "at": {"type": "string", "format": "date-time"}, "on": {"type": "string", "format": "date"},
        "count": {"type": "integer", "minimum": 0, "maximum": 9}, "ok": {"type": "boolean"},
        "confirmed": {"const": True}, "tags": {"type": "array", "items": {"type": "string", "enum": ["p", "q"]}},
        "ids": {"type": "array", "items": {"type": "string"}},
    }}
    with babel_app.test_request_context():
        widgets = {f.name: f.widget for f in forms.fields_of(schema)}
        channel = forms.fields_of(schema)[0]
    assert widgets == {"channel": "select", "kind": "radio", "summary": "textarea", "name": "text", "at": "datetime",
                       "on": "date", "count": "number", "ok": "boolean", "confirmed": "confirm",
                       "tags": "checkboxes", "ids": "lines"}
    assert channel.required and channel.options[0].title == "渠道甲"  # the reader's half of the label


def test_a_conditionally_required_field_carries_its_condition(babel_app):
    schema = json.loads((FORMS[0].parent / "callback_call_attempt.json").read_text(encoding="utf-8"))
    with babel_app.test_request_context():
        by_name = {f.name: f for f in forms.fields_of(schema)}
    assert by_name["recording_id"].required_when == (
        '(["reached", "refused", "not_client"].includes(String(values["result"])))')
    assert by_name["reschedule_at"].required_when == '(String(values["result"]) === "reschedule")'
    assert by_name["comment"].required_when is None


def test_wrong_values_are_reported_by_field_in_chinese(babel_app):
    schema = json.loads((FORMS[0].parent / "callback_call_attempt.json").read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    with babel_app.test_request_context():
        parsed = forms.parse(schema, MultiDict({"attempt_at": "yesterday", "result": "reached",
                                                "dialled_number_masked": "x" * 40}))
        found = {**forms.errors_of(validator, parsed.data), **parsed.errors}
    assert found == {"attempt_at": "请输入日期和时间", "dialled_number_masked": "最多 32", "recording_id": "必填"}


def test_a_date_time_is_read_as_beijing_time_and_shown_back_in_it(babel_app):
    schema = {"type": "object", "properties": {"at": {"type": "string", "format": "date-time"}}}
    with babel_app.test_request_context():
        parsed = forms.parse(schema, MultiDict({"at": "2026-11-25T09:00"}))
        assert parsed.data == {"at": "2026-11-25T09:00:00+08:00"}
        assert forms.draft_values(schema, {"at": "2026-11-25T01:00:00+00:00"}) == {"at": "2026-11-25T09:00"}
