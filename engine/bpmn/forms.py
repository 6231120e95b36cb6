"""Task forms are JSON Schemas (Draft 2020-12), validated with their ``format`` keywords
checked: a form that says ``"format": "date-time"`` gets a timestamp with its UTC offset,
not "昨天下午", and a later step that reads the value as a moment can rely on it.

jsonschema checks a format only when the package behind it is installed (``date-time``
needs rfc3339-validator, a setup.cfg requirement); a format nobody checks would pass any
text, so the deploy lint refuses a form that uses one (:func:`unchecked_formats`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

FORMAT_CHECKER: FormatChecker = Draft202012Validator.FORMAT_CHECKER


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    return Draft202012Validator(schema, format_checker=FORMAT_CHECKER)


def unchecked_formats(schema: Any) -> list[str]:
    """The ``format`` values anywhere in ``schema`` that the checker cannot check, sorted."""
    found: set[str] = set()
    parts = [schema]
    while parts:
        part = parts.pop()
        if isinstance(part, dict):
            value = part.get("format")
            if isinstance(value, str) and value not in FORMAT_CHECKER.checkers:
                found.add(value)
            parts.extend(v for k, v in part.items() if k not in ("const", "enum", "default", "examples"))
        elif isinstance(part, list):
            parts.extend(part)
    return sorted(found)


_OPEN_KEYWORDS = ("additionalProperties", "unevaluatedProperties")


def declared_fields(schema: Any) -> set[str] | None:
    """The top-level fields a form declares (``properties``, in its ``allOf``/``anyOf``/
    ``oneOf`` and ``if``/``then``/``else`` parts too), or None when the form itself says what
    else it takes (``additionalProperties`` or ``unevaluatedProperties``): the process owner's
    choice stands. A form that says nothing takes only its declared fields, so a completion
    cannot carry variables the process owner never put on the form."""
    if not isinstance(schema, dict) or any(key in schema for key in _OPEN_KEYWORDS):
        return None
    return {name for part in _parts(schema, ("if", "then", "else")) for name in part.get("properties") or {}}


def _parts(schema: Any, also: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """``schema`` and every sub-schema under its ``allOf``/``anyOf``/``oneOf`` lists and under
    the single-schema keywords ``also`` names, at any depth (what is not an object is passed
    over): the places a form's fields can be declared or tested."""
    parts = [schema]
    while parts:
        part = parts.pop()
        if not isinstance(part, dict):
            continue
        yield part
        parts += [child for key in ("allOf", "anyOf", "oneOf") for child in part.get(key) or []]
        parts += [part[key] for key in also if key in part]


def shape_problems(schema: Any) -> list[str]:
    """Fields the task page could not show as a field: JSON Schema lets a property be ``true``
    or ``false`` (anything, nothing) and a list's ``items`` likewise, but a person fills in a
    field only from an object that says its type; such a form would be deployed and then fail
    on every task page that opens it."""
    if not isinstance(schema, dict):
        return ["a form is a JSON object"]
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return ["'properties' must be an object naming the form's fields"]
    problems = []
    for name, spec in properties.items():
        if not isinstance(spec, dict):
            problems.append(f"field {name!r} must be described by an object such as {{\"type\": \"string\"}}, "
                            f"not {json.dumps(spec)}")
        elif "items" in spec and not isinstance(spec["items"], dict):
            problems.append(f"field {name!r}: 'items' must be an object such as {{\"type\": \"string\"}}, "
                            f"not {json.dumps(spec['items'])}")
    return problems


