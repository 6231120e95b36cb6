"""The database floor of the service layer: one instance's own SQL, replayed without it.

:func:`capture` records every statement (with the parameters as the driver received them)
and every COMMIT that the service layer sends while it drives one instance. :func:`replay`
sends exactly those, again and again, over one raw psycopg connection with server-side
prepared statements: no SQLAlchemy, no SpiffWorkflow, no engine code. Only the values
that must differ per instance change (business key, instance and task ids, task uuids).
Each copy is a completed instance with the same rows, of the same sizes, as the engine's (the
bench's storage figures count them too).

What the replay costs is what this statement plan costs the database and the driver
alone, so the service layer cannot run faster than it on the same machine. That tells a
slow engine apart from a slow plan (or a slow machine).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Json, Jsonb
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

# Instance and task ids are told apart from other integers by value (a sequence number or
# a priority could equal a small id), so the captured instance and its tasks get ids no
# other integer in its statements comes near, in ranges of their own.
_DISTINCT_IDS = {"bpm_process_instance": 100_000_000, "bpm_task": 200_000_000}


@dataclass
class Capture:
    """One instance's statements in order; ``None`` stands for a COMMIT."""

    business_key: str
    entries: list[tuple[str, Any, bool] | None] = field(default_factory=list)
    instance_id: int = 0
    tasks: list[tuple[int, str]] = field(default_factory=list)  # (id, uuid) in insert order

    @property
    def statements(self) -> int:
        return sum(1 for e in self.entries if e is not None)

    @property
    def commits(self) -> int:
        return sum(1 for e in self.entries if e is None)


def capture(engine: Engine, business_key: str, drive: Callable[[str], None]) -> Capture:
    """Run ``drive(business_key)`` (one whole instance through the service layer) and
    record what it sent."""
    with engine.begin() as conn:
        for table, start in _DISTINCT_IDS.items():
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                              f"GREATEST((SELECT max(id) FROM {table}), {start}))"))
    captured = Capture(business_key)

    def on_execute(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
                   executemany: bool) -> None:
        captured.entries.append((statement, copy.deepcopy(parameters), executemany))

    def on_commit(_conn: Any) -> None:
        captured.entries.append(None)

    event.listen(engine, "before_cursor_execute", on_execute)
    event.listen(engine, "commit", on_commit)
    try:
        drive(business_key)
    finally:
        event.remove(engine, "before_cursor_execute", on_execute)
        event.remove(engine, "commit", on_commit)
    with engine.connect() as conn:
        captured.instance_id = conn.execute(
            text("SELECT id FROM bpm_process_instance WHERE business_key = :k"), {"k": business_key}).scalar_one()
        captured.tasks = [(int(i), str(u)) for i, u in conn.execute(
            text("SELECT id, task_uuid FROM bpm_task WHERE instance_id = :i ORDER BY id"),
            {"i": captured.instance_id})]
    return captured


def _substitute(value: Any, ids: dict[int, int], strings: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, ids, strings) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v, ids, strings) for v in value)
    if isinstance(value, (Json, Jsonb)):
        return type(value)(_substitute(value.obj, ids, strings))
    if isinstance(value, int) and not isinstance(value, bool):
        return ids.get(value, value)
    if isinstance(value, str):
        for old, new in strings.items():
            if old in value:
                value = value.replace(old, new)
    return value


def _replay_one(conn: psycopg.Connection[Any], captured: Capture, business_key: str) -> None:
    ids: dict[int, int] = {}  # the original's instance and task ids -> this copy's
    strings = {captured.business_key: business_key, **{u: str(uuid.uuid4()) for _, u in captured.tasks}}
    tasks = iter(task_id for task_id, _ in captured.tasks)
    with conn.cursor() as cur:
        for entry in captured.entries:
            if entry is None:
                conn.commit()
                continue
            statement, parameters, executemany = entry
            parameters = _substitute(parameters, ids, strings)
            if executemany:
                cur.executemany(statement, parameters)
            else:
                cur.execute(statement, parameters, prepare=True)
            if cur.description is None:
                continue
            rows = cur.fetchall()
            # The ids the database hands this copy, where the original got its own.
            if statement.startswith(_INSERT_INSTANCE):
                ids[captured.instance_id] = int(rows[0][0])
                strings[f"instance:{captured.instance_id}"] = f"instance:{rows[0][0]}"
            elif statement.startswith(_INSERT_TASK):
                ids[next(tasks)] = int(rows[0][0])


_INSERT_INSTANCE = "INSERT INTO bpm_process_instance "
# A task is inserted alone or, on PostgreSQL, with its candidate groups in one CTE
# (engine.runtime._insert_task); either returns the task's id first.
_INSERT_TASK = ("INSERT INTO bpm_task ", "WITH new_task AS")


def replay(dsn: str, captured: Capture, prefix: str, n: int) -> tuple[float, float]:
    """Replay the capture ``n`` times (business keys ``prefix-i``); wall and CPU seconds."""
    with psycopg.connect(dsn) as conn:
        for i in range(min(20, n)):  # warm the prepared statements and the server's caches
            _replay_one(conn, captured, f"{prefix}warm-{i:04d}")
        t0, cpu0 = time.perf_counter(), time.process_time()
        for i in range(n):
            _replay_one(conn, captured, f"{prefix}-{i:06d}")
        return time.perf_counter() - t0, time.process_time() - cpu0
