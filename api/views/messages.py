from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import InstanceOut, MessageIn
from api.views.instances import instance_out
from engine.access import field_policy
from engine.process import messages

PREFIX = "/messages"
blp = Blueprint("messages", __name__, description="Messages from outside systems")


@blp.route("")
class Messages(MethodView):
    @blp.arguments(MessageIn)
    @blp.response(200, InstanceOut)
    def post(self, body: dict[str, Any]) -> Any:
        """Deliver a message to the one instance waiting for it under ``correlation_key``
        (by default the instance's business key), or start the process that begins with
        it. 404 ``message_not_correlated`` when nobody waits: nothing is changed."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            instance = messages.correlate(session, ctx.runtime, name=body["name"],
                                          correlation_key=body["correlation_key"], actor=actor,
                                          payload=body["payload"])
            # The answer carries the case's facts: screened like every instance response.
            [screened] = field_policy.screen_cases(session, ctx.field_policy, actor=actor, instances=[instance])
            return instance_out(screened)
