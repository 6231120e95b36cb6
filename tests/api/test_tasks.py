"""The inbox and the task commands through the API, with the personas of conftest:
li and zhao (clerks, HZ01), wang (managers), chen (outsider: NB02, none of the groups),
boss (supervisor), owner (process owner)."""

from datetime import UTC, datetime, timedelta

import pytest

from engine.process import passage
from tests.support.api import API, assert_problem, command, inbox, start, task_of

REGISTER = {"amount": 1200, "summary": "开户资料"}


def keys(page):
    return [t["business_key"] for t in page["items"]]


@pytest.fixture
def five(client, auth, review):
    """Five register tasks for the clerks: overdue, due in 3 h, due in 2 days, and two
    without a due date (priorities 90 and 10)."""
    now = datetime.now(UTC)
    li = auth("li")
    start(client, li, "IN-none-lo", priority=10)
    start(client, li, "IN-later", due=now + timedelta(days=2))
    start(client, li, "IN-past", due=now - timedelta(hours=2))
    start(client, li, "IN-none-hi", priority=90)
    start(client, li, "IN-soon", due=now + timedelta(hours=3))
    return ["IN-past", "IN-soon", "IN-later", "IN-none-hi", "IN-none-lo"]


# -- the inbox ------------------------------------------------------------------------------
@pytest.mark.sqlite
def test_inbox_is_sorted_by_due_time_with_no_due_date_last_and_paginated(client, auth, five):
    li = auth("li")
    page = inbox(client, li, "candidate=me")
    assert keys(page) == five
    assert page["total"] == 5 and page["limit"] == 50 and page["offset"] == 0
    dues = [t["due_at"] for t in page["items"]]
    assert dues[3:] == [None, None] and dues[:3] == sorted(dues[:3])
    assert [t["priority"] for t in page["items"][3:]] == [90, 10]  # then by priority
    first = page["items"][0]
    assert first["element_id"] == "register" and first["name"] == "登记" and first["candidate_groups"] == ["clerks"]
    assert first["form_key"] == "register" and first["status"] == "open" and first["assignee"] is None

    assert keys(inbox(client, li, "limit=2")) == five[:2]
    page = inbox(client, li, "limit=2&offset=2")
    assert keys(page) == five[2:4] and (page["total"], page["limit"], page["offset"]) == (5, 2, 2)
    assert keys(inbox(client, li, "limit=2&offset=4")) == five[4:]
    beyond = inbox(client, li, "offset=10")
    assert beyond["items"] == [] and beyond["total"] == 5

    assert inbox(client, auth("wang"))["total"] == 0  # managers: none of the register tasks
    assert keys(inbox(client, auth("boss"))) == five  # a supervisor sees everything...
    assert inbox(client, auth("boss"), "candidate=me")["total"] == 0  # ...but is offered nothing

    detail = client.get(f"{API}/tasks/{first['id']}", headers=auth("zhao"))
    assert detail.status_code == 200
    assert detail.json["id"] == first["id"] and detail.json["due_at"] == first["due_at"]
    assert detail.json["form"]["title"] == "登记 Register"  # the task comes with its JSON Schema form
    assert detail.json["form"]["required"] == ["amount", "summary"]


@pytest.mark.sqlite
def test_inbox_filters_overdue_due_soon_process_and_business_key(client, auth, five):
    li = auth("li")
    overdue = inbox(client, li, "overdue=true")
    assert keys(overdue) == ["IN-past"] and overdue["total"] == 1
    assert keys(inbox(client, li, "overdue=false")) == five  # false means no filter
    assert keys(inbox(client, li, "due_within_hours=24")) == ["IN-soon"]
    assert keys(inbox(client, li, "due_within_hours=72")) == ["IN-soon", "IN-later"]
    assert keys(inbox(client, li, "due_within_hours=1")) == []
    assert keys(inbox(client, li, "process=review")) == five
    assert inbox(client, li, "process=notify")["total"] == 0
    assert keys(inbox(client, li, "business_key=IN-soon")) == ["IN-soon"]
    assert inbox(client, li, "business_key=IN-soon&process=notify")["total"] == 0
    assert inbox(client, li, "business_key=nope")["total"] == 0
    assert keys(inbox(client, li, "overdue=true&due_within_hours=24")) == []


