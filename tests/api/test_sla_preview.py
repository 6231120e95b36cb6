"""``POST /sla/policies/{key}/preview``: the dry run of a policy's ``PUT``. It refuses what
the ``PUT`` refuses (naming the field), saves nothing, and says what the ``PUT`` then does:
the sample task's due date and milestones, and which open tasks move, from where to where."""

from __future__ import annotations

from datetime import datetime

import pytest
import time_machine
from sqlalchemy import func, select

from engine.models import AuditEvent, SlaPolicy
from tests.api.test_sla import MONDAY_9, POLICY, put_policy, sh
from tests.support.api import API, assert_problem, login, start, task_of


def preview(client, headers, key, **changes):
    return client.post(f"{API}/sla/policies/{key}/preview", json={**POLICY, **changes}, headers=headers)


@pytest.mark.sqlite
def test_the_preview_says_what_the_put_then_does_and_saves_nothing(client, db, review):
    with time_machine.travel(MONDAY_9, tick=False):
        owner, li = login(client, "owner"), login(client, "li")
        assert put_policy(client, owner, "review.register").status_code == 200  # 2 WD
        start(client, li, "R-1")
        start(client, li, "R-2")
        with db.transaction() as s:
            saved = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.kind == "sla.policy_saved"))

        answer = preview(client, owner, "review.register", target_amount="5")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.json
        # A task created now, Monday 09:00: 5 WD is the next Monday 09:00; half of it Wednesday 13:00.
        assert datetime.fromisoformat(body["due"]) == sh(2026, 3, 9, 9)
        assert [(m["at"], datetime.fromisoformat(m["due"])) for m in body["milestones"]] == [
            (0.5, sh(2026, 3, 4, 13)), (1.0, sh(2026, 3, 9, 9))]
        assert (body["open_tasks"], body["changed_tasks"], body["gained"], body["lost"]) == (2, 2, 0, 0)
        assert body["shift_min_seconds"] == body["shift_median_seconds"] == body["shift_max_seconds"] == 5 * 86400
        assert {c["business_key"] for c in body["changes"]} == {"R-1", "R-2"}
        for key in ("R-1", "R-2"):  # nothing moved yet
            assert datetime.fromisoformat(task_of(client, li, key)["due_at"]) == sh(2026, 3, 4, 9)
        # A case started after the preview still gets the saved policy's 2 WD: the preview put its
        # policy nowhere the engine matches new tasks from.
        start(client, li, "R-3")
        assert datetime.fromisoformat(task_of(client, li, "R-3")["due_at"]) == sh(2026, 3, 4, 9)
        with db.transaction() as s:
            assert s.scalar(select(func.count()).select_from(AuditEvent)
                            .where(AuditEvent.kind == "sla.policy_saved")) == saved
            assert s.execute(select(SlaPolicy.target_amount)).scalar_one() == 2

        done = put_policy(client, owner, "review.register", target_amount="5")
        assert done.json["recomputed_tasks"] == body["changed_tasks"] + 1  # and R-3, started since
        for change in body["changes"]:
            assert task_of(client, li, change["business_key"])["due_at"] == change["after"]


@pytest.mark.sqlite
def test_the_preview_refuses_what_the_put_refuses_naming_the_field(client, auth, review):
    assert_problem(preview(client, auth("li"), "review.register"), 403, "forbidden")
    owner = auth("owner")
    bad_unit = assert_problem(preview(client, owner, "p", target_unit="weeks"), 422, "invalid_request")
    assert [e["field"] for e in bad_unit["errors"]] == ["target_unit"]
    nobody = assert_problem(preview(client, owner, "p", milestones=[{"at": 1.0, "action": "reassign"}]),
                            400, "invalid_input")
    assert nobody["field"] == "milestones/0/to"
    hours = assert_problem(preview(client, owner, "p", business_hours="night-shift"), 400, "invalid_input")
    assert hours["field"] == "business_hours"
    zero = assert_problem(preview(client, owner, "p", target_amount="0"), 400, "invalid_input")
    assert zero["field"] == "target_amount"
    assert client.get(f"{API}/sla/policies", headers=owner).json == []
