from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy.orm import Session

from api.auth import current_actor
from api.context import BpmContext, bpm
from api.schemas import (
    ActivityOut,
    CancelIn,
    CommentIn,
    CommentOut,
    DataCorrectionIn,
    HistoryOut,
    InstanceDetailOut,
    InstanceOut,
    InstanceQuery,
    OwnerIn,
    OwnerOut,
    StartIn,
)
from engine.access import field_policy
from engine.access.identity import Actor
from engine.brokerage import handover
from engine.models import ProcessInstance, ProcessVersion
from engine.process import activity, instances, worklist
from engine.sla import case_clock

PREFIX = ""
blp = Blueprint("instances", __name__, description="Start, read, cancel, correct and retry process instances")

# Every response here carries case variables (facts, data, history), so each goes through the
# field policy (docs/domain.md#case-visibility): a caller is shown only the variables their
# roles may see, and ``withheld`` says what was left out.
_ROW_FIELDS = [name for name in InstanceOut().fields if name not in ("facts", "withheld")]


def instance_out(case: field_policy.ScreenedCase) -> dict[str, Any]:
    """Raw attributes: InstanceOut dumps them (a pre-dumped datetime would fail)."""
    body: dict[str, Any] = {name: getattr(case.instance, name) for name in _ROW_FIELDS}
    body.update(facts=case.facts, withheld=case.withheld, error=case.error)
    if case.data is not None:
        body["data"] = case.data
    return body


def _rows(session: Session, ctx: BpmContext, actor: Actor, rows: list[ProcessInstance]) -> list[dict[str, Any]]:
    """Instances by their facts alone (no workflow load per row)."""
    screened = field_policy.screen_cases(session, ctx.field_policy, actor=actor, instances=rows)
    return [instance_out(case) for case in screened]


def _detail(session: Session, ctx: BpmContext, actor: Actor, instance: ProcessInstance) -> dict[str, Any]:
    data = instances.data_of(session, ctx.runtime, instance)
    body = instance_out(field_policy.screen_case(session, ctx.field_policy, actor=actor, instance=instance,
                                                 data=data))
    clock = case_clock.get(session, instance.id)
    body["case_clock"] = None if clock is None else {
        "policy": clock.policy, "started_at": clock.started_at, "due_at": clock.due_at,
        "base_due_at": clock.base_due_at, "extended_by": clock.extended_by, "extended_at": clock.extended_at,
        "stopped_at": clock.stopped_at, "breached_at": clock.breached_at,
        "state": case_clock.state(clock, ctx.runtime.now())}
    return body


@blp.route("/processes/<string:process_key>/instances")
class StartInstance(MethodView):
    @blp.arguments(StartIn)
    @blp.response(201, InstanceOut)
    def post(self, body: dict[str, Any], process_key: str) -> Any:
        """Start the latest version of a process with a business key (unique per process)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            instance = instances.start(session, ctx.runtime, process_key=process_key, actor=actor, **body)
            return _rows(session, ctx, actor, [instance])[0]


@blp.route("/instances")
class Instances(MethodView):
    @blp.arguments(InstanceQuery, location="query")
    @blp.response(200, InstanceOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Instances, newest first."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            rows = instances.get_all(session, actor=actor, process_key=query["process"], status=query["status"],
                                     business_key=query["business_key"], limit=query["limit"],
                                     offset=query["offset"])
            return _rows(session, ctx, actor, rows)


@blp.route("/instances/<int:instance_id>")
class Instance(MethodView):
    @blp.response(200, InstanceDetailOut)
    def get(self, instance_id: int) -> Any:
        """One instance with its current variables, those the caller may see (``withheld``
        lists the rest by field group)."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return _detail(session, ctx, actor, instances.get(session, instance_id, actor=actor))


@blp.route("/instances/<int:instance_id>/cancel")
class CancelInstance(MethodView):
    @blp.arguments(CancelIn)
    @blp.response(200, InstanceOut)
    def post(self, body: dict[str, Any], instance_id: int) -> Any:
        """Cancel a running or failed instance (supervisor)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            instance = instances.cancel(session, ctx.runtime, instance_id=instance_id, actor=actor,
                                        reason=body["reason"])
            return _rows(session, ctx, actor, [instance])[0]


@blp.route("/instances/<int:instance_id>/retry")
class RetryInstance(MethodView):
    @blp.response(200, InstanceOut)
    def post(self, instance_id: int) -> Any:
        """Run a failed instance's failed step again (supervisor)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            instance = instances.retry(session, ctx.runtime, instance_id=instance_id, actor=actor)
            return _rows(session, ctx, actor, [instance])[0]


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
            return _detail(session, ctx, actor, instance)


@blp.route("/instances/<int:instance_id>/owner")
class Owner(MethodView):
    @blp.arguments(OwnerIn)
    @blp.response(200, OwnerOut)
    def post(self, body: dict[str, Any], instance_id: int) -> Any:
        """Hand a complaint's client contact (首办责任人, ``first_contact_owner``) to someone else,
        e.g. for an absence: the case's branch head or 客服总监, the call centre's supervisor,
        the HQ complaint department or a supervisor who may read the case. The open steps the
        owner held by that ownership move to the new owner; audited as
        ``case.owner_handed_over`` with the reason. 404 for a case the caller may not read; 403
        for someone who does not supervise its contact; 409 for a case that has ended, has no
        owner yet, or is owned by that person already; 400 for an unknown or inactive user,
        one the case recuses (its subject or their service group) or one of another branch."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return handover.hand_over(session, ctx.runtime, instance_id=instance_id, username=body["username"],
                                      reason=body["reason"], actor=actor)


@blp.route("/instances/<int:instance_id>/history")
class History(MethodView):
    @blp.response(200, HistoryOut(many=True))
    def get(self, instance_id: int) -> Any:
        """The instance's audit trail, oldest first; variables the caller may not see are
        left out of each event (``withheld``), except on a form they completed themselves."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            events = instances.history(session, instance_id, actor=actor)
            instance = instances.get(session, instance_id, actor=actor)
            return field_policy.screen_history(session, ctx.field_policy, actor=actor, instance=instance,
                                               data=instances.data_of(session, ctx.runtime, instance),
                                               events=events)


@blp.route("/instances/<int:instance_id>/activity")
class Activity(MethodView):
    @blp.response(200, ActivityOut)
    def get(self, instance_id: int) -> Any:
        """Where the case stands on its diagram: each element it touched (completed, how often;
        active, with the open step's SLA state; waiting; failed; cancelled) and the flows taken."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            found = activity.of(session, ctx.runtime, instance_id=instance_id, actor=actor)
            version = session.get(ProcessVersion, found.instance.process_version_id)
            assert version is not None  # a case's version is never deleted (foreign key)
            return {"instance_id": found.instance.id, "process_key": found.instance.process_key,
                    "version": version.version, "elements": found.elements, "flows": found.flows}


@blp.route("/instances/<int:instance_id>/comments")
class Comments(MethodView):
    @blp.response(200, CommentOut(many=True))
    def get(self, instance_id: int) -> Any:
        """The case's comments, oldest first (identifiers in them masked)."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return worklist.comments(session, instance_id=instance_id, actor=actor)

    @blp.arguments(CommentIn)
    @blp.response(201, CommentOut)
    def post(self, body: dict[str, Any], instance_id: int) -> Any:
        """Comment on a case the caller may read (audited on the case as ``comment.added``)."""
        actor = current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            comment = worklist.add_comment(session, instance_id=instance_id, actor=actor, body=body["body"],
                                           now=ctx.runtime.now())
            return worklist.view_of(comment)
