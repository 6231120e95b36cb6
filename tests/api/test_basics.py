"""The API's contract as a whole: OpenAPI description, authentication, error format."""

import re
from datetime import timedelta

import pytest

from engine.access import identity
from tests.support.api import API, assert_problem


# -- OpenAPI --------------------------------------------------------------------------------
def _api_rules(app):
    """Every (path, method) the app serves under /api/v1, in OpenAPI path syntax."""
    served = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(API) or rule.rule == f"{API}/openapi.json":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?(\w+)>", r"{\1}", rule.rule)  # <string(maxlength=64):name>: {name}
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    return served


def test_openapi_is_served_without_a_token_and_lists_every_endpoint(app, client):
    response = client.get(f"{API}/openapi.json")
    assert response.status_code == 200
    spec = response.json
    assert spec["openapi"].startswith("3.")
    documented = {(path, method) for path, item in spec["paths"].items() for method in item
                  if method in ("get", "post", "put", "patch", "delete")}
    served = _api_rules(app)
    assert len(served) >= 19  # login, me, deployments, processes, instances, tasks, messages...
    assert documented == served
    for path, method in [("/api/v1/deployments", "post"), ("/api/v1/tasks", "get"),
                         ("/api/v1/tasks/{task_id}/complete", "post"), ("/api/v1/messages", "post"),
                         ("/api/v1/instances/{instance_id}/history", "get"),
                         ("/api/v1/processes/{process_key}/instances", "post")]:
        assert (path, method) in documented


def test_openapi_declares_bearer_auth_everywhere_but_login(client):
    spec = client.get(f"{API}/openapi.json").json
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert spec["security"] == [{"bearer": []}]
    assert spec["paths"]["/api/v1/auth/login"]["post"]["security"] == []
    assert "security" not in spec["paths"]["/api/v1/tasks"]["get"]  # inherits the global bearer


def test_openapi_documents_the_inbox_query_parameters(client):
    spec = client.get(f"{API}/openapi.json").json
    names = {p["name"] for p in spec["paths"]["/api/v1/tasks"]["get"]["parameters"]}
    assert {"assignee", "candidate", "status", "overdue", "due_within_hours", "process",
            "business_key", "limit", "offset"} <= names


# -- authentication -------------------------------------------------------------------------
@pytest.mark.sqlite
def test_login_returns_a_token_that_identifies_the_user(client, people):
    response = client.post(f"{API}/auth/login", json={"username": "li", "password": "li-pw"})
    assert response.status_code == 200
    token = response.json["token"]
    assert response.json["username"] == "li"
    assert token.startswith("bpm_") and len(token) > 30
    me = client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json == {"username": "li", "groups": ["clerks"], "branch_code": "HZ01"}
    again = client.post(f"{API}/auth/login", json={"username": "li", "password": "li-pw"}).json["token"]
    assert again != token
    assert client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {again}"}).status_code == 200


@pytest.mark.sqlite
def test_login_failure_is_401_without_saying_which_part_was_wrong(client, people):
    for body in ({"username": "li", "password": "wrong"}, {"username": "nobody", "password": "nobody-pw"},
                 {"username": "li", "password": ""}):
        response = client.post(f"{API}/auth/login", json=body)
        problem = assert_problem(response, 401, "unauthenticated")
        assert problem["detail"] == "wrong username or password"
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert "token" not in problem
    problem = assert_problem(client.post(f"{API}/auth/login", json={"username": "li"}), 422, "invalid_request")
    assert problem["errors"] == [{"field": "password", "message": "Missing data for required field."}]


