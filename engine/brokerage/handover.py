"""首办负责制: handing a complaint's client contact to someone else while its owner is away.

The registering person owns the complaint's client contact (``first_contact_owner``) until
the case closes; a departure hands it over by itself (:mod:`engine.brokerage.departures`).
An absence (leave, sickness, a long training) is handed over by the people who supervise
that contact, explicitly and with a reason: the case's branch head or 客服总监, the call
centre's supervisor or the HQ complaint department for the firm, or a supervisor who may
read the case. The new owner must be able to take the contact steps: active, not recused
from the case (its subject or the subject's service group), and of the case's branch or
headquarters. The open steps the old owner held by that assignment move with the contact
(:func:`engine.process.ownership.hand_over`), audited on the case.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import and_, false, or_, select
from sqlalchemy.orm import Session

from engine.access.identity import Actor, actor_for, get_user
from engine.access.roles import SUPERVISOR
from engine.brokerage.departures import FIRST_CONTACT_OWNER
from engine.errors import Conflict, InvalidInput, PermissionDenied, UserNotFound
from engine.models import Group, GroupMember, InstanceStatus, User
from engine.process import instances, ownership, tasks
from engine.process.runtime import Runtime

# Who supervises the client contact firm-wide (HQ): the call centre's supervisor (intake) and
# the HQ complaint department (首办负责制 is theirs to enforce, brief §1).
FIRM_CONTACT_SUPERVISORS = ("call_center_supervisor", "hq_complaint_dept")
# Of the case's branch: its head and its 客服总监 (who coordinates complaint handling there).
BRANCH_CONTACT_SUPERVISORS = ("branch_head", "branch_cs_director")


@dataclass(frozen=True)
class Handover:
    instance_id: int
    business_key: str
    previous_owner: str
    owner: str
    reason: str
    moved_tasks: list[int]


def may_hand_over(actor: Actor, branch_code: str | None) -> bool:
    """Whether ``actor`` supervises the client contact of a case of ``branch_code`` (the
    caller has checked that they may read the case)."""
    if actor.has_role(SUPERVISOR, *FIRM_CONTACT_SUPERVISORS):
        return True
    return branch_code is not None and any(f"{branch_code}:{role}" in actor.groups
                                           for role in BRANCH_CONTACT_SUPERVISORS)


def current_owner(session: Session, *, instance_id: int, actor: Actor) -> str | None:
    """The case's first-contact owner, for a reader of the case (None: none yet)."""
    instance = instances.get(session, instance_id, actor=actor)
    value = (instance.facts or {}).get(FIRST_CONTACT_OWNER)
    return str(value) if value else None


def hand_over(session: Session, rt: Runtime, *, instance_id: int, username: str, reason: str,
              actor: Actor) -> Handover:
    """Hand the case's client contact to ``username`` for ``reason``.

    Refused: a case the actor may not read (InstanceNotFound, 404); someone who does not
    supervise its contact (PermissionDenied); a case that is over, or has no first-contact
    owner yet, or whose owner is ``username`` already (Conflict / InstanceNotRunning); an
    unknown or inactive user, one the case recuses, or one of another branch (InvalidInput
    naming the field); a blank reason (InvalidInput)."""
    instance = instances.get(session, instance_id, actor=actor)
    if not may_hand_over(actor, instance.branch_code):
        raise PermissionDenied("handing over a case's client contact needs its branch head or 客服总监, the call "
                               "centre's supervisor, the HQ complaint department or a supervisor")
    if not reason or not reason.strip():
        raise InvalidInput("a handover states its reason (it is audited)", field="reason")
    if instance.status not in (InstanceStatus.RUNNING, InstanceStatus.FAILED):
        raise Conflict(f"case {instance.business_key} is {instance.status}: its client contact is over")
    previous = (instance.facts or {}).get(FIRST_CONTACT_OWNER)
    if not previous:
        raise Conflict(f"case {instance.business_key} has no first-contact owner yet (it is owned from its "
                       "registration on)")
    if username == previous:
        raise Conflict(f"{username} owns the client contact of {instance.business_key} already")
    try:
        successor = actor_for(session, _user(session, username))
    except UserNotFound:
        raise InvalidInput(f"no user {username!r}", field="username") from None
    if tasks.recused_from_case(session, instance.id, successor):
        raise InvalidInput(f"{username} is recused from {instance.business_key} (the complaint's subject or their "
                           "service group) and cannot own its client contact", field="username")
    if successor.branch_code not in (None, instance.branch_code):
        raise InvalidInput(f"{username} works at {successor.branch_code}; the client contact of "
                           f"{instance.business_key} stays with {instance.branch_code or 'headquarters'} "
                           "or headquarters", field="username")
    moved = ownership.hand_over(session, rt, instance_id=instance.id, variable=FIRST_CONTACT_OWNER,
                                to_user=username, actor=actor, reason=reason.strip())
    return Handover(instance_id=instance.id, business_key=instance.business_key, previous_owner=str(previous),
                    owner=username, reason=reason.strip(), moved_tasks=moved)


def _user(session: Session, username: str) -> User:
    user = get_user(session, username)
    if not user.active:
        raise InvalidInput(f"user {username!r} is inactive", field="username")
    return user


# Headquarters staff who may hold a complaint's client contact (intake and its supervision).
HQ_CONTACT_ROLES = ("call_center_agent", "call_center_supervisor", "hq_complaint_dept")


def candidates(session: Session, *, instance_id: int, actor: Actor) -> list[tuple[str, str]]:
    """Whom ``actor`` may hand the case's client contact to, as (username, display name): the
    active staff of the case's branch and headquarters' intake, not recused from the case,
    not its owner. Empty when the actor does not supervise the contact, the case has ended
    or has no owner yet (the page then offers no handover)."""
    instance = instances.get(session, instance_id, actor=actor)
    owner = (instance.facts or {}).get(FIRST_CONTACT_OWNER)
    if (not owner or instance.status not in (InstanceStatus.RUNNING, InstanceStatus.FAILED)
            or not may_hand_over(actor, instance.branch_code)):
        return []
    hq = select(GroupMember.user_id).join(Group, Group.id == GroupMember.group_id).where(
        Group.key.in_(HQ_CONTACT_ROLES))
    users = session.execute(select(User).where(
        User.active.is_(True), User.username != owner,
        or_(User.branch_code == instance.branch_code if instance.branch_code else false(),
            and_(User.branch_code.is_(None), User.id.in_(hq))))
        .order_by(User.branch_code.is_(None), User.username)).scalars().all()
    return [(u.username, u.display_name) for u in users
            if not tasks.recused_from_case(session, instance.id, actor_for(session, u))]
