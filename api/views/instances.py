from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import (
    CancelIn,
    DataCorrectionIn,
    HistoryOut,
    InstanceDetailOut,
    InstanceOut,
    InstanceQuery,
    StartIn,
)
from engine import instances

PREFIX = ""
blp = Blueprint("instances", __name__, description="Start, read, cancel, correct and retry process instances")


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


@blp.route("/instances/<int:instance_id>/data")
class InstanceData(MethodView):
    @blp.arguments(DataCorrectionIn)
    @blp.response(200, InstanceDetailOut)
    @blp.alt_response(403, response="FORBIDDEN")
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def patch(self, body: dict[str, Any], instance_id: int) -> Any:
        """Correct a failed instance's variables before retrying it (supervisor).

        ``set`` gives variables new values (or adds missing ones), ``remove`` drops them;
        ``reason`` is required. Only a failed instance (409 ``instance_not_running``
        otherwise). Names the engine writes (``origin_business_key``, ``origin_process``, the registry's
        ``client_id``, ``branch_code``, ``service_group``, ``client_class``, ``vip_tier``,
        ``risk_level``, a diagram's ``completedByVariable``) are refused with 422
        ``data_invalid``. The instance stays failed until ``POST …/retry``; the change is
        audited as ``instance.data_corrected`` with old and new values."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            instance = instances.correct_data(session, ctx.runtime, instance_id=instance_id, actor=actor,
                                              set=body["set"], remove=body["remove"], reason=body["reason"])
            return {**{f: getattr(instance, f) for f in InstanceOut().fields},
                    "data": instances.data_of(session, ctx.runtime, instance)}


@blp.route("/instances/<int:instance_id>/history")
class History(MethodView):
    @blp.response(200, HistoryOut(many=True))
    def get(self, instance_id: int) -> Any:
        """The instance's audit trail, oldest first."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return instances.history(session, instance_id, actor=actor)
