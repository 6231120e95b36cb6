"""The lower-severity holes of the access model (docs/permissions.md): a supervisor gives a
task to one of its candidates, or to anyone else only with a stated, audited reason; the timer
list is the supervisor's scope, not the company's; only process owners make the server read
an upload, even to lint it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from engine.access import identity
from engine.models import AuditEvent, ProcessInstance
from tests.api.test_deployments import post_deploy, review_upload
from tests.support.api import API, assert_problem, command, inbox, start, task_of

pytestmark = pytest.mark.sqlite


def test_a_supervisor_assigns_a_task_to_one_of_its_candidates(client, auth, db, review):
    start(client, auth("li"), "AS-2")
    task = task_of(client, auth("li"), "AS-2")  # 登记, offered to the clerks
    boss = auth("boss")
    # 王经理 is a manager, not a clerk: holding the step, he would read the whole case.
    problem = assert_problem(command(client, boss, task["id"], "assign", {"username": "wang"}), 403, "not_candidate")
    assert "reason" in problem["detail"]
    assert client.get(f"{API}/tasks/{task['id']}", headers=auth("li")).json["assignee"] is None
    assigned = command(client, boss, task["id"], "assign", {"username": "zhao"})
    assert (assigned.status_code, assigned.json["assignee"]) == (200, "zhao")


def test_giving_a_task_to_someone_else_is_an_override_with_a_reason_in_the_audit_trail(client, auth, db, review):
    instance = start(client, auth("li"), "AS-3")
    task = task_of(client, auth("li"), "AS-3")
    boss = auth("boss")
    assert_problem(command(client, boss, task["id"], "assign", {"username": "wang", "reason": "   "}), 403,
                   "not_candidate")
    assert_problem(command(client, boss, task["id"], "assign", {"username": "wang", "reason": "x" * 1001}), 422,
                   "invalid_request")
    assigned = command(client, boss, task["id"], "assign", {"username": "wang", "reason": "柜员全部请假，经理代办"})
    assert (assigned.status_code, assigned.json["assignee"]) == (200, "wang")
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.instance_id == instance["id"],
                                                   AuditEvent.kind == "task.assigned")).scalar_one()
    assert (event.actor, event.data["assignee"], event.data["override"], event.data["reason"]) == (
        "boss", "wang", True, "柜员全部请假，经理代办")
    assert client.get(f"{API}/instances/{instance['id']}", headers=auth("wang")).status_code == 200


def test_the_timer_list_holds_only_the_timers_of_cases_the_supervisor_may_read(client, auth, db, people, review):
    # The review's acknowledgement wait has a 15-day timer. boss supervises HZ01; a case tied to
    # a Ningbo branch is not his.
    li = auth("li")
    for key, branch in (("TM-HZ", "HZ01"), ("TM-NB", "NB02")):
        start(client, li, key, branch_code=branch)
        for data in ({"amount": 1, "summary": "小额业务"}, {"approved": True}):
            task = task_of(client, li, key)
            assert command(client, li, task["id"], "complete", {"data": data}).status_code == 200
    with db.transaction() as s:
        ids = dict(s.execute(select(ProcessInstance.business_key, ProcessInstance.id)).all())
    listed = client.get(f"{API}/timers", headers=auth("boss"))
    assert listed.status_code == 200
    assert {t["instance_id"] for t in listed.json} == {ids["TM-HZ"]}
    assert_problem(client.get(f"{API}/timers", headers=li), 403, "forbidden")


def test_only_a_process_owner_makes_the_server_read_an_upload_even_to_lint_it(client, auth, db):
    li = auth("li")
    checked = post_deploy(client, li, query="?check=true", data=review_upload(), content_type="multipart/form-data")
    assert_problem(checked, 403, "forbidden")
    # Refused before the body is read: a body the server could not even parse gets the same answer.
    assert_problem(post_deploy(client, li, query="?check=true", data=b"\x00not a bundle", content_type="text/plain"),
                   403, "forbidden")
    assert_problem(post_deploy(client, li, data=b"\x00not a bundle", content_type="text/plain"), 403, "forbidden")
    owner = post_deploy(client, auth("owner"), query="?check=true", data=review_upload(),
                        content_type="multipart/form-data")
    assert (owner.status_code, owner.json["ok"]) == (200, True)


def test_a_branch_supervisor_finds_a_task_they_are_a_candidate_of_outside_their_branch(client, auth, db, rt,
                                                                                       review):
    """吴主管 supervises HZ01 and is also a clerk: a Ningbo case's registration is offered to the
    clerks. The branch filter of his supervision adds HZ01's tasks to his own and his groups';
    it does not take his groups' Ningbo task away."""
    with db.transaction() as s:
        identity.create_user(s, username="wu", display_name="吴主管", now=rt.now(), branch_code="HZ01",
                             groups=["supervisor", "clerks"])
    start(client, auth("li"), "NB-1", branch_code="NB02")
    wu = auth("wu")
    ids = {t["business_key"]: t["id"] for t in inbox(client, wu, "candidate=me")["items"]}
    assert "NB-1" in ids
    assert "NB-1" in {t["business_key"] for t in inbox(client, wu)["items"]}
    assert command(client, wu, ids["NB-1"], "claim").status_code == 200
    assert [t["business_key"] for t in inbox(client, wu, "assignee=me")["items"]] == ["NB-1"]
    assert "NB-1" in {t["business_key"] for t in inbox(client, wu)["items"]}
