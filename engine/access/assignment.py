"""Who a task is offered to.

A diagram names candidate groups three ways (architecture, "Assignment"):

* a fixed group key or name: ``compliance``, or a lane called after a group;
* ``branch:<role>``: that role in the instance's branch, i.e. group ``<branch>:<role>``;
* ``client:service_group``: the client's own service group, from the instance data
  (``service_group``), since clients belong to groups, never to individuals;

or an expression ``${…}`` that evaluates to a key or a list of keys.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine.bpmn.expressions import SafeEvaluator
from engine.models import Group, ProcessInstance


def resolve_candidate_groups(session: Session, evaluator: SafeEvaluator, raw: list[str], *,
                             instance: ProcessInstance, data: dict[str, Any]) -> list[str]:
    resolved: list[str] = []
    for entry in raw:
        if entry.startswith(("${", "#{")):
            value = evaluator.evaluate(entry, data)
            values = value if isinstance(value, (list, tuple)) else [value]
            resolved.extend(str(v) for v in values if v)
        elif entry.startswith("branch:"):
            role = entry.split(":", 1)[1]
            resolved.append(f"{instance.branch_code}:{role}" if instance.branch_code else role)
        elif entry.startswith("client:"):
            attribute = entry.split(":", 1)[1]
            value = data.get(attribute)
            if value:
                resolved.append(str(value))
        else:
            resolved.append(_group_key(session, entry))
    return list(dict.fromkeys(resolved))


_KEYS: dict[str, tuple[str, float]] = {}
KEY_CACHE_SECONDS = 60.0


def _group_key(session: Session, key_or_name: str) -> str:
    """Lanes carry display names (柜员); candidate groups carry keys (counter_staff).

    Cached for a minute per process: every task creation would otherwise pay a query for a
    mapping that changes when an administrator renames a group."""
    cached = _KEYS.get(key_or_name)
    if cached is not None and time.monotonic() - cached[1] < KEY_CACHE_SECONDS:
        return cached[0]
    key = _lookup_group_key(session, key_or_name)
    _KEYS[key_or_name] = (key, time.monotonic())
    return key


def _lookup_group_key(session: Session, key_or_name: str) -> str:
    row = session.execute(
        select(Group.key).where(or_(Group.key == key_or_name, Group.name == key_or_name))
        .order_by((Group.key == key_or_name).desc()).limit(1)
    ).scalar_one_or_none()
    return row or key_or_name
