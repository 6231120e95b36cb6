"""A request that PostgreSQL rolls back because of another transaction (here a deadlock)
answers 503 ``concurrent_change`` with ``Retry-After``, saves nothing, and goes through when
sent again. PostgreSQL only: SQLite serializes writers and never deadlocks."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import event, select, text

from engine.models import AuditEvent, Task
from tests.api.test_tasks import REGISTER
from tests.support.api import assert_problem, command, start, task_of

# Long enough for the blocker below to close the cycle before the request's backend looks
# for one; the blocker itself waits far longer, so the request is always the one aborted.
REQUEST_DEADLOCK_TIMEOUT, BLOCKER_DEADLOCK_TIMEOUT = "3s", "60s"


def _wait_until_blocked(conn: Any, *, seconds: float = 20.0) -> None:
    """Until another backend waits for a lock ``conn`` holds (the request, for the task row).
    pg_locks, not pg_stat_activity: that one is a snapshot taken once per transaction."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        waiting = conn.execute(text(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND pg_backend_pid() = ANY(pg_blocking_pids(pid))"
        )).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("the request never waited for the blocker's lock")


def test_a_step_caught_in_a_deadlock_answers_503_saves_nothing_and_goes_through_when_sent_again(
        client, auth, review, db):
    li = auth("li")
    start(client, li, "DL-1")
    task = task_of(client, li, "DL-1")

    def slow_deadlock_check(dbapi_conn: Any, *_: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET deadlock_timeout = '{REQUEST_DEADLOCK_TIMEOUT}'")

    event.listen(db.engine, "checkout", slow_deadlock_check)
    with db.transaction() as s:
        events_before = s.execute(select(AuditEvent.id)).scalars().all()

    # The blocker takes the task row, the request takes the instance row and then waits for
    # the task row (to claim and complete it), the blocker then asks for the instance row.
    with db.engine.connect() as blocker:
        blocker.execute(text(f"SET deadlock_timeout = '{BLOCKER_DEADLOCK_TIMEOUT}'"))
        blocker.execute(text("SELECT 1 FROM bpm_task WHERE id = :t FOR UPDATE"), {"t": task["id"]})
        answer: dict[str, Any] = {}
        request = threading.Thread(
            target=lambda: answer.update(response=command(client, li, task["id"], "complete", {"data": REGISTER})))
        request.start()
        _wait_until_blocked(blocker)
        blocker.execute(text("SELECT 1 FROM bpm_process_instance WHERE id = :i FOR UPDATE"),
                        {"i": task["instance_id"]})
        blocker.rollback()
        request.join(timeout=30)
    event.remove(db.engine, "checkout", slow_deadlock_check)

    assert not request.is_alive()
    response = answer["response"]
    body = assert_problem(response, 503, "concurrent_change")
    assert response.headers["Retry-After"] == "1"
    assert "nothing was saved" in body["detail"]
    with db.transaction() as s:
        row = s.get(Task, task["id"])
        assert (row.status, row.assignee, row.completed_at) == ("open", None, None)
        assert s.execute(select(AuditEvent.id)).scalars().all() == events_before

    again = command(client, li, task["id"], "complete", {"data": REGISTER})
    assert again.status_code == 200, again.get_data(as_text=True)
    assert again.json["status"] == "completed"
