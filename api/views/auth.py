from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import bearer_token, current_actor
from api.context import bpm
from api.schemas import LoginIn, MeOut, RevokedOut, TokenOut, UnlockedOut, UsernameIn
from engine.access import identity, signin

PREFIX = "/auth"
blp = Blueprint("auth", __name__, description="Sign in and out; who am I; revoking tokens, unlocking sign-in")


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginIn)
    @blp.response(200, TokenOut)
    @blp.alt_response(401, response="UNAUTHORIZED")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS", description=(
        "too many failed sign-ins for the username or from the address: signin_throttled, or signin_locked "
        "after 20 in a day; Retry-After says when to try again"))
    @blp.doc(security=[])
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Exchange a username and password for a bearer token (valid 12 hours)."""
        ctx = bpm()
        with ctx.db.transaction() as session:
            attempt = signin.sign_in(session, ctx.throttle, username=body["username"], password=body["password"],
                                     address=request.remote_addr, now=ctx.runtime.now())
        # Raised after the commit: a refusal that locked the username is audited.
        return {"token": attempt.token_or_raise(), "username": body["username"], "expires_at": attempt.expires_at}


@blp.route("/logout")
class Logout(MethodView):
    @blp.response(204)
    def post(self) -> None:
        """Sign out: the token of this request stops working at once."""
        current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            identity.revoke_token(session, bearer_token(), now=ctx.runtime.now())


@blp.route("/revoke")
class Revoke(MethodView):
    @blp.arguments(UsernameIn)
    @blp.response(200, RevokedOut)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every token of a user stops working at once, this request's too if they are the
        caller's own (audited). An administrator, or the user themself."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            revoked = identity.revoke_tokens(session, username=body["username"], actor=actor, now=ctx.runtime.now())
        return {"username": body["username"], "revoked": revoked}


@blp.route("/unlock")
class Unlock(MethodView):
    @blp.arguments(UsernameIn)
    @blp.response(200, UnlockedOut)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Lift a username's sign-in lockout and backoff (audited). An administrator."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            was_locked = signin.unlock(session, ctx.throttle, username=body["username"], actor=actor,
                                       now=ctx.runtime.now())
        return {"username": body["username"], "was_locked": was_locked}


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, MeOut)
    def get(self) -> dict[str, Any]:
        actor = current_actor()
        return {"username": actor.username, "groups": sorted(actor.groups),
                "branch_code": actor.branch_code}
