"""Signing in: the password check, its throttling and lockout, and unlocking. The API's
``POST /auth/login`` and the sign-in page call these same services, so one rule decides
for both.

Throttling (docs/api.md#signing-in). Attempts are counted per username, whether or not
such a user exists (a refusal must not tell), and failures per client address:

* a username gets 5 attempts a minute, 10 in 15 minutes, then waits: each tier is a moving
  window, so the wait is until its oldest attempt leaves it (stepped backoff);
* 20 attempts within 24 hours lock it: no password is checked until the oldest of them is
  24 hours old or an administrator unlocks it (:func:`unlock`). A lockout is audited;
* an address gets 30 failures a minute and 300 an hour, enough for a branch whose counter
  staff sign in through one gateway address at opening time.

A successful sign-in clears its username's count. A throttled attempt is refused before
the password is checked, so it costs no hashing, and the right password gets the same
refusal as a wrong one. Attempts are counted before the check, atomically, so a burst of
parallel requests gets no more checks than the tier allows.

The counts live in Redis when ``BPM_REDIS_URL`` is set, shared by every gunicorn worker
(the ``limits`` library's moving windows), and in the process's memory otherwise (the
embedded default: ``bpm serve`` is one process). If Redis cannot be reached, this process
counts in its memory meanwhile rather than stop everyone signing in.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.errors import StorageError
from limits.storage import MemoryStorage, RedisStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access import identity, passwords
from engine.access.identity import Actor
from engine.audit import record_system_event
from engine.config import Settings
from engine.errors import AuthenticationFailed, BpmError, PermissionDenied, SignInLocked, SignInThrottled
from engine.models import User

log = logging.getLogger(__name__)
T = TypeVar("T")

# How much of a username an audit event keeps: longer ones name no account (create_user).
_USERNAME_MAX = 64


@dataclass(frozen=True)
class Tier:
    """At most ``attempts`` within any ``seconds``-long window."""

    attempts: int
    seconds: int

    @property
    def item(self) -> RateLimitItem:
        return RateLimitItemPerSecond(self.attempts, self.seconds)


@dataclass(frozen=True)
class ThrottlePolicy:
    username: tuple[Tier, ...] = (Tier(5, 60), Tier(10, 15 * 60))
    lockout: Tier = Tier(20, 24 * 3600)
    address: tuple[Tier, ...] = (Tier(30, 60), Tier(300, 3600))


@dataclass(frozen=True)
class Refusal:
    """Why an attempt is not checked, and for how many seconds more."""

    scope: str  # "username" or "address"
    retry_after: int
    locked: bool


class Throttle:
    """The sign-in counts (see the module docstring); one per process, shared by requests."""

    def __init__(self, storage: Storage, policy: ThrottlePolicy | None = None, *, shared: bool = False) -> None:
        self.policy = policy or ThrottlePolicy()
        # Whether other processes (gunicorn's workers, the CLI) see the same counts.
        self.shared = shared
        self._limiter = MovingWindowRateLimiter(storage)
        self._fallback = MovingWindowRateLimiter(MemoryStorage()) if shared else self._limiter

    @classmethod
    def from_settings(cls, settings: Settings, policy: ThrottlePolicy | None = None) -> Throttle:
        if settings.redis_url is None:
            return cls(MemoryStorage(), policy)
        # A short timeout: a hung Redis must not hold a sign-in for long before the
        # fallback counts in memory.
        storage = RedisStorage(settings.redis_url, key_prefix="bpm-signin", wrap_exceptions=True,
                               socket_timeout=2, socket_connect_timeout=2)
        return cls(storage, policy, shared=True)

    # -- the rule -----------------------------------------------------------------------
    def admit(self, username: str, address: str) -> Refusal | None:
        """Count an attempt for ``username`` from ``address``, or say why it may not be made."""
        return self._run(lambda limiter: self._admit(limiter, username, address))

    def failed(self, username: str, address: str) -> bool:
        """Count a failure from ``address``; True when this failure locked ``username``."""
        return self._run(lambda limiter: self._failed(limiter, username, address))

    def succeeded(self, username: str) -> None:
        self._run(lambda limiter: self._clear(limiter, username))

    def unlock(self, username: str) -> bool:
        """Forget ``username``'s attempts; True when it was locked."""
        def clear(limiter: MovingWindowRateLimiter) -> bool:
            was_locked = not limiter.test(self.policy.lockout.item, "username", _key(username))
            self._clear(limiter, username)
            return was_locked

        return self._run(clear)

    def _admit(self, limiter: MovingWindowRateLimiter, username: str, address: str) -> Refusal | None:
        user_key, address_key = _key(username), _key(address)
        checks = [("username", tier, user_key, False) for tier in self.policy.username]
        checks.append(("username", self.policy.lockout, user_key, True))
        checks += [("address", tier, address_key, False) for tier in self.policy.address]
        full = [(scope, tier, key, locked) for scope, tier, key, locked in checks
                if not limiter.test(tier.item, scope, key)]
        if not full:
            # Attempts per username are counted now; failures per address once known.
            counted = [limiter.hit(tier.item, "username", user_key)
                       for tier in (*self.policy.username, self.policy.lockout)]
            if all(counted):
                return None
            full = [(scope, tier, key, locked) for scope, tier, key, locked in checks
                    if not limiter.test(tier.item, scope, key)]
            if not full:  # a parallel attempt took the last place and has been cleared since
                return Refusal(scope="username", retry_after=1, locked=False)
        now = time.time()
        waits = [(limiter.get_window_stats(tier.item, scope, key).reset_time - now, scope, locked)
                 for scope, tier, key, locked in full]
        wait, scope, _ = max(waits)
        return Refusal(scope=scope, retry_after=max(1, math.ceil(wait)),
                       locked=any(locked for _, _, locked in waits))

    def _failed(self, limiter: MovingWindowRateLimiter, username: str, address: str) -> bool:
        for tier in self.policy.address:
            limiter.hit(tier.item, "address", _key(address))
        # The attempt was counted when admitted: the lockout tier is full now only if this
        # attempt filled it.
        return not limiter.test(self.policy.lockout.item, "username", _key(username))

    def _clear(self, limiter: MovingWindowRateLimiter, username: str) -> None:
        for tier in (*self.policy.username, self.policy.lockout):
            limiter.clear(tier.item, "username", _key(username))

    def _run(self, operation: Callable[[MovingWindowRateLimiter], T]) -> T:
        try:
            return operation(self._limiter)
        except StorageError as exc:
            log.warning("sign-in throttling: Redis unavailable (%s); counting in this process's memory",
                        exc.storage_error)
            return operation(self._fallback)


