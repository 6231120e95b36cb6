"""Rolling back from the process page: an earlier version deployed again as the next version,
after a page that shows what changes against the latest and today's deploy check."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import delete, func, select

from engine.access import identity
from engine.bpmn.bundle import Bundle
from engine.models import AuditEvent, Group, GroupMember, ProcessVersion
from engine.process import deployments
from tests.ui.test_owners import OWNER, STAFF, _signed_in, _with_groups

PAGE = "/processes/complaint/versions/1/redeploy"


def deploy_version_2(db, rt, groups="hq_complaint_dept"):
    """Version 2 of the complaint: its register step offered to ``groups``."""
    with db.transaction() as s:
        owner = identity.actor_for(s, identity.get_user(s, OWNER))
        v1 = deployments.get_version(s, "complaint", 1)
        xml = _with_groups(v1.bpmn_xml, "register", groups)
        bundle = Bundle(name="v2")
        bundle.bpmn["complaint.bpmn"] = xml.encode()
        bundle.forms.update(v1.forms)
        (deployed,) = deployments.deploy(s, rt, bundle, actor=owner, only="complaint")
        assert deployed.version.version == 2


def versions(db):
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(ProcessVersion)
                        .where(ProcessVersion.process_key == "complaint"))


def test_the_page_shows_what_comes_back_and_deploys_it_with_the_reason(app, db, rt, demo_cases_loaded):
    deploy_version_2(db, rt)
    client, token = _signed_in(app, OWNER)
    listing = client.get("/processes/complaint").get_data(as_text=True)
    row1 = re.search(r'<tr data-version="1">.*?</tr>', listing, re.S).group(0)
    row2 = re.search(r'<tr data-version="2">.*?</tr>', listing, re.S).group(0)
    assert f'href="{PAGE}"' in row1 and "data-redeploy" not in row2  # the latest has nothing to roll back to
    page = client.get(PAGE).get_data(as_text=True)
    changes = re.search(r'<ul id="version-changes">.*?</ul>', page, re.S).group(0)
    assert 'data-element-id="register"' in changes and "hq_complaint_dept" in changes
    assert 'id="redeploy-ok"' in page and 'name="if_latest" value="2"' in page

    answer = client.post(PAGE, data={"csrf_token": token, "reason": "总部集中登记试行结束", "if_latest": "2"})
    assert answer.status_code == 303 and answer.headers["Location"].endswith("/processes/complaint")
    shown = client.get("/processes/complaint").get_data(as_text=True)
    assert "版本 1 已重新部署为版本 3" in shown
    row3 = re.search(r'<tr data-version="3">.*?</tr>', shown, re.S).group(0)
    assert 'data-redeployed-from="1"' in row3 and "版本 1 的重新部署" in row3
    with db.transaction() as s:
        v1, v3 = (deployments.get_version(s, "complaint", n) for n in (1, 3))
        assert (v3.bpmn_xml, v3.forms, v3.redeployed_from) == (v1.bpmn_xml, v1.forms, 1)
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "process.deployed")
                          .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
        assert (event.actor, event.data["version"], event.data["redeployed_from"]) == (OWNER, 3, 1)
        assert event.data["reason"] == "总部集中登记试行结束"


@pytest.mark.sqlite
def test_a_missing_reason_or_a_stale_view_is_refused_on_the_page_and_deploys_nothing(app, db, rt,
                                                                                     demo_cases_loaded):
    deploy_version_2(db, rt)
    client, token = _signed_in(app, OWNER)
    blank = client.post(PAGE, data={"csrf_token": token, "reason": "  ", "if_latest": "2"})
    assert blank.status_code == 400
    assert "请填写恢复早期版本的原因" in blank.get_data(as_text=True)
    # The owner looked while version 1 was the latest; version 2 arrived since.
    stale = client.post(PAGE, data={"csrf_token": token, "reason": "恢复", "if_latest": "1"})
    assert stale.status_code == 409
    html = stale.get_data(as_text=True)
    assert "在您打开此页面之后，版本 2 已部署" in html and 'name="if_latest" value="2"' in html
    assert "恢复</textarea>" in html  # what the owner typed is kept
    latest = client.post("/processes/complaint/versions/2/redeploy",
                         data={"csrf_token": token, "reason": "x", "if_latest": "2"})
    assert latest.status_code == 409 and "版本 2 就是最新版本" in latest.get_data(as_text=True)
    assert client.post(PAGE, data={"reason": "恢复", "if_latest": "2"}).status_code == 400  # no CSRF token
    assert client.get("/processes/complaint/versions/9/redeploy").status_code == 404
    assert versions(db) == 2


def test_a_version_todays_lint_refuses_shows_its_problems_and_no_button(app, db, rt, demo_cases_loaded):
    with db.transaction() as s:
        identity.ensure_group(s, key="pilot_intake")
    # Version 1 is what the demo deployed; version 2 offers registration to a pilot group,
    # version 3 goes back to version 1's diagram, and the pilot group is then removed.
    deploy_version_2(db, rt, groups="pilot_intake")
    client, token = _signed_in(app, OWNER)
    assert client.post(PAGE, data={"csrf_token": token, "reason": "试点结束", "if_latest": "2"}).status_code == 303
    with db.transaction() as s:
        group_id = s.execute(select(Group.id).where(Group.key == "pilot_intake")).scalar_one()
        s.execute(delete(GroupMember).where(GroupMember.group_id == group_id))
        s.execute(delete(Group).where(Group.id == group_id))
    page = client.get("/processes/complaint/versions/2/redeploy")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    problems = re.search(r'<ul id="redeploy-problems">.*?</ul>', html, re.S).group(0)
    assert 'data-element-id="register"' in problems and "pilot_intake" in problems
    assert 'id="redeploy-form"' not in html
    refused = client.post("/processes/complaint/versions/2/redeploy",
                          data={"csrf_token": token, "reason": "再试点", "if_latest": "3"})
    assert refused.status_code == 422 and "已拒绝：1 个问题" in refused.get_data(as_text=True)
    assert versions(db) == 3


def test_staff_get_403_on_the_rollback_page_and_its_post(app, db, rt, demo_cases_loaded):
    deploy_version_2(db, rt)
    client, token = _signed_in(app, STAFF)
    assert client.get(PAGE).status_code == 403
    assert client.post(PAGE, data={"csrf_token": token, "reason": "x", "if_latest": "2"}).status_code == 403
    assert versions(db) == 2
