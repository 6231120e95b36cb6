"""Case numbers (docs/domain.md#case-numbers): ``CMP-20250612-0001``, ``RET-…``, ``CB-…``,
``VIP-…``.

A process declares the format in its process property ``businessKeyFormat``; an instance
started without a business key gets the next number. Tokens:

* ``{yyyymmdd}``, ``{yyyy}``, ``{mm}``, ``{dd}``: the start date in Asia/Shanghai;
* ``{branch}``: the instance's branch code;
* ``{seq}`` or ``{seq:N}``: the counter, zero-padded to N digits (required).

The counter is named after everything but the sequence, so a format with the date restarts
at 1 every day and one with the branch counts per branch. Numbers come from one atomic
upsert on ``bpm_counter``: two starts at the same moment never share a number, and a
rolled-back start gives its number back (a gap-free register is what 监管 expects to see).
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.calendars import SHANGHAI
from engine.errors import InvalidInput
from engine.models import Counter

_TOKEN = re.compile(r"\{([a-z]+)(?::(\d))?\}")
_DATE_TOKENS = {"yyyymmdd": "%Y%m%d", "yyyy": "%Y", "mm": "%m", "dd": "%d"}
MAX_KEY_LENGTH = 128


def check_format(fmt: str) -> str | None:
    """Why ``fmt`` is unusable, or None."""
    tokens = _TOKEN.findall(fmt)
    unknown = sorted({name for name, _ in tokens if name not in (*_DATE_TOKENS, "branch", "seq")})
    if unknown:
        return f"unknown token(s) {', '.join('{' + u + '}' for u in unknown)}; use {{yyyymmdd}}, {{yyyy}}, " \
               "{mm}, {dd}, {branch} and {seq} or {seq:4}"
    if sum(1 for name, _ in tokens if name == "seq") != 1:
        return "the format needs exactly one {seq} (or {seq:4} for four digits)"
    if "{" in _TOKEN.sub("", fmt) or "}" in _TOKEN.sub("", fmt):
        return "unbalanced braces: tokens look like {yyyymmdd} or {seq:4}"
    return None


def next_business_key(session: Session, fmt: str, *, now: datetime, branch_code: str | None) -> str:
    problem = check_format(fmt)
    if problem is not None:
        raise InvalidInput(f"businessKeyFormat {fmt!r}: {problem}")
    local = now.astimezone(SHANGHAI)
    width = 1

    def render(match: re.Match[str]) -> str:
        nonlocal width
        name, digits = match.group(1), match.group(2)
        if name == "seq":
            width = int(digits or 1)
            return "\0"
        if name == "branch":
            if not branch_code:
                raise InvalidInput(f"businessKeyFormat {fmt!r} needs the instance's branch_code")
            return branch_code
        return local.strftime(_DATE_TOKENS[name])

    template = _TOKEN.sub(render, fmt)
    value = _increment(session, template.replace("\0", "#"))
    key = template.replace("\0", str(value).zfill(width))
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidInput(f"businessKeyFormat {fmt!r} gives keys longer than {MAX_KEY_LENGTH} characters")
    return key


def _increment(session: Session, name: str) -> int:
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Counter).values(name=name, value=1)
    statement = statement.on_conflict_do_update(
        index_elements=[Counter.name], set_={"value": Counter.value + 1}
    ).returning(Counter.value)
    return int(session.connection().execute(statement).scalar_one())
