"""Business hours are data: an administrator adds a lunch break and working-hour targets
follow it."""

from __future__ import annotations

from datetime import datetime

import pytest

from engine.calendars import SHANGHAI
from engine.sla import calendar_store
from tests.support.api import assert_problem


@pytest.mark.sqlite
def test_a_process_owner_defines_business_hours_with_a_lunch_break(client, auth, db):
    response = client.put("/api/v1/calendar/hours/counter", headers=auth("owner"),
                          json={"periods": [["09:00", "11:30"], ["13:00", "16:00"]]})
    assert response.status_code == 200, response.get_data(as_text=True)
    listed = client.get("/api/v1/calendar/hours", headers=auth("li")).json
    assert {"name": "counter", "tz": "Asia/Shanghai", "periods": [["09:00", "11:30"], ["13:00", "16:00"]]} in listed
    with db.transaction() as s:
        calendar = calendar_store.CALENDARS.get(s, "counter")
    start = datetime(2026, 3, 2, 11, 0, tzinfo=SHANGHAI)
    assert calendar.add(start, 1, "WH").at == datetime(2026, 3, 2, 13, 30, tzinfo=SHANGHAI)


@pytest.mark.sqlite
def test_business_hours_are_refused_for_clerks_and_when_malformed(client, auth):
    assert_problem(client.put("/api/v1/calendar/hours/x", headers=auth("li"), json={"periods": [["09:00", "17:00"]]}),
                   403, "forbidden")
    assert_problem(client.put("/api/v1/calendar/hours/x", headers=auth("owner"),
                              json={"periods": [["17:00", "09:00"]]}), 400, "invalid_input")
