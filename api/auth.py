"""Who is asking: ``Authorization: Bearer <token>`` on every API call except login."""

from __future__ import annotations

from flask import g, request

from api.context import bpm
from engine import identity
from engine.errors import AuthenticationFailed
from engine.identity import Actor


def current_actor() -> Actor:
    actor: Actor | None = g.get("bpm_actor")
    if actor is not None:
        return actor
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("send Authorization: Bearer <token> (POST /api/v1/auth/login)")
    ctx = bpm()
    with ctx.db.transaction() as session:
        actor = identity.authenticate(session, token.strip(), now=ctx.runtime.now())
    g.bpm_actor = actor
    return actor
