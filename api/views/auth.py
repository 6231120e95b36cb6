from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import LoginIn, MeOut, TokenOut
from engine.access import identity

PREFIX = "/auth"
blp = Blueprint("auth", __name__, description="Sign in; who am I")


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


@blp.route("/me")
class Me(MethodView):
    @blp.response(200, MeOut)
    def get(self) -> dict[str, Any]:
        actor = current_actor()
        return {"username": actor.username, "groups": sorted(actor.groups),
                "branch_code": actor.branch_code}
