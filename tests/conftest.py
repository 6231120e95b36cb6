"""Test fixtures: real PostgreSQL (127.0.0.1:5432/test) and real Redis, plus SQLite.

Every test that takes ``db`` runs on PostgreSQL; tests marked ``@pytest.mark.sqlite`` run on
the embedded SQLite default as well. Isolation: each test starts from the migrated database
(PostgreSQL: the worker's schema put back; SQLite: a fresh copy of the migrated file), and a
test that asks for a state such as the loaded demo gets a copy of it, built once per worker
(``tests/support/snapshots.py``).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import time_machine
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, select, text

from engine.access import identity
from engine.access.identity import Actor
from engine.access.roles import INTEGRATION
from engine.bootstrap import build_runtime
from engine.bpmn import bundle
from engine.brokerage import demo_cases
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT, Settings
from engine.db import Database
from engine.process import deployments
from engine.process.runtime import Runtime
from engine.schema import upgrade
from tests.support.cli import AUDIT_KEY
from tests.support.snapshots import Snapshots

FIXTURES = Path(__file__).parent / "fixtures"
PG_URL = os.environ.get("BPM_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# Redis databases of the tests that use Redis: each pytest worker gets its own, because the
# xdist_group marks that would keep those tests in one worker are not honoured by this pytest
# (9.x reads a node id that pytest-xdist's --dist loadgroup no longer rewrites). Workers gw0..gw3
# use 15..12 (REDIS_URL), 11..8 and 7..4 (redis_db below); databases 0-3 are left to people.
_WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0) % 4
_REDIS_SERVER = os.environ.get("BPM_TEST_REDIS_SERVER", "redis://127.0.0.1:6379")


def redis_db(slot: int) -> str:
    """This worker's Redis database number ``slot`` (0, 1 or 2) as a URL."""
    return f"{_REDIS_SERVER}/{15 - 4 * slot - _WORKER}"


REDIS_URL = os.environ.get("BPM_TEST_REDIS_URL") or redis_db(0)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        on_sqlite = metafunc.definition.get_closest_marker("sqlite") is not None
        if on_sqlite and metafunc.definition.get_closest_marker("store_independent") is not None:
            raise pytest.UsageError(f"{metafunc.definition.nodeid} is marked both sqlite and store_independent")
        metafunc.parametrize("backend", ["postgresql", "sqlite"] if on_sqlite else ["postgresql"])


@pytest.fixture(scope="session")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Snapshots]:
    store = Snapshots(tmp_path_factory.mktemp("snapshots"))
    yield store
    store.close()


@pytest.fixture(scope="session")
def pg_migrated(snapshots: Snapshots) -> Iterator[str]:
    """A private schema in the ``test`` database for this pytest process, so two runs on
    one machine (a developer's and CI's, or parallel sessions) never touch each other's rows."""
    schema = f"bpm_test_{os.getpid()}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    upgrade(url)
    snapshots.attach_postgresql(url)
    yield url
    snapshots.close()
    with admin.begin() as conn:
        # The schema and the snapshots of it (tests/support/snapshots.py).
        for (name,) in conn.execute(text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :prefix"),
                                    {"prefix": f"{schema}%"}).all():
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The test's database, as migrated: on PostgreSQL the worker's schema put back to its
    migrated state; on SQLite a fresh copy of the migrated file."""
    if backend == "postgresql":
        url = str(request.getfixturevalue("pg_migrated"))
        request.getfixturevalue("snapshots").restore_empty()
        return url
    template = request.getfixturevalue("sqlite_template")
    path = tmp_path / "bpm.sqlite3"
    shutil.copy(template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Keyed like production: the audit chain is an HMAC under the tests' key."""
    return Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_AUDIT_KEY": AUDIT_KEY})


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings.database_url, audit_key=settings.audit_key)
    yield database
    database.dispose()


