"""Tokens end: sign-out, revocation of a user's tokens, departure, expiry of every token
(``bpm user token --expires``), and the migration that gave old tokens an expiry. Every
end takes effect at once in every process: each request checks its token in the database."""

from __future__ import annotations

import importlib.util
import re
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import create_engine, delete, insert, inspect, select, text, update

from engine.access import identity
from engine.calendars import SHANGHAI
from engine.models import ApiToken, AuditEvent, GroupMember, User
from engine.schema import MIGRATIONS, upgrade
from tests.support.api import API, assert_problem, login
from tests.support.cli import bpm


def me(client, headers: dict[str, str]):
    return client.get(f"{API}/auth/me", headers=headers)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def other_process(app):
    """Another gunicorn worker: an app of its own over the same database."""
    from api import create_app

    ctx = app.extensions["bpm"]
    return create_app(ctx.settings, runtime=ctx.runtime, database=ctx.db).test_client()


def system_events(db, kind: str) -> list[AuditEvent]:
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent).where(AuditEvent.kind == kind)).scalars())


# -- sign-out and revocation ------------------------------------------------------------------
@pytest.mark.sqlite
def test_logout_ends_that_token_at_once_in_every_process_and_no_other(app, client, people):
    phone, laptop = login(client, "li"), login(client, "li")
    elsewhere = other_process(app)
    assert me(elsewhere, phone).status_code == 200  # a worker that has just seen the token
    assert client.post(f"{API}/auth/logout", headers=phone).status_code == 204
    for process in (client, elsewhere):
        assert_problem(me(process, phone), 401, "unauthenticated")
        assert me(process, laptop).status_code == 200
    assert_problem(client.post(f"{API}/auth/logout", headers=phone), 401, "unauthenticated")


@pytest.mark.sqlite
def test_an_administrator_revokes_every_token_of_a_user_at_once(app, client, db, rt, people, auth):
    with db.transaction() as s:
        identity.add_member(s, group_key="admin", username="owner")
        script = identity.issue_token(s, username="li", now=rt.now())
    signed_in = login(client, "li")
    elsewhere = other_process(app)
    assert me(elsewhere, bearer(script)).status_code == 200 and me(elsewhere, signed_in).status_code == 200

    assert_problem(client.post(f"{API}/auth/revoke", json={"username": "li"}, headers=auth("zhao")), 403, "forbidden")
    revoked = client.post(f"{API}/auth/revoke", json={"username": "li"}, headers=auth("owner"))
    assert revoked.status_code == 200 and revoked.json == {"username": "li", "revoked": 2}
    for process in (client, elsewhere):
        for headers in (bearer(script), signed_in):
            assert_problem(me(process, headers), 401, "unauthenticated")
    assert me(client, auth("zhao")).status_code == 200
    [event] = system_events(db, "auth.tokens_revoked")
    assert event.actor == "owner" and event.data == {"username": "li", "revoked": 2}
    # The user signs in again as usual.
    assert me(client, login(client, "li")).status_code == 200
    assert_problem(client.post(f"{API}/auth/revoke", json={"username": "nobody"}, headers=auth("owner")),
                   404, "user_not_found")


def test_a_user_signs_out_everywhere(client, people):
    phone, laptop = login(client, "li"), login(client, "li")
    revoked = client.post(f"{API}/auth/revoke", json={"username": "li"}, headers=phone)
    assert revoked.status_code == 200 and revoked.json["revoked"] == 2
    assert_problem(me(client, laptop), 401, "unauthenticated")


def test_bpm_user_revoke(database_url, client, db, rt, people):
    with db.transaction() as s:
        token = identity.issue_token(s, username="wang", now=rt.now())
    result = bpm(database_url, "user", "revoke", "wang")
    assert result.exit_code == 0 and result.stdout.strip() == "revoked 1 token(s) of wang"
    assert_problem(me(client, bearer(token)), 401, "unauthenticated")
    [event] = system_events(db, "auth.tokens_revoked")
    assert event.actor == "cli"


@pytest.mark.sqlite
def test_a_changed_membership_takes_effect_at_once(client, db, people, auth):
    assert "clerks" in me(client, auth("li")).json["groups"]
    with db.transaction() as s:
        user = identity.get_user(s, "li")
        s.execute(delete(GroupMember).where(GroupMember.user_id == user.id))
    assert me(client, auth("li")).json["groups"] == []


# -- departure ----------------------------------------------------------------------------------
@pytest.mark.sqlite
def test_a_departed_users_tokens_stop_working_at_once_everywhere_for_good(app, client, db, rt, demo_loaded):
    with db.transaction() as s:
        tokens = [identity.issue_token(s, username="s107", now=rt.now()) for _ in range(2)]
        head = identity.issue_token(s, username="s101", now=rt.now())  # HZ01's branch head
    elsewhere = other_process(app)
    assert all(me(elsewhere, bearer(token)).status_code == 200 for token in tokens)
    today = rt.now().astimezone(SHANGHAI).date().isoformat()
    recorded = client.post(f"{API}/staff/s107/departure", json={"departed_on": today}, headers=bearer(head))
    assert recorded.status_code == 201, recorded.get_data(as_text=True)
    for process in (client, elsewhere):
        for token in tokens:
            assert_problem(me(process, bearer(token)), 401, "unauthenticated")
    [event] = system_events(db, "staff.departed")
    assert event.data["revoked_tokens"] == 2
    # Revoked, not merely refused while the user is inactive: reactivating them revives nothing.
    with db.transaction() as s:
        s.execute(update(User).where(User.username == "s107").values(active=True))
    assert_problem(me(client, bearer(tokens[0])), 401, "unauthenticated")