@pytest.mark.sqlite
def test_requests_without_a_valid_token_are_401(client, people):
    headers = [{}, {"Authorization": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer "},
               {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic bGk6bGktcHc="},
               {"Authorization": "bpm_abcdef"}]
    for header in headers:
        for path in ("/auth/me", "/tasks", "/tasks/1", "/instances", "/instances/1", "/processes"):
            response = client.get(f"{API}{path}", headers=header)
            assert_problem(response, 401, "unauthenticated")
            assert response.headers["WWW-Authenticate"] == "Bearer"
    for path, body in [("/processes/review/instances", {"business_key": "X"}),
                       ("/messages", {"name": "m", "correlation_key": "k"}),
                       ("/tasks/1/complete", {"data": {}}), ("/instances/1/cancel", {})]:
        assert_problem(client.post(f"{API}{path}", json=body), 401, "unauthenticated")


@pytest.mark.sqlite
def test_an_expired_token_is_401_and_a_service_issued_token_works(client, db, rt, people):
    with db.transaction() as s:
        expired = identity.issue_token(s, username="li", now=rt.now() - timedelta(hours=2),
                                       ttl=timedelta(hours=1))
        fresh = identity.issue_token(s, username="wang", now=rt.now())
    problem = assert_problem(client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {expired}"}),
                             401, "unauthenticated")
    assert "expired" in problem["detail"]
    me = client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {fresh}"})
    assert me.status_code == 200 and me.json["username"] == "wang"


@pytest.mark.sqlite
def test_me_shows_groups_and_branch(client, auth):
    assert client.get(f"{API}/auth/me", headers=auth("chen")).json == {
        "username": "chen", "groups": ["ningbo_clerks"], "branch_code": "NB02"}
    assert client.get(f"{API}/auth/me", headers=auth("owner")).json == {
        "username": "owner", "groups": ["process_owner"], "branch_code": None}


# -- error format ---------------------------------------------------------------------------
def test_errors_are_problem_json_with_a_stable_code(client, auth):
    for method, path, status, code in [
        ("get", "/tasks/999999", 404, "task_not_found"),
        ("post", "/tasks/999999/claim", 404, "task_not_found"),
        ("get", "/instances/999999", 404, "instance_not_found"),
        ("get", "/instances/999999/history", 404, "instance_not_found"),
        ("post", "/instances/999999/cancel", 404, "instance_not_found"),
        ("get", "/processes/nope/versions", 404, "process_not_found"),
        ("get", "/no/such/route", 404, "not_found"),
        ("delete", "/tasks", 405, "method_not_allowed"),
    ]:
        response = getattr(client, method)(f"{API}{path}", headers=auth("boss"))
        body = assert_problem(response, status, code)
        assert body["type"] == "about:blank"


def test_bad_query_parameters_are_422_naming_the_parameter(client, auth):
    for query, field in [
        ("limit=0", "limit"), ("limit=501", "limit"), ("limit=ten", "limit"), ("offset=-1", "offset"),
        ("status=done", "status"), ("assignee=", "assignee"), ("assignee=" + "x" * 65, "assignee"),
        ("candidate=you", "candidate"), ("overdue=perhaps", "overdue"), ("due_within_hours=-1", "due_within_hours"),
        ("sort=name", "sort"), ("at_risk=maybe", "at_risk"), ("branch=" + "B" * 17, "branch"),
    ]:
        problem = assert_problem(client.get(f"{API}/tasks?{query}", headers=auth("li")), 422, "invalid_request")
        # a list parameter names the item too: status=done is "status/0"
        assert [e["field"].split("/")[0] for e in problem["errors"]] == [field], query
    for query, field in [("status=running-ish", "status"), ("limit=0", "limit"), ("offset=x", "offset")]:
        problem = assert_problem(client.get(f"{API}/instances?{query}", headers=auth("boss")),
                                 422, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == [field], query


def test_a_json_body_that_is_not_json_is_a_problem(client, auth):
    response = client.post(f"{API}/processes/review/instances", data="{not json",
                           headers={**auth("li"), "Content-Type": "application/json"})
    assert response.status_code in (400, 422)
    assert response.mimetype == "application/problem+json"
    assert response.json["code"] in ("bad_request", "invalid_request")


def test_chinese_text_in_errors_is_sent_as_utf8_not_escaped(client, auth):
    response = client.get(f"{API}/processes/开户/versions", headers=auth("li"))
    assert_problem(response, 404, "process_not_found")
    assert "开户" in response.get_data(as_text=True)
