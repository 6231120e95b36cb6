"""The draft editor's forms and bundle import through Flask's test client: the draft's forms
listed, a form edited and a new one added into the draft under the draft's ETag, a form that
is not JSON or not a JSON Schema refused with nothing stored, the editor's check naming what
the task page cannot render, the preview rendered by the task page's own template (with the
error summary of a sample submission), and a bundle zip imported into the draft, with every
hostile zip refused by name and nothing stored. Over the demo's cases."""

from __future__ import annotations

import html
import io
import json
import re
import zipfile

import pytest
from sqlalchemy import func, select

from engine.models import ACTIVE_TASK_STATES, AuditEvent, ProcessDraft, Task
from engine.process import deployments
from tests.ui.test_owners import OTHER_OWNER, OWNER, STAFF, _draft, _put, _signed_in, _with_groups

FORMS = "/processes/complaint/draft/forms"
PREVIEW = f"{FORMS}/preview"
IMPORT = "/processes/complaint/draft/import"


def _put_form(client, token, key, body, etag):
    headers = {"X-CSRFToken": token, "Content-Type": "application/json"}
    if etag is not None:
        headers["If-Match"] = etag
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return client.put(f"{FORMS}/{key}.json", data=data, headers=headers)


def _preview(client, token, schema, sample=None):
    text = schema if isinstance(schema, str) else json.dumps(schema, ensure_ascii=False)
    data = {"__schema": text, **({"__submitted": "1", **sample} if sample is not None else {})}
    answer = client.post(PREVIEW, data=data, headers={"X-CSRFToken": token})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    return answer.get_json()


def _form(client, key):
    answer = client.get(f"{FORMS}/{key}.json")
    assert answer.status_code == 200
    return json.loads(answer.get_json()["text"]), answer.headers["ETag"]