# -- expiry -----------------------------------------------------------------------------------
def test_a_sign_in_token_works_12_hours(client, people):
    with time_machine.travel(datetime(2026, 3, 2, 1, 0, tzinfo=UTC), tick=False) as clock:
        response = client.post(f"{API}/auth/login", json={"username": "li", "password": "li-pw"})
        assert datetime.fromisoformat(response.json["expires_at"]) == datetime(2026, 3, 2, 13, 0, tzinfo=UTC)
        headers = bearer(response.json["token"])
        clock.shift(timedelta(hours=12) - timedelta(seconds=1))
        assert me(client, headers).status_code == 200
        clock.shift(timedelta(seconds=1))
        assert_problem(me(client, headers), 401, "unauthenticated")


def test_bpm_user_token_expires_when_told_and_after_90_days_by_default(database_url, client, db, people):
    with time_machine.travel(datetime(2026, 3, 2, 1, 0, tzinfo=UTC), tick=False) as clock:
        short = bpm(database_url, "user", "token", "wang", "--expires", "2d")
        assert short.exit_code == 0, short.output
        token = short.stdout.strip()
        assert short.stderr.strip() == "expires: 2026-03-04 09:00 (Asia/Shanghai)"
        default = bpm(database_url, "user", "token", "wang").stdout.strip()
        created = bpm(database_url, "user", "create", "bot", "--token", "--expires", "12h")
        assert created.exit_code == 0, created.output
        bot = re.search(r"^token: (\S+)$", created.stdout, re.MULTILINE)[1]
        assert "expires: 2026-03-02 21:00 (Asia/Shanghai)" in created.stdout
        assert me(client, bearer(token)).status_code == 200 and me(client, bearer(bot)).status_code == 200
        clock.shift(timedelta(hours=12))
        assert_problem(me(client, bearer(bot)), 401, "unauthenticated")
        clock.shift(timedelta(days=2) - timedelta(hours=12))
        assert_problem(me(client, bearer(token)), 401, "unauthenticated")
        assert me(client, bearer(default)).status_code == 200
        clock.shift(timedelta(days=88))
        assert_problem(me(client, bearer(default)), 401, "unauthenticated")


@pytest.mark.parametrize(("expires", "message"), [
    ("400d", "at most 365 days"), ("0h", "more than 0"), ("forever", "write days or hours"), ("90", "e.g. 90d"),
])
def test_bpm_user_token_refuses_a_lifetime_it_cannot_give(database_url, people, expires, message):
    result = bpm(database_url, "user", "token", "wang", "--expires", expires)
    assert result.exit_code != 0 and message in result.output
    assert "Traceback" not in result.output


# -- the migration ------------------------------------------------------------------------------
def _migration():
    [path] = (MIGRATIONS / "versions").glob("*_token_expiry.py")
    spec = importlib.util.spec_from_file_location("token_expiry", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def empty_database(backend, pg_migrated, tmp_path):
    """A database with no schema yet, of its own: a PostgreSQL schema beside the worker's, or
    a new SQLite file."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'old.sqlite3'}"
        return
    server, schema = pg_migrated.split("?")[0], f"{pg_migrated.rsplit('%3D', 1)[1]}_token_expiry"
    admin = create_engine(server)
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    yield f"{server}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.mark.sqlite
def test_the_migration_gives_tokens_without_an_expiry_90_days_from_the_upgrade(empty_database):
    upgrade(empty_database, _migration().down_revision)
    engine = create_engine(empty_database)
    tokens = ApiToken.__table__
    try:
        with engine.begin() as conn:
            conn.execute(insert(User.__table__).values(id=1, username="bot", display_name="bot", active=True,
                                                       created_at=datetime(2024, 1, 1, tzinfo=UTC)))
            for n, expires in enumerate([None, datetime(2027, 1, 1, tzinfo=UTC)]):
                conn.execute(insert(tokens).values(user_id=1, token_hash=f"{n:064d}", name="api",
                                                   created_at=datetime(2024, 1, 1, tzinfo=UTC), expires_at=expires))
        before = datetime.now(UTC)
        upgrade(empty_database)
        with engine.begin() as conn:
            never, dated = conn.execute(select(tokens.c.expires_at).order_by(tokens.c.id)).scalars().all()
        [column] = [c for c in inspect(engine).get_columns("bpm_api_token") if c["name"] == "expires_at"]
    finally:
        engine.dispose()
    assert never is not None
    assert before + timedelta(days=90) - timedelta(minutes=1) <= never <= datetime.now(UTC) + timedelta(days=90)
    assert dated == datetime(2027, 1, 1, tzinfo=UTC)
    assert column["nullable"] is False
