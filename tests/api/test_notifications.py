"""Each person's reminders and escalation notices over the API: listed newest first with a
read/unread filter and paging, marked read one at a time, nobody else's."""

from __future__ import annotations

import pytest
import time_machine

from engine.process import instances
from engine.sla import admin as sla_admin
from engine.timers import firing
from tests.support.api import API, assert_problem
from tests.timers.test_notify import HALF_WAY, MONDAY_9, POLICY, SUBJECT

pytestmark = pytest.mark.sqlite


@pytest.fixture
def reminded(db, rt, people, review) -> None:
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data=POLICY, actor=people.owner)
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        for key in ("R-1", "R-2"):
            with db.transaction() as s:
                instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                                data={"priority": 50, "due_at": None})
        clock.move_to(HALF_WAY)
        assert firing.fire_due(db, rt) == 2


def test_a_person_lists_and_reads_their_own_notifications(client, auth, reminded):
    li = auth("li")
    page = client.get(f"{API}/notifications", headers=li).json
    assert (page["total"], page["unread"], len(page["items"])) == (2, 2, 2)
    first, second = page["items"]
    assert first["id"] > second["id"] and first["read_at"] is None  # newest first
    assert second["subject"] == SUBJECT and "（北京时间）" in second["body"]
    assert client.get(f"{API}/notifications?limit=1&offset=1", headers=li).json["items"] == [second]

    # zhao was told too, but li's notification is not his.
    assert_problem(client.post(f"{API}/notifications/{second['id']}/read", headers=auth("zhao")), 404,
                   "notification_not_found")
    read = client.post(f"{API}/notifications/{second['id']}/read", headers=li)
    assert read.status_code == 200 and read.json["read_at"] is not None
    again = client.post(f"{API}/notifications/{second['id']}/read", headers=li)
    assert again.json["read_at"] == read.json["read_at"]
    unread = client.get(f"{API}/notifications?status=unread", headers=li).json
    assert [n["id"] for n in unread["items"]] == [first["id"]] and unread["unread"] == 1
    assert [n["id"] for n in client.get(f"{API}/notifications?status=read", headers=li).json["items"]] == [
        second["id"]]
    assert client.get(f"{API}/notifications?status=unread", headers=auth("zhao")).json["total"] == 2


def test_bad_questions_about_notifications_are_refused(client, auth, reminded):
    li = auth("li")
    for query, field in (("status=new", "status"), ("limit=0", "limit"), ("offset=-1", "offset")):
        problem = assert_problem(client.get(f"{API}/notifications?{query}", headers=li), 422, "invalid_request")
        assert [e["field"] for e in problem["errors"]] == [field]
    assert_problem(client.post(f"{API}/notifications/999999/read", headers=li), 404, "notification_not_found")
    assert_problem(client.get(f"{API}/notifications"), 401, "unauthenticated")
