"""Brief §2.3: periodic-callback coverage below 80 % of the year-to-date quota at a quarter's
end is escalated to the call centre's supervisor and the process owner (issue 13 item 3),
by a job on the first working day of the next quarter."""

from __future__ import annotations

from datetime import datetime

import pytest
import time_machine
from sqlalchemy import select

from engine.access.identity import Actor
from engine.brokerage import periodic_callbacks, settings
from engine.calendars import SHANGHAI
from engine.models import AuditEvent, Notification
from engine.timers import firing, schedules
from tests.brokerage.test_callback import AGENT, ANSWERS_OK, IDENTITY_OK, REACHED, _complete, _start

pytestmark = pytest.mark.store_independent

Q2_FIRST_WORKING_DAY = datetime(2026, 4, 1, 8, 30, tzinfo=SHANGHAI)


def _escalations(db) -> list[tuple[str, str]]:
    with db.transaction() as s:
        return [(n.recipient, n.subject) for n in s.execute(
            select(Notification).where(Notification.subject.contains("Q1 2026") | Notification.subject.contains(
                "2026 年第 1 季度")).order_by(Notification.id)).scalars()]


def test_coverage_short_of_80_percent_at_quarter_end_is_escalated_and_enough_is_not(db, rt, demo_loaded):
    owner = Actor("s001", frozenset({"process_owner"}))
    with db.transaction() as s:
        # 10 active clients at the end of 2025: 1 client a year (10 %), so 1 by the end of Q1.
        settings.set_value(s, key=f"{settings.ACTIVE_CLIENTS}.2025", value="10", actor=owner, now=rt.now())
    with time_machine.travel(datetime(2026, 3, 30, 9, tzinfo=SHANGHAI), tick=False) as clock:
        with db.transaction() as s:
            schedules.create(s, rt, key="callback-coverage", process_key="job:" + periodic_callbacks.COVERAGE_JOB,
                             rule="first_working_day_of_quarter", at_time="08:30", actor=owner)
        clock.move_to(Q2_FIRST_WORKING_DAY.replace(second=1))
        assert firing.fire_due(db, rt) == 1
    zh = "[存量回访] 2026 年第 1 季度末回访覆盖率 0%，低于 80%"
    # 许婧 (s002) is the call centre's supervisor and a process owner; the other process
    # owners (s001, s007, s102) are told too: the default escalate_to names the groups.
    assert _escalations(db) == [(u, zh) for u in ("s001", "s002", "s007", "s102")]
    with db.transaction() as s:
        (run,) = s.execute(select(AuditEvent.data).where(
            AuditEvent.kind == periodic_callbacks.COVERAGE_AUDIT_KIND)).scalars()
    assert (run["year"], run["quarter"], run["ytd_quota"], run["clients_called"]) == (2026, 1, 1, 0)
    assert run["escalated_to"] == ["s001", "s002", "s007", "s102"]

    # One periodic callback completed in March: 1 of 1, nobody is told.
    key = "CB-20260310-0001"
    with time_machine.travel(datetime(2026, 3, 10, 10, tzinfo=SHANGHAI), tick=False):
        _start(db, rt, key, "periodic", "C03", qa_sample_rate=0)
        _complete(db, rt, key, "call_attempt", AGENT, REACHED)
        _complete(db, rt, key, "verify_identity", AGENT, IDENTITY_OK)
        _complete(db, rt, key, "questionnaire", AGENT, ANSWERS_OK)
    with db.transaction() as s:
        found = periodic_callbacks.check_coverage(s, at=Q2_FIRST_WORKING_DAY)
    assert (found.clients_called, found.ytd_quota, found.coverage, found.escalated_to) == (1, 1, 1.0, [])
    assert len(_escalations(db)) == 4
