"""Who is asking: ``Authorization: Bearer <token>`` on every API call except login.

A verified token is remembered in this process for :data:`TOKEN_CACHE_SECONDS`, so a
request does not pay a second transaction just to authenticate. The price: a revoked token
or a changed group membership takes effect within that many seconds.
"""

from __future__ import annotations

import hashlib
import threading
import time

from flask import g, request

from api.context import bpm
from engine.access import identity
from engine.access.identity import Actor
from engine.errors import AuthenticationFailed

TOKEN_CACHE_SECONDS = 10.0
_cache: dict[str, tuple[Actor, float]] = {}
_lock = threading.Lock()


def current_actor() -> Actor:
    actor: Actor | None = g.get("bpm_actor")
    if actor is not None:
        return actor
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationFailed("send Authorization: Bearer <token> (POST /api/v1/auth/login)")
    key = hashlib.sha256(token.strip().encode()).hexdigest()
    cached = _cache.get(key)
    if cached is not None and time.monotonic() < cached[1]:
        actor = cached[0]
    else:
        ctx = bpm()
        with ctx.db.transaction() as session:
            actor = identity.authenticate(session, token.strip(), now=ctx.runtime.now())
        with _lock:
            if len(_cache) > 10_000:
                _cache.clear()
            _cache[key] = (actor, time.monotonic() + TOKEN_CACHE_SECONDS)
    g.bpm_actor = actor
    return actor
