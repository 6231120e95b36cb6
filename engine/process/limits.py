"""What the engine takes as case data: text a database can store, values nested no deeper
than ``engine.bpmn.values.MAX_DEPTH``, and no more than the settings allow for one variable
and one case.

Every way in checks here (starting a case, a message, completing a task, correcting a failed
case's data, a schedule's start data), so whichever adapter calls the service, an oversized
or unstorable value is refused before anything is saved, with the variable named.
"""

from __future__ import annotations

import json
from typing import Any

from engine.bpmn.values import MAX_REPORTED, text_problem, value_problems
from engine.config import Settings
from engine.errors import DataInvalid, DataTooLarge, FieldError


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as the compact UTF-8 JSON a case stores."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode())


def check_variables(settings: Settings, values: dict[str, Any], *, field: str = "") -> None:
    """Refuse variables a case cannot take: text or nesting :func:`value_problems` finds
    (:class:`DataInvalid`, 422), then any one variable over ``max_variable_bytes``
    (:class:`DataTooLarge`, 413). ``field`` prefixes the names in the errors (``data``,
    ``payload``, ``set``)."""
    problems = value_problems(values, field)
    if problems:
        raise DataInvalid(f"{len(problems)} value(s) cannot be stored; nothing was changed", problems)
    limit = settings.max_variable_bytes
    oversized = []
    for name, value in values.items():
        size = encoded_size(value)
        if size > limit:
            oversized.append(FieldError(f"{field}/{name}" if field else name,
                                        f"{size} bytes; one variable may hold at most {limit} bytes"))
    if oversized:
        raise DataTooLarge(f"{len(oversized)} variable(s) over {limit} bytes; nothing was changed",
                           oversized[:MAX_REPORTED], limit_bytes=limit)


def check_case(settings: Settings, variables: dict[str, Any], *, field: str = "") -> None:
    """Refuse a change that leaves the case's variables, all together, over
    ``max_case_bytes`` (:class:`DataTooLarge`, 413)."""
    limit = settings.max_case_bytes
    size = encoded_size(variables)
    if size > limit:
        raise DataTooLarge(
            f"the case's variables would take {size} bytes, over the {limit} a case may hold; nothing was changed",
            [FieldError(field, f"{size} bytes for the case; at most {limit} bytes")], limit_bytes=limit)


def check_text(**named: str | None) -> None:
    """Refuse names, keys and reasons (not variables) that cannot be stored as text, naming
    the argument: they are columns and query parameters, where U+0000 fails in PostgreSQL."""
    problems = [FieldError(name, message) for name, text in named.items()
                if text is not None and (message := text_problem(text))]
    if problems:
        raise DataInvalid(f"{len(problems)} value(s) cannot be stored; nothing was changed", problems)