def condition_problems(schema: Any) -> list[str]:
    """What is wrong with a form's conditional fields (``allOf: [{if, then: {required}}]``):
    a condition that tests a field the form does not declare can never hold as meant (a typo
    in a field name makes the rule silently dead), a rule that makes an undeclared field
    required can never be satisfied by the form's own inputs, and a condition that waits for
    a value none of the field's options has never holds. Empty for a form that declares no
    fields of its own or takes any field (``additionalProperties``)."""
    if declared_fields(schema) is None or not isinstance(schema, dict):
        return []
    fields = _input_fields(schema)
    if not fields:
        return []
    properties = schema.get("properties") or {}
    problems: list[str] = []
    for number, rule in enumerate(schema.get("allOf") or [], start=1):
        if not isinstance(rule, dict) or "if" not in rule:
            continue
        where = f"allOf rule {number}"
        for name in sorted(_condition_names(rule["if"])):
            if name not in fields:
                problems.append(f"{where}: the condition tests {name!r}, which is not a field of this form "
                                f"(fields: {', '.join(sorted(fields))})")
        for name, wanted in _condition_values(rule["if"]):
            options = _option_values(properties.get(name))
            missing = [v for v in wanted if options is not None and v not in options]
            if missing:
                problems.append(f"{where}: the condition waits for {name!r} = "
                                f"{', '.join(repr(v) for v in missing)}, which is not one of its options")
        for part in ("then", "else"):
            required = (rule.get(part) or {}).get("required") or [] if isinstance(rule.get(part), dict) else []
            for name in required:
                if name not in fields:
                    problems.append(f"{where}: {part!r} makes {name!r} required, which is not a field of this form")
    return problems


def _input_fields(schema: dict[str, Any]) -> set[str]:
    """The fields a form has inputs for: ``properties`` at the top and in its ``allOf``/
    ``anyOf``/``oneOf`` parts and their ``then``/``else``, but not the names an ``if`` only
    tests (those are what is being checked)."""
    return {name for part in _parts(schema, ("then", "else")) for name in part.get("properties") or {}}


def _condition_names(condition: Any) -> set[str]:
    """The field names an ``if`` tests: its ``properties`` and ``required``, also under
    ``not``, ``allOf``, ``anyOf`` and ``oneOf``."""
    names: set[str] = set()
    for part in _parts(condition, ("not",)):
        names.update(part.get("properties") or {})
        names.update(n for n in part.get("required") or [] if isinstance(n, str))
    return names


def _condition_values(condition: Any) -> list[tuple[str, list[Any]]]:
    """(field, the values it waits for) for each ``const``/``enum``/``contains.const`` test
    directly under the condition's ``properties``."""
    found = []
    for name, test in ((condition or {}).get("properties") or {}).items() if isinstance(condition, dict) else []:
        if not isinstance(test, dict):
            continue
        if "const" in test:
            found.append((name, [test["const"]]))
        elif isinstance(test.get("enum"), list):
            found.append((name, list(test["enum"])))
        elif isinstance(test.get("contains"), dict) and "const" in test["contains"]:
            found.append((name, [test["contains"]["const"]]))
    return found


def _option_values(spec: Any) -> list[Any] | None:
    """A field's option values (``enum``, ``oneOf`` consts, or those of its array items), or
    None when it is free input (or a yes/no field, whose values are true and false)."""
    if not isinstance(spec, dict):
        return None
    if spec.get("type") == "array" and isinstance(spec.get("items"), dict):
        spec = spec["items"]
    if isinstance(spec.get("enum"), list):
        return list(spec["enum"])
    if isinstance(spec.get("oneOf"), list) and all(isinstance(o, dict) and "const" in o for o in spec["oneOf"]):
        return [o["const"] for o in spec["oneOf"]]
    if spec.get("type") == "boolean":
        return [True, False]
    return None


_META = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=FORMAT_CHECKER)


def schema_errors(schema: Any, *, limit: int = 20) -> list[str]:
    """Every way ``schema`` breaks the JSON Schema (2020-12) meta-schema, each led by where
    (a JSON pointer such as ``/properties/amount/minimum``), at most ``limit``: the form
    editor lists them all, where a deploy names the best match."""
    found = []
    for error in sorted(_META.iter_errors(schema), key=lambda e: [str(p) for p in e.absolute_path]):
        where = "/" + "/".join(str(p) for p in error.absolute_path)
        found.append(f"{where}: {error.message}")
        if len(found) == limit:
            break
    return found
