"""Who is asking: ``Authorization: Bearer <token>`` on every API call except login.

Every request checks its token in the database (``identity.authenticate``: one indexed
query for the token, its user and their groups), so a sign-out, a revoked token, a departed
or deactivated user and a changed membership take effect at once, in every process. No
verified token is remembered between requests: measured against PostgreSQL, that one query
costs about as much as checking only whether the token was revoked (about a millisecond),
and a remembered token is exactly what would go on working after a revocation.
"""

from __future__ import annotations

from flask import g, request

from api.context import bpm
from engine.access import identity
from engine.access.identity import Actor
from engine.errors import AuthenticationFailed


def bearer_token() -> str:
    """The token the request carries, or 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("send Authorization: Bearer <token> (POST /api/v1/auth/login)")
    return token.strip()


def current_actor() -> Actor:
    actor: Actor | None = g.get("bpm_actor")
    if actor is not None:
        return actor
    token = bearer_token()
    ctx = bpm()
    with ctx.db.transaction() as session:
        actor = identity.authenticate(session, token, now=ctx.runtime.now())
    g.bpm_actor = actor
    return actor
