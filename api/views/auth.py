from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import bearer_token, current_actor
from api.context import bpm
from api.schemas import LoginIn, MeOut, RevokedOut, TokenOut, UsernameIn
from engine.access import identity

PREFIX = "/auth"
blp = Blueprint("auth", __name__, description="Sign in and out; who am I; revoking tokens")


@blp.route("/login")
class Login(MethodView):
    @blp.arguments(LoginIn)
    @blp.response(200, TokenOut)
    @blp.doc(security=[])
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Exchange a username and password for a bearer token (valid 12 hours)."""
        ctx = bpm()
        with ctx.db.transaction() as session:
            token = identity.login(session, username=body["username"], password=body["password"],
                                   now=ctx.runtime.now())
        return {"token": token, "username": body["username"]}


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


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, MeOut)
    def get(self) -> dict[str, Any]:
        actor = current_actor()
        return {"username": actor.username, "groups": sorted(actor.groups),
                "branch_code": actor.branch_code}
