from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from flask import request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import (
    BranchOut,
    ClientOut,
    ClientPageOut,
    ClientQuery,
    DepartureIn,
    DepartureOut,
    GroupQuery,
    ImportReportOut,
    RevealIn,
    RevealOut,
    RuleSetIn,
    RuleSetOut,
    ServiceGroupOut,
)
from engine.access import client_access
from engine.brokerage import classification, departures, registry, registry_import
from engine.errors import InvalidInput

PREFIX = ""
blp = Blueprint("registry", __name__,
                description="Client registry: branches, service groups, clients (masked), reveal, CSV import, "
                            "classification rules")


@blp.route("/branches")
class Branches(MethodView):
    @blp.response(200, BranchOut(many=True))
    def get(self) -> Any:
        """All branches (营业部)."""
        current_actor()
        with bpm().db.transaction() as session:
            return registry.get_all_branches(session)


@blp.route("/clients")
class Clients(MethodView):
    @blp.arguments(ClientQuery, location="query")
    @blp.response(200, ClientPageOut)
    def get(self, query: dict[str, Any]) -> Any:
        """The clients the caller may see (docs/domain.md#client-visibility), by client id; identifiers masked."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            items, total = client_access.get_all_clients(session, actor=actor, now=ctx.runtime.now(), **query)
            return {"items": items, "total": total, "limit": query["limit"], "offset": query["offset"]}


@blp.route("/clients/<string:client_id>")
class ClientDetail(MethodView):
    @blp.response(200, ClientOut)
    def get(self, client_id: str) -> Any:
        """One client; 404 when the caller may not see it."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return client_access.get_client(session, client_id, actor=actor, now=ctx.runtime.now())


@blp.route("/clients/<string:client_id>/reveal")
class Reveal(MethodView):
    @blp.arguments(RevealIn)
    @blp.response(200, RevealOut)
    def post(self, body: dict[str, Any], client_id: str) -> Any:
        """The full value of one identifier, for a reason code (counter staff and compliance;
        never the mobile number). Audited: who, which client, which field, why. Show it for
        ``remask_after_seconds`` at most."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return client_access.reveal(session, client_id=client_id, actor=actor, now=ctx.runtime.now(), **body)


@blp.route("/service-groups")
class ServiceGroups(MethodView):
    @blp.arguments(GroupQuery, location="query")
    @blp.response(200, ServiceGroupOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Service groups of the caller's branch (all of them for HQ-wide roles), with members."""
        actor = current_actor()
        with bpm().db.transaction() as session:
            return client_access.get_all_groups(session, actor=actor, branch=query["branch"])


@blp.route("/service-groups/<string:key>")
class ServiceGroupDetail(MethodView):
    @blp.response(200, ServiceGroupOut)
    def get(self, key: str) -> Any:
        """One service group; 404 when the caller may not see it."""
        actor = current_actor()
        with bpm().db.transaction() as session:
            return client_access.get_group(session, key, actor=actor)


@blp.route("/staff/<string:username>/departure")
class StaffDeparture(MethodView):
    @blp.arguments(DepartureIn)
    @blp.response(201, DepartureOut)
    def post(self, body: dict[str, Any], username: str) -> Any:
        """员工离职: deactivate the user and revoke their tokens, end their service-group
        membership (their clients stay with the group) and start a ``departed_staff`` callback
        for each client of the group (admin, or the branch head of the person's branch). A group left below 2
        members or without a middle/back-office member is listed under
        ``groups_needing_replacement``. 409 ``staff_already_departed`` the second time."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return departures.staff_departed(session, ctx.runtime, username=username, actor=actor,
                                           now=ctx.runtime.now(), **body)


@blp.route("/registry/import")
class Import(MethodView):
    @blp.response(200, ImportReportOut)
    @blp.doc(requestBody={"required": True, "description": "one or more CSV files, each under its kind's name",
                          "content": {"multipart/form-data": {"schema": {
                              "type": "object", "minProperties": 1, "additionalProperties": False,
                              "properties": {kind: {"type": "string", "format": "binary"}
                                             for kind in registry_import.KINDS}}}}})
    def post(self) -> Any:
        """Upload CSV files as multipart fields ``branches``, ``staff``, ``groups`` and/or
        ``clients`` (admin). Valid rows are applied, invalid ones listed with line, column
        and reason; importing the same files again changes nothing."""
        ctx = bpm()
        actor = current_actor()
        # Only files, each under a kind's name: a plain form field is not a file to import.
        unknown = set(request.files) - set(registry_import.KINDS)
        if unknown or request.form or not request.files:
            raise InvalidInput(f"send multipart CSV files named {', '.join(registry_import.KINDS)}")
        files = {kind: (PurePosixPath(upload.filename or f"{kind}.csv").name, upload.read())
                 for kind, upload in request.files.items()}
        with ctx.db.transaction() as session:
            report = registry_import.import_files(session, files=files, actor=actor, now=ctx.runtime.now())
        return {"ok": report.rejected == 0, "rejected": report.rejected, "files": report.files}


@blp.route("/classification/rule-sets")
class RuleSets(MethodView):
    @blp.response(200, RuleSetOut(many=True))
    def get(self) -> Any:
        """Every version of the classification standard and VIP thresholds, by scope."""
        current_actor()
        with bpm().db.transaction() as session:
            return classification.get_all_rule_sets(session)

    @blp.arguments(RuleSetIn)
    @blp.response(201, RuleSetOut)
    def post(self, body: dict[str, Any]) -> Any:
        """A new version from ``effective_from`` (hq_brokerage_mgmt), e.g. the year-end
        turnover threshold; the previous version ends that day and stays as it was."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return classification.create_rule_set(session, actor=actor, now=ctx.runtime.now(), **body)
