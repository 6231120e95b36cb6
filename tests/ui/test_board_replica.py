"""The board's and the figures' reads on a PostgreSQL replica (docs/scale.md#replica).

PostgreSQL only: a replica is a PostgreSQL hot standby, and READ ONLY is PostgreSQL's."""

from __future__ import annotations

from dataclasses import replace

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError

from api import create_app
from engine.db import Database
from engine.models import AuditEvent
from tests.ui.test_pages import sign_in


def test_the_board_and_figures_read_through_the_read_only_replica_session(settings, rt, demo_cases_loaded):
    """With a replica configured (BPM_READ_DATABASE_URL, here the same database through an
    engine of its own) the board's and the figures' queries go to it, in a READ ONLY
    transaction: a write there is refused, and the board's export is still audited on the
    primary."""
    settings = replace(settings, read_database_url=settings.database_url)
    database = Database(settings.database_url, audit_key=settings.audit_key, read_url=settings.read_database_url)
    assert database.read_engine is not database.engine
    seen: list[str] = []
    event.listen(database.read_engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    client = create_app(settings, runtime=rt, database=database).test_client()
    sign_in(client, "s002", "demo")
    for path in ("/board", "/board/figures"):
        assert client.get(path).status_code == 200
        assert any("bpm_task" in statement for statement in seen), path
        seen.clear()
    with database.reading() as s, pytest.raises(DBAPIError, match="read-only"):
        s.execute(text("UPDATE bpm_setting SET value = value"))
    assert client.get("/board?format=csv").status_code == 200
    with database.transaction() as s:
        assert s.execute(select(func.count()).select_from(AuditEvent)
                         .where(AuditEvent.kind == "board.exported")).scalar_one() == 1
    database.dispose()