def _key(value: str) -> str:
    """Counts are kept under a digest: no username or address is stored in Redis, and any
    length or character makes a key of the same shape."""
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]


# -- signing in ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in. A refusal is returned, not raised, so that the entry point
    commits what the attempt recorded (a lockout's audit event) and raises afterwards."""

    username: str
    token: str | None = None
    expires_at: datetime | None = None
    refusal: BpmError | None = None

    def token_or_raise(self) -> str:
        if self.refusal is not None:
            raise self.refusal
        assert self.token is not None
        return self.token


def sign_in(session: Session, throttle: Throttle, *, username: str, password: str, address: str | None,
            now: datetime) -> SignIn:
    """Check a username and password and issue a sign-in token (valid
    :data:`identity.LOGIN_TOKEN_TTL`), under the throttle of the module docstring.

    Every refusal that is not the throttle's reads the same, and costs the same: for a user
    who does not exist, is inactive or has no password, the password is checked against a
    dummy hash (:func:`passwords.verify`). A stored hash of an older kind is replaced."""
    address = address or "unknown"
    refusal = throttle.admit(username, address)
    if refusal is not None:
        return SignIn(username, refusal=_throttled(refusal, now))
    user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
    verified = passwords.verify(password, user.password_hash if user is not None else None)
    if user is None or not user.active or not verified.ok:
        if throttle.failed(username, address):
            locked = throttle.policy.lockout
            record_system_event(session, kind="auth.locked_out", actor=None, at=now, data={
                "username": username[:_USERNAME_MAX], "address": address, "attempts": locked.attempts,
                "within_hours": locked.seconds // 3600})
        return SignIn(username, refusal=AuthenticationFailed("wrong username or password"))
    throttle.succeeded(username)
    if verified.needs_rehash:
        user.password_hash = passwords.hash_password(password)
    token = identity.issue_token(session, username=username, now=now, name="login", ttl=identity.LOGIN_TOKEN_TTL)
    return SignIn(username, token=token, expires_at=now + identity.LOGIN_TOKEN_TTL)


def _throttled(refusal: Refusal, now: datetime) -> BpmError:
    until = datetime.fromtimestamp(now.timestamp() + refusal.retry_after, UTC)
    if refusal.locked:
        return SignInLocked(
            "too many failed sign-ins for this username: it is locked for "
            f"{_duration(refusal.retry_after)} (until {until:%Y-%m-%d %H:%M} UTC) unless an administrator "
            "unlocks it", retry_after=refusal.retry_after)
    whose = "for this username" if refusal.scope == "username" else "from this address"
    return SignInThrottled(f"too many failed sign-ins {whose}: try again in {_duration(refusal.retry_after)}",
                           retry_after=refusal.retry_after)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{math.ceil(seconds / 60)} min"
    return f"{math.ceil(seconds / 3600)} h"


# -- administration --------------------------------------------------------------------------
def unlock(session: Session, throttle: Throttle, *, username: str, actor: Actor, now: datetime) -> bool:
    """An administrator lifts a username's lockout and backoff (audited ``auth.unlocked``);
    returns whether it was locked."""
    if not actor.is_admin:
        raise PermissionDenied("unlocking a sign-in needs the admin role")
    identity.get_user(session, username)
    was_locked = throttle.unlock(username)
    record_system_event(session, kind="auth.unlocked", actor=actor.username, at=now,
                        data={"username": username, "was_locked": was_locked})
    return was_locked