@pytest.mark.sqlite
def test_a_form_edited_and_a_form_added_go_into_the_draft_under_its_etag(app, db, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    other, other_token = _signed_in(app, OTHER_OWNER)
    listed = client.get(FORMS).get_json()
    assert "complaint_register" in [f["key"] for f in listed["forms"]] and listed["revision"] == 0
    schema, etag = _form(client, "complaint_register")
    assert etag == '"0"'
    schema["properties"]["summary"]["title"] = "投诉摘要（新）"
    saved = _put_form(client, token, "complaint_register", schema, etag)
    assert saved.status_code == 200, saved.get_json()
    assert saved.headers["ETag"] == '"1"' and saved.get_json()["problems"] == []
    # The other owner started from revision 0: refused with who saved, nothing overwritten.
    stale = _put_form(other, other_token, "complaint_register", {**schema, "title": "x"}, '"0"')
    assert stale.status_code == 409 and stale.get_json()["saved_by"] == OWNER
    assert _put_form(other, other_token, "complaint_register", schema, None).status_code == 428
    # A new form, then the diagram pointed at it: the draft's check finds it in the draft.
    new = {"type": "object", "title": "补充材料 Extra", "properties": {"note": {"type": "string", "title": "备注"}},
           "required": ["note"]}
    added = _put_form(client, token, "complaint_extra", new, saved.headers["ETag"])
    assert added.status_code == 200 and added.headers["ETag"] == '"2"'
    assert "complaint_extra" in [f["key"] for f in client.get(FORMS).get_json()["forms"]]
    xml, etag = _draft(client)
    assert etag == '"2"'
    pointed = xml.replace('camunda:formKey="complaint_acknowledge"', 'camunda:formKey="complaint_extra"', 1)
    headers = {"X-CSRFToken": token, "Content-Type": "application/xml"}
    assert client.post("/processes/complaint/draft/check", data=pointed.encode(), headers=headers).get_json()["ok"]
    assert _put(client, token, pointed, etag).status_code == 200  # the diagram's save keeps the forms
    deployed = client.post("/processes/complaint/draft/deploy", headers={"X-CSRFToken": token, "If-Match": '"3"'})
    assert deployed.status_code == 201, deployed.get_json()
    with db.transaction() as s:
        v2 = deployments.get_latest(s, "complaint")
        assert v2.forms["complaint_extra"] == new
        assert v2.forms["complaint_register"]["properties"]["summary"]["title"] == "投诉摘要（新）"
        kinds = s.execute(select(AuditEvent.data).where(AuditEvent.kind == "process.draft_form_saved")).scalars()
        assert sorted((d["form_key"], d["added"]) for d in kinds) == [("complaint_extra", True),
                                                                      ("complaint_register", False)]
    # The zip of the draft carries its own forms.
    exported = zipfile.ZipFile(io.BytesIO(client.get("/processes/complaint/draft/export.zip").data))
    assert json.loads(exported.read("forms/complaint_extra.json")) == new


@pytest.mark.sqlite
@pytest.mark.parametrize(("key", "body", "reason"), [
    ("complaint_register", b"{\"type\": \"object\",", "form is not JSON"),
    ("complaint_register", b"{\"type\": \"objekt\"}", "not a valid JSON Schema"),
    ("complaint_register", b"{\"type\": \"object\", \"title\": \"\\u0000\"}", "form:"),
    ("Bad-Key", b"{\"type\": \"object\"}", "a form key is lower-case letters"),
], ids=["not-json", "not-a-schema", "not-storable", "bad-key"])
def test_a_form_that_is_not_a_json_schema_is_refused_and_nothing_is_stored(app, db, demo_cases_loaded, key,
                                                                           body, reason):
    client, token = _signed_in(app, OWNER)
    answer = _put_form(client, token, key, body, '"0"')
    assert answer.status_code == 422, answer.get_json()
    assert any(reason in p["message"] for p in answer.get_json()["problems"]), answer.get_json()
    with db.transaction() as s:
        assert s.get(ProcessDraft, "complaint") is None


def test_a_saved_form_that_the_deploy_would_refuse_is_kept_with_its_problems(app, db, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    schema, etag = _form(client, "complaint_register")
    schema["allOf"][0]["if"]["properties"] = {"is_on_behlaf": {"const": True}}
    answer = _put_form(client, token, "complaint_register", schema, etag)
    assert answer.status_code == 200
    assert any("'is_on_behlaf', which is not a field" in p["message"] for p in answer.get_json()["problems"])
    xml, _ = _draft(client)
    checked = client.post("/processes/complaint/draft/check", data=xml.encode(),
                          headers={"X-CSRFToken": token, "Content-Type": "application/xml"}).get_json()
    assert not checked["ok"] and any("is_on_behlaf" in p["message"] and p["element_id"] == "register"
                                     for p in checked["problems"])


def _field_blocks(html):
    return re.findall(r'<div class="field[^"]*" id="field-.*?</div>', html, re.S)


def test_the_preview_is_the_task_pages_form_with_the_error_summary_of_a_sample(app, db, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    with db.transaction() as s:
        task_id, form_key = s.execute(select(Task.id, Task.form_key).where(
            Task.process_key == "complaint", Task.form_key.is_not(None), Task.status.in_(ACTIVE_TASK_STATES))
            .order_by(Task.id).limit(1)).one()
    admin, _ = _signed_in(app, "admin")
    task_page = admin.get(f"/tasks/{task_id}").get_data(as_text=True)
    schema, _ = _form(client, form_key)
    shown = _preview(client, token, schema)
    assert shown["ok"] is True
    # The same fields, rendered by the same template, as the task page shows them.
    assert _field_blocks(shown["html"]) == _field_blocks(task_page) != []
    assert "error-summary" not in shown["html"]

    empty = _preview(client, token, schema, sample={})
    assert "error-summary" in empty["html"]
    required = schema["required"]
    assert sorted(empty["errors"]) == sorted(required)
    for name in required:  # each error links to its field, named by its title
        title = schema["properties"][name]["title"].split(" ")[0]
        assert re.search(rf'<a href="#field-{name}">{re.escape(title)}', empty["html"]), name


def test_a_good_sample_passes_and_shows_what_the_step_would_write(app, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    schema = {"type": "object", "properties": {
        "amount": {"type": "integer", "title": "金额", "maximum": 100},
        "when": {"type": "string", "format": "date-time", "title": "时间"}}, "required": ["amount"]}
    bad = _preview(client, token, schema, sample={"amount": "150", "when": "2026-12-07T09:30"})
    assert bad["errors"] == {"amount": "最多 100"} and 'aria-invalid="true"' in bad["html"]
    good = _preview(client, token, schema, sample={"amount": "99", "when": "2026-12-07T09:30"})
    assert good["errors"] == {} and "data-sample-ok" in good["html"]
    # Beijing time, as the task page reads it
    assert '"when": "2026-12-07T09:30:00+08:00"' in html.unescape(good["html"])


@pytest.mark.parametrize(("schema", "words"), [
    ("{\"type\": \"object\", ", "不是 JSON：第 1 行第 20 列"),
    ({"type": "object", "properties": {"a": {"type": "strin"}}}, "/properties/a/type"),
    ({"type": "object", "properties": {"a": {"type": "object", "properties": {}}}}, "类型“object”不受支持"),
    ({"type": "object", "properties": {"a": {"type": ["string", "null"]}}}, "不支持类型列表"),
    ({"type": "object", "properties": {"a": {"type": "string", "format": "phone"}}}, "格式“phone”不受支持"),
    ({"type": "object", "properties": {"a": {"type": "string", "ui:widget": "textarea"}}}, "ui:widget"),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object"}}}}, "不支持“object”的列表"),
], ids=["json", "metaschema", "nested-object", "type-list", "unchecked-format", "widget", "array-of-objects"])
def test_the_editor_names_what_is_not_json_schema_or_not_rendered(app, demo_cases_loaded, schema, words):
    client, token = _signed_in(app, OWNER)
    answer = _preview(client, token, schema)
    assert answer["ok"] is False
    assert any(words in p["message"] for p in answer["problems"]), answer["problems"]


def test_staff_are_refused_the_form_editor_and_import(app, db, demo_cases_loaded):
    client, token = _signed_in(app, STAFF)
    headers = {"X-CSRFToken": token, "If-Match": '"0"'}
    assert client.get(FORMS).status_code == 403
    assert client.get(f"{FORMS}/complaint_register.json").status_code == 403
    assert client.put(f"{FORMS}/complaint_register.json", data=b"{}", headers=headers).status_code == 403
    assert client.post(PREVIEW, data={"__schema": "{}"}, headers=headers).status_code == 403
    assert client.post(IMPORT, data=b"PK", headers=headers).status_code == 403
    assert client.get("/processes/complaint/draft/lint-context").status_code == 403
    assert client.post("/processes/complaint/draft/expressions", json={"expressions": []},
                       headers=headers).status_code == 403
    with db.transaction() as s:
        assert s.get(ProcessDraft, "complaint") is None


def test_an_unknown_form_is_a_404(app, demo_cases_loaded):
    client, _ = _signed_in(app, OWNER)
    assert client.get(f"{FORMS}/no_such_form.json").status_code == 404


# -- import -----------------------------------------------------------------------------------
def _zip(entries, *, method=zipfile.ZIP_DEFLATED):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


def _exported(client):
    return zipfile.ZipFile(io.BytesIO(client.get("/processes/complaint/versions/1/export.zip").data))


def _import(client, token, data, etag='"0"', filename="complaint.zip"):
    headers = {"X-CSRFToken": token, "Content-Type": "application/zip"}
    if etag is not None:
        headers["If-Match"] = etag
    return client.post(f"{IMPORT}?filename={filename}", data=data, headers=headers)


@pytest.mark.sqlite
def test_a_bundle_from_camunda_modeler_is_imported_into_the_draft(app, db, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    exported = _exported(client)
    xml = exported.read("complaint.bpmn").decode()
    changed = _with_groups(xml, "register", "call_center_agent")
    form = json.loads(exported.read("forms/complaint_register.json"))
    form["title"] = "投诉登记（修订）"
    # Camunda Modeler users zip the folder: everything under one top folder.
    bundle = _zip({"complaint/complaint.bpmn": changed,
                   "complaint/forms/complaint_register.json": json.dumps(form, ensure_ascii=False)})
    answer = _import(client, token, bundle)
    assert answer.status_code == 200, answer.get_json()
    assert answer.headers["ETag"] == '"1"' and answer.get_json()["forms"] == ["complaint_register"]
    stored, _ = _draft(client)
    assert 'camunda:candidateGroups="call_center_agent"' in stored
    assert _form(client, "complaint_register")[0]["title"] == "投诉登记（修订）"
    assert "complaint_acknowledge" in [f["key"] for f in client.get(FORMS).get_json()["forms"]]  # kept
    assert _import(client, token, bundle, etag='"0"').status_code == 409
    assert _import(client, token, bundle, etag=None).status_code == 428
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "process.draft_imported")).scalar_one()
        assert event.actor == OWNER and event.data["forms"] == ["complaint_register"]


XXE = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       '<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&x;</bpmn:definitions>')


def _script_task(xml):
    evil = ('<bpmn:scriptTask id="evil" name="x" scriptFormat="python"><bpmn:script>import os</bpmn:script>'
            '</bpmn:scriptTask>')
    return xml.replace('<bpmn:startEvent id="start_received"', evil + '<bpmn:startEvent id="start_received"', 1)


def _bomb(xml):
    # 30 MB of zeros deflate to about 30 KB: the sizes the archive declares refuse it unread.
    return _zip({"complaint.bpmn": xml, "forms/padding.json": b"0" * (30 * 1024 * 1024)})


HOSTILE = [
    ("not-a-zip", lambda xml: b"this is not a zip", "not a zip file"),
    ("zip-bomb", _bomb, "bytes uncompressed"),
    ("path-traversal", lambda xml: _zip({"../../etc/complaint.bpmn": xml}), "unsafe path"),
    ("xxe", lambda xml: _zip({"complaint.bpmn": XXE}), "DOCTYPE declarations are not allowed"),
    ("huge-diagram", lambda xml: _zip({"complaint.bpmn": xml + " " * (5 * 1024 * 1024)}), "larger than 5242880"),
    ("not-bpmn", lambda xml: _zip({"complaint.bpmn": "<html><body>hi</body></html>"}), "not a BPMN 2.0 diagram"),
    ("script-task", lambda xml: _zip({"complaint.bpmn": _script_task(xml)}), "script tasks are not allowed"),
    ("no-diagram", lambda xml: _zip({"forms/a.json": "{}"}), "no .bpmn diagram"),
    ("other-process", lambda xml: _zip({"c.bpmn": xml.replace('id="complaint"', 'id="other"', 1)}),
     "no process with id 'complaint'"),
    ("camunda-form", lambda xml: _zip({"complaint.bpmn": xml, "register.form": "{\"components\": []}"}),
     "Camunda Forms (.form)"),
    ("bad-form", lambda xml: _zip({"complaint.bpmn": xml, "forms/x.json": "{\"type\": 5}"}),
     "not a valid JSON Schema"),
    ("too-many-files", lambda xml: _zip({f"f{i}.txt": "" for i in range(501)}), "more than 500 files"),
]


@pytest.mark.sqlite
@pytest.mark.parametrize(("make", "reason"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])
def test_a_hostile_bundle_is_refused_by_name_and_nothing_is_stored(app, db, demo_cases_loaded, make, reason):
    client, token = _signed_in(app, OWNER)
    xml = _exported(client).read("complaint.bpmn").decode()
    answer = _import(client, token, make(xml))
    assert answer.status_code == 422, answer.get_data(as_text=True)[:500]
    assert any(reason in p["message"] for p in answer.get_json()["problems"]), answer.get_json()
    with db.transaction() as s:
        assert s.get(ProcessDraft, "complaint") is None
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.kind == "process.draft_imported")) == 0


