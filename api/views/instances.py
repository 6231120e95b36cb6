from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import CancelIn, HistoryOut, InstanceDetailOut, InstanceOut, InstanceQuery, StartIn
from engine import instances

PREFIX = ""
blp = Blueprint("instances", __name__, description="Start, read, cancel and retry process instances")


@blp.route("/processes/<string:process_key>/instances")
class StartInstance(MethodView):
    @blp.arguments(StartIn)
    @blp.response(201, InstanceOut)
    def post(self, body: dict[str, Any], process_key: str) -> Any:
        """Start the latest version of a process with a business key (unique per process)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return instances.start(session, ctx.runtime, process_key=process_key, actor=actor, **body)


@blp.route("/instances")
class Instances(MethodView):
    @blp.arguments(InstanceQuery, location="query")
    @blp.response(200, InstanceOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Instances, newest first."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return instances.get_all(session, actor=actor, process_key=query["process"], status=query["status"],
                                     business_key=query["business_key"], limit=query["limit"],
                                     offset=query["offset"])


@blp.route("/instances/<int:instance_id>")
class Instance(MethodView):
    @blp.response(200, InstanceDetailOut)
    def get(self, instance_id: int) -> Any:
        """One instance with its current variables."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            instance = instances.get(session, instance_id, actor=actor)
            # Raw attributes: InstanceDetailOut dumps them (a pre-dumped datetime would fail).
            return {**{f: getattr(instance, f) for f in InstanceOut().fields},
                    "data": instances.data_of(session, ctx.runtime, instance)}


@blp.route("/instances/<int:instance_id>/cancel")
class CancelInstance(MethodView):
    @blp.arguments(CancelIn)
    @blp.response(200, InstanceOut)
    def post(self, body: dict[str, Any], instance_id: int) -> Any:
        """Cancel a running or failed instance (supervisor)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return instances.cancel(session, ctx.runtime, instance_id=instance_id, actor=actor,
                                    reason=body["reason"])


@blp.route("/instances/<int:instance_id>/retry")
class RetryInstance(MethodView):
    @blp.response(200, InstanceOut)
    def post(self, instance_id: int) -> Any:
        """Run a failed instance's failed step again (supervisor)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return instances.retry(session, ctx.runtime, instance_id=instance_id, actor=actor)


@blp.route("/instances/<int:instance_id>/history")
class History(MethodView):
    @blp.response(200, HistoryOut(many=True))
    def get(self, instance_id: int) -> Any:
        """The instance's audit trail, oldest first."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return instances.history(session, instance_id, actor=actor)
