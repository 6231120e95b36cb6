"""The process owners' pages: their processes with each version (who deployed it, when, how
many cases run on it) and start routes; the draft editor (bpmn-js with the Camunda 7
properties panel), which saves the draft on the server with an ETag, checks it with the
deploy's own lint, deploys it as the next version and exports a version or the draft as a
zip bundle; and the rollback page, which deploys an earlier version again.

The editor's calls answer JSON: a refusal carries its reason (and, for lint, the problems
located by element) so the page can show it on the canvas. Who may do what is decided by
the engine's services (``catalogue.require_owner``), as for the API.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext
from flask_login import login_required

from api.context import bpm
from api.errors import status_for
from engine import errors
from engine.access.masking import mask_text
from engine.bpmn.parser import MAX_BPMN_BYTES
from engine.process import catalogue, deployments, drafts, version_diff
from worklist_ui.i18n import beijing
from worklist_ui.session import actor


def install(pages: Blueprint) -> None:
    """Add the owners' pages to the pages' blueprint (its sign-in, CSRF, errors, templates)."""
    routes: list[tuple[str, str, Any, list[str]]] = [
        ("/processes", "processes", processes, ["GET"]),
        ("/processes/<string:key>", "process", process, ["GET"]),
        ("/processes/<string:key>/draft", "draft", draft_page, ["GET"]),
        ("/processes/<string:key>/draft.bpmn", "draft_xml", draft_xml, ["GET"]),
        ("/processes/<string:key>/draft.bpmn", "draft_save", draft_save, ["PUT"]),
        ("/processes/<string:key>/draft/check", "draft_check", draft_check, ["POST"]),
        ("/processes/<string:key>/draft/deploy", "draft_deploy", draft_deploy, ["POST"]),
        ("/processes/<string:key>/draft/export.zip", "draft_export", draft_export, ["GET"]),
        ("/processes/<string:key>/versions/<int:version>/export.zip", "version_export", version_export, ["GET"]),
        ("/processes/<string:key>/versions/<int:version>/redeploy", "version_redeploy", version_redeploy,
         ["GET", "POST"]),
    ]
    for rule, endpoint, view, methods in routes:
        pages.add_url_rule(rule, endpoint=endpoint, view_func=login_required(view), methods=methods)


def etag(revision: int) -> str:
    return f'"{revision}"'


def processes() -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        found = catalogue.get_all(db, actor=actor())
    return render_template("processes.html", processes=found)


def process(key: str) -> Any:
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        found = catalogue.get(db, key, actor=person)
        draft = drafts.get(db, key, actor=person)
    return render_template("process.html", process=found, draft=draft)


def draft_page(key: str) -> Any:
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        found = catalogue.get(db, key, actor=person)
        draft = drafts.get(db, key, actor=person)
    return render_template("draft.html", process=found, draft=draft, etag=etag(draft.revision))


# -- the editor's calls (JSON) ---------------------------------------------------------------
def _refusal(exc: errors.BpmError) -> tuple[Response, int]:
    status = status_for(exc)
    body: dict[str, Any] = {"code": exc.code, "message": mask_text(exc.message)}
    if isinstance(exc, errors.DraftConflict):
        body.update(saved_by=exc.saved_by, saved_at=beijing(exc.saved_at), revision=exc.revision,
                    message=gettext("%(who)s saved this draft at %(when)s (Beijing time) after you opened it. "
                                    "Reload it and make your change again; nothing was overwritten.",
                                    who=exc.saved_by, when=beijing(exc.saved_at)))
    if isinstance(exc, errors.DeploymentRejected):
        body["problems"] = [p.__dict__ for p in exc.problems]
        body["message"] = gettext("Refused: %(num)d problem(s); nothing was saved.", num=len(exc.problems))
    return jsonify(body), status


def _if_match() -> int:
    raw = (request.headers.get("If-Match") or "").strip().removeprefix("W/").strip('"')
    if not raw:
        raise _PreconditionRequired
    if not raw.isdigit():
        raise errors.InvalidInput(gettext("If-Match names a draft revision, as the ETag gave it"))
    return int(raw)


class _PreconditionRequired(Exception):
    """A save or deploy that does not say which revision it started from."""


def bounded_body(file: str, limit: int, what: str, empty: str) -> bytes:
    """The upload, refused before it is read when it says it is larger than ``limit`` (a
    DraftRejected naming ``file``), and refused with ``empty`` when there is none."""
    if (request.content_length or 0) > limit:
        raise errors.DraftRejected([errors.Problem(file, None, None, f"{what} is larger than {limit} bytes")])
    data = request.get_data(cache=False)
    if not data:
        raise errors.InvalidInput(empty)
    return data


def _body(key: str) -> bytes:
    """The diagram sent, bounded before it is read: larger than a deploy takes is refused."""
    return bounded_body(f"{key}.bpmn", MAX_BPMN_BYTES, "the diagram",
                        gettext("Send the diagram's XML as the request body"))


def _json(call: Any) -> Any:
    try:
        return call()
    except _PreconditionRequired:
        return jsonify({"code": "precondition_required", "message": gettext(
            "Say which revision you edited (If-Match with the draft's ETag)")}), 428
    except errors.BpmError as exc:
        return _refusal(exc)


def draft_xml(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        with ctx.db.transaction() as db:
            draft = drafts.get(db, key, actor=actor())
        response = Response(draft.xml, mimetype="application/xml")
        response.headers["ETag"] = etag(draft.revision)
        response.headers["Cache-Control"] = "no-store"
        return response
    return _json(run)


def draft_save(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        person = actor()
        catalogue.require_owner(person)  # before the upload is read
        revision = _if_match()
        data = _body(key)
        with ctx.db.transaction() as db:
            saved = drafts.save(db, ctx.runtime, key, data, if_match=revision, actor=person, now=ctx.runtime.now())
        response = jsonify({"revision": saved.revision, "saved_by": saved.saved_by,
                            "saved_at": beijing(saved.saved_at),
                            "message": gettext("Draft saved at %(when)s", when=beijing(saved.saved_at))})
        response.headers["ETag"] = etag(saved.revision)
        return response
    return _json(run)


def draft_check(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        person = actor()
        catalogue.require_owner(person)
        data = _body(key)
        with ctx.db.transaction() as db:
            problems = drafts.check(db, ctx.runtime, key, data, actor=person)
        return jsonify({"ok": not problems, "problems": [p.__dict__ for p in problems],
                        "message": gettext("No problems: this draft can be deployed") if not problems
                        else gettext("%(num)d problem(s) would refuse a deploy", num=len(problems))})
    return _json(run)


def draft_deploy(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        person = actor()
        catalogue.require_owner(person)
        revision = _if_match()
        with ctx.db.transaction() as db:
            deployed, draft = drafts.deploy(db, ctx.runtime, key, if_match=revision, actor=person,
                                            now=ctx.runtime.now())
            number, created = deployed.version.version, deployed.created
        response = jsonify({
            "version": number, "created": created, "revision": draft.revision,
            "url": url_for("pages.process", key=key),
            "message": gettext("Deployed as version %(num)d: new cases start on it", num=number) if created
            else gettext("Nothing changed since version %(num)d: no new version", num=number)})
        response.headers["ETag"] = etag(draft.revision)
        return response, 201 if created else 200
    return _json(run)


def _zip(name: str, data: bytes) -> Response:
    return Response(data, mimetype="application/zip",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


def draft_export(key: str) -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        name, data = drafts.export(db, key, version=None, actor=actor())
    return _zip(name, data)


def version_export(key: str, version: int) -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        name, data = drafts.export(db, key, version=version, actor=actor())
    return _zip(name, data)


# -- rolling back ------------------------------------------------------------------------------
def version_redeploy(key: str, version: int) -> Any:
    """Roll back: a page that shows what deploying ``version`` again changes against the
    latest version and whether today's lint accepts it, then deploys it with a reason
    (``deployments.redeploy``, the API's service)."""
    ctx = bpm()
    person = actor()
    refusal: errors.BpmError | None = None
    reason = ""
    if request.method == "POST":
        reason = request.form.get("reason", "")
        seen = request.form.get("if_latest", "")
        try:
            with ctx.db.transaction() as db:
                deployed = deployments.redeploy(db, ctx.runtime, key, version, actor=person, reason=reason,
                                                if_latest=int(seen) if seen.isdigit() else None)
                number, created = deployed.version.version, deployed.created
            flash(gettext("Version %(old)d deployed again as version %(num)d: new cases start on it",
                          old=version, num=number) if created
                  else gettext("Version %(num)d already has this content: no new version", num=number))
            return redirect(url_for("pages.process", key=key), 303)
        except errors.BpmError as exc:
            if isinstance(exc, (errors.PermissionDenied, errors.NotFound)):
                raise
            refusal = exc
    with ctx.db.transaction() as db:
        found = catalogue.get(db, key, actor=person)
        chosen = deployments.get_version(db, key, version)
        problems = deployments.redeploy_check(db, ctx.runtime, key, version, actor=person)
        latest, _, changes = version_diff.diff(db, ctx.runtime, key, actor=person, version=version)
    row = next(v for v in found.versions if v.version == version)
    page = render_template("redeploy.html", process=found, chosen=row, forms=sorted(chosen.forms or {}),
                           latest=latest, changes=changes, problems=problems, reason=reason,
                           refusal=_redeploy_refusal(refusal, version) if refusal else None)
    return (page, status_for(refusal)) if refusal else page


def _redeploy_refusal(exc: errors.BpmError, version: int) -> str:
    """The refusal in the reader's language; the engine's own words for the rest."""
    if isinstance(exc, errors.VersionConflict):
        if exc.latest_version == version:
            return gettext("Version %(num)d is the latest version: new cases already start on it", num=version)
        return gettext("Version %(num)d was deployed after you opened this page: look at what changes now, "
                       "then decide again", num=exc.latest_version)
    if isinstance(exc, errors.DeploymentRejected):
        return gettext("Refused: %(num)d problem(s); nothing was saved.", num=len(exc.problems))
    if exc.details.get("field") == "reason":
        return gettext("State why the earlier version comes back (at most %(num)d characters): it is audited",
                       num=deployments.MAX_REASON)
    return mask_text(exc.message)
