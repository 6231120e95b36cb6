"""The client registry: branches, staff, service groups and clients (docs/domain.md#roles,
docs/domain.md#service-groups).

Each kind has ``get``, ``create``, ``update`` and ``upsert`` (create or update by key, used
by the CSV importer); ``upsert`` answers whether the row was created, updated or left
unchanged, and only a change writes and audits. Values use the CSV column names
(``branch``, ``service_group``, ``members``…). A validation error names its field in
``details["field"]`` so the importer can report the column.

Service groups are candidate groups as well (``client:service_group`` in a diagram), so a
group is both a ``bpm_service_group`` row and a ``bpm_group`` of kind ``service_group``
whose ``bpm_group_member`` rows mirror the members' ``bpm_staff.service_group_key``. Only
this module writes either side, always both in the same call.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from engine.access import identity
from engine.access.identity import Actor
from engine.access.masking import MASKERS
from engine.access.roles import BACK_OFFICE_ROLES, BRANCH_ONLY_ROLES, JOB_ROLES
from engine.audit import record_system_event
from engine.brokerage.classification import TIERS
from engine.errors import (
    BranchNotFound,
    ClientNotFound,
    Conflict,
    InvalidInput,
    PermissionDenied,
    ServiceGroupInvalid,
    ServiceGroupNotFound,
    UserNotFound,
)
from engine.models import Branch, Client, Group, GroupMember, ServiceGroup, StaffProfile, User

# 2–3 people per group (the brokerage's procedures, docs/domain.md#service-groups).
GROUP_MIN_MEMBERS, GROUP_MAX_MEMBERS = 2, 3
SERVICE_GROUP_KIND = identity.SERVICE_GROUP_KIND
RISK_LEVELS = ("C1", "C2", "C3", "C4", "C5")
OPERATING_HABITS = ("on_site", "off_site")
# 休眠 and 中止交易 accounts are outside the periodic callback quota's base and sample (a
# regulatory rule, docs/domain.md#periodic-sampling). A completed full closure (销户) sets
# closed (engine.brokerage.closure).
ACCOUNT_STATUSES = ("active", "dormant", "suspended", "closed")
# Set when a client is created; an upsert of an existing client leaves them alone, because
# the client's VIP case owns them after that (engine.vip_tier; the monthly evaluation only
# records the evaluated tier), and re-importing an old file must not undo it.
VIP_FIELDS = ("vip_tier", "tier_since", "downgrade_grace_until")

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
T = TypeVar("T")


@dataclass(frozen=True)
class Saved:
    obj: Any
    outcome: str  # created, updated or unchanged


def _require_admin(actor: Actor) -> None:
    if not actor.is_admin:
        raise PermissionDenied("changing the client registry needs the admin role")


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(message, field=field)


def _text(values: Mapping[str, Any], name: str, *, max_len: int, required: bool = False) -> str | None:
    value = values.get(name)
    value = value.strip() if isinstance(value, str) else value
    if value in (None, ""):
        if required:
            raise _invalid(name, f"{name} is required")
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise _invalid(name, f"{name} must be text of at most {max_len} characters")
    return value


def _key(values: Mapping[str, Any], name: str) -> str:
    value = _text(values, name, max_len=64, required=True)
    assert value is not None
    if not _KEY.match(value):
        raise _invalid(name, f"{name} {value!r} may contain letters, digits, '.', '_' and '-' only")
    return value


def _check_fields(values: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = set(values) - set(allowed)
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", field=sorted(unknown)[0])


def _changes(obj: Any, new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (getattr(obj, k), v) for k, v in new.items() if getattr(obj, k) != v}


def _audit(session: Session, kind: str, actor: Actor, now: datetime, key: str,
           changes: Mapping[str, tuple[Any, Any]]) -> None:
    """Before/after of each changed field; identifiers only masked (docs/domain.md#masking)."""
    shown = {}
    for name, (before, after) in changes.items():
        mask = MASKERS.get(name)
        shown[name] = [mask(before), mask(after)] if mask else [before, after]
    record_system_event(session, kind=kind, actor=actor.username, at=now, data={"key": key, "changes": shown})


def _save(session: Session, obj: Any, new: Mapping[str, Any], *, created: bool, kind: str, key: str,
          actor: Actor, now: datetime) -> str:
    changes = _changes(obj, new) if not created else {k: (None, v) for k, v in new.items() if v is not None}
    if not created and not changes:
        return UNCHANGED
    for name, value in new.items():
        setattr(obj, name, value)
    if hasattr(obj, "updated_at"):
        obj.updated_at = now
    if created:
        if hasattr(obj, "created_at"):
            obj.created_at = now
        session.add(obj)
    session.flush()
    _audit(session, f"{kind}.{CREATED if created else UPDATED}", actor, now, key, changes)
    return CREATED if created else UPDATED


def _dispatch(mode: str, existing: T | None, what: str, key: str, missing: Callable[[str], Exception]) -> bool:
    """Whether to create; refuse create-of-existing and update-of-missing."""
    if mode == "create" and existing is not None:
        raise Conflict(f"{what} {key!r} already exists")
    if mode == "update" and existing is None:
        raise missing(f"no {what} {key!r}")
    return existing is None


# -- branches ------------------------------------------------------------------------------
BRANCH_FIELDS = ("code", "name", "city")


def get_branch(session: Session, code: str) -> Branch:
    branch = session.get(Branch, code)
    if branch is None:
        raise BranchNotFound(f"no branch {code!r}")
    return branch


def get_all_branches(session: Session) -> list[Branch]:
    return list(session.execute(select(Branch).order_by(Branch.code)).scalars())


def _save_branch(session: Session, values: Mapping[str, Any], *, mode: str, actor: Actor, now: datetime) -> Saved:
    _require_admin(actor)
    _check_fields(values, BRANCH_FIELDS)
    code = _key(values, "code")  # no ':', which separates a branch from a role in group keys
    existing = session.get(Branch, code, with_for_update=True)
    create = _dispatch(mode, existing, "branch", code, BranchNotFound)
    branch = existing or Branch(code=code)
    new = {"name": _text(values, "name", max_len=128, required=create or "name" in values),
           "city": _text(values, "city", max_len=64, required=create or "city" in values)}
    new = {k: v for k, v in new.items() if k in values or create}
    outcome = _save(session, branch, new, created=create, kind="branch", key=code, actor=actor, now=now)
    if create:
        # The branch's role queues exist from the start: ``branch:<role>`` resolves to them.
        for role, name in JOB_ROLES.items():
            identity.ensure_group(session, key=f"{code}:{role}", name=f"{code} {name}", kind="branch_role")
    return Saved(branch, outcome)


def create_branch(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Branch:
    return _save_branch(session, values, mode="create", actor=actor, now=now).obj


def update_branch(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Branch:
    return _save_branch(session, values, mode="update", actor=actor, now=now).obj


def upsert_branch(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Saved:
    return _save_branch(session, values, mode="upsert", actor=actor, now=now)


# -- staff ---------------------------------------------------------------------------------
STAFF_FIELDS = ("username", "name", "staff_no", "branch", "job_roles", "back_office")


def get_staff(session: Session, username: str) -> tuple[User, StaffProfile]:
    row = session.execute(select(User, StaffProfile).join(StaffProfile, StaffProfile.user_id == User.id)
                          .where(User.username == username)).first()
    if row is None:
        raise UserNotFound(f"{username!r} is not staff")
    return row[0], row[1]


def _role_group_keys(session: Session) -> set[str]:
    """Every role and branch-role group a job role maps to (and nothing else)."""
    keys = set(JOB_ROLES)
    for code in session.execute(select(Branch.code)).scalars():
        keys.update(f"{code}:{role}" for role in JOB_ROLES)
    return keys


def _sync_role_groups(session: Session, user: User, roles: list[str], branch: str | None) -> None:
    wanted = set(roles) | ({f"{branch}:{r}" for r in roles} if branch else set())
    managed = _role_group_keys(session)
    have = dict(session.execute(
        select(Group.key, Group.id).join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user.id)).all())
    stale = [gid for key, gid in have.items() if key in managed and key not in wanted]
    if stale:
        session.execute(delete(GroupMember).where(GroupMember.user_id == user.id, GroupMember.group_id.in_(stale)))
    for key in sorted(wanted - set(have)):
        role = key.split(":", 1)[-1]
        name = JOB_ROLES[role] if ":" not in key else f"{branch} {JOB_ROLES[role]}"
        group = identity.ensure_group(session, key=key, name=name, kind="branch_role" if ":" in key else "role")
        session.add(GroupMember(group_id=group.id, user_id=user.id))
    session.flush()


def _save_staff(session: Session, values: Mapping[str, Any], *, mode: str, actor: Actor, now: datetime) -> Saved:
    _require_admin(actor)
    _check_fields(values, STAFF_FIELDS)
    username = _text(values, "username", max_len=64, required=True)
    assert username is not None
    user = session.execute(select(User).where(User.username == username).with_for_update()).scalar_one_or_none()
    profile = session.get(StaffProfile, user.id, with_for_update=True) if user is not None else None
    create = _dispatch(mode, profile, "staff member", username, UserNotFound)

    name = _text(values, "name", max_len=128, required=user is None)
    staff_no = _text(values, "staff_no", max_len=32)
    branch = _text(values, "branch", max_len=32)
    if "branch" not in values and profile is not None:
        branch = profile.branch_code
    if branch is not None and session.get(Branch, branch) is None:
        raise _invalid("branch", f"no branch {branch!r} (import branches first)")
    roles_raw = values.get("job_roles")
    if create or "job_roles" in values:
        if not isinstance(roles_raw, list) or not roles_raw or not all(isinstance(r, str) for r in roles_raw):
            raise _invalid("job_roles", "job_roles needs at least one role")
        roles = list(dict.fromkeys(r.strip() for r in roles_raw))
        unknown = [r for r in roles if r not in JOB_ROLES]
        if unknown:
            raise _invalid("job_roles", f"unknown job role {unknown[0]!r}; known: {', '.join(JOB_ROLES)}")
    else:
        assert profile is not None
        roles = list(profile.job_roles)
    if branch is None and BRANCH_ONLY_ROLES & set(roles):
        raise _invalid("branch", f"{', '.join(sorted(BRANCH_ONLY_ROLES & set(roles)))} work in a branch: give one")
    back_office = values.get("back_office")
    if back_office is None:
        back_office = profile.back_office if profile is not None and "job_roles" not in values else \
            bool(BACK_OFFICE_ROLES & set(roles))
    if not isinstance(back_office, bool):
        raise _invalid("back_office", "back_office must be true or false")
    if staff_no is not None:
        taken = session.execute(select(User.username).join(StaffProfile, StaffProfile.user_id == User.id)
                                .where(StaffProfile.staff_no == staff_no, User.username != username)).scalar()
        if taken:
            raise _invalid("staff_no", f"staff number {staff_no} belongs to {taken}")

    if profile is not None and profile.service_group_key is not None:
        group = session.get(ServiceGroup, profile.service_group_key)
        assert group is not None
        if branch != group.branch_code:
            raise ServiceGroupInvalid(f"{username} is in service group {group.key} of {group.branch_code}: "
                                      "take them out of the group before moving them", field="branch")
        if profile.back_office and not back_office:
            others = members_of(session, group.key)
            if not any(p.back_office for u, p in others if u.username != username):
                raise ServiceGroupInvalid(f"{username} is the only middle/back-office member of {group.key}; "
                                          "a group needs one", field="back_office")

    if user is None:
        try:
            user = identity.create_user(session, username=username, display_name=name or username, now=now,
                                        branch_code=branch, actor=actor.username)
        except InvalidInput as exc:
            raise _invalid("username", exc.message) from None
    user_changes = {"branch_code": branch, **({"display_name": name} if name is not None else {})}
    user_changed = _changes(user, user_changes)
    for attr, value in user_changes.items():
        setattr(user, attr, value)

    if "staff_no" not in values and profile is not None:
        staff_no = profile.staff_no
    new = {"staff_no": staff_no, "branch_code": branch, "job_roles": roles, "back_office": back_office}
    outcome = _save(session, profile or StaffProfile(user_id=user.id), new, created=create, kind="staff",
                    key=username, actor=actor, now=now)
    if outcome == UNCHANGED and user_changed:
        record_system_event(session, kind="staff.updated", actor=actor.username, at=now,
                            data={"key": username, "changes": {k: list(v) for k, v in user_changed.items()}})
        outcome = UPDATED
    _sync_role_groups(session, user, roles, branch)
    return Saved(get_staff(session, username), outcome)


def create_staff(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Saved:
    return _save_staff(session, values, mode="create", actor=actor, now=now)


def update_staff(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Saved:
    return _save_staff(session, values, mode="update", actor=actor, now=now)


def upsert_staff(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Saved:
    return _save_staff(session, values, mode="upsert", actor=actor, now=now)


# -- service groups ------------------------------------------------------------------------
GROUP_FIELDS = ("key", "branch", "name", "members", "lead")


def get_service_group(session: Session, key: str) -> ServiceGroup:
    group = session.get(ServiceGroup, key)
    if group is None:
        raise ServiceGroupNotFound(f"no service group {key!r}")
    return group


def members_of(session: Session, key: str) -> list[tuple[User, StaffProfile]]:
    rows = session.execute(select(User, StaffProfile).join(StaffProfile, StaffProfile.user_id == User.id)
                           .where(StaffProfile.service_group_key == key).order_by(User.username)).all()
    return [(u, p) for u, p in rows]


def _check_group_rule(key: str, branch: str, members: list[tuple[User, StaffProfile | None]]) -> None:
    """The brokerage's rule for a group (2–3 members of the branch, one of them 中后台, each in
    no other group), with a message that says which part failed."""
    if not GROUP_MIN_MEMBERS <= len(members) <= GROUP_MAX_MEMBERS:
        raise ServiceGroupInvalid(f"service group {key} needs {GROUP_MIN_MEMBERS}–{GROUP_MAX_MEMBERS} members, "
                                  f"got {len(members)}", field="members", rule="size")
    for user, profile in members:
        if profile is None:
            raise ServiceGroupInvalid(f"{user.username} is not staff (import them with the staff file first)",
                                      field="members", rule="staff")
        if profile.branch_code != branch:
            raise ServiceGroupInvalid(f"{user.username} works in {profile.branch_code or 'HQ'}, not in {branch}: "
                                      "a service group's members work in its branch", field="members",
                                      rule="branch")
        if profile.service_group_key not in (None, key):
            raise ServiceGroupInvalid(f"{user.username} already belongs to service group "
                                      f"{profile.service_group_key} (one group per person)", field="members",
                                      rule="one_group")
    if not any(profile is not None and profile.back_office for _, profile in members):
        raise ServiceGroupInvalid(f"service group {key} needs at least one middle/back-office (中后台) member",
                                  field="members", rule="back_office")


def _save_group(session: Session, values: Mapping[str, Any], *, mode: str, actor: Actor, now: datetime) -> Saved:
    _require_admin(actor)
    _check_fields(values, GROUP_FIELDS)
    key = _key(values, "key")
    existing = session.get(ServiceGroup, key, with_for_update=True)
    create = _dispatch(mode, existing, "service group", key, ServiceGroupNotFound)
    bpm_group = session.execute(select(Group).where(Group.key == key)).scalar_one_or_none()
    if bpm_group is not None and bpm_group.kind != SERVICE_GROUP_KIND:
        raise Conflict(f"{key!r} is already a {bpm_group.kind} group; choose another key", field="key")

    branch = _text(values, "branch", max_len=32, required=create) or (existing.branch_code if existing else "")
    if session.get(Branch, branch) is None:
        raise _invalid("branch", f"no branch {branch!r} (import branches first)")
    if existing is not None and branch != existing.branch_code:
        moved = session.execute(select(func.count()).select_from(Client).where(
            Client.service_group_key == key, Client.branch_code != branch)).scalar_one()
        if moved:
            raise ServiceGroupInvalid(f"{key} serves {moved} client(s) of {existing.branch_code}; reassign them "
                                      "before moving the group", field="branch", rule="branch")
    current = members_of(session, key)
    if create or "members" in values:
        raw = values.get("members") or []
        if not isinstance(raw, list) or not all(isinstance(m, str) for m in raw):
            raise _invalid("members", "members must be a list of usernames")
        names = [m.strip() for m in raw if m.strip()]
        if len(set(names)) != len(names):
            raise _invalid("members", "a member is listed twice")
    else:
        names = [u.username for u, _ in current]
    users = {u.username: u for u in session.execute(select(User).where(User.username.in_(names))).scalars()}
    missing = [n for n in names if n not in users]
    if missing:
        raise ServiceGroupInvalid(f"no user {missing[0]!r}", field="members", rule="staff")
    profiles = {p.user_id: p for p in session.execute(
        select(StaffProfile).where(StaffProfile.user_id.in_([u.id for u in users.values()]))
        .order_by(StaffProfile.user_id).with_for_update()).scalars()}
    members = [(users[n], profiles.get(users[n].id)) for n in names]
    _check_group_rule(key, branch, members)
    lead_name = _text(values, "lead", max_len=64) if ("lead" in values or create) else None
    if "lead" not in values and existing is not None and existing.lead_user_id is not None:
        lead_name = next((u.username for u in users.values() if u.id == existing.lead_user_id), None)
    if lead_name is not None and lead_name not in users:
        raise _invalid("lead", f"the lead {lead_name!r} must be one of the members")
    name = _text(values, "name", max_len=128) or (bpm_group.name if bpm_group else f"服务小组 {key}")

    if bpm_group is None:
        bpm_group = identity.ensure_group(session, key=key, name=name, kind=SERVICE_GROUP_KIND)
    group = existing or ServiceGroup(key=key, group_id=bpm_group.id)
    before = sorted(u.username for u, _ in current)
    new = {"branch_code": branch, "lead_user_id": users[lead_name].id if lead_name else None}
    outcome = _save(session, group, new, created=create, kind="service_group", key=key, actor=actor, now=now)
    renamed = bpm_group.name != name
    bpm_group.name = name
    for _, profile in members:
        assert profile is not None
        profile.service_group_key = key
    for user, profile in current:
        if user.username not in users:
            profile.service_group_key = None
    mirror_members(session, bpm_group.id, [u.id for u, _ in members])
    after = sorted(names)
    if before != after or (renamed and not create):
        record_system_event(session, kind="service_group.members" if before != after else "service_group.updated",
                            actor=actor.username, at=now,
                            data={"key": key, "changes": {"members": [before, after]} if before != after
                                  else {"name": name}})
        outcome = CREATED if create else UPDATED
    session.flush()
    return Saved(group, outcome)


def mirror_members(session: Session, group_id: int, user_ids: list[int]) -> None:
    """bpm_group_member holds exactly the registry's members (anything else is removed)."""
    have = set(session.execute(select(GroupMember.user_id).where(GroupMember.group_id == group_id)).scalars())
    stale = have - set(user_ids)
    if stale:
        session.execute(delete(GroupMember).where(GroupMember.group_id == group_id,
                                                  GroupMember.user_id.in_(sorted(stale))))
    for user_id in user_ids:
        if user_id not in have:
            session.add(GroupMember(group_id=group_id, user_id=user_id))
    session.flush()


def create_service_group(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> ServiceGroup:
    return _save_group(session, values, mode="create", actor=actor, now=now).obj


def update_service_group(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> ServiceGroup:
    return _save_group(session, values, mode="update", actor=actor, now=now).obj


def upsert_service_group(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Saved:
    return _save_group(session, values, mode="upsert", actor=actor, now=now)


# -- clients -------------------------------------------------------------------------------
CLIENT_FIELDS = ("client_id", "name", "branch", "service_group", "birth_date", "id_number", "phone",
                 "account_number", "assets", "turnover", "risk_level", "c1_lowest", "operating_habit",
                 "account_status", *VIP_FIELDS)
_ID_NUMBER = re.compile(r"^(\d{17}[\dX]|\d{15})$")
_PHONE = re.compile(r"^\d{7,15}$")
_ACCOUNT = re.compile(r"^\d{6,32}$")
MAX_ASSETS = Decimal("1e16")
MAX_TURNOVER = Decimal("1e6")
# CSV/API name -> column
_CLIENT_COLUMNS = {"branch": "branch_code", "service_group": "service_group_key"}


def get_client_row(session: Session, client_id: str) -> Client:
    """Unscoped and unmasked: for engine code only. People go through ``engine.client_access``."""
    client = session.get(Client, client_id)
    if client is None:
        raise ClientNotFound(f"no client {client_id!r}")
    return client


def _pattern(values: Mapping[str, Any], name: str, pattern: re.Pattern[str], what: str) -> str | None:
    value = _text(values, name, max_len=32)
    if value is None:
        return None
    value = value.replace(" ", "").upper()
    if not pattern.match(value):
        raise _invalid(name, f"{name} must be {what}")
    return value


def _number(values: Mapping[str, Any], name: str, maximum: Decimal) -> Decimal:
    value = values.get(name)
    if value is None or value == "":
        return Decimal(0)
    if not isinstance(value, (Decimal, int)) or isinstance(value, bool):
        raise _invalid(name, f"{name} must be a number")
    number = Decimal(value)
    if not number.is_finite() or number < 0 or number >= maximum:
        raise _invalid(name, f"{name} must be at least 0 and below {maximum:,.0f}")
    return number


def _date(values: Mapping[str, Any], name: str) -> date | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, date) or isinstance(value, datetime):
        raise _invalid(name, f"{name} must be a date")
    return value


def _choice(values: Mapping[str, Any], name: str, choices: tuple[str, ...]) -> str | None:
    value = _text(values, name, max_len=32)
    if value is not None and value not in choices:
        raise _invalid(name, f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _client_values(session: Session, values: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """Every client column from ``values``, validated."""
    branch = _text(values, "branch", max_len=32, required=True)
    if session.get(Branch, branch) is None:
        raise _invalid("branch", f"no branch {branch!r} (import branches first)")
    group_key = _text(values, "service_group", max_len=64)
    if group_key is not None:
        group = session.get(ServiceGroup, group_key)
        if group is None:
            raise _invalid("service_group", f"no service group {group_key!r} (import groups first)")
        if group.branch_code != branch:
            raise _invalid("service_group", f"service group {group_key} belongs to {group.branch_code}, "
                                            f"not to the client's branch {branch}")
    birth_date = _date(values, "birth_date")
    if birth_date is not None and birth_date > now.date():
        raise _invalid("birth_date", "birth_date is in the future")
    risk_level = _choice(values, "risk_level", RISK_LEVELS)
    c1_lowest = values.get("c1_lowest") or False
    if not isinstance(c1_lowest, bool):
        raise _invalid("c1_lowest", "c1_lowest must be true or false")
    if c1_lowest and risk_level != "C1":
        raise _invalid("c1_lowest", "c1_lowest (最低类别) applies to risk level C1 only")
    tier = _choice(values, "vip_tier", TIERS)
    tier_since, grace = _date(values, "tier_since"), _date(values, "downgrade_grace_until")
    if tier is None and (tier_since or grace):
        raise _invalid("vip_tier" if tier_since else "downgrade_grace_until",
                       "tier_since and downgrade_grace_until need a vip_tier")
    return {
        "name": _text(values, "name", max_len=128, required=True), "branch_code": branch,
        "service_group_key": group_key, "birth_date": birth_date,
        "id_number": _pattern(values, "id_number", _ID_NUMBER, "15 digits, or 17 digits and a digit or X"),
        "phone": _pattern(values, "phone", _PHONE, "7 to 15 digits"),
        "account_number": _pattern(values, "account_number", _ACCOUNT, "6 to 32 digits"),
        "assets": _number(values, "assets", MAX_ASSETS), "turnover": _number(values, "turnover", MAX_TURNOVER),
        "risk_level": risk_level, "c1_lowest": c1_lowest,
        "operating_habit": _choice(values, "operating_habit", OPERATING_HABITS),
        # Empty means active: a client file without the column keeps treating clients as active.
        "account_status": _choice(values, "account_status", ACCOUNT_STATUSES) or ACCOUNT_STATUSES[0],
        "vip_tier": tier, "tier_since": tier_since, "downgrade_grace_until": grace,
    }


def _save_client(session: Session, values: Mapping[str, Any], *, mode: str, actor: Actor, now: datetime) -> Saved:
    _require_admin(actor)
    _check_fields(values, CLIENT_FIELDS)
    client_id = _key(values, "client_id")
    existing = session.get(Client, client_id, with_for_update=True)
    create = _dispatch(mode, existing, "client", client_id, ClientNotFound)
    if existing is not None:
        # Only the fields given change: fill the rest from the row before validating.
        current = {name: getattr(existing, _CLIENT_COLUMNS.get(name, name)) for name in CLIENT_FIELDS[1:]}
        merged = {**current, **values}
        if mode == "upsert":
            merged.update({f: current[f] for f in VIP_FIELDS})
    else:
        merged = dict(values)
    new = _client_values(session, merged, now=now)
    if existing is not None:
        new = {k: v for k, v in new.items() if getattr(existing, k) != v}
    if "assets" in new:
        new["assets"] = Decimal(new["assets"]).quantize(Decimal("0.01"))
    if "turnover" in new:
        new["turnover"] = Decimal(new["turnover"]).quantize(Decimal("0.0001"))
    client = existing or Client(client_id=client_id)
    outcome = _save(session, client, new, created=create, kind="client", key=client_id, actor=actor, now=now)
    return Saved(client, outcome)


def create_client(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Client:
    return _save_client(session, values, mode="create", actor=actor, now=now).obj


def update_client(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Client:
    """Change the fields given (``client_id`` names the client), VIP fields included."""
    return _save_client(session, values, mode="update", actor=actor, now=now).obj


def upsert_client(session: Session, *, values: Mapping[str, Any], actor: Actor, now: datetime) -> Saved:
    """Create, or update the fields given except the VIP fields (see :data:`VIP_FIELDS`)."""
    return _save_client(session, values, mode="upsert", actor=actor, now=now)
