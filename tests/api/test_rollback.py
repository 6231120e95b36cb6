"""Rolling a process back: deploying an earlier version's diagram and forms again as the next
version (``POST /processes/{key}/versions/{version}/redeploy``)."""

import json

import pytest
from sqlalchemy import delete, func, select

from engine.access import identity
from engine.models import AuditEvent, Group, GroupMember, ProcessVersion
from tests.api.test_deployments import FORMS, NOTIFY_XML, REVIEW_XML, multipart, post_deploy, stored
from tests.support.api import API, assert_problem, start


def deploy_review(client, auth, xml=REVIEW_XML, forms=None):
    files = [("review.bpmn", xml), *(forms or FORMS).items()]
    response = post_deploy(client, auth("owner"), data=multipart(files), content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.json["versions"][0]


def two_versions(client, auth):
    """Version 1 as the fixture has it; version 2 with a longer comment and a renamed step."""
    first = deploy_review(client, auth)
    approve = json.loads(FORMS["approve.json"])
    approve["properties"]["comment"]["maxLength"] = 200
    second = deploy_review(client, auth, REVIEW_XML.replace("经理审批".encode(), "经理复核".encode()),
                           {**FORMS, "approve.json": json.dumps(approve).encode()})
    assert (first["version"], second["version"]) == (1, 2)
    return first, second


def redeploy(client, headers, version, process="review", **body):
    return client.post(f"{API}/processes/{process}/versions/{version}/redeploy", json=body, headers=headers)


@pytest.mark.sqlite
def test_an_earlier_version_comes_back_as_the_next_version_and_new_cases_start_on_it(client, auth, db):
    first, second = two_versions(client, auth)
    running = start(client, auth("li"), "ON-V2")
    response = redeploy(client, auth("owner"), 1, reason="经理复核改名引起误解，恢复原流程", if_latest=2)
    assert response.status_code == 201, response.get_data(as_text=True)
    body = response.json
    assert (body["version"], body["created"], body["redeployed_from"]) == (3, True, 1)
    assert body["sha256"] == first["sha256"] != second["sha256"]
    with db.transaction() as s:
        third = s.execute(select(ProcessVersion).where(ProcessVersion.version == 3)).scalar_one()
        assert third.bpmn_xml.encode() == REVIEW_XML
        assert third.forms == s.get(ProcessVersion, first["id"]).forms
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "process.deployed")
                          .order_by(AuditEvent.id.desc()).limit(1)).scalar_one()
        assert event.actor == "owner"
        assert event.data["version"] == 3 and event.data["redeployed_from"] == 1
        assert event.data["reason"] == "经理复核改名引起误解，恢复原流程"
    # New cases start on version 3; the case started on version 2 stays there.
    new = start(client, auth("li"), "ON-V3")
    assert new["process_version_id"] == body["id"]
    again = client.get(f"{API}/instances/{running['id']}", headers=auth("li")).json
    assert again["process_version_id"] == second["id"]
    listing = client.get(f"{API}/processes/review/versions", headers=auth("li")).json
    assert [v["version"] for v in listing] == [3, 2, 1]


@pytest.mark.sqlite
def test_rolling_back_to_what_the_latest_already_holds_creates_nothing(client, auth, db):
    two_versions(client, auth)
    assert redeploy(client, auth("owner"), 1, reason="恢复").status_code == 201
    # Version 2's content is now the older one: bringing version 1 back again changes nothing.
    response = redeploy(client, auth("owner"), 1, reason="再恢复一次")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert (response.json["version"], response.json["created"]) == (3, False)
    assert stored(db) == (3, 3)


@pytest.mark.sqlite
def test_the_latest_version_itself_and_a_stale_view_are_conflicts_that_store_nothing(client, auth, db):
    two_versions(client, auth)
    problem = assert_problem(redeploy(client, auth("owner"), 2, reason="x"), 409, "version_conflict")
    assert "version 2 is the latest" in problem["detail"]
    # The owner decided while looking at version 1 as the latest: version 2 arrived since.
    problem = assert_problem(redeploy(client, auth("owner"), 1, reason="x", if_latest=1), 409, "version_conflict")
    assert "at version 2 now" in problem["detail"]
    assert stored(db) == (2, 2)


def test_refusals_name_their_reason_and_store_nothing(client, auth, db):
    two_versions(client, auth)
    owner = auth("owner")
    for username in ("li", "boss", "chen"):
        assert_problem(redeploy(client, auth(username), 1, reason="x"), 403, "forbidden")
    assert_problem(redeploy(client, owner, 9, reason="x"), 404, "process_not_found")
    assert_problem(redeploy(client, owner, 1, process="nope", reason="x"), 404, "process_not_found")
    problem = assert_problem(redeploy(client, owner, 1), 422, "invalid_request")
    assert problem["errors"][0]["field"] == "reason"
    assert_problem(redeploy(client, owner, 1, reason="x" * 501), 422, "invalid_request")
    problem = assert_problem(redeploy(client, owner, 1, reason="   "), 400, "invalid_input")
    assert "reason" in problem["detail"]
    assert_problem(redeploy(client, owner, 1, reason="x", if_latest="two"), 422, "invalid_request")
    assert_problem(redeploy(client, owner, 1, reason="x", if_latest=0), 422, "invalid_request")
    assert_problem(client.post(f"{API}/processes/review/versions/1/redeploy", data="{not json",
                               headers={**owner, "Content-Type": "application/json"}), 400, "bad_request")
    assert stored(db) == (2, 2)


def test_a_version_the_lint_refuses_today_is_refused_with_its_problems(client, auth, db, rt):
    # Version 1 offered its approval to a group that has been removed since.
    with db.transaction() as s:
        identity.ensure_group(s, key="old_managers")
    deploy_review(client, auth, REVIEW_XML.replace(b'camunda:candidateGroups="managers"',
                                                   b'camunda:candidateGroups="old_managers"'))
    deploy_review(client, auth)
    with db.transaction() as s:
        group_id = s.execute(select(Group.id).where(Group.key == "old_managers")).scalar_one()
        s.execute(delete(GroupMember).where(GroupMember.group_id == group_id))
        s.execute(delete(Group).where(Group.id == group_id))
    problem = assert_problem(redeploy(client, auth("owner"), 1, reason="恢复"), 422, "deployment_invalid")
    (located,) = problem["errors"]
    assert located["element_id"] == "approve_big"
    assert "candidate group 'old_managers' does not exist" in located["message"]
    assert stored(db) == (2, 2)


@pytest.mark.sqlite
def test_only_the_process_rolled_back_gets_a_version_when_its_file_holds_others(client, auth, db):
    xml = {**auth("owner"), "Content-Type": "application/xml"}
    assert post_deploy(client, xml, data=NOTIFY_XML).status_code == 201
    changed = NOTIFY_XML.replace("到账通知 Notify".encode(), "到账通知 v2".encode())
    changed = changed.replace(b"complaint_filed", b"complaint_lodged")
    versions = post_deploy(client, xml, data=changed).json["versions"]
    assert sorted((v["process_key"], v["version"]) for v in versions) == [("complaint", 2), ("notify", 2)]
    response = redeploy(client, auth("owner"), 1, process="notify", reason="恢复通知流程")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert (response.json["process_key"], response.json["version"]) == ("notify", 3)
    with db.transaction() as s:
        counts = dict(s.execute(select(ProcessVersion.process_key, func.count())
                                .group_by(ProcessVersion.process_key)).all())
    assert counts == {"notify": 3, "complaint": 2}
