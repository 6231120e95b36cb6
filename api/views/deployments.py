from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from flask import Response, jsonify, request
from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import CheckOut, DeployedOut, DeployOut, DeployQuery, RedeployIn, VersionOut
from engine.bpmn import bundle as bundles
from engine.errors import InvalidInput
from engine.process import deployments

PREFIX = ""
blp = Blueprint("deployments", __name__, description="Deploy BPMN bundles; list process versions")


def _bundle_from_request() -> bundles.Bundle:
    """multipart ``files`` (.bpmn, .zip, forms as .json), or a raw XML or zip body."""
    if request.files:
        bundle = bundles.Bundle(name="upload")
        for upload in request.files.getlist("files") or list(request.files.values()):
            name = PurePosixPath(upload.filename or "upload").name
            data = upload.read()
            if name.endswith(".zip"):
                bundle.merge(bundles.from_zip(data, name))
            elif name.endswith(".json"):
                bundle.add_file(f"forms/{name}", data)
            else:
                bundle.add_file(name if name.endswith(".bpmn") else f"{name}.bpmn", data)
        return bundle
    mimetype = request.mimetype or ""
    body = request.get_data()
    if not body:
        raise InvalidInput("send the bundle as multipart 'files', or an XML or zip body")
    if mimetype in ("application/zip", "application/x-zip-compressed"):
        return bundles.from_zip(body, "upload.zip")
    if mimetype.endswith("xml") or mimetype in ("application/octet-stream", ""):
        bundle = bundles.Bundle(name="upload")
        bundle.add_file(request.args.get("filename", "upload.bpmn"), body)
        return bundle
    raise InvalidInput(f"unsupported content type {mimetype!r}")


_FILE = {"type": "string", "format": "binary"}
# The bundle as _bundle_from_request reads it: multipart files, or one file as the body.
BUNDLE_BODY = {"required": True, "description": (
    "the bundle: multipart `files` (.bpmn diagrams, .zip bundles, forms as .json), or one .bpmn (XML) "
    "or .zip as the whole body; `?filename=` names a raw XML body"), "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["files"], "properties": {
        "files": {"type": "array", "minItems": 1, "items": _FILE}}}},
    "application/xml": {"schema": _FILE}, "text/xml": {"schema": _FILE},
    "application/zip": {"schema": _FILE}, "application/octet-stream": {"schema": _FILE},
}}


@blp.route("/deployments")
class Deployments(MethodView):
    @blp.arguments(DeployQuery, location="query")
    @blp.response(201, DeployOut)
    @blp.alt_response(200, schema=CheckOut, description="with ?check=true: the lint result")
    @blp.doc(requestBody=BUNDLE_BODY)
    def post(self, query: dict[str, Any]) -> Any:
        """Deploy a bundle: one or more .bpmn files with the forms/*.json they use.

        Identical content creates no new version. Any problem rejects the whole bundle
        (422, with every problem located by file, line and element)."""
        ctx = bpm()
        actor = current_actor()
        deployments.require_deployer(actor)  # before the upload is read, let alone unpacked
        bundle = _bundle_from_request()
        with ctx.db.transaction() as session:
            if query["check"]:
                problems = deployments.lint(session, ctx.runtime, bundle, actor=actor)
                # A Response is returned as is: the 201 DeployOut schema must not re-dump it.
                return jsonify(CheckOut().dump({
                    "ok": not problems, "problems": [p.__dict__ for p in problems],
                    "warnings": [w.__dict__ for w in deployments.warnings(bundle)]})), 200
            results = deployments.deploy(session, ctx.runtime, bundle, actor=actor)
            # Raw attributes, not VersionOut().dump(): DeployOut dumps them (datetimes once).
            versions = [{**{f: getattr(r.version, f) for f in VersionOut().fields}, "created": r.created}
                        for r in results]
        return {"versions": versions}


@blp.route("/processes")
class Processes(MethodView):
    @blp.response(200, VersionOut(many=True))
    def get(self) -> Any:
        """The latest version of every deployed process."""
        current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            return deployments.latest_versions(session)


@blp.route("/processes/<string:process_key>/versions")
class ProcessVersions(MethodView):
    @blp.response(200, VersionOut(many=True))
    def get(self, process_key: str) -> Any:
        """Every version of one process, newest first."""
        current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            versions = deployments.get_all(session, process_key=process_key)
            if not versions:
                deployments.get_latest(session, process_key)  # raises ProcessNotFound
            return versions


@blp.route("/processes/<string:process_key>/versions/<int:version>/bpmn")
class ProcessVersionDiagram(MethodView):
    @blp.response(200, content_type="application/xml", description="the version's BPMN 2.0 XML, as deployed")
    def get(self, process_key: str, version: int) -> Any:
        """The diagram of one version, for a viewer such as bpmn-js (colour a case on it with
        ``GET /instances/{id}/activity``)."""
        current_actor()
        ctx = bpm()
        with ctx.db.transaction() as session:
            xml = deployments.get_version(session, process_key, version).bpmn_xml
        return Response(xml, mimetype="application/xml")


@blp.route("/processes/<string:process_key>/versions/<int:version>/redeploy")
class ProcessVersionRedeploy(MethodView):
    @blp.arguments(RedeployIn)
    @blp.response(201, DeployedOut)
    @blp.alt_response(200, schema=DeployedOut, description="the latest version already has this content: "
                      "no new version (created false)")
    def post(self, body: dict[str, Any], process_key: str, version: int) -> Any:
        """Roll back: deploy an earlier version's diagram and forms again, as the next version
        (process owners). The same lint as any deploy (422 ``deployment_invalid`` when, say, a
        candidate group it names was removed since) and the same audit event, naming the
        version it came from and the reason. Running cases stay on their versions. 409 when
        ``version`` is the latest, or when ``if_latest`` is not the latest any more."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            result = deployments.redeploy(session, ctx.runtime, process_key, version, actor=actor,
                                          reason=body["reason"], if_latest=body["if_latest"])
            out = {**{f: getattr(result.version, f) for f in VersionOut().fields}, "created": result.created}
        return out, 201 if result.created else 200
