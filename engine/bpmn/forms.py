"""Task forms are JSON Schemas (Draft 2020-12), validated with their ``format`` keywords
checked: a form that says ``"format": "date-time"`` gets a timestamp with its UTC offset,
not "昨天下午", and a later step that reads the value as a moment can rely on it.

jsonschema checks a format only when the package behind it is installed (``date-time``
needs rfc3339-validator, a setup.cfg requirement); a format nobody checks would pass any
text, so the deploy lint refuses a form that uses one (:func:`unchecked_formats`).
"""

from __future__ import annotations

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
    names: set[str] = set()
    parts = [schema]
    while parts:
        part = parts.pop()
        if not isinstance(part, dict):
            continue
        names.update(part.get("properties") or {})
        parts += [child for key in ("allOf", "anyOf", "oneOf") for child in part.get(key) or []]
        parts += [part[key] for key in ("if", "then", "else") if key in part]
    return names
