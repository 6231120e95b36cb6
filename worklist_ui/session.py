"""Who is signed in to the pages.

Signing in goes through the engine's ``signin.sign_in``, the service behind the API's
``POST /auth/login``: the same password check, the same throttling and lockout. The session
cookie keeps the token it issues, and every page request authenticates that token again, so
an expired or revoked token (a departure, a sign-out elsewhere) ends the session at once,
and the pages and the API can never disagree about who someone is. Signing out of the pages
revokes the token, as the API's sign-out does.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import request
from flask_login import UserMixin, current_user

from api.context import bpm
from engine.access import identity, signin
from engine.access.identity import Actor
from engine.errors import AuthenticationFailed
from engine.models import User

# A page session lasts as long as the sign-in token it holds, which the engine ends.
SESSION_LIFETIME = identity.LOGIN_TOKEN_TTL


@dataclass
class PageUser(UserMixin):  # type: ignore[misc]
    """The signed-in person: their token (the session's id), who the engine says they are,
    and what the header shows."""

    token: str
    actor: Actor
    display_name: str
    locale: str | None

    def get_id(self) -> str:
        return self.token


def load_user(token: str) -> PageUser | None:
    """Flask-Login's loader: the token authenticated again on every request."""
    ctx = bpm()
    try:
        with ctx.db.transaction() as session:
            actor = identity.authenticate(session, token, now=ctx.runtime.now())
            user = identity.get_user(session, actor.username)
            return PageUser(token=token, actor=actor, display_name=user.display_name, locale=user.locale)
    except AuthenticationFailed:
        return None


def sign_in(username: str, password: str) -> PageUser:
    """Raises AuthenticationFailed (a wrong name or password), SignInThrottled or
    SignInLocked, exactly as the API's sign-in answers."""
    ctx = bpm()
    with ctx.db.transaction() as session:
        attempt = signin.sign_in(session, ctx.throttle, username=username, password=password,
                                 address=request.remote_addr, now=ctx.runtime.now())
    # Raised after the commit: a refusal that locked the username is audited.
    token = attempt.token_or_raise()
    with ctx.db.transaction() as session:
        actor = identity.authenticate(session, token, now=ctx.runtime.now())
        user: User = identity.get_user(session, username)
        return PageUser(token=token, actor=actor, display_name=user.display_name, locale=user.locale)


def sign_out(token: str) -> None:
    """The session's token stops working at once, everywhere (a copied cookie included)."""
    ctx = bpm()
    with ctx.db.transaction() as session:
        identity.revoke_token(session, token, now=ctx.runtime.now())


def actor() -> Actor:
    """The signed-in person as the engine's services take them (pages require sign-in)."""
    person: PageUser = current_user
    return person.actor
