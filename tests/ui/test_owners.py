"""The process owners' pages through Flask's test client: the process list and a process's
versions and start routes, who may open them, the draft's ETag, hostile drafts refused with
nothing stored, the deploy lint run on a draft, deploying a draft as version 2 (new cases on
it, version-1 cases carrying on), and the exported zip. Over the demo's cases."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from sqlalchemy import func, select

from engine.access import identity
from engine.bpmn import bundle as bundles
from engine.calendars import SHANGHAI
from engine.models import AuditEvent, Deployment, InstanceStatus, ProcessDraft, ProcessInstance, ProcessVersion, Task
from engine.process import deployments, messages, tasks
from tests.ui.test_pages import sign_in, token_of

STAFF = "s003"  # a call-centre agent: no process_owner role
OWNER, OTHER_OWNER = "s001", "s002"
DRAFT = "/processes/complaint/draft.bpmn"


def _signed_in(app, username):
    client = app.test_client()
    sign_in(client, username, "demo")
    return client, token_of(client.get("/processes" if username != STAFF else "/"))


def _draft(client):
    answer = client.get(DRAFT)
    assert answer.status_code == 200
    return answer.get_data(as_text=True), answer.headers["ETag"]


def _put(client, token, xml, etag):
    headers = {"X-CSRFToken": token, "Content-Type": "application/xml"}
    if etag is not None:
        headers["If-Match"] = etag
    return client.put(DRAFT, data=xml if isinstance(xml, bytes) else xml.encode(), headers=headers)


def _with_groups(xml, element, groups):
    changed, count = re.subn(rf'(<bpmn:userTask id="{element}"[^>]*camunda:candidateGroups=")[^"]*"',
                             rf'\g<1>{groups}"', xml)
    assert count == 1
    return changed


def test_the_process_list_shows_versions_cases_and_start_routes(client, db, demo_cases_loaded):
    sign_in(client, OWNER, "demo")
    listed = client.get("/processes")
    assert listed.status_code == 200
    html = listed.get_data(as_text=True)
    assert 'href="/processes"' in html and "流程管理" in html  # the owner's header link
    for key in ("complaint", "retention", "callback", "vip_onboarding"):
        assert f'data-process="{key}"' in html
    page = client.get("/processes/complaint").get_data(as_text=True)
    with db.transaction() as s:
        v1 = deployments.get_latest(s, "complaint")
        running = s.scalar(select(func.count()).select_from(ProcessInstance).where(
            ProcessInstance.process_version_id == v1.id, ProcessInstance.status == InstanceStatus.RUNNING))
        deployer = s.get(Deployment, v1.deployment_id).deployed_by
    assert running > 0
    row = re.search(r'<tr data-version="1">.*?</tr>', page, re.S).group(0)
    assert f"data-running>{running}<" in row
    assert "data-failed>0<" in row
    assert v1.created_at.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M") in row  # Beijing time
    assert deployer and f"<td>{deployer}</td>" in row
    routes = re.search(r'<table class="board-table" id="start-routes">.*?</table>', page, re.S).group(0)
    for event, message in (("start_received", "complaint_received"), ("start_12386", "complaint_12386_transfer")):
        assert f'data-start="{event}"' in routes and message in routes
    assert "消息启动" in routes


def test_staff_are_refused_every_owner_page_and_call(app, db, demo_cases_loaded):
    client, token = _signed_in(app, STAFF)
    assert 'href="/processes"' not in client.get("/").get_data(as_text=True)
    for url in ("/processes", "/processes/complaint", "/processes/complaint/draft", DRAFT,
                "/processes/complaint/draft/export.zip", "/processes/complaint/versions/1/export.zip"):
        assert client.get(url).status_code == 403, url
    headers = {"X-CSRFToken": token, "Content-Type": "application/xml", "If-Match": '"0"'}
    assert client.put(DRAFT, data=b"<x/>", headers=headers).status_code == 403
    assert client.post("/processes/complaint/draft/check", data=b"<x/>", headers=headers).status_code == 403
    assert client.post("/processes/complaint/draft/deploy", headers=headers).status_code == 403
    with db.transaction() as s:
        assert s.get(ProcessDraft, "complaint") is None


@pytest.mark.sqlite
def test_a_stale_save_is_refused_with_who_saved_last_and_nothing_is_overwritten(app, db, demo_cases_loaded):
    first, first_token = _signed_in(app, OWNER)
    second, second_token = _signed_in(app, OTHER_OWNER)
    xml, etag = _draft(first)
    _, same_etag = _draft(second)
    assert etag == same_etag == '"0"'
    mine = _put(first, first_token, _with_groups(xml, "register", "call_center_agent"), etag)
    assert mine.status_code == 200 and mine.headers["ETag"] == '"1"'
    theirs = _put(second, second_token, _with_groups(xml, "register", "compliance"), same_etag)
    assert theirs.status_code == 409
    refusal = theirs.get_json()
    assert refusal["saved_by"] == OWNER and "s001" in refusal["message"]
    assert _put(second, second_token, xml, None).status_code == 428
    stored, now_etag = _draft(second)
    assert now_etag == '"1"' and 'camunda:candidateGroups="call_center_agent"' in stored
    again = _put(second, second_token, _with_groups(stored, "register", "compliance"), now_etag)
    assert again.status_code == 200 and again.headers["ETag"] == '"2"'
    with db.transaction() as s:
        row = s.get(ProcessDraft, "complaint")
        assert (row.revision, row.saved_by, row.based_on_version) == (2, OTHER_OWNER, 1)


XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       b'<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&x;</bpmn:definitions>')


def _script_task(xml: str) -> bytes:
    evil = ('<bpmn:scriptTask id="evil" name="x" scriptFormat="python"><bpmn:script>import os</bpmn:script>'
            '</bpmn:scriptTask>')
    return xml.replace('<bpmn:startEvent id="start_received"', evil + '<bpmn:startEvent id="start_received"', 1) \
        .encode()


@pytest.mark.sqlite
@pytest.mark.parametrize(("hostile", "reason"), [
    (lambda xml: b"<bpmn:definitions><bpmn:process", "not well-formed XML"),
    (lambda xml: XXE, "DOCTYPE declarations are not allowed"),
    (lambda xml: b" " * (5 * 1024 * 1024 + 1), "larger than 5242880 bytes"),
    (_script_task, "script tasks are not allowed"),
    (lambda xml: xml.replace('id="complaint"', 'id="other"', 1).encode(), "no process with id 'complaint'"),
], ids=["malformed", "xxe", "huge", "script-task", "another-process"])
def test_a_hostile_draft_is_refused_with_its_reason_and_nothing_is_saved(app, db, demo_cases_loaded, hostile,
                                                                         reason):
    client, token = _signed_in(app, OWNER)
    xml, etag = _draft(client)
    answer = _put(client, token, hostile(xml), etag)
    assert answer.status_code == 422
    body = answer.get_json()
    assert any(reason in p["message"] for p in body["problems"]), body
    checked = client.post("/processes/complaint/draft/check", data=hostile(xml),
                          headers={"X-CSRFToken": token, "Content-Type": "application/xml"})
    assert checked.status_code in (200, 422)
    assert any(reason in p["message"] for p in checked.get_json()["problems"])
    with db.transaction() as s:
        assert s.get(ProcessDraft, "complaint") is None
        assert s.scalar(select(func.count()).select_from(AuditEvent)
                        .where(AuditEvent.kind == "process.draft_saved")) == 0
    assert _draft(client)[1] == '"0"'


def test_check_marks_an_unknown_form_key_on_its_element(app, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    xml, _ = _draft(client)
    broken = xml.replace('camunda:formKey="complaint_register"', 'camunda:formKey="complaint_registr"', 1)
    headers = {"X-CSRFToken": token, "Content-Type": "application/xml"}
    answer = client.post("/processes/complaint/draft/check", data=broken.encode(), headers=headers)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["ok"] is False
    assert [p["element_id"] for p in body["problems"]] == ["register"]
    assert "complaint_registr" in body["problems"][0]["message"]
    # The version's forms are the draft's: the unchanged diagram passes.
    assert client.post("/processes/complaint/draft/check", data=xml.encode(), headers=headers).get_json()["ok"]


def _actor(s, username):
    return identity.actor_for(s, identity.get_user(s, username))


def _start_complaint(db, rt, key):
    with db.transaction() as s:
        sender = _actor(s, "s104")
        messages.correlate(s, rt, name="complaint_received", correlation_key=key, actor=sender,
                           payload={"channel": "counter", "client_id": "C02"})
        instance = s.execute(select(ProcessInstance).where(ProcessInstance.business_key == key)).scalar_one()
        task = s.execute(select(Task).where(Task.instance_id == instance.id, Task.element_id == "register")) \
            .scalar_one()
        return instance.process_version_id, task.id, sorted(task.candidate_groups)


@pytest.mark.sqlite
def test_deploying_a_draft_makes_version_2_for_new_cases_while_version_1_cases_carry_on(app, db, rt,
                                                                                       demo_cases_loaded):
    old_version, old_task, old_groups = _start_complaint(db, rt, "CMP-20261125-0901")
    client, token = _signed_in(app, OWNER)
    xml, etag = _draft(client)
    saved = _put(client, token, _with_groups(xml, "register", "hq_complaint_dept"), etag)
    assert saved.status_code == 200
    stale = client.post("/processes/complaint/draft/deploy", headers={"X-CSRFToken": token, "If-Match": etag})
    assert stale.status_code == 409
    deployed = client.post("/processes/complaint/draft/deploy",
                           headers={"X-CSRFToken": token, "If-Match": saved.headers["ETag"]})
    assert deployed.status_code == 201, deployed.get_json()
    assert deployed.get_json()["version"] == 2
    with db.transaction() as s:
        v2 = deployments.get_latest(s, "complaint")
        assert v2.version == 2 and v2.forms == s.get(ProcessVersion, old_version).forms
        audit = s.execute(select(AuditEvent).where(AuditEvent.kind == "process.deployed")
                          .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
        assert audit.actor == OWNER and audit.data["version"] == 2
        assert s.get(ProcessDraft, "complaint").based_on_version == 2

    new_version, _, new_groups = _start_complaint(db, rt, "CMP-20261125-0902")
    assert new_version == v2.id != old_version
    assert new_groups == ["hq_complaint_dept"] and old_groups != new_groups
    # The version-1 case carries on, on version 1.
    with db.transaction() as s:
        done = tasks.complete(s, rt, task_id=old_task, actor=_actor(s, "s104"), data=_register_data())
        instance = s.get(ProcessInstance, done.instance_id)
        assert instance.process_version_id == old_version and instance.status == InstanceStatus.RUNNING
        nxt = s.execute(select(Task.element_id).where(Task.instance_id == instance.id,
                                                      Task.status.in_(("open", "claimed")))).scalars().all()
        assert nxt == ["acknowledge"]
    page = client.get("/processes/complaint").get_data(as_text=True)
    assert re.search(r'<tr data-version="2">.*?data-running>1<', page, re.S)


def _register_data():
    return {"received_at": "2026-11-25T10:00:00+08:00", "channel": "counter", "request_kind": "complaint",
            "client_id": "C02", "client_age": 67, "business_line": "product_sales", "subject_staff_ids": ["s107"],
            "summary": "测试", "client_request": "compensation", "amount_claimed": 1000,
            "alleged_violations": ["suitability_mismatch"], "consent_contact_channel": "phone"}


def test_a_version_and_the_draft_export_as_a_zip_bundle_that_deploys_as_is(app, db, rt, demo_cases_loaded):
    client, _ = _signed_in(app, OWNER)
    answer = client.get("/processes/complaint/versions/1/export.zip")
    assert answer.status_code == 200 and answer.mimetype == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(answer.data)).namelist()
    assert "complaint.bpmn" in names and "forms/complaint_register.json" in names
    exported = bundles.from_zip(answer.data, "complaint-v1.zip")
    with db.transaction() as s:
        owner = _actor(s, OWNER)
        assert deployments.lint(s, rt, exported, actor=owner) == []
        assert sorted(exported.forms) == sorted(deployments.get_latest(s, "complaint").forms)
    draft = client.get("/processes/complaint/draft/export.zip")
    assert draft.status_code == 200 and "complaint-draft.zip" in draft.headers["Content-Disposition"]
    assert client.get("/processes/complaint/versions/9/export.zip").status_code == 404


@pytest.mark.sqlite
def test_the_drafts_table_migrates_down_and_up_and_matches_the_model(database_url, db):
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from engine.db import Base
    from engine.schema import alembic_config

    config = alembic_config(database_url)
    db.dispose()
    try:
        command.downgrade(config, "0017")  # the revision before the drafts table's
        assert "bpm_process_draft" not in inspect(db.engine).get_table_names()
    finally:
        command.upgrade(config, "head")
    with db.engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert [d for d in differences if "bpm_process_draft" in repr(d)] == []


@pytest.mark.sqlite
def test_a_draft_the_lint_refuses_is_not_deployed_and_shows_its_problems(app, db, demo_cases_loaded):
    client, token = _signed_in(app, "admin")  # administrators may do what owners do
    xml, etag = _draft(client)
    broken = xml.replace('camunda:candidateGroups="hq_complaint_dept"', 'camunda:candidateGroups="no_such_group"', 1)
    saved = _put(client, token, broken, etag)
    assert saved.status_code == 200  # a draft may hold problems; a deploy may not
    refused = client.post("/processes/complaint/draft/deploy",
                          headers={"X-CSRFToken": token, "If-Match": saved.headers["ETag"]})
    assert refused.status_code == 422
    assert any("no_such_group" in p["message"] and p["element_id"] for p in refused.get_json()["problems"])
    with db.transaction() as s:
        assert deployments.get_latest(s, "complaint").version == 1
        assert s.get(ProcessDraft, "complaint").revision == 1


def test_start_routes_name_message_none_and_timer_starts():
    xml = """<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">
      <bpmn:message id="m1" name="client_calls"/>
      <bpmn:process id="p">
        <bpmn:startEvent id="by_hand" name="人工发起"/>
        <bpmn:startEvent id="by_message"><bpmn:messageEventDefinition messageRef="m1"/></bpmn:startEvent>
        <bpmn:startEvent id="quarterly"><bpmn:timerEventDefinition>
          <bpmn:timeCycle>R/2027-01-04T09:00:00+08:00/P3M</bpmn:timeCycle></bpmn:timerEventDefinition></bpmn:startEvent>
        <bpmn:subProcess id="sp"><bpmn:startEvent id="inner"/></bpmn:subProcess>
      </bpmn:process></bpmn:definitions>"""
    from engine.process.catalogue import StartRoute, start_routes

    assert start_routes(xml, "p") == [
        StartRoute("by_hand", "人工发起", "none"), StartRoute("by_message", None, "message", "client_calls"),
        StartRoute("quarterly", None, "timer", "R/2027-01-04T09:00:00+08:00/P3M")]
