"""An SLA clock anchored to the event (brief §2.3: "opening date + 1 calendar month"), not to
the moment the case reached us: the policy's anchor_variable."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from engine.access.identity import Actor
from engine.calendars import SHANGHAI
from engine.errors import InvalidInput
from engine.models import AuditEvent, Task
from engine.process import messages
from engine.sla import admin as sla_admin
from engine.sla import clock as sla_clock
from engine.timers import firing

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent
SYSTEM = Actor.system("account-system")


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


@pytest.fixture
def callback(demo_loaded):
    """The demo with workflows/ deployed."""


def _opened(db, rt, payload):
    with db.transaction() as s:
        case = messages.correlate(s, rt, name="account_opened", correlation_key=None, actor=SYSTEM, payload=payload)
        return s.execute(select(Task).where(Task.instance_id == case.id, Task.element_id == "call_attempt")
                         ).scalar_one(), case.id


def test_a_late_message_counts_from_the_opening_not_from_its_arrival(db, rt, callback):
    # Opened 06-03, the account system's message arrives on 06-10: due 07-03, not 07-10.
    with time_machine.travel(sh(2025, 6, 10, 10), tick=False):
        attempt, _ = _opened(db, rt, {"client_id": "C08", "opened_at": "2025-06-03"})
    assert attempt.due_at == sh(2025, 7, 3, 10)
    assert attempt.sla_started_at == sh(2025, 6, 3, 10)


def test_an_exact_moment_anchors_the_clock_to_it(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 10, 10), tick=False):
        attempt, _ = _opened(db, rt, {"client_id": "C08", "opened_at": "2025-06-05T15:30:00+08:00"})
    assert attempt.due_at == sh(2025, 7, 5, 15, 30)


@pytest.mark.parametrize("opened_at", ["2025-06-20", "not a date", "2025-06-03T10:00:00"])
def test_an_unusable_anchor_counts_from_now(db, rt, callback, opened_at):
    # In the future, unparseable, or without an offset: the due date is late, never early.
    with time_machine.travel(sh(2025, 6, 10, 10), tick=False):
        attempt, _ = _opened(db, rt, {"client_id": "C08", "opened_at": opened_at})
    assert attempt.due_at == sh(2025, 7, 10, 10)


def test_a_case_already_past_its_deadline_on_arrival_is_breached_at_once(db, rt, callback):
    with time_machine.travel(sh(2025, 7, 10, 10), tick=False):
        attempt, instance_id = _opened(db, rt, {"client_id": "C08", "opened_at": "2025-06-03"})
        assert attempt.due_at == sh(2025, 7, 3, 10)
        assert sla_clock.state(attempt, sh(2025, 7, 10, 10))[0] == sla_clock.BREACHED
    with time_machine.travel(sh(2025, 7, 10, 10) + timedelta(seconds=1), tick=False):
        firing.fire_due(db, rt)
    with db.transaction() as s:
        assert s.get(Task, attempt.id).breached_at is not None
        kinds = s.execute(select(AuditEvent.kind).where(AuditEvent.stream == f"instance:{instance_id}")).scalars()
        assert "sla.breached" in list(kinds)


def test_a_policy_anchor_must_name_a_variable(db, rt, callback):
    with pytest.raises(InvalidInput, match="anchor_variable"), db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data={"key": "x", "target_amount": 1, "target_unit": "CD",
                                       "anchor_variable": "opened at"}, actor=Actor.system("owner"))
