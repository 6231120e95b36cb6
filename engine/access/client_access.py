"""Who may see which clients and groups (docs/domain.md#client-visibility), masked views
(docs/domain.md#masking) and the audited reveal of a full identifier.

Scope is decided here, in the service layer, not in the views: a client the caller may not
see does not exist for them (404, like instances). Roles are read from the caller's group
memberships directly, not through :meth:`Actor.has_role`, because that lets an admin act as
every role, and managing the system is not a reason to read clients' identifiers.

| role                                           | clients                                          |
|------------------------------------------------|--------------------------------------------------|
| counter_staff                                  | own branch                                       |
| account_manager / member of a service group   | own group's clients + own branch's pool          |
| call_center_agent                              | clients of tasks assigned to them                |
| call_center_supervisor                         | clients with an open callback task               |
| branch_head / branch_ops_director / _cs_       | own branch                                       |
| hq_complaint_dept, hq_brokerage_mgmt           | all                                              |
| compliance, supervisor                         | own branch; all when they sit at HQ (assumed)    |
| admin                                          | all (masked; no assets; no reveal) (assumed)     |

Assets and turnover are shown to the client's service group, branch management, HQ roles
and compliance only (docs/domain.md#privacy); a read of a diamond client's assets is audited
(an assumed default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.masking import mask_account, mask_id_number, mask_phone
from engine.access.roles import ADMIN, BRANCH_MANAGEMENT, BRANCH_OR_ALL, BRANCH_ROLES, HQ_ALL
from engine.audit import record_system_event
from engine.calendars import SHANGHAI
from engine.errors import ClientNotFound, InvalidInput, RevealNotAllowed, ServiceGroupNotFound
from engine.models import ACTIVE_TASK_STATES, ClassRuleSet, Client, Group, ServiceGroup, StaffProfile, Task, User

CALLBACK_PROCESS = "callback"
ACCESS_STREAM = "client_access"  # reveals and audited reads; apart from "system" so reads do not queue behind imports

# Who may reveal which identifier (docs/domain.md#masking). Mobile numbers: nobody (click-to-call
# dials by reference).
REVEAL_ROLES: dict[str, frozenset[str]] = {
    "id_number": frozenset({"counter_staff", "compliance"}),
    "account_number": frozenset({"counter_staff", "compliance"}),
    "phone": frozenset(),
}
REVEAL_REASONS = ("identity_verification", "account_closure", "account_transfer", "compliance_review",
                  "complaint_investigation", "regulator_request")
REMASK_AFTER_SECONDS = 60  # the page masks the value again after 60 s (docs/domain.md#privacy)


@dataclass(frozen=True)
class Scope:
    everything: bool = False
    branches: frozenset[str] = frozenset()  # whole branches
    groups: frozenset[str] = frozenset()  # service groups the caller is in
    pool_branches: frozenset[str] = frozenset()  # unassigned clients of these branches
    assignee: str | None = None  # clients of tasks assigned to this user
    callback_queue: bool = False
    finance_everywhere: bool = False
    finance_branches: frozenset[str] = frozenset()

    def clause(self) -> ColumnElement[bool]:
        if self.everything:
            return true()
        parts: list[ColumnElement[bool]] = []
        if self.branches:
            parts.append(Client.branch_code.in_(sorted(self.branches)))
        if self.groups:
            parts.append(Client.service_group_key.in_(sorted(self.groups)))
        if self.pool_branches:
            parts.append(and_(Client.branch_code.in_(sorted(self.pool_branches)), Client.service_group_key.is_(None)))
        if self.assignee is not None:
            parts.append(exists().where(Task.client_id == Client.client_id, Task.assignee == self.assignee,
                                        Task.status.in_(ACTIVE_TASK_STATES)))
        if self.callback_queue:
            parts.append(exists().where(Task.client_id == Client.client_id, Task.process_key == CALLBACK_PROCESS,
                                        Task.status.in_(ACTIVE_TASK_STATES)))
        return or_(*parts) if parts else false()

    def sees_finances(self, client: Client) -> bool:
        return (self.finance_everywhere or client.branch_code in self.finance_branches
                or (client.service_group_key is not None and client.service_group_key in self.groups))


def scope_of(session: Session, actor: Actor) -> Scope:
    roles = actor.groups
    branch = actor.branch_code
    groups = frozenset(session.execute(
        select(ServiceGroup.key).where(ServiceGroup.key.in_(sorted(roles)))).scalars()) if roles else frozenset()
    hq_wide = bool(roles & HQ_ALL) or (branch is None and bool(roles & BRANCH_OR_ALL))
    everything = hq_wide or ADMIN in roles
    whole_branch = {branch} if branch and roles & (BRANCH_ROLES | BRANCH_OR_ALL) else set()
    pool = {branch} if branch and (groups or "account_manager" in roles) else set()
    finance_branches = {branch} if branch and roles & (BRANCH_MANAGEMENT | BRANCH_OR_ALL) else set()
    return Scope(
        everything=everything, branches=frozenset(whole_branch), groups=groups, pool_branches=frozenset(pool),
        assignee=actor.username if "call_center_agent" in roles else None,
        callback_queue="call_center_supervisor" in roles,
        finance_everywhere=hq_wide, finance_branches=frozenset(finance_branches),
    )


@dataclass(frozen=True)
class ClientView:
    """What a person is shown: identifiers masked, assets only to the roles
    docs/domain.md#privacy allows."""

    client_id: str
    name: str
    branch_code: str
    service_group: str | None
    age: int | None
    id_number_masked: str | None
    phone_masked: str | None
    account_number_masked: str | None
    assets: Decimal | None
    turnover: Decimal | None
    risk_level: str | None
    c1_lowest: bool
    operating_habit: str | None
    classification: str | None
    class_rules: str | None
    classified_on: date | None
    vip_tier: str | None
    tier_since: date | None
    downgrade_grace_until: date | None
    updated_at: datetime