@pytest.mark.sqlite
def test_assignee_me_candidate_me_and_status(client, auth, five):
    li, zhao = auth("li"), auth("zhao")
    later = task_of(client, li, "IN-later")
    assert command(client, li, later["id"], "claim").status_code == 200

    assert keys(inbox(client, li, "assignee=me")) == ["IN-later"]
    assert keys(inbox(client, li, "candidate=me")) == ["IN-past", "IN-soon", "IN-none-hi", "IN-none-lo"]
    assert keys(inbox(client, li)) == five  # default: open and claimed, mine and my groups'
    assert keys(inbox(client, li, "status=claimed")) == ["IN-later"]
    assert inbox(client, li, "status=open")["total"] == 4
    assert inbox(client, li, "status=completed")["total"] == 0
    assert inbox(client, li, "status=open&status=claimed")["total"] == 5

    assert inbox(client, zhao, "assignee=me")["total"] == 0
    assert "IN-later" not in keys(inbox(client, zhao, "candidate=me"))  # claimed: not offered any more

    assert command(client, li, later["id"], "complete", {"data": REGISTER}).status_code == 200
    assert keys(inbox(client, li, "status=completed")) == ["IN-later"]
    assert inbox(client, li, "assignee=me")["total"] == 0
    # the next step of IN-later (approve_small, clerks) is offered to the clerks
    assert [t["element_id"] for t in inbox(client, zhao, "business_key=IN-later")["items"]] == ["approve_small"]


@pytest.mark.sqlite
def test_the_outsider_sees_nothing_and_every_task_is_404_to_them(client, auth, five):
    chen = auth("chen")
    for query in ("", "candidate=me", "assignee=me", "status=open&status=claimed&status=completed&status=cancelled",
                  "overdue=true", "business_key=IN-past"):
        page = inbox(client, chen, query)
        assert page["items"] == [] and page["total"] == 0, query
    li = auth("li")
    claimed = task_of(client, li, "IN-soon")
    command(client, li, claimed["id"], "claim")
    for task in inbox(client, li)["items"]:
        assert_problem(client.get(f"{API}/tasks/{task['id']}", headers=chen), 404, "task_not_found")
        for name, body in [("claim", None), ("unclaim", None), ("complete", {"data": REGISTER}),
                           ("delegate", {"username": "chen"})]:
            assert_problem(command(client, chen, task["id"], name, body), 404, "task_not_found")
    # nothing changed for anyone else
    assert [t["assignee"] for t in inbox(client, li)["items"]] == [None, "li", None, None, None]
    assert inbox(client, li, "status=completed")["total"] == 0


# -- task commands --------------------------------------------------------------------------
@pytest.mark.sqlite
def test_claim_and_unclaim(client, auth, review):
    start(client, auth("li"), "CL-1")
    li, zhao = auth("li"), auth("zhao")
    task = task_of(client, li, "CL-1")
    # only a member of a candidate group may claim: a supervisor is not one, a manager
    # cannot even see the task
    assert_problem(command(client, auth("boss"), task["id"], "claim"), 403, "not_candidate")
    assert_problem(command(client, auth("wang"), task["id"], "claim"), 404, "task_not_found")

    claimed = command(client, li, task["id"], "claim")
    assert claimed.status_code == 200
    assert (claimed.json["status"], claimed.json["assignee"]) == ("claimed", "li")
    assert command(client, li, task["id"], "claim").status_code == 200  # claiming again: no-op
    problem = assert_problem(command(client, zhao, task["id"], "claim"), 409, "task_claimed")
    assert "li" in problem["detail"]
    assert_problem(command(client, zhao, task["id"], "unclaim"), 403, "not_assignee")
    assert_problem(command(client, auth("boss"), task["id"], "claim"), 409, "task_claimed")

    released = command(client, li, task["id"], "unclaim")
    assert (released.json["status"], released.json["assignee"]) == ("open", None)
    assert command(client, zhao, task["id"], "claim").json["assignee"] == "zhao"
    # a supervisor may release anyone's task
    assert command(client, auth("boss"), task["id"], "unclaim").json["status"] == "open"


@pytest.mark.sqlite
def test_assign_is_for_supervisors(client, auth, review):
    start(client, auth("li"), "AS-1")
    li = auth("li")
    task = task_of(client, li, "AS-1")
    command(client, li, task["id"], "claim")
    problem = assert_problem(command(client, li, task["id"], "assign", {"username": "zhao"}), 403,
                             "forbidden")
    assert "supervisor" in problem["detail"]
    assert client.get(f"{API}/tasks/{task['id']}", headers=li).json["assignee"] == "li"

    assigned = command(client, auth("boss"), task["id"], "assign", {"username": "zhao"})
    assert assigned.status_code == 200
    assert (assigned.json["assignee"], assigned.json["status"]) == ("zhao", "claimed")
    assert_problem(command(client, auth("boss"), task["id"], "assign", {"username": "ghost"}),
                   404, "user_not_found")
    assert_problem(command(client, auth("boss"), task["id"], "assign", {}), 422, "invalid_request")
    assert inbox(client, auth("zhao"), "assignee=me")["total"] == 1
    assert inbox(client, li, "assignee=me")["total"] == 0


