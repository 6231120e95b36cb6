"""The draft editor's forms and import: list the draft's JSON Schema forms, edit one as text
(checked against the JSON Schema meta-schema, the deploy lint's form rules and what the task
page can render), preview it rendered by the task page's own template with the error summary
of a sample submission, save it into the draft with the draft's ETag, and import a bundle zip
(a diagram and its forms, as exported here and edited in Camunda Modeler) into the draft.

The calls answer JSON, like the editor's other calls (``worklist_ui.owners``); who may do
what is decided by the engine (``catalogue.require_owner``).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, jsonify, render_template, request
from flask_babel import gettext
from flask_login import login_required

from api.context import bpm
from engine import errors
from engine.bpmn import forms as schemas
from engine.bpmn.values import value_problems
from engine.process import catalogue, drafts
from worklist_ui import forms
from worklist_ui.i18n import beijing
from worklist_ui.owners import _if_match, _json, bounded_body, etag
from worklist_ui.session import actor

# A new form starts as this: one required text field, so the preview shows something at once.
NEW_FORM = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "新表单 New form",
    "type": "object",
    "properties": {"comment": {"type": "string", "title": "说明 Comment", "maxLength": 500}},
    "required": ["comment"],
}


def install(pages: Blueprint) -> None:
    routes: list[tuple[str, str, Any, list[str]]] = [
        ("/processes/<string:key>/draft/forms", "draft_forms", form_list, ["GET"]),
        ("/processes/<string:key>/draft/forms/<string:form_key>.json", "draft_form", form_get, ["GET"]),
        ("/processes/<string:key>/draft/forms/<string:form_key>.json", "draft_form_save", form_save, ["PUT"]),
        ("/processes/<string:key>/draft/forms/preview", "draft_form_preview", form_preview, ["POST"]),
        ("/processes/<string:key>/draft/import", "draft_import", draft_import, ["POST"]),
    ]
    for rule, endpoint, view, methods in routes:
        pages.add_url_rule(rule, endpoint=endpoint, view_func=login_required(view), methods=methods)


def _text(schema: Any) -> str:
    return json.dumps(schema, ensure_ascii=False, indent=2) + "\n"


def form_list(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        with ctx.db.transaction() as db:
            draft = drafts.get(db, key, actor=actor())
        response = jsonify({"revision": draft.revision, "forms": [
            {"key": name, "title": (draft.forms[name] or {}).get("title") or name} for name in sorted(draft.forms)],
            "new_form": _text(NEW_FORM)})
        response.headers["ETag"] = etag(draft.revision)
        return response
    return _json(run)


def form_get(key: str, form_key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        with ctx.db.transaction() as db:
            draft = drafts.get(db, key, actor=actor())
        if form_key not in draft.forms:
            raise errors.NotFound(gettext("The draft has no form %(key)s", key=form_key))
        response = jsonify({"key": form_key, "text": _text(draft.forms[form_key]), "revision": draft.revision})
        response.headers["ETag"] = etag(draft.revision)
        response.headers["Cache-Control"] = "no-store"
        return response
    return _json(run)


def form_save(key: str, form_key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        person = actor()
        catalogue.require_owner(person)  # before the upload is read
        revision = _if_match()
        data = bounded_body(f"forms/{form_key}.json", drafts.MAX_FORM_BYTES, "the form",
                            gettext("Send the form's JSON as the request body"))
        with ctx.db.transaction() as db:
            draft, problems = drafts.save_form(db, key, form_key, data, if_match=revision, actor=person,
                                               now=ctx.runtime.now())
        response = jsonify({
            "revision": draft.revision, "key": form_key, "problems": [p.__dict__ for p in problems],
            "message": gettext("Form %(key)s saved into the draft at %(when)s", key=form_key,
                               when=beijing(draft.saved_at))})
        response.headers["ETag"] = etag(draft.revision)
        return response
    return _json(run)


def check(text: str) -> tuple[Any, list[dict[str, str]]]:
    """The form typed in the editor, checked as text: (its schema, or None when it cannot be
    previewed, and the problems, each {field, severity, message})."""
    problems: list[dict[str, str]] = []
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [{"field": "", "severity": "error", "message": gettext(
            "Not JSON: %(what)s at line %(line)d, column %(col)d", what=exc.msg, line=exc.lineno, col=exc.colno)}]
    except (ValueError, RecursionError) as exc:
        return None, [{"field": "", "severity": "error", "message": gettext("Not JSON: %(what)s", what=str(exc))}]
    stored = value_problems(schema)
    broken = schemas.schema_errors(schema)
    problems += [{"field": "", "severity": "error", "message": f"{p.field or '/'}: {p.message}"} for p in stored]
    problems += [{"field": "", "severity": "error",
                  "message": gettext("Not a valid JSON Schema: %(what)s", what=message)} for message in broken]
    if stored or broken:
        return None, problems
    problems += [{"field": "", "severity": "error", "message": gettext(
        "Format(s) %(formats)s cannot be checked: any text would pass", formats=", ".join(unchecked))}
        for unchecked in [schemas.unchecked_formats(schema)] if unchecked]
    problems += [{"field": "", "severity": "error", "message": message}
                 for message in schemas.condition_problems(schema)]
    rendering = forms.unsupported(schema)
    problems += [item.__dict__ for item in rendering]
    # A form that is not an object of fields has nothing to preview; a field the page cannot
    # show is named and the rest previewed.
    whole = any(item.severity == "error" and not item.field for item in rendering)
    return (None if whole else schema), problems


def form_preview(key: str) -> Any:
    """The form as the task page renders it (the same template and field builder), and with
    ``__submitted`` the error summary of the sample values sent with it, checked by the task
    page's own check (``forms.submission``) with the engine's validator for this schema."""
    def run() -> Any:
        catalogue.require_owner(actor())
        text = request.form.get("__schema", "")
        if len(text.encode()) > drafts.MAX_FORM_BYTES:
            raise errors.InvalidInput(gettext("The form is larger than %(num)d bytes", num=drafts.MAX_FORM_BYTES))
        schema, problems = check(text)
        if schema is None:
            return jsonify({"ok": False, "problems": problems, "html": ""})
        submitted = request.form.get("__submitted") == "1"
        # The fields the page can render are shown and read back; the sample is checked
        # against the whole form, as the engine would check it.
        shown_schema = forms.renderable(schema, forms.unsupported(schema))
        fields = forms.fields_of(shown_schema)
        values: dict[str, Any] = {}
        found: dict[str, str] = {}
        if submitted:
            parsed, found = forms.submission(shown_schema, schemas.validator_for(schema), request.form)
            values = parsed.data
        shown = forms.draft_values(shown_schema, values)
        html = render_template("_form_preview.html", schema=schema, fields=fields, values=shown, errors=found,
                               submitted=submitted, data=json.dumps(values, ensure_ascii=False, indent=2),
                               alpine_values=json.dumps(shown, ensure_ascii=False))
        return jsonify({"ok": not any(p["severity"] == "error" for p in problems), "problems": problems,
                        "html": html, "errors": found})
    return _json(run)


def draft_import(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        person = actor()
        catalogue.require_owner(person)  # before the upload is read
        revision = _if_match()
        data = bounded_body("upload", drafts.MAX_IMPORT_BYTES, "the zip", gettext("Choose a zip file to import"))
        name = (request.args.get("filename") or "bundle.zip")[:200]
        with ctx.db.transaction() as db:
            draft, taken = drafts.import_bundle(db, ctx.runtime, key, data, filename=name, if_match=revision,
                                                actor=person, now=ctx.runtime.now())
        response = jsonify({"revision": draft.revision, "forms": taken, "message": gettext(
            "Imported %(file)s into the draft: the diagram and %(num)d form(s)", file=name, num=len(taken))})
        response.headers["ETag"] = etag(draft.revision)
        return response
    return _json(run)