def test_an_upload_larger_than_the_import_takes_is_refused_unread(app, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    answer = _import(client, token, b"\0" * (10 * 1024 * 1024 + 1))
    assert answer.status_code == 422
    assert "larger than 10485760" in answer.get_json()["problems"][0]["message"]


@pytest.mark.sqlite
def test_the_draft_forms_column_migrates_down_and_up_and_matches_the_model(database_url, db):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from engine.db import Base
    from engine.schema import alembic_config

    config = alembic_config(database_url)
    db.dispose()
    try:
        command.downgrade(config, "0018")
        columns = [c["name"] for c in inspect(db.engine).get_columns("bpm_process_draft")]
        assert "forms" not in columns
    finally:
        command.upgrade(config, "head")
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in differences if "bpm_process_draft" in repr(d)] == []


@pytest.mark.parametrize(("method", "url", "kwargs", "words"), [
    ("post", "/processes/complaint/draft/expressions", {"data": b"not json"}, "expressions"),
    ("post", "/processes/complaint/draft/expressions", {"json": {"expressions": [1, 2]}}, "expressions"),
    ("post", "/processes/complaint/draft/expressions", {"json": {"expressions": ["x"] * 501}}, "500"),
    ("post", PREVIEW, {"data": {"__schema": "x" * (1024 * 1024 + 1)}}, "1048576"),
    ("put", f"{FORMS}/complaint_register.json", {"data": b"", "headers": {"If-Match": '"0"'}}, "JSON"),
    ("put", f"{FORMS}/complaint_register.json", {"data": b"{}", "headers": {"If-Match": '"abc"'}}, "If-Match"),
    ("put", f"{FORMS}/complaint_register.json", {"data": b"{}", "headers": {"If-Match": '"7"'}}, "revision 7"),
    ("post", IMPORT, {"data": b"", "headers": {"If-Match": '"0"'}}, "zip"),
], ids=["expressions-not-json", "expressions-not-text", "too-many-expressions", "preview-too-large",
        "form-empty", "if-match-not-a-revision", "if-match-unknown-revision", "import-empty"])
