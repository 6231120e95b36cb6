"""The owners' comparison and migration pages through Flask's test client, over the demo's
cases: the editor's comparison of the canvas with the deployed version; the migration page
listing the cases on other versions, a dry run, moving one case (it then continues on
version 2) and a refusal that leaves a case where it is; bad input and staff refused."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from engine.models import InstanceStatus, ProcessInstance, ProcessVersion, Task
from engine.process import deployments, tasks
from tests.ui.test_owners import (
    OWNER,
    STAFF,
    XXE,
    _actor,
    _draft,
    _put,
    _register_data,
    _signed_in,
    _start_complaint,
    _with_groups,
)

MIGRATION = "/processes/complaint/migration"


def _deploy_v2(client, token, xml):
    _, etag = _draft(client)
    saved = _put(client, token, xml, etag)
    assert saved.status_code == 200, saved.get_json()
    deployed = client.post("/processes/complaint/draft/deploy",
                           headers={"X-CSRFToken": token, "If-Match": saved.headers["ETag"]})
    assert deployed.status_code == 201, deployed.get_json()


def _on_version(db, business_key):
    with db.transaction() as s:
        instance = s.execute(select(ProcessInstance).where(ProcessInstance.business_key == business_key)).scalar_one()
        return s.get(ProcessVersion, instance.process_version_id).version, instance.id


def test_the_editor_compares_the_canvas_with_the_deployed_version(app, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    xml, _ = _draft(client)
    headers = {"X-CSRFToken": token, "Content-Type": "application/xml"}
    same = client.post("/processes/complaint/draft/diff", data=xml.encode(), headers=headers).get_json()
    assert same["changes"] == [] and same["against_version"] == 1
    changed = _with_groups(xml, "register", "call_center_agent").replace('name="结案"', 'name="结案归档"')
    answer = client.post("/processes/complaint/draft/diff", data=changed.encode(), headers=headers)
    assert answer.status_code == 200
    body = answer.get_json()
    by_id = {c["element_id"]: c for c in body["changes"]}
    assert set(by_id) == {"register", "close_case"} and body["changed"] == 2
    assert "候选组：call_center_agent,branch:counter_staff → call_center_agent" in by_id["register"]["message"]
    assert by_id["close_case"]["message"] == "修改用户任务「结案归档」（close_case）：名称：结案 → 结案归档"
    assert "与版本 1 相比" in body["summary"]
    refused = client.post("/processes/complaint/draft/diff", data=XXE, headers=headers)
    assert refused.status_code == 422 and refused.get_json()["problems"]
    assert client.post("/processes/complaint/draft/diff", data=b"", headers=headers).status_code == 400


@pytest.mark.sqlite
def test_an_owner_dry_runs_and_moves_a_case_which_continues_on_version_2(app, db, rt, demo_cases_loaded):
    moving, staying = "CMP-20261125-0911", "CMP-20261125-0912"
    _start_complaint(db, rt, moving)
    _start_complaint(db, rt, staying)
    client, token = _signed_in(app, OWNER)
    assert 'href="/processes/complaint/migration"' in client.get("/processes/complaint").get_data(as_text=True)
    assert "没有在其他版本上运行的案件" in client.get(MIGRATION).get_data(as_text=True)

    xml, _ = _draft(client)
    _deploy_v2(client, token, _with_groups(xml, "register", "call_center_agent"))
    page = client.get(MIGRATION).get_data(as_text=True)
    assert f'data-case="{moving}"' in page and f'data-case="{staying}"' in page
    assert 'data-element-id="register" data-kind="changed"' in page  # what version 2 changed
    _, moving_id = _on_version(db, moving)
    _, staying_id = _on_version(db, staying)

    dry = client.post(MIGRATION, data={"csrf_token": token, "to_version": "2", "action": "dry_run",
                                       "case": [str(moving_id), str(staying_id)]})
    assert dry.status_code == 200
    html = dry.get_data(as_text=True)
    assert 'id="report" data-dry-run="true"' in html
    row = re.search(rf'<tr data-outcome="{moving_id}" data-result="movable">.*?</tr>', html, re.S).group(0)
    assert "候选组" in row and "call_center_agent" in row
    assert _on_version(db, moving)[0] == 1

    done = client.post(MIGRATION, data={"csrf_token": token, "to_version": "2", "action": "migrate",
                                        "case": [str(moving_id)]})
    html = done.get_data(as_text=True)
    assert f'<tr data-outcome="{moving_id}" data-result="moved">' in html
    assert "1 个已迁移" in html
    assert _on_version(db, moving)[0] == 2 and _on_version(db, staying)[0] == 1
    assert f'data-case="{moving}"' not in html and f'data-case="{staying}"' in html  # only those still to move

    with db.transaction() as s:  # the moved case goes on along version 2 (a call-centre agent registers it)
        register = s.execute(select(Task).where(Task.instance_id == moving_id, Task.element_id == "register")) \
            .scalar_one()
        assert register.candidate_groups == ["call_center_agent"]
        tasks.complete(s, rt, task_id=register.id, actor=_actor(s, "s004"), data=_register_data())
        instance = s.get(ProcessInstance, moving_id)
        assert instance.status == InstanceStatus.RUNNING
        assert instance.process_version_id == deployments.get_latest(s, "complaint").id
        assert s.execute(select(Task.element_id).where(Task.instance_id == moving_id, Task.status.in_(
            ("open", "claimed")))).scalars().all() == ["acknowledge"]


@pytest.mark.sqlite
def test_a_renamed_step_is_matched_by_its_place_and_the_report_says_what_changes(app, db, rt, demo_cases_loaded):
    business_key = "CMP-20261125-0913"
    _start_complaint(db, rt, business_key)
    client, token = _signed_in(app, OWNER)
    xml, _ = _draft(client)
    renamed = xml
    for attribute in ("id", "sourceRef", "targetRef", "bpmnElement"):
        renamed = renamed.replace(f'{attribute}="register"', f'{attribute}="register_v2"')
    _deploy_v2(client, token, renamed.replace('name="登记投诉"', 'name="登记投诉（新）"'))
    _, case_id = _on_version(db, business_key)
    answer = client.post(MIGRATION, data={"csrf_token": token, "to_version": "2", "action": "migrate",
                                          "case": [str(case_id)]})
    row = re.search(rf'<tr data-outcome="{case_id}" data-result="moved">.*?</tr>', answer.get_data(as_text=True),
                    re.S).group(0)
    assert "编号：register → register_v2" in row
    # The SLA policy named the step by its id: the report says the step loses it.
    assert "SLA 策略：complaint.register → （无）" in row
    with db.transaction() as s:
        assert s.execute(select(Task.element_id).where(Task.instance_id == case_id, Task.status.in_(
            ("open", "claimed")))).scalars().all() == ["register_v2"]


@pytest.mark.sqlite
def test_a_step_that_changes_kind_is_refused_and_the_case_stays_on_version_1(app, db, rt, demo_cases_loaded):
    business_key = "CMP-20261125-0914"
    _start_complaint(db, rt, business_key)
    client, token = _signed_in(app, OWNER)
    xml, _ = _draft(client)
    manual = re.sub(r'<bpmn:userTask id="register" ([^>]*)>(.*?)</bpmn:userTask>',
                    r'<bpmn:manualTask id="register" \1>\2</bpmn:manualTask>', xml, count=1, flags=re.S)
    assert manual != xml
    _deploy_v2(client, token, manual)
    _, case_id = _on_version(db, business_key)
    answer = client.post(MIGRATION, data={"csrf_token": token, "to_version": "2", "action": "migrate",
                                          "case": [str(case_id)]})
    row = re.search(rf'<tr data-outcome="{case_id}" data-result="refused">.*?</tr>', answer.get_data(as_text=True),
                    re.S).group(0)
    assert 'data-reason="step_kind_changed"' in row and "登记投诉" in row
    assert _on_version(db, business_key)[0] == 1


@pytest.mark.sqlite
def test_every_case_on_a_version_is_dry_run_at_once(app, db, rt, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    xml, _ = _draft(client)
    _deploy_v2(client, token, _with_groups(xml, "register", "call_center_agent"))
    with db.transaction() as s:
        on_v1 = s.execute(select(ProcessInstance.id).join(
            ProcessVersion, ProcessVersion.id == ProcessInstance.process_version_id).where(
            ProcessInstance.process_key == "complaint", ProcessInstance.status == InstanceStatus.RUNNING,
            ProcessVersion.version == 1)).scalars().all()
    assert len(on_v1) >= 2
    listed = client.get(f"{MIGRATION}?to_version=2&from_version=1").get_data(as_text=True)
    assert listed.count('name="case"') == len(on_v1)
    dry = client.post(MIGRATION, data={"csrf_token": token, "to_version": "2", "from_version": "1",
                                       "action": "dry_run", "all": "1"}).get_data(as_text=True)
    assert sorted(int(i) for i in re.findall(r'<tr data-outcome="(\d+)"', dry)) == sorted(on_v1)
    assert 'data-result="refused"' not in dry
    with db.transaction() as s:
        assert {s.get(ProcessVersion, s.get(ProcessInstance, i).process_version_id).version for i in on_v1} == {1}


@pytest.mark.sqlite
def test_a_case_inside_a_subprocess_moves_keeps_its_claim_and_goes_on_on_version_2(app, db, rt, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    xml, _ = _draft(client)
    assert xml.count('name="调查核实"') == 1
    _deploy_v2(client, token, xml.replace('name="调查核实"', 'name="调查核实（含录音）"'))
    with db.transaction() as s:
        row = s.execute(select(Task).where(Task.element_id == "investigate", Task.status == "claimed")
                        .order_by(Task.id).limit(1)).scalar_one()
        case_id, holder = row.instance_id, row.assignee
    done = client.post(MIGRATION, data={"csrf_token": token, "to_version": "2", "action": "migrate",
                                        "case": [str(case_id)]})
    assert f'<tr data-outcome="{case_id}" data-result="moved">' in done.get_data(as_text=True)
    with db.transaction() as s:
        row = s.execute(select(Task).where(Task.instance_id == case_id, Task.element_id == "investigate",
                                           Task.status == "claimed")).scalar_one()
        assert (row.name, row.assignee) == ("调查核实（含录音）", holder)  # inside the subprocess, still theirs
        tasks.complete(s, rt, task_id=row.id, actor=_actor(s, holder),
                       data={"facts_found": "核实", "root_cause": "fees", "staff_at_fault": False})
        instance = s.get(ProcessInstance, case_id)
        assert instance.status == InstanceStatus.RUNNING
        assert s.get(ProcessVersion, instance.process_version_id).version == 2
        assert s.execute(select(Task.element_id).where(Task.instance_id == case_id, Task.status.in_(
            ("open", "claimed")))).scalars().all() not in ([], ["investigate"])


def test_bad_requests_to_the_migration_page_are_refused_with_the_reason(app, db, demo_cases_loaded):
    client, token = _signed_in(app, OWNER)
    assert client.get(f"{MIGRATION}?to_version=9").status_code == 404
    assert client.get("/processes/nope/migration").status_code == 404
    empty = client.post(MIGRATION, data={"csrf_token": token, "to_version": "1", "action": "dry_run"})
    assert empty.status_code == 400 and "请先选择案件" in empty.get_data(as_text=True)
    assert client.post(MIGRATION, data={"to_version": "1", "case": ["1"]}).status_code == 400  # no CSRF token


def test_staff_get_403_on_the_comparison_and_the_migration(app, db, demo_cases_loaded):
    client, token = _signed_in(app, STAFF)
    assert client.get(MIGRATION).status_code == 403
    assert client.post(MIGRATION, data={"csrf_token": token, "to_version": "1", "action": "migrate",
                                        "case": ["1"]}).status_code == 403
    assert client.post("/processes/complaint/draft/diff", data=b"<x/>",
                       headers={"X-CSRFToken": token, "Content-Type": "application/xml"}).status_code == 403
