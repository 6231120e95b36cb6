"""What a case variable may hold as a stored value: text a database can store (no U+0000,
no unpaired surrogate), nested no deeper than :data:`MAX_DEPTH`. Checked on every way data
comes in (engine.process.limits) and on the forms a deployment brings."""

from __future__ import annotations

import re
from typing import Any

from engine.errors import FieldError

# Nesting of one value (an object in a list in an object ... counts each level). Forms nest
# two or three levels; a deeper value is a mistake or an attack, and the workflow library
# copies case data recursively on every step.
MAX_DEPTH = 32
# A refusal lists at most this many problems: enough to fix a form, not a response as large
# as the hostile input that caused it.
MAX_REPORTED = 20

_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored as text, or None. PostgreSQL's text and JSON columns
    cannot hold U+0000, and an unpaired surrogate (which JSON's ``\\ud800`` escapes can
    carry) is not a character UTF-8 can encode."""
    if "\x00" in text:
        return "contains U+0000 (NUL), which no text can hold"
    if _SURROGATE.search(text):
        return "contains an unpaired surrogate (U+D800 to U+DFFF), which is not text"
    return None


def value_problems(value: Any, path: str = "", *, max_depth: int = MAX_DEPTH) -> list[FieldError]:
    """Each string or object key in ``value`` that :func:`text_problem` refuses, and each
    place nested deeper than ``max_depth``; ``field`` is the path, segments joined by
    ``/``. Iterative, so a deep value cannot exhaust the stack here."""
    problems: list[FieldError] = []
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack and len(problems) < MAX_REPORTED:
        item, where, depth = stack.pop()
        if isinstance(item, str):
            message = text_problem(item)
            if message:
                problems.append(FieldError(where, message))
        elif isinstance(item, (dict, list)):
            if depth >= max_depth:
                problems.append(FieldError(where, f"nested more than {max_depth} levels deep"))
                continue
            if isinstance(item, dict):
                for key, child in item.items():
                    inner = f"{where}/{key}" if where else str(key)
                    message = text_problem(key) if isinstance(key, str) else None
                    if message:
                        problems.append(FieldError(inner, f"the name {message}"))
                    stack.append((child, inner, depth + 1))
            else:
                stack.extend((child, f"{where}/{index}" if where else str(index), depth + 1)
                             for index, child in enumerate(item))
    return sorted(problems, key=lambda p: p.field)