def _age(birth: date | None, today: date) -> int | None:
    if birth is None:
        return None
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _view(client: Client, scope: Scope, today: date, rules: dict[int, str]) -> ClientView:
    finances = scope.sees_finances(client)
    return ClientView(
        client_id=client.client_id, name=client.name, branch_code=client.branch_code,
        service_group=client.service_group_key, age=_age(client.birth_date, today),
        id_number_masked=mask_id_number(client.id_number), phone_masked=mask_phone(client.phone),
        account_number_masked=mask_account(client.account_number),
        assets=client.assets if finances else None, turnover=client.turnover if finances else None,
        risk_level=client.risk_level, c1_lowest=client.c1_lowest, operating_habit=client.operating_habit,
        classification=client.classification,
        class_rules=rules.get(client.class_rule_set_id) if client.class_rule_set_id else None,
        classified_on=client.classified_on, vip_tier=client.vip_tier, tier_since=client.tier_since,
        downgrade_grace_until=client.downgrade_grace_until, updated_at=client.updated_at,
    )


def _views(session: Session, clients: Sequence[Client], scope: Scope, actor: Actor, now: datetime) -> list[ClientView]:
    ids = {c.class_rule_set_id for c in clients if c.class_rule_set_id}
    rules = {i: f"{s} v{v}" for i, s, v in session.execute(
        select(ClassRuleSet.id, ClassRuleSet.scope, ClassRuleSet.version).where(ClassRuleSet.id.in_(sorted(ids))))
    } if ids else {}
    today = now.astimezone(SHANGHAI).date()
    diamonds = [c.client_id for c in clients if c.vip_tier == "diamond" and scope.sees_finances(c)]
    if diamonds:
        record_system_event(session, kind="client.assets_read", actor=actor.username, at=now,
                            data={"client_ids": diamonds}, stream=ACCESS_STREAM)
    return [_view(c, scope, today, rules) for c in clients]


def _scoped(session: Session, client_id: str, actor: Actor) -> tuple[Client, Scope]:
    scope = scope_of(session, actor)
    client = session.execute(select(Client).where(Client.client_id == client_id, scope.clause())).scalar_one_or_none()
    if client is None:
        raise ClientNotFound(f"no client {client_id!r}")
    return client, scope


def get_client(session: Session, client_id: str, *, actor: Actor, now: datetime) -> ClientView:
    """One scoped lookup: a client the actor may not see does not exist for them."""
    client, scope = _scoped(session, client_id, actor)
    return _views(session, [client], scope, actor, now)[0]


def get_all_clients(session: Session, *, actor: Actor, now: datetime, branch: str | None = None,
                    service_group: str | None = None, classification: str | None = None,
                    vip_tier: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[ClientView], int]:
    """The clients the actor may see, by id; with the total for paging."""
    scope = scope_of(session, actor)
    query = select(Client).where(scope.clause())
    for column, value in ((Client.branch_code, branch), (Client.service_group_key, service_group),
                          (Client.classification, classification), (Client.vip_tier, vip_tier)):
        if value is not None:
            query = query.where(column == value)
    total = session.execute(select(func.count()).select_from(query.subquery())).scalar_one()
    clients = session.execute(query.order_by(Client.client_id).limit(limit).offset(offset)).scalars().all()
    return _views(session, clients, scope, actor, now), int(total)


