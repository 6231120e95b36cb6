from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint, abort

from api.auth import current_actor
from api.context import bpm
from api.schemas import InstanceOut, MessageHeaders, MessageIn
from api.views.instances import instance_out
from engine.access import field_policy
from engine.process import messages

PREFIX = "/messages"
blp = Blueprint("messages", __name__, description="Messages from outside systems")

REPLAYED = "Idempotent-Replayed"


@blp.route("")
class Messages(MethodView):
    @blp.arguments(MessageHeaders, location="headers")
    @blp.arguments(MessageIn)
    @blp.response(200, InstanceOut, headers={REPLAYED: {
        "description": "true: a repeat of a message already received under this idempotency key; the answer "
                       "is the case the first one reached or started, and nothing was delivered again",
        "schema": {"type": "string", "enum": ["true"]}}})
    def post(self, headers: dict[str, Any], body: dict[str, Any]) -> Any:
        """Deliver a message to the one instance waiting for it under ``correlation_key``
        (by default the instance's business key), or start the process that begins with
        it. 404 ``message_not_correlated`` when nobody waits: nothing is changed. With an
        idempotency key (the ``Idempotency-Key`` header or ``message_id``), a repeat gets the
        first answer."""
        key, message_id = headers["idempotency_key"], body["message_id"]
        if key is not None and message_id is not None and key != message_id:
            abort(422, messages={"json": {"message_id": ["differs from the Idempotency-Key header; send one"]}})
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            received = messages.receive(session, ctx.runtime, name=body["name"],
                                        correlation_key=body["correlation_key"], actor=actor,
                                        payload=body["payload"], idempotency_key=key or message_id)
            # The answer carries the case's facts: screened like every instance response.
            [screened] = field_policy.screen_cases(session, ctx.field_policy, actor=actor,
                                                   instances=[received.instance])
            body = instance_out(screened)
        return body, 200, ({REPLAYED: "true"} if received.replayed else {})