@pytest.mark.sqlite
def test_delegate_hands_the_task_on_and_keeps_the_owner(client, auth, review):
    start(client, auth("li"), "DG-1")
    li, zhao = auth("li"), auth("zhao")
    task = task_of(client, li, "DG-1")
    assert_problem(command(client, li, task["id"], "delegate", {"username": "zhao"}), 403, "not_assignee")
    command(client, li, task["id"], "claim")

    delegated = command(client, li, task["id"], "delegate", {"username": "wang"})
    assert delegated.status_code == 200
    assert (delegated.json["assignee"], delegated.json["owner"]) == ("wang", "li")
    # wang (not a clerk) now sees it as his; li still sees it as its owner
    assert [t["id"] for t in inbox(client, auth("wang"), "assignee=me")["items"]] == [task["id"]]
    assert client.get(f"{API}/tasks/{task['id']}", headers=li).status_code == 200
    assert_problem(command(client, li, task["id"], "complete", {"data": REGISTER}), 403, "not_assignee")
    assert_problem(command(client, zhao, task["id"], "delegate", {"username": "zhao"}), 403, "not_assignee")
    done = command(client, auth("wang"), task["id"], "complete", {"data": REGISTER})
    assert done.status_code == 200
    assert (done.json["status"], done.json["completed_by"], done.json["owner"]) == ("completed", "wang", "li")


@pytest.mark.sqlite
def test_complete_then_complete_again_is_409(client, auth, review):
    instance = start(client, auth("li"), "CP-1")
    li = auth("li")
    task = task_of(client, li, "CP-1")
    command(client, li, task["id"], "claim")
    # a claimed task is completed by its assignee only
    assert_problem(command(client, auth("zhao"), task["id"], "complete", {"data": REGISTER}), 403, "not_assignee")
    assert_problem(command(client, auth("boss"), task["id"], "complete", {"data": REGISTER}), 403, "not_assignee")
    assert client.get(f"{API}/tasks/{task['id']}", headers=li).json["status"] == "claimed"
    command(client, li, task["id"], "unclaim")
    done = command(client, li, task["id"], "complete", {"data": REGISTER})  # claim-and-complete
    assert done.status_code == 200, done.get_data(as_text=True)
    assert (done.json["status"], done.json["assignee"], done.json["completed_by"]) == ("completed", "li", "li")
    assert done.json["completed_at"]
    problem = assert_problem(command(client, li, task["id"], "complete", {"data": REGISTER}), 409, "task_not_open")
    assert "completed" in problem["detail"]
    for name, body in [("claim", None), ("unclaim", None), ("delegate", {"username": "zhao"})]:
        assert_problem(command(client, li, task["id"], name, body), 409, "task_not_open")
    assert_problem(command(client, auth("boss"), task["id"], "assign", {"username": "zhao"}), 409, "task_not_open")
    history = client.get(f"{API}/instances/{instance['id']}/history", headers=li).json
    assert [e["kind"] for e in history].count("task.completed") == 1


@pytest.mark.sqlite
def test_complete_hands_over_the_next_tasks_the_caller_may_see_and_only_those(client, auth, review):
    li, wang = auth("li"), auth("wang")
    # A small amount goes to the clerks' approval: li is offered it at once, as in her inbox.
    start(client, li, "NX-small")
    done = command(client, li, task_of(client, li, "NX-small")["id"], "complete", {"data": REGISTER})
    assert done.status_code == 200, done.get_data(as_text=True)
    (following,) = done.json["next_tasks"]
    assert following == task_of(client, li, "NX-small")  # the same task, as the inbox shows it
    assert (following["element_id"], following["status"], following["kind"]) == ("approve_small", "open", "bpmn")
    finished = command(client, li, following["id"], "complete", {"data": {"approved": True}})
    assert finished.status_code == 200 and finished.json["next_tasks"] == []  # the end: nothing opened
    # A big amount goes to the managers: li is handed nothing and learns nothing of it.
    start(client, li, "NX-big")
    done = command(client, li, task_of(client, li, "NX-big")["id"], "complete",
                   {"data": {**REGISTER, "amount": 80000}})
    assert done.status_code == 200 and done.json["next_tasks"] == []
    (theirs,) = inbox(client, wang, "business_key=NX-big")["items"]
    assert theirs["element_id"] == "approve_big"


