"""A task's JSON Schema form, as HTML fields and back.

:func:`fields_of` turns the schema into field descriptions the form template renders: every
type and keyword the forms in ``workflows/forms/`` use (strings, long text, patterns, dates and
date-times in Beijing time, ``enum`` and ``oneOf``/``const`` option lists, numbers with bounds,
booleans, a ``const: true`` confirmation, arrays of options as checkbox groups, arrays of free
text one per line, and ``allOf`` + ``if``/``then`` rules that make a field required).
:func:`parse` reads a submitted HTML form back into the JSON the engine validates, and
:func:`errors_of` runs the very validator the engine runs, giving each error the field it
belongs to and a message in the reader's language. The engine validates again on completion:
it, not this module, is the authority.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from flask_babel import gettext
from jsonschema import Draft202012Validator

from engine.calendars import SHANGHAI
from worklist_ui.i18n import label, tier_name

LONG_TEXT = 200  # a string allowed more characters than this gets a text area


@dataclass
class Option:
    value: Any
    title: str


@dataclass
class Field:
    name: str
    title: str
    widget: str  # text, textarea, datetime, date, number, select, radio, boolean, confirm, checkboxes, lines
    required: bool = False
    options: list[Option] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    # An Alpine.js expression over the form's values: the field is required while it holds.
    required_when: str | None = None
    hint: str = ""


def fields_of(schema: dict[str, Any]) -> list[Field]:
    required = set(schema.get("required", []))
    conditions = _conditions(schema)
    found = []
    for name, spec in schema.get("properties", {}).items():
        # A field not described by an object (``true``) has no input to show; the deploy
        # lint refuses such forms now, but a version deployed before still opens.
        if isinstance(spec, dict):
            found.append(_field(name, spec, name in required, conditions.get(name)))
    return found


def _options(spec: dict[str, Any]) -> list[Option]:
    if "oneOf" in spec:
        return [Option(o.get("const"), label(o.get("title") or str(o.get("const")))) for o in spec["oneOf"]
                if isinstance(o, dict)]
    if "enum" in spec:
        return [Option(v, str(v)) for v in spec["enum"]]
    return []


def _field(name: str, spec: dict[str, Any], required: bool, required_when: str | None) -> Field:
    title = label(spec.get("title") or name)
    kind = spec.get("type")
    attrs: dict[str, Any] = {}
    if kind is None and spec.get("const") is True:
        return Field(name, title, "confirm", required, required_when=required_when)
    if kind == "boolean":
        return Field(name, title, "boolean", required, [Option(True, gettext("Yes")), Option(False, gettext("No"))],
                     required_when=required_when)
    if kind == "array":
        items = spec.get("items", {})
        options = _options(items)
        if options:
            return Field(name, title, "checkboxes", required, options, required_when=required_when)
        return Field(name, title, "lines", required, attrs={"maxlength": items.get("maxLength")},
                     required_when=required_when, hint=gettext("One per line"))
    options = _options(spec)
    if options:
        return Field(name, title, "radio" if len(options) <= 5 else "select", required, options,
                     required_when=required_when)
    if kind in ("integer", "number"):
        attrs = {"min": spec.get("minimum"), "max": spec.get("maximum"),
                 "step": spec.get("multipleOf", 1 if kind == "integer" else "any")}
        return Field(name, title, "number", required, attrs=attrs, required_when=required_when)
    fmt = spec.get("format")
    if fmt == "date-time":
        return Field(name, title, "datetime", required, required_when=required_when,
                     hint=gettext("Beijing time"))
    if fmt == "date":
        return Field(name, title, "date", required, required_when=required_when)
    attrs = {"maxlength": spec.get("maxLength"), "minlength": spec.get("minLength")}
    if spec.get("pattern") and "(?" not in spec["pattern"]:
        # An HTML pattern is anchored already; the schema's own anchors would be doubled. (A
        # pattern with inline flags has no HTML form: the server checks it alone.)
        attrs["pattern"] = spec["pattern"].removeprefix("^").removesuffix("$")
    widget = "textarea" if (spec.get("maxLength") or 0) > LONG_TEXT else "text"
    return Field(name, title, widget, required, attrs=attrs, required_when=required_when)


def _conditions(schema: dict[str, Any]) -> dict[str, str]:
    """``allOf: [{if: {properties: {x: {const|enum|contains}}}, then: {required: [...]}}]`` as
    Alpine expressions, by the field they make required."""
    found: dict[str, list[str]] = {}
    for rule in schema.get("allOf", []):
        condition = rule.get("if", {}).get("properties", {})
        required = rule.get("then", {}).get("required", [])
        parts = []
        for name, test in condition.items():
            variable = f"values[{json.dumps(name)}]"
            if "const" in test:
                parts.append(f"String({variable}) === {json.dumps(_as_input(test['const']))}")
            elif "enum" in test:
                parts.append(f"{json.dumps([_as_input(v) for v in test['enum']])}.includes(String({variable}))")
            elif "contains" in test and "const" in test["contains"]:
                parts.append(f"([].concat({variable} || [])).includes({json.dumps(test['contains']['const'])})")
        if not parts:
            continue
        for name in required:
            found.setdefault(name, []).append(" && ".join(parts))
    return {name: " || ".join(f"({p})" for p in parts) for name, parts in found.items()}


def _as_input(value: Any) -> str:
    """A schema value as an input holds it: booleans are the radios' "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- submitted form -> JSON ------------------------------------------------------------------