def test_bad_input_to_the_editor_is_a_4xx_with_a_reason(app, db, demo_cases_loaded, method, url, kwargs, words):
    client, token = _signed_in(app, OWNER)
    headers = {"X-CSRFToken": token, **kwargs.pop("headers", {})}
    answer = getattr(client, method)(url, headers=headers, **kwargs)
    assert 400 <= answer.status_code < 500, answer.get_data(as_text=True)[:300]
    assert words in answer.get_json()["message"], answer.get_json()
    with db.transaction() as s:
        assert s.get(ProcessDraft, "complaint") is None


def test_the_expression_check_gives_the_safe_evaluators_verdict(app, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    answer = client.post("/processes/complaint/draft/expressions", headers={"X-CSRFToken": token},
                         json={"expressions": ["${amount > 1000}", "${__import__('os')}", "${amount >}"]})
    verdicts = answer.get_json()["verdicts"]
    assert verdicts["${amount > 1000}"] is None
    assert "__import__" in verdicts["${__import__('os')}"] and "syntax error" in verdicts["${amount >}"]


def test_a_valid_schema_the_page_cannot_render_is_previewed_without_the_parts_it_cannot(app, demo_cases_loaded):
    # Boolean schemas are valid JSON Schema; the page has no input for them.
    client, token = _signed_in(app, OWNER)
    schema = {"type": "object", "properties": {
        "a": True, "b": {"type": "string", "title": "乙"},
        "c": {"type": "array", "items": {"type": "integer", "oneOf": [True, {"const": 1}]}}},
        "allOf": [{"if": True, "then": {"required": ["b"]}},
                  {"if": {"properties": {"b": False}}, "then": {"required": ["b"]}}]}
    for sample in (None, {"b": ""}):
        answer = _preview(client, token, schema, sample=sample)
        assert answer["ok"] is False
        assert {p["field"] for p in answer["problems"] if p["severity"] == "error"} == {"a"}
        assert 'id="field-b"' in answer["html"] and 'id="field-a"' not in answer["html"]
    assert answer["errors"] == {"b": "必填"}


def test_the_comparison_with_the_deployed_version_sees_a_form_edited_in_the_draft(app, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    schema, etag = _form(client, "complaint_register")
    schema["properties"]["hotline_ticket"] = {"type": "string", "title": "热线工单号"}
    assert _put_form(client, token, "complaint_register", schema, etag).status_code == 200
    xml, _ = _draft(client)
    answer = client.post("/processes/complaint/draft/diff", data=xml.encode(),
                         headers={"X-CSRFToken": token, "Content-Type": "application/xml"}).get_json()
    by_id = {c["element_id"]: c for c in answer["changes"]}
    assert set(by_id) == {"register"} and "hotline_ticket" in by_id["register"]["message"], answer