@pytest.fixture
def snapshot(db: Database, snapshots: Snapshots) -> Callable[[str, Callable[[], Any]], Any]:
    """``snapshot(key, build)``: the database as ``build()`` leaves it, built by the first test
    of this worker that asks for ``key`` and copied back for every later one, with a deep
    copy of what ``build`` returned. The key must name everything the state depends on
    (the moment it is built at, for a demo whose dates follow the clock)."""
    def use(key: str, build: Callable[[], Any]) -> Any:
        return snapshots.use(db, key, build)

    return use


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
    """A password hash is deliberately slow (argon2id); hash each persona's password once per
    test run."""
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
def auth(db: Database, rt: Runtime, people: People) -> Callable[[str], dict[str, str]]:
    """``auth("li")``: headers with a sign-in token of that persona, one per persona and test.

    The token is the one ``POST /api/v1/auth/login`` issues (same name, same 12-hour life),
    issued without checking the password: a password check is deliberately slow (argon2id,
    engine/access/passwords.py) and the tests of signing in (tests/api/test_signin.py,
    tests/access/test_passwords.py) check it; ``tests.support.api.login`` signs in for real."""
    tokens: dict[str, dict[str, str]] = {}

    def headers(username: str) -> dict[str, str]:
        if username not in tokens:
            with db.transaction() as s:
                token = identity.issue_token(s, username=username, now=rt.now(), name="login",
                                             ttl=identity.LOGIN_TOKEN_TTL)
            tokens[username] = {"Authorization": f"Bearer {token}"}
        return tokens[username]

    return headers


def load_demo(db: Database, rt: Runtime, snapshot: Callable[[str, Callable[[], Any]], Any], *,
              at: datetime | None = None, workflows: bool = True) -> None:
    """The demo as ``bpm demo load`` makes it: people, branches, service groups and clients,
    and (``workflows``) the diagrams of workflows/ deployed with their SLA policies. Loaded at
    ``at`` (the clock frozen there) or now; the state is shared by every test of this worker
    that loads it at the same moment (now: within the same hour, the finest unit the demo's
    dates and schedules depend on)."""
    from engine.brokerage import demo

    def build() -> None:
        with db.transaction() as s:
            demo.load(s, rt)
            if workflows:
                demo.load_workflows(s, rt, PROJECT_ROOT / "workflows")

    def build_at() -> None:
        with time_machine.travel(at, tick=False):
            build()

    moment = f"at {at.isoformat()}" if at is not None else f"{rt.now().astimezone(SHANGHAI):%Y-%m-%d %H}h"
    snapshot(f"demo{' with workflows' if workflows else ''} {moment}", build if at is None else build_at)


@pytest.fixture
def demo_loaded(db: Database, rt: Runtime, snapshot: Callable[[str, Callable[[], Any]], Any]) -> None:
    """The demo loaded as ``bpm demo load`` does: people, registry, workflows/ deployed."""
    load_demo(db, rt, snapshot)


@pytest.fixture
def demo_registry(db: Database, rt: Runtime, snapshot: Callable[[str, Callable[[], Any]], Any]) -> None:
    """The demo's people, branches, service groups and clients; no diagrams deployed."""
    load_demo(db, rt, snapshot, workflows=False)


@pytest.fixture
def staff(db: Database, demo_loaded: None) -> dict[str, Actor]:
    """Every user of the loaded demo (``demo_loaded``), as the engine sees them."""
    return staff_of(db)


def staff_of(db: Database) -> dict[str, Actor]:
    from engine.models import User

    with db.transaction() as s:
        return {u.username: identity.actor_for(s, u) for u in s.execute(select(User)).scalars()}


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


# The demo with its open cases, at a fixed moment (the pages' tests and the API's worklist tests).
MORNING = datetime(2026, 11, 25, 10, 30, tzinfo=SHANGHAI)  # a working Wednesday, mid-morning


@pytest.fixture
def morning() -> Iterator[Any]:
    with time_machine.travel(MORNING, tick=True) as traveller:
        yield traveller


@pytest.fixture
def demo_cases_loaded(db: Any, rt: Any, snapshot: Any, morning: Any) -> dict[str, str]:
    """The demo and its nine open cases as `bpm demo load` leaves them on :data:`MORNING`;
    returns each case's business key by the key it has in the demo's script."""
    def build() -> dict[str, str]:
        load_demo(db, rt, snapshot, at=MORNING)
        with time_machine.travel(MORNING, tick=False), db.transaction() as s:
            results = demo_cases.load_cases(s, rt, now=rt.now())
        assert all(r.error is None for r in results), [r.error for r in results]
        return {r.spec.brief_key: r.key for r in results}

    return snapshot(f"demo cases for the pages at {MORNING.isoformat()}", build)  # type: ignore[no-any-return]
