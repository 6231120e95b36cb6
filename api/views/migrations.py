"""Comparing versions and moving running cases to another version (process owners)."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, fields, validate

from api import migrations
from api.auth import current_actor
from api.context import bpm
from api.migrations import words_dict
from engine.bpmn.diff import VersionDiff
from engine.bpmn.parser import MAX_BPMN_BYTES
from engine.errors import DraftRejected, InvalidInput, Problem
from engine.process import migration, version_diff
from engine.process.catalogue import require_owner

PREFIX = ""
blp = Blueprint("migrations", __name__, description="Compare versions; move running cases to another version")


class DiffQuery(Schema):
    version = fields.Integer(load_default=None, validate=validate.Range(min=1), metadata={
        "description": "the version to compare; omitted: the process's saved draft"})
    against = fields.Integer(load_default=None, validate=validate.Range(min=1), metadata={
        "description": "the version compared against; omitted: the latest deployed"})


class DraftDiffQuery(Schema):
    against = fields.Integer(load_default=None, validate=validate.Range(min=1), metadata={
        "description": "the version compared against; omitted: the latest deployed"})


class FieldChangeOut(Schema):
    field = fields.String(metadata={"description": "name, type, lane, assignee, candidateGroups, candidateUsers, "
                                                   "formKey, form, dueDate, followUpDate, priority, timer, message, "
                                                   "condition, source, target, sla, property:<name> …"})
    before = fields.String(allow_none=True)
    after = fields.String(allow_none=True)
    message = fields.String(metadata={"description": "in Chinese"})
    message_en = fields.String()


class ElementChangeOut(Schema):
    element_id = fields.String()
    kind = fields.String(metadata={"description": "added, removed or changed"})
    element_type = fields.String(metadata={"description": "the BPMN element: userTask, sequenceFlow, …"})
    name = fields.String(allow_none=True)
    message = fields.String(metadata={"description": "the change in Chinese words"})
    message_en = fields.String()
    fields_changed = fields.List(fields.Nested(FieldChangeOut), data_key="fields")


class DiffOut(Schema):
    process_key = fields.String()
    against_version = fields.Integer()
    compared = fields.String(metadata={"description": "draft, or version N"})
    added = fields.Integer()
    removed = fields.Integer()
    changed = fields.Integer()
    changes = fields.List(fields.Nested(ElementChangeOut))


class MigrationIn(Schema):
    to_version = fields.Integer(required=True, validate=validate.Range(min=1))
    dry_run = fields.Boolean(load_default=True, metadata={
        "description": "true (the default): report per case whether it can move and what changes; store nothing"})
    from_version = fields.Integer(load_default=None, validate=validate.Range(min=1), metadata={
        "description": "only cases on this version"})
    instance_ids = fields.List(fields.Integer(validate=validate.Range(min=1)), load_default=list,
                               validate=validate.Length(max=migration.MAX_CASES), metadata={
                                   "description": "exactly these cases (the other filters then do not apply)"})
    branch_code = fields.String(load_default=None, validate=validate.Length(min=1, max=32))
    waiting_at = fields.String(load_default=None, validate=validate.Length(min=1, max=128), metadata={
        "description": "only cases with an open task at this step (element id)"})
    batch_size = fields.Integer(load_default=migrations.DEFAULT_BATCH, validate=validate.Range(min=1, max=500))


class MessageOut(Schema):
    message = fields.String(metadata={"description": "in Chinese"})
    message_en = fields.String()


class ReasonOut(MessageOut):
    code = fields.String(metadata={"description": "active_step_removed, passed_step_removed, step_kind_changed, "
                                                  "form_missing, form_incompatible, subprocess_removed, "
                                                  "join_unreachable, state_unreadable, assignment_invalid, "
                                                  "not_running, same_version, other_process, instance_not_found, "
                                                  "concurrent_change"})


class CaseOutcomeOut(Schema):
    instance_id = fields.Integer()
    business_key = fields.String()
    from_version = fields.Integer(allow_none=True)
    to_version = fields.Integer()
    can_move = fields.Boolean()
    moved = fields.Boolean()
    reasons = fields.List(fields.Nested(ReasonOut), metadata={"description": "why the case cannot move"})
    changes = fields.List(fields.Nested(MessageOut), metadata={
        "description": "what changes for the case: due dates, candidate groups, assignee, forms, timers"})


class MigrationOut(Schema):
    process_key = fields.String()
    to_version = fields.Integer()
    dry_run = fields.Boolean()
    batch_size = fields.Integer()
    batches = fields.Integer()
    cases = fields.Integer()
    movable = fields.Integer()
    moved = fields.Integer()
    refused = fields.Integer()
    outcomes = fields.List(fields.Nested(CaseOutcomeOut))


def diff_dict(against: int, compared: str, found: VersionDiff) -> dict[str, Any]:
    return {
        "process_key": found.process_key, "against_version": against, "compared": compared,
        "added": len(found.of_kind("added")), "removed": len(found.of_kind("removed")),
        "changed": len(found.of_kind("changed")),
        "changes": [{"element_id": c.element_id, "kind": c.kind, "element_type": c.element_type, "name": c.name,
                     **words_dict(c.words()),
                     "fields_changed": [{"field": f.field, "before": f.before, "after": f.after,
                                         **words_dict(f.words())} for f in c.changes]}
                    for c in found.changes],
    }


_XML = {"type": "string", "format": "binary"}


@blp.route("/processes/<string:process_key>/diff")
class Diff(MethodView):
    @blp.arguments(DiffQuery, location="query")
    @blp.response(200, DiffOut)
    def get(self, query: dict[str, Any], process_key: str) -> Any:
        """What a version, or the saved draft, changes against the deployed version (process
        owners): elements added, removed and changed, in words, Chinese first."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            against, compared, found = version_diff.diff(session, ctx.runtime, process_key, actor=actor,
                                                         version=query["version"], against=query["against"])
        return diff_dict(against, compared, found)

    @blp.arguments(DraftDiffQuery, location="query")
    @blp.response(200, DiffOut)
    @blp.doc(requestBody={"required": True, "description": "a diagram of this process (BPMN 2.0 XML), e.g. "
                          "the editor's canvas, not saved", "content": {"application/xml": {"schema": _XML}}})
    def post(self, query: dict[str, Any], process_key: str) -> Any:
        """What the diagram sent changes against the deployed version (process owners). The
        diagram is screened as a draft is (size, well-formed, no DOCTYPE, this process, no
        scripts): 422 with the problems otherwise."""
        ctx = bpm()
        actor = current_actor()
        require_owner(actor)  # before the upload is read
        if (request.content_length or 0) > MAX_BPMN_BYTES:
            raise DraftRejected([Problem(f"{process_key}.bpmn", None, None,
                                         f"the diagram is larger than {MAX_BPMN_BYTES} bytes")])
        body = request.get_data(cache=False)
        if not body:
            raise InvalidInput("send the diagram's XML as the request body")
        with ctx.db.transaction() as session:
            against, compared, found = version_diff.diff(session, ctx.runtime, process_key, actor=actor,
                                                         draft_xml=body, against=query["against"])
        return diff_dict(against, compared, found)


@blp.route("/processes/<string:process_key>/migrations")
class Migrations(MethodView):
    @blp.arguments(MigrationIn)
    @blp.response(200, MigrationOut)
    def post(self, body: dict[str, Any], process_key: str) -> Any:
        """Move running cases to another version (process owners). Choose the cases (all not
        on the target version, those on ``from_version``, of a branch, waiting at a step, or
        ``instance_ids``, at most 500 a request); ``dry_run`` (the default) reports per case
        whether it can move and what changes; otherwise each case moves in its own
        transaction under its lock, ``batch_size`` at a time, audited. A case that cannot move
        stays where it is; its outcome says why."""
        ctx = bpm()
        actor = current_actor()
        selection = migration.Selection(from_version=body["from_version"], instance_ids=tuple(body["instance_ids"]),
                                        branch_code=body["branch_code"], waiting_at=body["waiting_at"])
        report = migrations.run(ctx.db, ctx.runtime, actor, process_key, body["to_version"], selection,
                                dry_run=body["dry_run"], batch_size=body["batch_size"])
        return report.as_dict()