@pytest.mark.sqlite
def test_form_validation_errors_are_422_with_field_errors_and_the_task_stays_open(client, auth, review):
    instance = start(client, auth("li"), "FV-1")
    li = auth("li")
    task = task_of(client, li, "FV-1")
    response = command(client, li, task["id"], "complete", {"data": {"amount": -5}})
    problem = assert_problem(response, 422, "form_invalid")
    assert all(set(e) == {"field", "message"} for e in problem["errors"])
    by_field = {e["field"]: e["message"] for e in problem["errors"]}
    assert set(by_field) == {"amount", "summary"}
    assert "minimum" in by_field["amount"] and "required" in by_field["summary"]
    assert "register" in problem["detail"]

    wrong_type = assert_problem(command(client, li, task["id"], "complete",
                                        {"data": {"amount": "多", "summary": "x"}}), 422, "form_invalid")
    assert {e["field"] for e in wrong_type["errors"]} == {"amount", "summary"}
    extra = assert_problem(command(client, li, task["id"], "complete",
                                   {"data": {**REGISTER, "hack": True}}), 422, "form_invalid")
    assert "hack" in extra["errors"][0]["message"]
    assert_problem(command(client, li, task["id"], "complete", {"data": "not an object"}), 422, "invalid_request")

    # the task stays open and unclaimed (the implicit claim was rolled back); nothing recorded
    after = client.get(f"{API}/tasks/{task['id']}", headers=li).json
    assert (after["status"], after["assignee"], after["completed_at"]) == ("open", None, None)
    history = client.get(f"{API}/instances/{instance['id']}/history", headers=li).json
    assert [e["kind"] for e in history if e["kind"] not in passage.KINDS] == ["instance.started"]
    assert command(client, li, task["id"], "complete", {"data": REGISTER}).status_code == 200


def _fields(problem):
    """The one 422 shape: ``errors`` is a non-empty list of {"field": str, "message": str, …}."""
    assert isinstance(problem["errors"], list) and problem["errors"]
    assert all(isinstance(e["field"], str) and isinstance(e["message"], str) and e["message"]
               for e in problem["errors"])
    return {e["field"] for e in problem["errors"]}


@pytest.mark.sqlite
def test_every_kind_of_422_lists_its_errors_the_same_way_and_openapi_says_so(client, auth, review):
    li = auth("li")
    start(client, li, "SHAPE-1")
    task = task_of(client, li, "SHAPE-1")
    form = assert_problem(command(client, li, task["id"], "complete", {"data": {"amount": -5}}), 422, "form_invalid")
    body = assert_problem(command(client, li, task["id"], "complete", {"data": "not an object"}),
                          422, "invalid_request")
    wrong_types = assert_problem(client.post(f"{API}/processes/review/instances",
                                             json={"business_key": 7, "client_id": []}, headers=li),
                                 422, "invalid_request")
    missing = assert_problem(client.post(f"{API}/auth/login", json={"username": "li"}), 422, "invalid_request")
    query = assert_problem(client.get(f"{API}/tasks?limit=0", headers=li), 422, "invalid_request")
    deployment = assert_problem(client.post(f"{API}/deployments", data=b"<bpmn",
                                            headers={**auth("owner"), "Content-Type": "application/xml"}),
                                422, "deployment_invalid")
    assert _fields(form) == {"amount", "summary"}  # a form's JSON Schema
    assert _fields(body) == {"data"}  # a request body's marshmallow schema
    assert _fields(wrong_types) == {"business_key", "client_id"}
    assert _fields(missing) == {"password"}
    assert _fields(query) == {"limit"}  # a query parameter
    assert _fields(deployment) == {"upload.bpmn"}  # a deployment's lint: the file, and where in it
    assert deployment["errors"][0]["line"] == 1 and "problems" not in deployment

    spec = client.get(f"{API}/openapi.json").json
    complete = spec["paths"]["/api/v1/tasks/{task_id}/complete"]["post"]["responses"]["422"]
    assert complete == {"$ref": "#/components/responses/UNPROCESSABLE_ENTITY"}
    response = spec["components"]["responses"]["UNPROCESSABLE_ENTITY"]
    problem_ref = response["content"]["application/problem+json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    errors = spec["components"]["schemas"][problem_ref]["properties"]["errors"]
    entry = spec["components"]["schemas"][errors["items"]["$ref"].rsplit("/", 1)[-1]]
    assert {"field", "message"} <= set(entry["properties"]) and entry["required"] == ["field", "message"]
