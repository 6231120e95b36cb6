from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import NotificationOut, NotificationPageOut, NotificationQuery
from engine.process import worklist

PREFIX = "/notifications"
blp = Blueprint("notifications", __name__,
                description="The caller's own reminders and escalation notices (the worklist's notifications page "
                            "reads the same)")

_READ = {"all": None, "read": True, "unread": False}


@blp.route("")
class Notifications(MethodView):
    @blp.arguments(NotificationQuery, location="query")
    @blp.response(200, NotificationPageOut)
    def get(self, query: dict[str, Any]) -> Any:
        """The caller's notifications, newest first; ``status=unread`` or ``read`` narrows them."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            items, total = worklist.notifications(session, actor=actor, read=_READ[query["status"]],
                                                  limit=query["limit"], offset=query["offset"])
            return {"items": items, "total": total, "unread": worklist.unread_count(session, actor=actor),
                    "limit": query["limit"], "offset": query["offset"]}


@blp.route("/<int:notification_id>/read")
class ReadNotification(MethodView):
    @blp.response(200, NotificationOut)
    def post(self, notification_id: int) -> Any:
        """Mark one of the caller's notifications read (again changes nothing); another
        person's is 404."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return worklist.read_one(session, actor=actor, notification_id=notification_id, now=ctx.runtime.now())