@dataclass
class Parsed:
    data: dict[str, Any]
    errors: dict[str, str]  # field -> message, for values that are not even of the right type


def parse(schema: dict[str, Any], form: Any) -> Parsed:
    """``form``: a werkzeug MultiDict. Blank fields are left out (the schema says whether
    they are needed)."""
    data: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for item in fields_of(schema):
        spec = schema["properties"][item.name]
        name = item.name
        if item.widget == "checkboxes":
            values = [v for v in form.getlist(name) if v != ""]
            if values:
                data[name] = [_typed(spec.get("items", {}), v) for v in values]
            continue
        if item.widget == "lines":
            lines = [line.strip() for line in (form.get(name) or "").splitlines() if line.strip()]
            if lines:
                data[name] = lines
            continue
        if item.widget == "confirm":
            if form.get(name):
                data[name] = True
            continue
        raw = (form.get(name) or "").strip()
        if raw == "":
            continue
        try:
            data[name] = _value(item, spec, raw)
        except ValueError as exc:
            errors[name] = str(exc)
    return Parsed(data, errors)


def _typed(spec: dict[str, Any], raw: str) -> Any:
    if spec.get("type") == "integer":
        return int(raw)
    if spec.get("type") == "number":
        return float(raw)
    return raw


def _value(item: Field, spec: dict[str, Any], raw: str) -> Any:
    if item.widget == "boolean":
        if raw not in ("true", "false"):
            raise ValueError(gettext("Choose yes or no"))
        return raw == "true"
    if item.widget == "number":
        try:
            number = float(raw)
        except ValueError:
            raise ValueError(gettext("Enter a number")) from None
        if spec.get("type") == "integer":
            if number != int(number):
                raise ValueError(gettext("Enter a whole number"))
            return int(number)
        return int(number) if number == int(number) and "." not in raw else number
    if item.widget == "datetime":
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            raise ValueError(gettext("Enter a date and time")) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=SHANGHAI)
        return moment.isoformat()
    if item.widget == "date":
        try:
            return date.fromisoformat(raw).isoformat()
        except ValueError:
            raise ValueError(gettext("Enter a date")) from None
    if item.widget in ("select", "radio"):
        for option in item.options:
            if str(option.value) == raw:
                return option.value
        raise ValueError(gettext("Choose one of the options"))
    return raw


def submission(schema: dict[str, Any] | None, validator: Draft202012Validator | None,
               form: Any) -> tuple[Parsed, dict[str, str]]:
    """A sent form read back and checked as the task page checks it before completing: the
    values, and what is wrong by field (a value of the wrong kind first, then the engine's
    validator). The form editor's preview checks a sample submission with this too."""
    parsed = parse(schema, form) if schema else Parsed({}, {})
    found = dict(parsed.errors)
    if validator is not None:
        for name, message in errors_of(validator, parsed.data).items():
            found.setdefault(name, message)
    return parsed, found


def errors_of(validator: Draft202012Validator, data: dict[str, Any]) -> dict[str, str]:
    """The engine's validator's errors, by top-level field, in the reader's language."""
    found: dict[str, str] = {}
    for error in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        path = list(error.absolute_path)
        if error.validator == "required":
            name = error.message.split("'")[1] if error.message.count("'") >= 2 else ""
        else:
            name = str(path[0]) if path else ""
        found.setdefault(name, _message(error))
    return found


def _message(error: Any) -> str:
    kind = error.validator
    if kind == "required":
        return gettext("Required")
    if kind in ("maxLength", "maxItems"):
        return gettext("At most %(num)s", num=error.validator_value)
    if kind in ("minLength", "minItems"):
        return gettext("At least %(num)s", num=error.validator_value)
    if kind == "maximum":
        return gettext("At most %(num)s", num=error.validator_value)
    if kind == "minimum":
        return gettext("At least %(num)s", num=error.validator_value)
    if kind == "pattern":
        return gettext("Not in the expected format")
    if kind == "format":
        return gettext("Not a valid %(format)s", format=error.validator_value)
    if kind in ("enum", "oneOf", "const"):
        return gettext("Choose one of the options")
    if kind == "type":
        return gettext("Not the right kind of value")
    if kind == "multipleOf":
        return gettext("Must be a multiple of %(num)s", num=error.validator_value)
    if kind == "uniqueItems":
        return gettext("Each value once")
    return str(error.message)


