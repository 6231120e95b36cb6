"""员工离职: a staff member leaves. Their clients stay with their service group (clients
belong to groups, never to individuals); the tasks they had claimed go back to their queues;
each client of the group gets a ``departed_staff`` callback."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor, actor_for, revoke_user_tokens
from engine.audit import record_system_event
from engine.brokerage.registry import GROUP_MAX_MEMBERS, GROUP_MIN_MEMBERS, get_staff, members_of, mirror_members
from engine.calendars import SHANGHAI
from engine.errors import Conflict, InvalidInput, PermissionDenied, StaffAlreadyDeparted
from engine.models import (
    Client,
    Group,
    GroupMember,
    InstanceStatus,
    ProcessInstance,
    ServiceGroup,
    StaffProfile,
    Task,
    TaskStatus,
    User,
)
from engine.process import instances, ownership, tasks
from engine.process.runtime import Runtime, locked_instance
from engine.process.unit_of_work import audit

CALLBACK_PROCESS = "callback"
# The case variable naming a complaint's first-contact owner (首办责任人, docs/domain.md#complaints).
FIRST_CONTACT_OWNER = "first_contact_owner"


@dataclass(frozen=True)
class GroupShortfall:
    """A service group that no longer meets the brokerage's rule (2–3 members, one of them
    中后台; docs/domain.md#service-groups) after someone left. It keeps serving its clients
    until the branch names a replacement (a ``members`` change)."""

    key: str
    members: list[str]
    problems: list[str]  # "size": fewer than 2 members; "back_office": no 中后台 member
    message: str


@dataclass(frozen=True)
class Departure:
    username: str
    departed_on: date
    service_group: str | None
    callbacks: list[ProcessInstance]
    released_tasks: int
    groups_needing_replacement: list[GroupShortfall]
    # Business key -> who owns the case's client contact now (None: nobody could take it over).
    handed_over: dict[str, str | None]


def staff_departed(session: Session, rt: Runtime, *, username: str, departed_on: date, actor: Actor,
                   now: datetime) -> Departure:
    """员工离职 (docs/domain.md#service-groups, the ``departed_staff`` callback of
    docs/domain.md#callbacks): deactivate the user and revoke their tokens, end their
    service-group membership, return the tasks they had claimed to their queues, and start
    one ``departed_staff`` callback for each client of their group.

    Clients belong to groups, never to individuals, so they stay with the group. A group
    left outside the 2–3-member / one-back-office rule is reported in the result, not
    refused: the person has gone whether or not a replacement is named yet. Recording a
    departure twice is refused (it would start a second batch of callbacks). The callbacks'
    due dates come from the SLA policy ``callback.departed_staff.deadline`` (10 WD), counted
    from now. Admin, or the branch head of the person's branch."""
    branch_head = any(g.endswith(":branch_head") for g in actor.groups)
    if not actor.is_admin and not branch_head:
        raise PermissionDenied("recording a departure needs the admin role or a branch head")
    user, profile = get_staff(session, username)
    if not actor.is_admin and f"{profile.branch_code}:branch_head" not in actor.groups:
        raise PermissionDenied(f"only an administrator or the branch head of {profile.branch_code or 'HQ'} "
                               f"may record the departure of {username}")
    if departed_on > now.astimezone(SHANGHAI).date():
        raise InvalidInput(f"departed_on {departed_on} is in the future: record a departure once it has "
                           "happened (the user is deactivated at once)", field="departed_on")
    # Lock order as in _save_group (group, then its members' rows), so a concurrent
    # membership change and this departure queue instead of deadlocking.
    group_key = profile.service_group_key
    group = session.get(ServiceGroup, group_key, with_for_update=True) if group_key else None
    user = session.get(User, user.id, with_for_update=True, populate_existing=True) or user
    profile = session.get(StaffProfile, user.id, with_for_update=True, populate_existing=True) or profile
    if profile.service_group_key != group_key:
        raise Conflict(f"{username}'s service group changed meanwhile; try again")
    if not user.active:
        raise StaffAlreadyDeparted(f"{username} is inactive: their departure is recorded already")

    user.active = False
    # Their tokens stop working in this same transaction: a script or a device still holding
    # one is refused from the commit on, and reactivating the user does not revive them.
    revoked_tokens = revoke_user_tokens(session, user, now=now)
    shortfall = _leave_group(session, group, user, actor=actor, now=now) if group is not None else None
    handed_over = _hand_over_first_contact(session, rt, username, profile, actor=actor)
    released = _release_claimed_tasks(session, rt, username, actor=actor)
    # Started in the recorder's name: the departure, not their starter groups, decides.
    starter = Actor.system(actor.username)
    clients = session.execute(select(Client.client_id).where(Client.service_group_key == group_key)
                              .order_by(Client.client_id)).scalars().all() if group_key else []
    callbacks = [instances.start(session, rt, process_key=CALLBACK_PROCESS, business_key=None, actor=starter,
                                 client_id=client_id,
                                 data={"callback_type": "departed_staff", "client_id": client_id,
                                       "departed_staff": username, "departed_on": departed_on.isoformat()})
                 for client_id in clients]
    record_system_event(session, kind="staff.departed", actor=actor.username, at=now, data={
        "key": username, "departed_on": departed_on.isoformat(), "service_group": group_key,
        "callbacks": [c.business_key for c in callbacks], "released_tasks": released,
        "revoked_tokens": revoked_tokens, "first_contact_handed_over": handed_over,
        "group_needs_replacement": shortfall.problems if shortfall else None})
    return Departure(username=username, departed_on=departed_on, service_group=group_key, callbacks=callbacks,
                     released_tasks=released, groups_needing_replacement=[shortfall] if shortfall else [],
                     handed_over=handed_over)


def _leave_group(session: Session, group: ServiceGroup, user: User, *, actor: Actor,
                 now: datetime) -> GroupShortfall | None:
    """Both sides of the membership end together (see the module docstring)."""
    before = members_of(session, group.key)
    remaining = [(u, p) for u, p in before if u.id != user.id]
    for member, profile in before:
        if member.id == user.id:
            profile.service_group_key = None
    if group.lead_user_id == user.id:
        group.lead_user_id = None
    group.updated_at = now
    mirror_members(session, group.group_id, [u.id for u, _ in remaining])
    record_system_event(session, kind="service_group.members", actor=actor.username, at=now, data={
        "key": group.key, "reason": "staff_departed",
        "changes": {"members": [[u.username for u, _ in before], [u.username for u, _ in remaining]]}})
    problems = ([] if len(remaining) >= GROUP_MIN_MEMBERS else ["size"]) + \
        ([] if any(p.back_office for _, p in remaining) else ["back_office"])
    if not problems:
        return None
    reasons = {"size": f"{len(remaining)} member(s) left, needs {GROUP_MIN_MEMBERS}–{GROUP_MAX_MEMBERS}",
               "back_office": "no middle/back-office (中后台) member left"}
    return GroupShortfall(key=group.key, members=[u.username for u, _ in remaining], problems=problems,
                          message=f"service group {group.key} needs a replacement: "
                                  + "; ".join(reasons[p] for p in problems))


def _release_claimed_tasks(session: Session, rt: Runtime, username: str, *, actor: Actor) -> int:
    """Tasks the person had claimed go back to their candidate groups, or nobody could
    take them. Done here rather than through ``tasks.unclaim``: that acts as a person on a
    task they can see, and the recorder may be recused from one of these tasks."""
    instance_ids = sorted(set(session.execute(select(Task.instance_id).where(
        Task.assignee == username, Task.status == TaskStatus.CLAIMED)).scalars()))
    released = 0
    for instance_id in instance_ids:  # in id order: two such loops never wait on each other crosswise
        instance = locked_instance(session, instance_id, allow=tuple(InstanceStatus))
        claimed = session.execute(select(Task).where(Task.instance_id == instance_id, Task.assignee == username,
                                                     Task.status == TaskStatus.CLAIMED)
                                  .execution_options(populate_existing=True)).scalars().all()
        for task in claimed:
            task.assignee, task.owner, task.status = None, None, TaskStatus.OPEN
            audit(session, rt, instance, "task.unclaimed", actor, task_uuid=task.task_uuid, task_id=task.id,
                  previous_assignee=username, reason="staff_departed")
            released += 1
    return released


def _hand_over_first_contact(session: Session, rt: Runtime, username: str, profile: StaffProfile, *,
                             actor: Actor) -> dict[str, str | None]:
    """首办负责制: a complaint's client contact stays with one person; when they leave, it goes
    to whoever supervises that contact: the branch's 客服总监 for branch staff, the call
    centre's supervisor for headquarters staff (docs/domain.md#complaints). Someone the case
    recuses is passed over. Each handover is audited on its case; a case nobody can take over
    keeps the departed owner (their steps then wait in their queues) and says so here."""
    result: dict[str, str | None] = {}
    successors = _contact_supervisors(session, profile.branch_code, exclude=username)
    for instance_id in ownership.owners_of(session, variable=FIRST_CONTACT_OWNER, username=username):
        instance = session.get(ProcessInstance, instance_id)
        assert instance is not None
        chosen = next((u for u in successors
                       if not tasks.recused_from_case(session, instance_id, actor_for(session, u))), None)
        if chosen is not None:
            ownership.hand_over(session, rt, instance_id=instance_id, variable=FIRST_CONTACT_OWNER,
                                to_user=chosen.username, actor=actor, reason=f"staff_departed: {username}")
        result[instance.business_key] = chosen.username if chosen is not None else None
    return result


def _contact_supervisors(session: Session, branch_code: str | None, *, exclude: str) -> list[User]:
    group = f"{branch_code}:branch_cs_director" if branch_code else "call_center_supervisor"
    return list(session.execute(
        select(User).join(GroupMember, GroupMember.user_id == User.id).join(Group, Group.id == GroupMember.group_id)
        .where(Group.key == group, User.active.is_(True), User.username != exclude).order_by(User.username)).scalars())
