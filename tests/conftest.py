"""Test fixtures: real PostgreSQL (127.0.0.1:5432/test) and real Redis, plus SQLite.

Every test that takes ``db`` runs on PostgreSQL; tests marked ``@pytest.mark.sqlite`` run on
the embedded SQLite default as well. Isolation: PostgreSQL tables are truncated after each
test; each SQLite test gets a fresh copy of a migrated database file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from engine.access import identity
from engine.access.identity import Actor
from engine.access.roles import INTEGRATION
from engine.bootstrap import build_runtime
from engine.bpmn import bundle
from engine.config import Settings
from engine.db import Base, Database
from engine.process import deployments
from engine.process.runtime import Runtime
from engine.schema import upgrade

FIXTURES = Path(__file__).parent / "fixtures"
PG_URL = os.environ.get("BPM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BPM_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = ["postgresql", "sqlite"] if metafunc.definition.get_closest_marker("sqlite") else ["postgresql"]
        metafunc.parametrize("backend", backends)


@pytest.fixture(scope="session")
def pg_migrated() -> Iterator[str]:
    """A private schema in the ``test`` database for this pytest process, so two runs on
    one machine (a developer's and CI's, or parallel sessions) never truncate each other."""
    schema = f"bpm_test_{os.getpid()}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    upgrade(url)
    yield url
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgresql":
        return str(request.getfixturevalue("pg_migrated"))
    template = request.getfixturevalue("sqlite_template")
    path = tmp_path / "bpm.sqlite3"
    shutil.copy(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings.from_env({"BPM_DATABASE_URL": database_url})


@pytest.fixture
def db(settings: Settings, backend: str) -> Iterator[Database]:
    database = Database(settings.database_url)
    yield database
    if backend == "postgresql":
        tables = ", ".join(t.name for t in Base.metadata.sorted_tables if t.name not in REFERENCE_TABLES)
        with database.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            revision = conn.execute(text("SELECT value FROM bpm_setting WHERE key = 'calendar_revision'")).scalar()
            if revision != "1":  # a test edited the calendar: put the seeded one back
                _reseed_calendar(conn)
    database.dispose()


# Seeded by migration 0002 and kept between tests (re-seeded only when a test edits them).
REFERENCE_TABLES = {"bpm_calendar_day", "bpm_business_hours", "bpm_setting"}


def _reseed_calendar(conn) -> None:
    from datetime import UTC, datetime

    from engine.calendars import seed_days

    conn.execute(text("DELETE FROM bpm_calendar_day"))
    now = datetime.now(UTC)
    conn.execute(
        text("INSERT INTO bpm_calendar_day (day, working, trading, name, source, updated_at) "
             "VALUES (:day, :working, :trading, :name, 'chinese-calendar', :now)"),
        [{"day": d, "working": i.working, "trading": i.trading, "name": i.name, "now": now}
         for d, i in seed_days().items()],
    )
    conn.execute(text("UPDATE bpm_setting SET value = '1' WHERE key = 'calendar_revision'"))


@pytest.fixture
def rt(settings: Settings) -> Runtime:
    return build_runtime(settings)


@dataclass(frozen=True)
class People:
    """Named personas, as in healthchecks' tests."""

    clerk: Actor  # 柜员 in branch HZ01, group clerks
    teammate: Actor  # another clerk in HZ01
    manager: Actor  # group managers
    outsider: Actor  # a clerk of another branch, in none of the task's groups
    owner: Actor  # process owner: may deploy
    supervisor: Actor  # may assign, cancel, retry
    system: Actor


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    """scrypt is deliberately slow; hash each persona's password once per test run."""
    return {}


@pytest.fixture
def people(db: Database, rt: Runtime, password_hashes: dict[str, str]) -> People:
    specs = [
        ("li", "李柜员", "HZ01", ["clerks"]),
        ("zhao", "赵柜员", "HZ01", ["clerks"]),
        ("wang", "王经理", "HZ01", ["managers"]),
        ("chen", "陈柜员", "NB02", ["ningbo_clerks"]),
        ("owner", "流程负责人", None, ["process_owner"]),
        ("boss", "营业部负责人", "HZ01", ["supervisor"]),
    ]
    with db.transaction() as s:
        for key in ["clerks", "managers", "ningbo_clerks", "admin", "process_owner", "supervisor"]:
            identity.ensure_group(s, key=key)
        for username, name, branch, groups in specs:
            user = identity.create_user(s, username=username, display_name=name, now=rt.now(),
                                        branch_code=branch, groups=groups)
            if username not in password_hashes:
                password_hashes[username] = identity.hash_password(f"{username}-pw")
            user.password_hash = password_hashes[username]

    def actor(username: str, groups: list[str], branch: str | None) -> Actor:
        return Actor(username=username, groups=frozenset(groups), branch_code=branch)

    return People(*(actor(u, g, b) for u, _, b, g in specs), system=Actor.system())


def deploy_fixture(db: Database, rt: Runtime, name: str, actor: Actor) -> list[deployments.DeployedVersion]:
    with db.transaction() as s:
        return deployments.deploy(s, rt, bundle.from_paths([FIXTURES / name]), actor=actor)


@pytest.fixture
def review(db: Database, rt: Runtime, people: People) -> str:
    """The review fixture process deployed; returns its key."""
    deploy_fixture(db, rt, "review", people.owner)
    return "review"


# -- HTTP API -------------------------------------------------------------------------------
@pytest.fixture
def app(settings: Settings, db: Database, rt: Runtime) -> Flask:
    """The API over the test database (same runtime as the service-level fixtures)."""
    from api import create_app

    return create_app(settings, runtime=rt, database=db)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth(client: FlaskClient, people: People) -> Callable[[str], dict[str, str]]:
    """``auth("li")``: headers with a bearer token from ``POST /api/v1/auth/login`` (personas'
    password is ``<username>-pw``); one login per persona and test."""
    tokens: dict[str, dict[str, str]] = {}

    def headers(username: str) -> dict[str, str]:
        if username not in tokens:
            response = client.post("/api/v1/auth/login",
                                   json={"username": username, "password": f"{username}-pw"})
            assert response.status_code == 200, response.get_data(as_text=True)
            tokens[username] = {"Authorization": f"Bearer {response.json['token']}"}
        return tokens[username]

    return headers


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """An ``application/problem+json`` error with the given status and stable code, carrying
    the members every error has (status, code, title, detail); returns the body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body


@pytest.fixture
def demo_loaded(db, rt) -> None:
    """The demo loaded as ``bpm demo load`` does: people, registry, workflows/ deployed."""
    from engine.brokerage import demo
    from engine.config import PROJECT_ROOT

    with db.transaction() as s:
        demo.load(s, rt)
        demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")


@pytest.fixture
def demo_app(db, rt, client, demo_loaded) -> dict[str, str]:
    """The demo, and the headers of the account-opening system: a user holding the
    integration role."""
    with db.transaction() as s:
        identity.ensure_group(s, key=INTEGRATION)
        identity.create_user(s, username="account_system", display_name="开户系统", now=rt.now(),
                             groups=[INTEGRATION])
        token = identity.issue_token(s, username="account_system", now=rt.now())
    return {"Authorization": f"Bearer {token}"}