def draft_values(schema: dict[str, Any], data: dict[str, Any] | None) -> dict[str, Any]:
    """Values as the form's inputs show them (date-times in Beijing time, booleans as text)."""
    shown: dict[str, Any] = {}
    for item in fields_of(schema):
        value = (data or {}).get(item.name)
        if value is None:
            continue
        if item.widget == "datetime" and isinstance(value, str):
            with contextlib.suppress(ValueError):  # not a date-time: shown as it was typed
                value = datetime.fromisoformat(value).astimezone(SHANGHAI).strftime("%Y-%m-%dT%H:%M")
        elif item.widget == "boolean":
            value = "true" if value is True else "false" if value is False else value
        elif item.widget == "lines" and isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        shown[item.name] = value
    return shown


# -- a case's data, as people read it ---------------------------------------------------------
# The names the engine writes into every case (no form declares them), bilingual like form titles.
ENGINE_FIELDS = {
    "client_id": "客户号 Client id", "branch_code": "营业部 Branch", "service_group": "服务小组 Service group",
    "client_class": "客户分类 Client class", "vip_tier": "贵宾等级 VIP tier", "risk_level": "风险等级 Risk level",
    "origin_business_key": "来源案件 Originating case", "origin_process": "来源流程 Originating process",
}
_MOMENT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


@dataclass
class DataRow:
    name: str  # the variable's id, for the English reader and for support
    title: str
    shown: str
    structured: bool = False  # an object or a list of objects: shown as JSON
    titled: bool = True  # a form or the engine names it; the rest are the process's own working values


def readable_data(data: dict[str, Any], forms: dict[str, Any]) -> list[DataRow]:
    """A case's variables with the titles the process's forms give them, options by their
    titles, yes/no for booleans and moments in Beijing time; empty values left out."""
    specs: dict[str, dict[str, Any]] = {}
    for schema in (forms or {}).values():
        for name, spec in (schema or {}).get("properties", {}).items():
            specs.setdefault(name, spec)
    rows = []
    for name, value in data.items():
        if value in (None, "", [], {}):
            continue
        spec = specs.get(name, {})
        titled = name in specs or name in ENGINE_FIELDS
        title = label(spec.get("title") or ENGINE_FIELDS.get(name) or name)
        if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
            rows.append(DataRow(name, title, json.dumps(value, ensure_ascii=False), structured=True, titled=titled))
        elif name in TIER_FIELDS and isinstance(value, str):
            rows.append(DataRow(name, title, tier_name(value), titled=titled))
        else:
            rows.append(DataRow(name, title, _shown(value, spec), titled=titled))
    return sorted(rows, key=lambda row: (not row.titled, row.title))


TIER_FIELDS = frozenset({"vip_tier", "previous_tier", "target_tier", "tier_by_assets"})


def _shown(value: Any, spec: dict[str, Any]) -> str:
    if isinstance(value, bool):
        return gettext("Yes") if value else gettext("No")
    if isinstance(value, list):
        item_spec = spec.get("items", {})
        return "、".join(_shown(v, item_spec) for v in value)
    titles = {option.value: option.title for option in _options(spec)}
    if value in titles and titles[value] != str(value):
        return titles[value]
    if isinstance(value, str) and (spec.get("format") == "date-time" or _MOMENT.match(value)):
        with contextlib.suppress(ValueError):
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is not None:
                return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    return str(value)


# -- what the renderer can show --------------------------------------------------------------
RENDERED_TYPES = ("string", "boolean", "integer", "number", "array")
RENDERED_FORMATS = ("date-time", "date")
# Keys other form tools use to pick a widget (react-jsonschema-form's uiSchema, form-js and
# hand-made ones): this page picks the widget from the type, so such a key does nothing.
WIDGET_KEYS = ("ui:widget", "ui:field", "ui:options", "x-widget", "widget")


@dataclass
class Support:
    field: str  # the field's name, "" for the form as a whole
    severity: str  # "error": the page cannot show it as meant; "warning": shown, checked only on the server
    message: str


