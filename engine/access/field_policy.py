"""Field-level visibility of case data (docs/domain.md#case-visibility): which of a case's
variables a reader is shown and which are withheld, per process and per role, declared as
data in ``workflows/field_policy/<process>.json`` so a process owner changes it without code.

Case-level visibility decides whether a reader may open a case at all (``engine.instances``);
this module decides, for a reader who may, which of its variables they see. Identifier masking
(``engine.access.masking``) is separate and applies to everything shown, for every reader, whatever
the policy withholds.

A policy file names *field groups* (restricted variables, by what they are: a callback's
satisfaction summary, its staff-conduct answers, a complaint's narrative) and, per role, the
groups that role sees, always or when a condition on the reader and the case holds::

    {"process_key": "callback",
     "field_groups": {
       "summary": {"title": "满意度 Satisfaction", "fields": ["service_satisfaction"]},
       "staff_conduct": {"title": "员工执业行为 Staff conduct", "fields": ["staff_operated_account"],
                         "withhold_when": [{"reader_implicated_by": ["subject_staff_ids"]}]}},
     "roles": {
       "compliance": [{"see": ["summary", "staff_conduct"]}],
       "service_group": [{"see": ["summary"]}],
       "call_center_agent": [{"see": ["summary", "staff_conduct"],
                              "when": {"reader_completed": ["questionnaire"]}}]}}

The rules:

- a variable in no field group is shown to whoever may read the case;
- a restricted variable is shown when one of the reader's roles has a grant of its group whose
  ``when`` holds (no ``when``: always). Roles are the reader's job and system roles, plus
  ``service_group`` for a member of any service group (group membership comes on top of the
  job role, docs/domain.md#roles);
- a group's ``withhold_when`` withholds it whatever the grants (recusal,
  docs/domain.md#separation-of-duties: the subject of a complaint and their service group
  never read its narrative);
- a condition that cannot be decided withholds (fail closed): a list of cases carries only the
  report facts, not every variable a condition reads.

Conditions (the keys of one ``when`` must all hold; a list inside one key means any of them):
``reader_completed`` (element ids: the reader completed one of these steps of the case),
``reader_took_part`` (true: the reader is or was assignee, owner or completer of a step),
``reader_named_in`` (variables holding a username or a list of them),
``reader_group_named_in`` (variables holding a group key, e.g. the client's ``service_group``),
``reader_implicated_by`` (variables listing staff usernames: the reader is one of them or shares
a service group with one), ``case_matches`` (variable -> value or list of allowed values).

Withheld variables are left out of the response rather than replaced by a placeholder (a
client summing satisfaction scores must not meet a marker string in an integer field), and the
response lists them, by group, under ``withheld``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.masking import mask_identifiers, mask_text
from engine.access.roles import JOB_ROLES, SYSTEM_ROLES
from engine.audit import SYSTEM_STREAM, record_system_event
from engine.errors import FieldPolicyInvalid
from engine.models import AuditEvent, AuditStream, ProcessInstance, ServiceGroup, StaffProfile, Task, User

DIRECTORY = "field_policy"  # under the workflows directory, beside sla/ and forms/
SERVICE_GROUP_MEMBER = "service_group"
KNOWN_ROLES = frozenset({*JOB_ROLES, *SYSTEM_ROLES, SERVICE_GROUP_MEMBER})
# Where audit events carry case variables: the form a step was completed with and the start
# data ("data"), a message's payload, a data correction's values before and after.
EVENT_VARIABLE_KEYS = ("data", "payload", "old", "new")

# -- the file format ------------------------------------------------------------------------
_IDENTIFIER = r"^[^\W\d]\w*$"  # what an expression can read as a variable (Unicode letters too)
_ELEMENT_ID = r"^[^\W\d][\w.-]*$"  # a BPMN id is an XML name
_NOTES = {"type": ["string", "array"], "items": {"type": "string"}}


def _names(pattern: str) -> dict[str, Any]:
    """One name or a non-empty list of them (patterns apply to strings, items to lists)."""
    return {"type": ["string", "array"], "pattern": pattern, "minItems": 1, "uniqueItems": True,
            "items": {"type": "string", "pattern": pattern}}


_SCALAR = ["string", "number", "boolean", "null"]
_CONDITION = {
    "type": "object", "minProperties": 1, "additionalProperties": False,
    "properties": {
        "reader_completed": _names(_ELEMENT_ID),
        "reader_took_part": {"const": True},
        "reader_named_in": _names(_IDENTIFIER),
        "reader_group_named_in": _names(_IDENTIFIER),
        "reader_implicated_by": _names(_IDENTIFIER),
        "case_matches": {"type": "object", "minProperties": 1, "propertyNames": {"pattern": _IDENTIFIER},
                         "additionalProperties": {"type": [*_SCALAR, "array"], "items": {"type": _SCALAR}}},
    },
}
_SCHEMA = {
    "type": "object", "required": ["process_key", "field_groups", "roles"], "additionalProperties": False,
    "properties": {
        "process_key": {"type": "string", "pattern": _ELEMENT_ID},
        "title": {"type": "string"},
        "notes": _NOTES,
        "field_groups": {
            "type": "object", "minProperties": 1, "propertyNames": {"pattern": _IDENTIFIER},
            "additionalProperties": {
                "type": "object", "required": ["fields"], "additionalProperties": False,
                "properties": {
                    "title": {"type": "string"},
                    "notes": _NOTES,
                    "fields": {"type": "array", "minItems": 1, "uniqueItems": True,
                               "items": {"type": "string", "pattern": _IDENTIFIER}},
                    "withhold_when": {"type": "array", "items": _CONDITION},
                },
            },
        },
        "roles": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {
                "type": "object", "required": ["see"], "additionalProperties": False,
                "properties": {
                    "see": {"type": "array", "minItems": 1, "uniqueItems": True,
                            "items": {"type": "string", "pattern": _IDENTIFIER}},
                    "when": _CONDITION,
                    "notes": _NOTES,
                },
            }},
        },
    },
}
_VALIDATOR = Draft202012Validator(_SCHEMA)


@dataclass(frozen=True)
class Condition:
    completed: frozenset[str] = frozenset()
    took_part: bool = False
    named_in: tuple[str, ...] = ()
    group_named_in: tuple[str, ...] = ()
    implicated_by: tuple[str, ...] = ()
    matches: tuple[tuple[str, tuple[Any, ...]], ...] = ()


@dataclass(frozen=True)
class FieldGroup:
    key: str
    title: str
    fields: frozenset[str]
    withhold_when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class Grant:
    groups: frozenset[str]
    when: Condition | None = None


@dataclass(frozen=True)
class ProcessPolicy:
    process_key: str
    source: str
    groups: Mapping[str, FieldGroup]
    grants: Mapping[str, tuple[Grant, ...]]


@dataclass(frozen=True)
class FieldPolicy:
    """Every process's policy, by process key. A process without one restricts nothing."""

    processes: Mapping[str, ProcessPolicy] = field(default_factory=dict)
    # The files it was read from, by name, as read: what ``record_change`` audits.
    files: Mapping[str, bytes] = field(default_factory=dict)

    def of(self, process_key: str) -> ProcessPolicy | None:
        return self.processes.get(process_key)