@dataclass(frozen=True)
class Revealed:
    client_id: str
    field: str
    value: str | None
    revealed_at: datetime
    remask_after_seconds: int = REMASK_AFTER_SECONDS


def reveal(session: Session, *, client_id: str, field: str, reason: str, actor: Actor, now: datetime,
           note: str | None = None) -> Revealed:
    """The full value of one identifier, for a stated reason; audited (who, which client,
    which field, why) on the ``client_access`` stream."""
    if field not in REVEAL_ROLES:
        raise InvalidInput(f"field must be one of {', '.join(REVEAL_ROLES)}", field="field")
    if reason not in REVEAL_REASONS:
        raise InvalidInput(f"reason must be one of {', '.join(REVEAL_REASONS)}", field="reason")
    client, _ = _scoped(session, client_id, actor)
    allowed = REVEAL_ROLES[field]
    if not allowed:
        raise RevealNotAllowed(f"{field} is never shown in clear; calls are placed by reference (click-to-call)")
    if not actor.groups & allowed:
        raise RevealNotAllowed(f"revealing {field} needs one of the roles {', '.join(sorted(allowed))}")
    record_system_event(session, kind="client.revealed", actor=actor.username, at=now, stream=ACCESS_STREAM,
                        data={"client_id": client.client_id, "branch_code": client.branch_code, "field": field,
                              "reason": reason, "note": note})
    value: Any = getattr(client, field)
    return Revealed(client_id=client.client_id, field=field, value=value, revealed_at=now)


# -- service groups ------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberView:
    username: str
    display_name: str
    job_roles: list[str]
    back_office: bool
    lead: bool


@dataclass(frozen=True)
class GroupView:
    key: str
    name: str
    branch_code: str
    members: list[MemberView]
    client_count: int


def _group_clause(scope: Scope, actor: Actor) -> ColumnElement[bool]:
    if scope.everything:
        return true()
    parts: list[ColumnElement[bool]] = []
    if actor.branch_code:
        parts.append(ServiceGroup.branch_code == actor.branch_code)
    if scope.groups:
        parts.append(ServiceGroup.key.in_(sorted(scope.groups)))
    return or_(*parts) if parts else false()


def _group_views(session: Session, groups: Sequence[ServiceGroup]) -> list[GroupView]:
    keys = [g.key for g in groups]
    if not keys:
        return []
    names = dict(session.execute(select(ServiceGroup.key, Group.name).join(Group, Group.id == ServiceGroup.group_id)
                                 .where(ServiceGroup.key.in_(keys))).all())
    counts = dict(session.execute(select(Client.service_group_key, func.count()).where(
        Client.service_group_key.in_(keys)).group_by(Client.service_group_key)).all())
    members: dict[str, list[MemberView]] = {k: [] for k in keys}
    leads = {g.key: g.lead_user_id for g in groups}
    for user, profile in session.execute(
            select(User, StaffProfile).join(StaffProfile, StaffProfile.user_id == User.id)
            .where(StaffProfile.service_group_key.in_(keys)).order_by(User.username)).all():
        key = profile.service_group_key
        assert key is not None
        members[key].append(MemberView(user.username, user.display_name, list(profile.job_roles),
                                       profile.back_office, leads[key] == user.id))
    return [GroupView(g.key, names[g.key], g.branch_code, members[g.key], int(counts.get(g.key, 0))) for g in groups]


def get_all_groups(session: Session, *, actor: Actor, branch: str | None = None) -> list[GroupView]:
    """Groups of the caller's branch and their own; all of them for HQ-wide roles."""
    scope = scope_of(session, actor)
    query = select(ServiceGroup).where(_group_clause(scope, actor)).order_by(ServiceGroup.key)
    if branch is not None:
        query = query.where(ServiceGroup.branch_code == branch)
    return _group_views(session, session.execute(query).scalars().all())


def get_group(session: Session, key: str, *, actor: Actor) -> GroupView:
    scope = scope_of(session, actor)
    group = session.execute(select(ServiceGroup).where(ServiceGroup.key == key, _group_clause(scope, actor))
                            ).scalar_one_or_none()
    if group is None:
        raise ServiceGroupNotFound(f"no service group {key!r}")
    return _group_views(session, [group])[0]
