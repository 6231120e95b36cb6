"""Users, groups, roles and API tokens; and the :class:`Actor` every service receives.

Roles are groups too (:mod:`engine.access.roles`).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access import passwords
from engine.access.roles import ADMIN, SYSTEM_ROLES
from engine.audit import record_system_event
from engine.db import rowcount
from engine.errors import AuthenticationFailed, Conflict, InvalidInput, PermissionDenied, UserNotFound
from engine.models import ApiToken, Group, GroupMember, User

TOKEN_PREFIX = "bpm_"
# Every token expires: a sign-in's after a working day, a script's or an outside system's
# (``bpm user token``) after API_TOKEN_TTL unless told otherwise, and never later than
# MAX_TOKEN_TTL, so a token that leaked or was forgotten stops working by itself.
LOGIN_TOKEN_TTL = timedelta(hours=12)
API_TOKEN_TTL = timedelta(days=90)
MAX_TOKEN_TTL = timedelta(days=365)
SERVICE_GROUP_KIND = "service_group"


@dataclass(frozen=True)
class Actor:
    username: str
    groups: frozenset[str] = field(default_factory=frozenset)
    branch_code: str | None = None

    @property
    def is_admin(self) -> bool:
        return ADMIN in self.groups

    def has_role(self, *roles: str) -> bool:
        return self.is_admin or any(r in self.groups for r in roles)

    @classmethod
    def system(cls, name: str = "system") -> Actor:
        return cls(username=name, groups=frozenset({ADMIN}))


def hash_password(password: str) -> str:
    return passwords.hash_password(password)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def get_user(session: Session, username: str) -> User:
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    if user is None:
        raise UserNotFound(f"no user {username!r}")
    return user


def create_user(session: Session, *, username: str, display_name: str, now: datetime,
                password: str | None = None, branch_code: str | None = None,
                groups: list[str] | None = None, actor: str | None = None) -> User:
    if not username or len(username) > 64 or not username.replace("_", "").replace(".", "").isalnum():
        raise InvalidInput(f"username {username!r} must be letters, digits, '.' or '_'")
    if session.execute(select(User.id).where(User.username == username)).first():
        raise Conflict(f"user {username!r} already exists")
    user = User(username=username, display_name=display_name, branch_code=branch_code,
                password_hash=hash_password(password) if password else None, active=True,
                created_at=now)
    session.add(user)
    session.flush()
    for key in groups or []:
        add_member(session, group_key=key, username=username)
    record_system_event(session, kind="user.created", actor=actor, at=now,
                        data={"username": username, "groups": sorted(groups or []),
                              "branch": branch_code})
    return user


def ensure_group(session: Session, *, key: str, name: str | None = None, kind: str = "role") -> Group:
    group = session.execute(select(Group).where(Group.key == key)).scalar_one_or_none()
    if group is None:
        group = Group(key=key, name=name or SYSTEM_ROLES.get(key, key), kind=kind)
        session.add(group)
        session.flush()
    return group


def add_member(session: Session, *, group_key: str, username: str) -> None:
    group = ensure_group(session, key=group_key)
    if group.kind == SERVICE_GROUP_KIND:
        # A service group's rules (2-3 members, one back office, one group per person) and
        # its bpm_staff mirror are kept by engine.registry, the only writer of its members.
        raise Conflict(f"{group_key} is a service group: change its members through the client registry "
                       "(bpm registry import --groups)")
    user = get_user(session, username)
    exists = session.get(GroupMember, (group.id, user.id))
    if exists is None:
        session.add(GroupMember(group_id=group.id, user_id=user.id))
        session.flush()


def group_keys(session: Session) -> set[str]:
    """Keys and display names: a lane may be named after either."""
    rows = session.execute(select(Group.key, Group.name)).all()
    return {k for k, _ in rows} | {n for _, n in rows}


def actor_for(session: Session, user: User) -> Actor:
    groups = session.execute(
        select(Group.key).join(GroupMember, GroupMember.group_id == Group.id)
        .where(GroupMember.user_id == user.id)
    ).scalars().all()
    return Actor(username=user.username, groups=frozenset(groups), branch_code=user.branch_code)


def issue_token(session: Session, *, username: str, now: datetime, name: str = "api",
                ttl: timedelta = API_TOKEN_TTL) -> str:
    """Return a new token, valid for ``ttl`` (at most :data:`MAX_TOKEN_TTL`); only its hash
    is stored, so it cannot be shown again."""
    if ttl <= timedelta(0) or ttl > MAX_TOKEN_TTL:
        raise InvalidInput(f"a token's lifetime must be more than 0 and at most {MAX_TOKEN_TTL.days} days, "
                           f"got {ttl}", field="expires")
    user = get_user(session, username)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=_token_hash(token), name=name, created_at=now,
                         expires_at=now + ttl))
    try:
        session.flush()
    except IntegrityError:  # pragma: no cover - 256 random bits
        raise Conflict("token collision, try again") from None
    return token


def authenticate(session: Session, token: str, *, now: datetime) -> Actor:
    """The user a token stands for, as they are now: one indexed query (the token, its user
    and their groups), run on every request, so a revoked or expired token, a departed user
    and a changed membership take effect at once in every process."""
    rows = session.execute(
        select(ApiToken.revoked_at, ApiToken.expires_at, User.username, User.active, User.branch_code, Group.key)
        .select_from(ApiToken).join(User, User.id == ApiToken.user_id)
        .outerjoin(GroupMember, GroupMember.user_id == User.id).outerjoin(Group, Group.id == GroupMember.group_id)
        .where(ApiToken.token_hash == _token_hash(token))
    ).all()
    if not rows:
        raise AuthenticationFailed("unknown token")
    revoked_at, expires_at, username, active, branch_code, _ = rows[0]
    if revoked_at is not None or not active:
        raise AuthenticationFailed("token revoked or user inactive")
    if expires_at <= now:
        raise AuthenticationFailed("token expired")
    return Actor(username=username, groups=frozenset(key for *_, key in rows if key is not None),
                 branch_code=branch_code)


def revoke_token(session: Session, token: str, *, now: datetime) -> bool:
    """Sign out: the token stops working; False when it was unknown or revoked already."""
    result = session.execute(update(ApiToken).where(ApiToken.token_hash == _token_hash(token),
                                                    ApiToken.revoked_at.is_(None)).values(revoked_at=now))
    return rowcount(result) > 0


def revoke_tokens(session: Session, *, username: str, actor: Actor, now: datetime) -> int:
    """Every token of ``username`` stops working at once (audited ``auth.tokens_revoked``):
    an administrator's doing, or the user's own "sign out everywhere". Returns how many did."""
    if not actor.is_admin and actor.username != username:
        raise PermissionDenied("revoking another user's tokens needs the admin role")
    user = get_user(session, username)
    revoked = revoke_user_tokens(session, user, now=now)
    record_system_event(session, kind="auth.tokens_revoked", actor=actor.username, at=now,
                        data={"username": username, "revoked": revoked})
    return revoked


def revoke_user_tokens(session: Session, user: User, *, now: datetime) -> int:
    """Every token of ``user`` that still works stops working; returns how many did."""
    result = session.execute(update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None),
                                                    ApiToken.expires_at > now).values(revoked_at=now))
    return rowcount(result)