def load_directory(directory: Path) -> FieldPolicy:
    """Every ``*.json`` policy in ``directory`` (none when it does not exist), checked all at
    once: one bad file refuses the lot (FieldPolicyInvalid, each problem located as
    ``file: path: message``), so a typo can never quietly widen or narrow who sees what."""
    if not directory.is_dir():
        return FieldPolicy()
    processes: dict[str, ProcessPolicy] = {}
    claimed: dict[str, str] = {}  # process key -> the first file naming it, valid or not
    problems: list[str] = []
    files: dict[str, bytes] = {}
    for path in sorted(directory.glob("*.json")):
        source = f"{directory.name}/{path.name}"
        try:
            files[path.name] = path.read_bytes()
            raw = json.loads(files[path.name].decode("utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"{source}:{exc.lineno}: not JSON: {exc.msg}")
            continue
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{source}: cannot be read: {exc}")
            continue
        policy, found = _parse(raw, source)
        problems += found
        key = raw.get("process_key") if isinstance(raw, dict) else None
        if isinstance(key, str) and key in claimed:
            problems.append(f"{source}: process_key: {key!r} already has a policy ({claimed[key]}); "
                            "one file per process")
        elif isinstance(key, str):
            claimed[key] = source
            if policy is not None:
                processes[key] = policy
    if problems:
        raise FieldPolicyInvalid(problems)
    return FieldPolicy(processes, files)


CHANGED = "field_policy.changed"  # the audit event of a policy taking effect


def record_change(session: Session, policy: FieldPolicy, *, at: datetime, actor: str) -> AuditEvent | None:
    """Put the policy files the app is about to serve in the system audit trail when they
    differ from those it last recorded (at the first start: all of them), so compliance can
    tell from the database which rules decided who saw what, and since when.

    The event lists the files added, changed and removed, every file's sha256 and the content
    of the added and changed ones; a start with the same files records nothing. ``policy``
    is what ``load_directory`` accepted, with the bytes it read: what is recorded is what is
    served, even if a file changes on disk meanwhile. Two app processes starting at once
    record it once: the system stream's row (there from the first deployment or user on) is
    locked before the last record is read, and SQLite serializes the two transactions anyway."""
    files = policy.files
    digests = {name: hashlib.sha256(content).hexdigest() for name, content in files.items()}
    session.execute(select(AuditStream.seq).where(AuditStream.stream == SYSTEM_STREAM).with_for_update())
    last = session.execute(
        select(AuditEvent.data).where(AuditEvent.stream == SYSTEM_STREAM, AuditEvent.kind == CHANGED)
        .order_by(AuditEvent.seq.desc()).limit(1)
    ).scalar_one_or_none()
    before: dict[str, str] = (last or {}).get("files", {})
    if digests == before:
        return None
    added = [n for n in digests if n not in before]
    changed = [n for n in digests if n in before and before[n] != digests[n]]
    removed = [n for n in before if n not in digests]
    return record_system_event(session, kind=CHANGED, actor=actor, at=at, data={
        "directory": DIRECTORY, "files": digests, "added": added, "changed": changed, "removed": removed,
        "content": {n: json.loads(files[n]) for n in added + changed},
    })


def parse(raw: Any, *, source: str = "policy") -> ProcessPolicy:
    """One process's policy from its JSON value; FieldPolicyInvalid lists every problem."""
    policy, problems = _parse(raw, source)
    if problems or policy is None:
        raise FieldPolicyInvalid(problems)
    return policy


def _parse(raw: Any, source: str) -> tuple[ProcessPolicy | None, list[str]]:
    errors = sorted(_VALIDATOR.iter_errors(raw), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [f"{source}: {'/'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}"
                for e in errors]
    # Role names are checked even when the shape is wrong: a misspelt role is the mistake a
    # process owner most likely makes, and it should not wait for the next attempt.
    roles = raw.get("roles") if isinstance(raw, dict) else None
    for role in roles if isinstance(roles, dict) else ():
        if role not in KNOWN_ROLES:
            problems.append(f"{source}: roles/{role}: unknown role {role!r}; a role is a job role "
                            f"({', '.join(sorted(JOB_ROLES))}), a system role ({', '.join(sorted(SYSTEM_ROLES))}) "
                            f"or {SERVICE_GROUP_MEMBER!r} (a member of any service group)")
    if errors:
        return None, problems
    groups: dict[str, FieldGroup] = {}
    owner: dict[str, str] = {}
    for key, spec in raw["field_groups"].items():
        for name in spec["fields"]:
            if name in owner:
                problems.append(f"{source}: field_groups/{key}/fields: {name!r} is already in field group "
                                f"{owner[name]!r}; a variable belongs to one group")
            owner.setdefault(name, key)
        groups[key] = FieldGroup(key=key, title=spec.get("title", key), fields=frozenset(spec["fields"]),
                                 withhold_when=tuple(_condition(c) for c in spec.get("withhold_when", [])))
    grants: dict[str, tuple[Grant, ...]] = {}
    for role, entries in raw["roles"].items():
        for index, entry in enumerate(entries):
            for group in entry["see"]:
                if group not in groups:
                    problems.append(f"{source}: roles/{role}/{index}/see: no field group {group!r} "
                                    f"(defined: {', '.join(sorted(groups))})")
        grants[role] = tuple(Grant(groups=frozenset(e["see"]),
                                   when=_condition(e["when"]) if "when" in e else None) for e in entries)
    if problems:
        return None, problems
    return ProcessPolicy(process_key=raw["process_key"], source=source, groups=groups, grants=grants), []


def _listed(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _condition(raw: dict[str, Any]) -> Condition:
    return Condition(
        completed=frozenset(_listed(raw.get("reader_completed", []))),
        took_part=bool(raw.get("reader_took_part", False)),
        named_in=_listed(raw.get("reader_named_in", [])),
        group_named_in=_listed(raw.get("reader_group_named_in", [])),
        implicated_by=_listed(raw.get("reader_implicated_by", [])),
        matches=tuple((name, tuple(v) if isinstance(v, list) else (v,))
                      for name, v in raw.get("case_matches", {}).items()),
    )


# -- deciding ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    """The caller as the policy sees them: roles as they hold them (``Actor.has_role`` would
    make an administrator every role, and running the system is no reason to read case
    narratives), and the service groups they are in."""

    username: str
    groups: frozenset[str]
    roles: frozenset[str]
    service_groups: frozenset[str]


def reader_of(session: Session, actor: Actor) -> Reader:
    service_groups = frozenset(session.execute(
        select(ServiceGroup.key).where(ServiceGroup.key.in_(sorted(actor.groups)))).scalars()) if actor.groups else (
        frozenset())
    roles = frozenset(g for g in actor.groups if g in KNOWN_ROLES)
    return Reader(username=actor.username, groups=actor.groups, service_groups=service_groups,
                  roles=roles | ({SERVICE_GROUP_MEMBER} if service_groups else frozenset()))


_UNKNOWN: Any = object()


@dataclass
class _Case:
    """What conditions read about one case. ``complete`` is False when only the report facts
    are known: a variable missing from them is unknown, not unset."""

    variables: Mapping[str, Any]
    complete: bool
    completed: frozenset[str]
    took_part: bool
    staff_groups: Mapping[str, str | None]

    def value(self, name: str) -> Any:
        if name in self.variables:
            return self.variables[name]
        return None if self.complete else _UNKNOWN


def _as_names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [str(v) for v in value if v is not None]
    return [str(value)]


def _any_variable(case: _Case, names: Sequence[str], test: Any) -> bool | None:
    """Whether ``test`` holds for one of the variables: True, False, or None when it holds for
    none of the known ones and some are unknown."""
    unknown = False
    for name in names:
        value = case.value(name)
        if value is _UNKNOWN:
            unknown = True
        elif test(value):
            return True
    return None if unknown else False


def _holds(condition: Condition, reader: Reader, case: _Case) -> bool | None:
    results: list[bool | None] = []
    if condition.completed:
        results.append(bool(condition.completed & case.completed))
    if condition.took_part:
        results.append(case.took_part)
    if condition.named_in:
        results.append(_any_variable(case, condition.named_in, lambda v: reader.username in _as_names(v)))
    if condition.group_named_in:
        results.append(_any_variable(case, condition.group_named_in,
                                     lambda v: not reader.groups.isdisjoint(_as_names(v))))
    if condition.implicated_by:
        def implicated(value: Any) -> bool:
            staff = _as_names(value)
            their_groups = {case.staff_groups.get(name) for name in staff} - {None}
            return reader.username in staff or not reader.service_groups.isdisjoint(their_groups)

        results.append(_any_variable(case, condition.implicated_by, implicated))
    for name, allowed in condition.matches:
        value = case.value(name)
        results.append(None if value is _UNKNOWN else value in allowed)
    if False in results:
        return False
    return None if None in results else True


@dataclass(frozen=True)
class Withheld:
    """Variables of one field group left out of a response."""

    group: str
    title: str
    fields: list[str]


@dataclass(frozen=True)
class Decision:
    """What one reader may not see of one case: each withheld variable with its group."""

    hidden: Mapping[str, FieldGroup] = field(default_factory=dict)

    def screen(self, values: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, set[str]]:
        """A copy of ``values`` without the withheld variables, and the names left out."""
        if values is None:
            return None, set()
        kept = {name: value for name, value in values.items() if name not in self.hidden}
        # What is shown is masked like the registry's identifiers (docs/domain.md#masking),
        # every reader alike.
        return mask_identifiers(kept), set(values) - set(kept)

    def report(self, names: Iterable[str]) -> list[Withheld]:
        by_group: dict[str, list[str]] = {}
        for name in sorted(set(names)):
            by_group.setdefault(self.hidden[name].key, []).append(name)
        return [Withheld(group=key, title=self.hidden[fields[0]].title, fields=fields)
                for key, fields in sorted(by_group.items())]


NOTHING_WITHHELD = Decision()


def _decide(policy: ProcessPolicy | None, reader: Reader, case: _Case) -> Decision:
    if policy is None:
        return NOTHING_WITHHELD
    granted: set[str] = set()
    for role in sorted(reader.roles):
        for grant in policy.grants.get(role, ()):
            if not grant.groups <= granted and (grant.when is None or _holds(grant.when, reader, case) is True):
                granted |= grant.groups
    hidden: dict[str, FieldGroup] = {}
    for group in policy.groups.values():
        # A withholding rule that holds, or cannot be decided, wins over every grant.
        if group.key not in granted or any(_holds(c, reader, case) is not False for c in group.withhold_when):
            hidden.update(dict.fromkeys(group.fields, group))
    return Decision(hidden)


def _involvement(session: Session, username: str, instance_ids: list[int]) -> dict[int, set[str]]:
    """Per case, the steps the reader has a hand in: ``took_part`` reads the keys, the
    completed element ids are the values (one query for a whole page of cases)."""
    found: dict[int, set[str]] = {}
    if not instance_ids:
        return found
    rows = session.execute(select(Task.instance_id, Task.element_id, Task.completed_by).where(
        Task.instance_id.in_(instance_ids),
        or_(Task.assignee == username, Task.owner == username, Task.completed_by == username)))
    for instance_id, element_id, completed_by in rows:
        done = found.setdefault(instance_id, set())
        if completed_by == username:
            done.add(element_id)
    return found


def _staff_groups(session: Session, policies: Iterable[ProcessPolicy | None],
                  variables: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """The service group of every staff member a ``reader_implicated_by`` variable names."""
    watched = {name for policy in policies if policy is not None for group in policy.groups.values()
               for condition in group.withhold_when for name in condition.implicated_by}
    watched |= {name for policy in policies if policy is not None for grants in policy.grants.values()
                for grant in grants if grant.when is not None for name in grant.when.implicated_by}
    staff = {s for values in variables for name in watched for s in _as_names(values.get(name))}
    if not staff:
        return {}
    return dict(session.execute(select(User.username, StaffProfile.service_group_key)
                                .join(StaffProfile, StaffProfile.user_id == User.id)
                                .where(User.username.in_(sorted(staff)))).all())


def _decisions(session: Session, policy: FieldPolicy, reader: Reader, instances: Sequence[ProcessInstance],
               variables: Sequence[Mapping[str, Any]], *, complete: bool) -> list[Decision]:
    policies = [policy.of(i.process_key) for i in instances]
    if not any(policies):
        return [NOTHING_WITHHELD] * len(instances)
    involved = _involvement(session, reader.username, [i.id for i, p in zip(instances, policies, strict=True) if p])
    staff_groups = _staff_groups(session, policies, variables)
    return [_decide(p, reader, _Case(variables=values, complete=complete,
                                     completed=frozenset(involved.get(i.id, ())), took_part=i.id in involved,
                                     staff_groups=staff_groups))
            for i, p, values in zip(instances, policies, variables, strict=True)]


# -- screening responses ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScreenedCase:
    """A case as one reader is shown it: ``facts`` and ``data`` without the withheld
    variables (``data`` None when only the facts were asked for), and what was left out."""

    instance: ProcessInstance
    facts: dict[str, Any] | None
    data: dict[str, Any] | None
    withheld: list[Withheld]
    # Why a failed case failed, masked: a step's error may quote the data it choked on.
    error: str | None = None


@dataclass(frozen=True)
class ScreenedEvent:
    seq: int
    kind: str
    actor: str | None
    occurred_at: datetime
    task_uuid: str | None
    data: dict[str, Any]
    withheld: list[Withheld]


def _error(instance: ProcessInstance) -> str | None:
    return mask_text(instance.error) if instance.error else instance.error


def screen_case(session: Session, policy: FieldPolicy, *, actor: Actor, instance: ProcessInstance,
                data: Mapping[str, Any]) -> ScreenedCase:
    """One case with its variables (``instances.data_of``): conditions read all of them."""
    [decision] = _decisions(session, policy, reader_of(session, actor), [instance], [data], complete=True)
    facts, from_facts = decision.screen(instance.facts)
    shown, from_data = decision.screen(data)
    return ScreenedCase(instance, facts, shown, decision.report(from_facts | from_data), _error(instance))


def screen_cases(session: Session, policy: FieldPolicy, *, actor: Actor,
                 instances: Sequence[ProcessInstance]) -> list[ScreenedCase]:
    """Cases by their report facts only (lists, and the answer to a start, cancel, retry or
    message): loading every case's variables would cost a workflow load each, so a condition
    that reads a variable the facts do not carry withholds; the case's own page shows more."""
    decisions = _decisions(session, policy, reader_of(session, actor), instances,
                           [i.facts or {} for i in instances], complete=False)
    screened = []
    for instance, decision in zip(instances, decisions, strict=True):
        facts, left_out = decision.screen(instance.facts)
        screened.append(ScreenedCase(instance, facts, None, decision.report(left_out), _error(instance)))
    return screened


def screen_history(session: Session, policy: FieldPolicy, *, actor: Actor, instance: ProcessInstance,
                   data: Mapping[str, Any], events: Sequence[AuditEvent]) -> list[ScreenedEvent]:
    """The audit trail with the withheld variables taken out of every event that carries
    variables (:data:`EVENT_VARIABLE_KEYS`), decided once from the case's current variables.
    A form the reader completed themselves is shown as they entered it: it tells them nothing
    new (the caller sees their own call's answers whatever the policy says of others')."""
    [decision] = _decisions(session, policy, reader_of(session, actor), [instance], [data], complete=True)
    screened = []
    for event in events:
        payload = dict(event.data or {})
        left_out: set[str] = set()
        if decision.hidden and not (event.kind == "task.completed" and event.actor == actor.username):
            for key in EVENT_VARIABLE_KEYS:
                if isinstance(payload.get(key), dict):
                    payload[key], removed = decision.screen(payload[key])
                    left_out |= removed
        # Masking is not the policy's to waive: every event is masked whole, whatever was
        # withheld from it (a reason, an error or a message carries identifiers too).
        screened.append(ScreenedEvent(seq=event.seq, kind=event.kind, actor=event.actor,
                                      occurred_at=event.occurred_at, task_uuid=event.task_uuid,
                                      data=mask_identifiers(payload), withheld=decision.report(left_out)))
    return screened
