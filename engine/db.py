"""Database plumbing: engine, sessions, the unit of work, portable column types.

Services receive a ``Session`` and never commit. The entry point (an HTTP request, a CLI
command, a job) opens one unit of work with :meth:`Database.transaction`, which commits once
and then runs the side effects registered with :func:`after_commit` (enqueueing jobs,
sending notifications) so nothing leaves the process for a change that was rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, create_engine, event, text
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

_AFTER_COMMIT = "bpm_after_commit"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on every backend.

    PostgreSQL keeps the offset itself; SQLite stores text without one, so values are
    normalised to UTC on the way in and marked UTC on the way out. Naive values are refused:
    they are the classic source of eight-hour errors in Asia/Shanghai.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} cannot be stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **kwargs)
        _serialize_sqlite_writers(engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    # No pool_pre_ping: it costs a round trip (and a server transaction) on every checkout.
    # A connection that died is detected when used; SQLAlchemy then invalidates the pool
    # and the unit of work fails once, like any transient error, and is retried by its caller.
    kwargs.setdefault("pool_recycle", 1800)
    engine = create_engine(url, **kwargs)
    _plan_for_the_values(engine)
    return engine


def _plan_for_the_values(engine: Engine) -> None:
    """psycopg prepares a statement on the server from its fifth run, and PostgreSQL may then
    switch to a generic plan, made without the values: for the inbox that plan cannot tell a
    firm-wide queue of 100,000 tasks from a branch's queue of a hundred and was measured
    1.4-1.6x slower (docs/scale.md). A plan made for the values costs a fraction of a
    millisecond more and keeps every list on its index. Set when a connection is made (not
    as a connect option, which would replace the URL's own ``options``, a search_path say).

    JIT compilation is off for the same reason: PostgreSQL compiles a statement whose
    estimated cost passes ``jit_above_cost``, and at a brokerage's size the inbox's
    statements pass it and then spent 150-200 ms compiling to run for a few milliseconds
    (docs/scale.md). Nothing the product asks is a long analytical scan that would repay it."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET plan_cache_mode = force_custom_plan")
            cursor.execute("SET jit = off")
        dbapi_conn.commit()


def _serialize_sqlite_writers(engine: Engine) -> None:
    """Make every SQLite transaction ``BEGIN IMMEDIATE``.

    SQLite has no ``SELECT … FOR UPDATE``. Taking the write lock when the transaction begins
    gives the embedded default the same guarantee as the row lock on PostgreSQL: two
    changes to one instance never interleave. pysqlite's own transaction handling is turned
    off so that this BEGIN is the only one.
    """

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE/DELETE (``Session.execute`` is typed as a plain Result)."""
    return int(result.rowcount)


def after_commit(session: Session, callback: Callable[[], None]) -> None:
    """Run ``callback`` once the entry point's transaction has committed."""
    session.info.setdefault(_AFTER_COMMIT, []).append(callback)


# Where a session finds the secret its audit events are keyed with (``engine.audit``): every
# service appends events through the session it was given, and only the entry point knows the
# settings.
AUDIT_KEY_INFO = "bpm_audit_key"


class Database:
    def __init__(self, url: str, *, audit_key: bytes | None = None, read_url: str | None = None,
                 **engine_kwargs: Any) -> None:
        """``audit_key``: ``Settings.audit_key``, handed to every session of this database;
        ``read_url``: a replica for :meth:`reading` (``Settings.read_database_url``)."""
        self.url = url
        self.engine = make_engine(url, **engine_kwargs)
        self.read_engine = make_engine(read_url, **engine_kwargs) if read_url else self.engine
        self.sessions = sessionmaker(self.engine, expire_on_commit=False, info={AUDIT_KEY_INFO: audit_key})
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any error, then side effects."""
        session = self.sessions()
        try:
            yield session
            session.commit()
            callbacks = session.info.pop(_AFTER_COMMIT, [])
        except BaseException:
            session.rollback()
            session.info.pop(_AFTER_COMMIT, None)
            raise
        finally:
            session.close()
        for callback in callbacks:
            callback()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only unit of work on the replica, if one is configured, else on the primary:
        the board's and the figures' reads (large scans) leave the primary to the writes. On
        PostgreSQL the transaction is READ ONLY, so a write slipped in fails loudly instead of
        reaching a replica that would refuse it anyway; it is always rolled back."""
        session = self.read_sessions()
        try:
            if self.read_engine.dialect.name == "postgresql":
                session.execute(text("SET TRANSACTION READ ONLY"))
            yield session
        finally:
            session.rollback()
            session.close()

    def dispose(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
