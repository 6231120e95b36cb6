"""Who is signed in to the pages.

Signing in goes through the engine's ``identity.login``, like the API's, and the session
cookie keeps the token it issues: every page request authenticates that token again, so an
expired or revoked token (a departure, a sign-out elsewhere) ends the session at once, and
the pages and the API can never disagree about who someone is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from flask_login import UserMixin, current_user

from api.context import bpm
from engine.access import identity
from engine.access.identity import Actor
from engine.errors import AuthenticationFailed
from engine.models import User

SESSION_LIFETIME = timedelta(hours=12)


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
    """Raises AuthenticationFailed (a wrong name or password) like the API's sign-in."""
    ctx = bpm()
    with ctx.db.transaction() as session:
        token = identity.login(session, username=username, password=password, now=ctx.runtime.now(),
                               ttl=SESSION_LIFETIME)
        actor = identity.authenticate(session, token, now=ctx.runtime.now())
        user: User = identity.get_user(session, username)
        return PageUser(token=token, actor=actor, display_name=user.display_name, locale=user.locale)


def actor() -> Actor:
    """The signed-in person as the engine's services take them (pages require sign-in)."""
    person: PageUser = current_user
    return person.actor
