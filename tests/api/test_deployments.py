"""Deploying bundles through the API: multipart, XML and zip bodies; lint; versions."""

import io
import json
import zipfile

import pytest
from sqlalchemy import func, select

from engine.models import AuditEvent, Deployment, ProcessVersion
from tests.conftest import FIXTURES
from tests.support.api import API, assert_problem

REVIEW = FIXTURES / "review"
REVIEW_XML = (REVIEW / "review.bpmn").read_bytes()
NOTIFY_XML = (FIXTURES / "api_notify" / "notify.bpmn").read_bytes()
FORMS = {f.name: f.read_bytes() for f in sorted((REVIEW / "forms").glob("*.json"))}


def multipart(files):
    """``files``: (name, bytes) pairs sent as the multipart field ``files``."""
    return {"files": [(io.BytesIO(data), name) for name, data in files]}


def review_upload():
    return multipart([("review.bpmn", REVIEW_XML), *FORMS.items()])


def review_zip(top_folder=""):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{top_folder}review.bpmn", REVIEW_XML)
        for name, data in FORMS.items():
            archive.writestr(f"{top_folder}forms/{name}", data)
    return buffer.getvalue()


def stored(db):
    with db.transaction() as s:
        return (s.execute(select(func.count()).select_from(ProcessVersion)).scalar_one(),
                s.execute(select(func.count()).select_from(Deployment)).scalar_one())


def post_deploy(client, headers, query="", **kwargs):
    return client.post(f"{API}/deployments{query}", headers=headers, **kwargs)