def unsupported(schema: Any) -> list[Support]:
    """What :func:`fields_of` and the task page cannot render as the form means it, each
    naming the field and the type, format or widget: the form editor shows these before an
    owner saves a form nobody could fill in."""
    found: list[Support] = []
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        return [Support("", "error", gettext("A form is an object with properties (\"type\": \"object\")"))]
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return [Support("", "error", gettext("The form has no fields: add them under \"properties\""))]
    for name, spec in properties.items():
        found += _field_support(str(name), spec)
    for key in ("anyOf", "oneOf", "not", "dependentRequired", "dependentSchemas", "patternProperties"):
        if key in schema:
            found.append(Support("", "warning", gettext(
                "\"%(keyword)s\" at the top of the form is checked by the server when the form is sent, "
                "but the page does not show it", keyword=key)))
    for rule in schema.get("allOf") or []:
        if isinstance(rule, dict) and _rule_shown(rule) is False:
            found.append(Support("", "warning", gettext(
                "A rule in \"allOf\" that the page cannot show: its fields are marked required only after sending "
                "(the page shows if/properties with const, enum or contains, then/required)")))
    return found


def renderable(schema: dict[str, Any], found: list[Support]) -> dict[str, Any]:
    """``schema`` without what :func:`unsupported` found the page cannot render (those fields,
    and rules that are not objects), so the editor previews the rest of a form being typed."""
    bad = {item.field for item in found if item.severity == "error" and item.field}
    rules = [rule for rule in schema.get("allOf") or [] if isinstance(rule, dict)
             and isinstance(rule.get("if", {}), dict) and isinstance(rule.get("then", {}), dict)
             and all(isinstance(test, dict) for test in (rule.get("if", {}).get("properties") or {}).values())]
    return {**schema, "allOf": rules,
            "properties": {name: spec for name, spec in schema["properties"].items() if name not in bad}}


def _rule_shown(rule: dict[str, Any]) -> bool:
    condition = rule.get("if")
    then = rule.get("then")
    if not isinstance(condition, dict) or not isinstance(then, dict) or set(then) - {"required"}:
        return False
    tests = condition.get("properties") or {}
    if not tests or set(condition) - {"properties", "required"}:
        return False
    return all(isinstance(t, dict) and ("const" in t or "enum" in t or "const" in (t.get("contains") or {}))
               for t in tests.values())


def _field_support(name: str, spec: Any) -> list[Support]:
    if not isinstance(spec, dict):
        return [Support(name, "error", gettext("The field's schema is not an object"))]
    found = [Support(name, "error", gettext("Widget key \"%(key)s\" is not supported: the page picks the widget "
                                            "from the type", key=key)) for key in WIDGET_KEYS if key in spec]
    kind = spec.get("type")
    if isinstance(kind, list):
        return [*found, Support(name, "error", gettext(
            "Type lists (%(types)s) are not supported: give one type", types=", ".join(map(str, kind))))]
    if kind is None and not (spec.get("const") is True or "enum" in spec or "oneOf" in spec):
        return [*found, Support(name, "error", gettext("The field has no type"))]
    if kind is not None and kind not in RENDERED_TYPES:
        return [*found, Support(name, "error", gettext(
            "Type \"%(type)s\" is not supported (supported: %(supported)s)", type=kind,
            supported=", ".join(RENDERED_TYPES)))]
    if "oneOf" in spec and not all(isinstance(o, dict) and "const" in o for o in spec["oneOf"] or [None]):
        found.append(Support(name, "error", gettext("Every option in \"oneOf\" needs a \"const\" (and a title)")))
    if kind == "array":
        items = spec.get("items")
        item_kind = items.get("type") if isinstance(items, dict) else None
        if not isinstance(items, dict) or item_kind not in ("string", "integer", "number"):
            found.append(Support(name, "error", gettext(
                "Lists of \"%(type)s\" are not supported: a list holds options or lines of text",
                type=item_kind or "?")))
        elif item_kind != "string" and not _options(items):
            found.append(Support(name, "error", gettext(
                "A list of numbers needs options (enum or oneOf): free numbers one per line are not supported")))
    fmt = spec.get("format")
    if isinstance(fmt, str) and fmt not in RENDERED_FORMATS:
        if fmt in Draft202012Validator.FORMAT_CHECKER.checkers:
            found.append(Support(name, "warning", gettext(
                "Format \"%(format)s\" is shown as a plain text box; the server checks it", format=fmt)))
        else:
            found.append(Support(name, "error", gettext(
                "Format \"%(format)s\" is not supported: nothing could check it (use %(supported)s, or a pattern)",
                format=fmt, supported=", ".join(RENDERED_FORMATS))))
    if isinstance(spec.get("pattern"), str) and "(?" in spec["pattern"]:
        found.append(Support(name, "warning", gettext(
            "A pattern with inline flags is checked by the server only, not while typing")))
    return found
