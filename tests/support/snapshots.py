"""Database states a test starts from, made once per pytest worker and copied back per test.

Two kinds of state:

- the migrated database ("empty"): every PostgreSQL test starts from it. Restoring it is a
  DELETE of every table and an INSERT of the migrated rows (the seeded calendar, settings,
  business hours, classification rules), a few milliseconds where ``TRUNCATE … CASCADE``
  took tens; sequences restart, so ids begin at 1 as they would in a fresh database.
- a named state, e.g. the demo loaded at a given hour: the first test that asks builds it
  through the engine, as ``bpm demo load`` would; it is then copied into a schema of its own
  (PostgreSQL) or a file (SQLite) and copied back for every later test that asks for the
  same key. What ``build`` returned is kept with it and handed out as a deep copy.

The calendar (about 8,000 days) is copied back only when a test changed its revision, the
only way the engine edits it.
"""

from __future__ import annotations

import copy
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from engine.db import Base, Database
from engine.sla.calendar_store import CALENDAR_REVISION

CALENDAR = "bpm_calendar_day"
EMPTY = "empty"


@dataclass
class _Saved:
    where: str  # the snapshot's schema (PostgreSQL) or file (SQLite)
    value: Any
    calendar_revision: str | None = None


@dataclass
class Snapshots:
    directory: Path
    # The worker's PostgreSQL schema, through a pool of its own that outlives the tests.
    postgresql: Database | None = None
    _saved: dict[tuple[str, str], _Saved] = field(default_factory=dict)
    _sequences: list[tuple[str, str, str]] | None = None

    # -- the public side --------------------------------------------------------------------
    def attach_postgresql(self, url: str) -> None:
        """Take the worker's freshly migrated schema as the state every test starts from."""
        self.postgresql = Database(url)
        self._saved[("postgresql", EMPTY)] = self._capture(self.postgresql, EMPTY, None)

    def restore_empty(self) -> None:
        """PostgreSQL: the worker's schema as the migrations left it."""
        assert self.postgresql is not None
        self._restore(self.postgresql, self._saved[("postgresql", EMPTY)])

    def use(self, db: Database, key: str, build: Callable[[], Any]) -> Any:
        """The state ``key``: built by ``build()`` in ``db`` the first time, restored after."""
        store = self._store(db)
        target = db if store == "sqlite" else self.postgresql
        assert target is not None
        saved = self._saved.get((store, key))
        if saved is None:
            value = build()
            saved = self._saved[(store, key)] = self._capture(target, key, value)
        else:
            self._restore(target, saved)
        return copy.deepcopy(saved.value)

    def close(self) -> None:
        if self.postgresql is not None:
            self.postgresql.dispose()

    # -- PostgreSQL and SQLite --------------------------------------------------------------
    @staticmethod
    def _store(db: Database) -> str:
        return "sqlite" if db.is_sqlite else "postgresql"

    def _capture(self, db: Database, key: str, value: Any) -> _Saved:
        if db.is_sqlite:
            db.dispose()  # the last connection closing folds the write-ahead log into the file
            target = self.directory / f"{_slug(key)}.sqlite3"
            shutil.copy(_sqlite_path(db), target)
            return _Saved(str(target), value)
        schema = f"{_schema_of(db)}_{_slug(key)}"
        with db.engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            for table in Base.metadata.sorted_tables:
                conn.execute(text(f'CREATE TABLE "{schema}".{table.name} AS TABLE {table.name}'))
            revision = conn.execute(text("SELECT value FROM bpm_setting WHERE key = :key"),
                                    {"key": CALENDAR_REVISION}).scalar()
        return _Saved(schema, value, revision)

    def _restore(self, db: Database, saved: _Saved) -> None:
        if db.is_sqlite:
            db.dispose()
            path = _sqlite_path(db)
            for leftover in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
                leftover.unlink(missing_ok=True)
            shutil.copy(saved.where, path)
            return
        raw = db.engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute("SELECT value FROM bpm_setting WHERE key = %s", (CALENDAR_REVISION,))
            row = cursor.fetchone()
            tables = [t.name for t in Base.metadata.sorted_tables
                      if t.name != CALENDAR or (row[0] if row else None) != saved.calendar_revision]
            statements = [f"DELETE FROM {name}" for name in reversed(tables)]
            statements += [f'INSERT INTO {name} SELECT * FROM "{saved.where}".{name}' for name in tables]
            # Ids continue from the snapshot's largest, as they would after building it.
            statements += [f"SELECT setval('{sequence}', COALESCE((SELECT MAX({column}) FROM {table}), 0) + 1, false)"
                           for table, column, sequence in self._sequences_of(cursor)]
            # One round trip: no parameters, so the statements go as one simple query.
            cursor.execute(";\n".join(statements))
            raw.commit()
        finally:
            raw.close()  # back to the pool

    def _sequences_of(self, cursor: Any) -> list[tuple[str, str, str]]:
        if self._sequences is None:
            found = []
            for table in Base.metadata.sorted_tables:
                for column in table.primary_key.columns:
                    cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", (table.name, column.name))
                    sequence = cursor.fetchone()[0]
                    if sequence is not None:
                        found.append((table.name, column.name, sequence))
            self._sequences = found
        return self._sequences


def _slug(key: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", key.lower()).strip("_")[:40]


def _schema_of(db: Database) -> str:
    options = make_url(db.url).query.get("options", "")
    match = re.search(r"search_path=([A-Za-z0-9_]+)", str(options))
    if match is None:
        raise RuntimeError(f"the test database URL names no schema: {db.url}")
    return match.group(1)


def _sqlite_path(db: Database) -> Path:
    return Path(db.url.split("///", 1)[1])