@pytest.mark.sqlite
def test_multipart_upload_of_a_diagram_with_its_forms_creates_a_version(client, auth, db):
    response = post_deploy(client, auth("owner"), data=review_upload(), content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    (version,) = response.json["versions"]
    assert version["process_key"] == "review" and version["version"] == 1 and version["created"] is True
    assert version["name"] == "测试审批 Review"
    assert version["source_file"] == "review.bpmn"
    assert len(version["sha256"]) == 64 and version["created_at"]
    assert stored(db) == (1, 1)
    with db.transaction() as s:
        row = s.get(ProcessVersion, version["id"])
        assert set(row.forms) == {"register", "approve"}  # forms travelled with the diagram
        assert row.bpmn_xml.encode() == REVIEW_XML
        kinds = s.execute(select(AuditEvent.kind, AuditEvent.actor).where(AuditEvent.stream == "system")).all()
        assert ("process.deployed", "owner") in kinds


@pytest.mark.sqlite
def test_raw_xml_body_is_deployed(client, auth):
    response = post_deploy(client, {**auth("owner"), "Content-Type": "application/xml"}, data=NOTIFY_XML)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert sorted(v["process_key"] for v in response.json["versions"]) == ["complaint", "notify"]
    assert all(v["created"] for v in response.json["versions"])
    complaint = next(v for v in response.json["versions"] if v["process_key"] == "complaint")
    assert complaint["start_messages"] == ["complaint_filed"]
    # text/xml and ?filename= work too; same content: no new version
    again = post_deploy(client, {**auth("owner"), "Content-Type": "text/xml"}, query="?filename=n.bpmn",
                        data=NOTIFY_XML)
    assert again.status_code == 201
    assert [v["created"] for v in again.json["versions"]] == [False, False]


def test_raw_xml_of_a_diagram_whose_forms_are_missing_is_rejected(client, auth, db):
    response = post_deploy(client, {**auth("owner"), "Content-Type": "application/xml"}, data=REVIEW_XML)
    problem = assert_problem(response, 422, "deployment_invalid")
    missing = {(e["field"], e["element_id"], e["line"]) for e in problem["errors"]}
    assert missing == {("upload.bpmn", "register", 18), ("upload.bpmn", "approve_big", 25),
                       ("upload.bpmn", "approve_small", 26)}
    assert all("not found: add forms/" in e["message"] for e in problem["errors"])
    assert stored(db) == (0, 0)


@pytest.mark.sqlite
def test_zip_body_is_deployed_with_or_without_a_top_folder(client, auth):
    response = post_deploy(client, {**auth("owner"), "Content-Type": "application/zip"}, data=review_zip())
    assert response.status_code == 201, response.get_data(as_text=True)
    (version,) = response.json["versions"]
    assert (version["process_key"], version["version"], version["created"]) == ("review", 1, True)
    # "compress folder" puts everything under one folder: same bundle, same version
    again = post_deploy(client, {**auth("owner"), "Content-Type": "application/x-zip-compressed"},
                        data=review_zip("review-bundle/"))
    assert again.status_code == 201, again.get_data(as_text=True)
    assert [(v["id"], v["created"]) for v in again.json["versions"]] == [(version["id"], False)]


@pytest.mark.sqlite
def test_zip_inside_multipart_is_deployed_with_other_files(client, auth):
    data = multipart([("bundle.zip", review_zip()), ("notify.bpmn", NOTIFY_XML)])
    response = post_deploy(client, auth("owner"), data=data, content_type="multipart/form-data")
    assert response.status_code == 201, response.get_data(as_text=True)
    assert sorted(v["process_key"] for v in response.json["versions"]) == ["complaint", "notify", "review"]


@pytest.mark.sqlite
def test_identical_redeploy_creates_nothing_and_a_change_creates_version_2(client, auth, db):
    first = post_deploy(client, auth("owner"), data=review_upload(), content_type="multipart/form-data").json
    again = post_deploy(client, auth("owner"), data=review_upload(), content_type="multipart/form-data")
    assert again.status_code == 201
    (same,) = again.json["versions"]
    assert same["created"] is False
    assert (same["id"], same["version"], same["sha256"]) == (first["versions"][0]["id"], 1,
                                                             first["versions"][0]["sha256"])
    assert stored(db) == (1, 1)
    # A changed form is a change of the bundle: a new version.
    approve = json.loads(FORMS["approve.json"])
    approve["properties"]["comment"]["maxLength"] = 200
    changed = multipart([("review.bpmn", REVIEW_XML), ("register.json", FORMS["register.json"]),
                         ("approve.json", json.dumps(approve).encode())])
    response = post_deploy(client, auth("owner"), data=changed, content_type="multipart/form-data")
    assert [(v["version"], v["created"]) for v in response.json["versions"]] == [(2, True)]
    versions = client.get(f"{API}/processes/review/versions", headers=auth("li"))
    assert [v["version"] for v in versions.json] == [2, 1]
    assert stored(db) == (2, 2)


@pytest.mark.sqlite
def test_check_returns_ok_and_stores_nothing(client, auth, db):
    response = post_deploy(client, auth("owner"), query="?check=true", data=review_upload(),
                           content_type="multipart/form-data")
    assert response.status_code == 200
    assert response.json == {"ok": True, "problems": [], "warnings": []}
    assert stored(db) == (0, 0)
    assert client.get(f"{API}/processes", headers=auth("owner")).json == []


def test_check_reports_problems_with_their_location_and_stores_nothing(client, auth, db):
    xml = REVIEW_XML.replace(b'camunda:candidateGroups="managers"', b'camunda:candidateGroups="nobody"')
    xml = xml.replace(b"${amount &gt; 50000}", b"${amount.__class__}")
    data = multipart([("review.bpmn", xml), *FORMS.items()])
    response = post_deploy(client, auth("owner"), query="?check=true", data=data,
                           content_type="multipart/form-data")
    assert response.status_code == 200
    body = response.json
    assert body["ok"] is False
    by_element = {p["element_id"]: p for p in body["problems"]}
    assert by_element["approve_big"]["line"] == 25
    assert "candidate group 'nobody' does not exist" in by_element["approve_big"]["message"]
    assert "__class__" in by_element["amount_check"]["message"]
    assert {p["file"] for p in body["problems"]} == {"review.bpmn"}
    assert stored(db) == (0, 0)


@pytest.mark.sqlite
def test_malformed_xml_is_422_located_by_file_and_line_and_stores_nothing(client, auth, db):
    broken = REVIEW_XML.replace(b'<bpmn:endEvent id="done" name="\xe5\xae\x8c\xe6\x88\x90"/>',
                                b'<bpmn:endEvent id="done" name="x">')
    assert broken != REVIEW_XML
    data = multipart([("review.bpmn", broken), *FORMS.items()])
    response = post_deploy(client, auth("owner"), data=data, content_type="multipart/form-data")
    problem = assert_problem(response, 422, "deployment_invalid")
    (located,) = problem["errors"]
    assert located["field"] == located["file"] == "review.bpmn"
    assert located["line"] >= 33  # the unclosed tag is on line 33; libxml2 notices where it ends
    assert "not well-formed XML" in located["message"]
    assert stored(db) == (0, 0)


def test_hostile_or_empty_bodies_are_refused_without_resolving_anything(client, auth, db):
    xml = {**auth("owner"), "Content-Type": "application/xml"}
    for content, message in [
        (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">'
         b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;">]><bpmn:definitions '
         b'xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&lol3;</bpmn:definitions>', "DOCTYPE"),
        (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
         b'<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL">&xxe;</bpmn:definitions>',
         "DOCTYPE"),
        (b"\x00\x01\xfe\xffPK junk", "not well-formed XML"),
        (b"<html><body>not bpmn</body></html>", ""),
    ]:
        problem = assert_problem(post_deploy(client, xml, data=content), 422, "deployment_invalid")
        assert message in problem["errors"][0]["message"]
        assert "root:" not in str(problem)  # /etc/passwd was not read
    response = post_deploy(client, {**auth("owner"), "Content-Type": "application/zip"}, data=b"PK\x03\x04 nope")
    problem = assert_problem(response, 422, "deployment_invalid")
    assert problem["errors"][0] == {"field": "upload.zip", "message": "not a zip file", "file": "upload.zip",
                                    "line": None, "element_id": None}
    assert_problem(post_deploy(client, xml, data=b""), 400, "invalid_input")  # no bundle at all
    assert_problem(post_deploy(client, {**auth("owner"), "Content-Type": "text/plain"}, data=b"hello"),
                   400, "invalid_input")
    assert stored(db) == (0, 0)


def test_only_a_process_owner_may_deploy(client, auth, db):
    for username in ("li", "boss", "chen"):
        response = post_deploy(client, auth(username), data=review_upload(), content_type="multipart/form-data")
        assert_problem(response, 403, "forbidden")
    assert stored(db) == (0, 0)


@pytest.mark.sqlite
def test_processes_lists_the_latest_version_of_each_process(client, auth):
    assert client.get(f"{API}/processes", headers=auth("li")).json == []
    post_deploy(client, auth("owner"), data=review_upload(), content_type="multipart/form-data")
    post_deploy(client, {**auth("owner"), "Content-Type": "application/xml"}, data=NOTIFY_XML)
    changed = NOTIFY_XML.replace("到账通知 Notify".encode(), "到账通知 v2".encode())
    post_deploy(client, {**auth("owner"), "Content-Type": "application/xml"}, data=changed)
    listing = client.get(f"{API}/processes", headers=auth("li")).json
    assert [(v["process_key"], v["version"]) for v in listing] == [("complaint", 2), ("notify", 2), ("review", 1)]
    assert next(v for v in listing if v["process_key"] == "notify")["name"] == "到账通知 v2"
    versions = client.get(f"{API}/processes/notify/versions", headers=auth("li")).json
    assert [v["version"] for v in versions] == [2, 1]
    assert_problem(client.get(f"{API}/processes/unknown/versions", headers=auth("li")), 404, "process_not_found")
