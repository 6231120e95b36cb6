"""Signing in under attack: throttling with backoff, lockout and unlock, per username and per
address, in memory (the embedded default) and in Redis shared by several processes
(engine/access/signin.py, POST /api/v1/auth/login, /unlock, bpm user unlock)."""

from __future__ import annotations

import socket
import time
from datetime import timedelta

import pytest
import time_machine
from argon2 import PasswordHasher
from redis import Redis
from sqlalchemy import select

from engine.access import identity, passwords
from engine.config import Settings
from engine.models import AuditEvent, User
from tests.conftest import REDIS_URL
from tests.support.api import API, assert_problem
from tests.support.cli import bpm

# Redis databases of these tests' own, one each, flushed by it alone: pytest-xdist may run
# them at the same time in two workers.
REDIS_SERVER = REDIS_URL.rsplit("/", 1)[0]
OFFICE = "192.0.2.10"  # documentation addresses (RFC 5737): strings only, nothing is sent there
GATEWAY = "192.0.2.20"


@pytest.fixture(autouse=True)
def quick_hashes(monkeypatch, db, people):
    """These tests count attempts, hundreds of them; what a password check costs, and that it
    costs the same for every username, is tests/access/test_passwords.py's. Here the hashes
    (the personas' and the dummy one) are argon2id at the smallest cost, so that each check
    takes a millisecond instead of a tenth of a second."""
    quick = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1)
    monkeypatch.setattr(passwords, "_hasher", quick)
    monkeypatch.setattr(passwords, "_dummy", None)
    with db.transaction() as s:
        for user in s.execute(select(User)).scalars():
            user.password_hash = quick.hash(f"{user.username}-pw")


def attempt(client, username: str, password: str, address: str = OFFICE):
    return client.post(f"{API}/auth/login", json={"username": username, "password": password},
                       environ_base={"REMOTE_ADDR": address})


def statuses(client, username: str, passwords: list[str], address: str = OFFICE) -> list[int]:
    return [attempt(client, username, password, address).status_code for password in passwords]


def system_events(db, kind: str) -> list[AuditEvent]:
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent).where(AuditEvent.kind == kind).order_by(AuditEvent.seq)).scalars())


def retry_after(response) -> int:
    return int(response.headers["Retry-After"])


@pytest.fixture
def local_zone_shanghai(monkeypatch):
    """The server's local time zone is Beijing time, not UTC."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_burst_of_wrong_passwords_is_throttled_and_then_the_right_one_is_refused_too(client, people):
    """The attack of the issue: many wrong passwords in a few seconds, then the right one."""
    assert statuses(client, "li", [f"guess-{n}" for n in range(5)]) == [401] * 5
    for password in ("guess-5", "li-pw"):
        problem = assert_problem(attempt(client, "li", password), 429, "signin_throttled")
        assert "for this username" in problem["detail"]
        assert 1 <= problem["retry_after"] <= 60
    assert 1 <= retry_after(attempt(client, "li", "li-pw")) <= 60
    # Others sign in as usual, from the same office.
    assert attempt(client, "zhao", "zhao-pw").status_code == 200


@pytest.mark.sqlite
def test_the_wait_grows_from_a_minute_to_a_quarter_hour_to_a_lockout_that_is_audited(client, db, people,
                                                                                     local_zone_shanghai):
    with time_machine.travel("2026-03-02 01:00:00+00:00", tick=False) as clock:
        assert statuses(client, "li", ["wrong"] * 5) == [401] * 5
        assert retry_after(attempt(client, "li", "li-pw")) == 60
        clock.shift(timedelta(seconds=61))
        assert statuses(client, "li", ["wrong"] * 5) == [401] * 5
        # 10 in 15 minutes: wait until the first of them is a quarter of an hour old.
        throttled = assert_problem(attempt(client, "li", "li-pw"), 429, "signin_throttled")
        assert throttled["retry_after"] == 15 * 60 - 61
        assert system_events(db, "auth.locked_out") == []
        for _ in range(2):
            clock.shift(timedelta(minutes=16))
            assert statuses(client, "li", ["wrong"] * 5) == [401] * 5
        # The 20th failure within a day locked the username, until the first is a day old.
        locked = assert_problem(attempt(client, "li", "li-pw"), 429, "signin_locked")
        elapsed = 61 + 2 * 16 * 60
        assert locked["retry_after"] == 24 * 3600 - elapsed and retry_after(attempt(client, "li", "li-pw")) > 20 * 3600
        # In UTC whatever the server's own zone (the fixture local_zone_shanghai sets it).
        assert locked["detail"] == ("too many failed sign-ins for this username: it is locked for 24 h "
                                    "(until 2026-03-03 01:00 UTC) unless an administrator unlocks it")
        [event] = system_events(db, "auth.locked_out")
        assert event.actor is None
        assert event.data == {"username": "li", "address": OFFICE, "attempts": 20, "within_hours": 24}
        assert type(event.data["within_hours"]) is int  # whole hours, recorded as 24, not 24.0
        # The wait is told in hours, rounded up, until the lock ends.
        for left, told in ((23 * 3600 + 10, "24 h"), (2 * 3600, "2 h")):
            clock.shift(timedelta(seconds=24 * 3600 - elapsed - left))
            elapsed = 24 * 3600 - left
            detail = assert_problem(attempt(client, "li", "li-pw"), 429, "signin_locked")["detail"]
            assert f"it is locked for {told} (until 2026-03-03 01:00 UTC)" in detail
        clock.shift(timedelta(seconds=24 * 3600 - elapsed + 1))
        assert attempt(client, "li", "li-pw").status_code == 200


@pytest.mark.sqlite
def test_a_throttled_attempt_is_told_how_long_to_wait_in_seconds_then_minutes(client, people):
    def detail() -> str:
        return assert_problem(attempt(client, "li", "li-pw"), 429, "signin_throttled")["detail"]

    with time_machine.travel("2026-03-02 01:00:00+00:00", tick=False) as clock:
        statuses(client, "li", ["wrong"] * 5)
        assert detail() == "too many failed sign-ins for this username: try again in 60 s"
        clock.shift(timedelta(seconds=59.5))
        assert detail() == "too many failed sign-ins for this username: try again in 1 s"  # half a second
        clock.shift(timedelta(seconds=1.5))
        statuses(client, "li", ["wrong"] * 5)
        assert detail() == "too many failed sign-ins for this username: try again in 14 min"  # 839 s
        clock.shift(timedelta(seconds=718))
        assert detail() == "too many failed sign-ins for this username: try again in 3 min"  # 121 s
        clock.shift(timedelta(seconds=1))
        assert detail() == "too many failed sign-ins for this username: try again in 2 min"  # 120 s
        clock.shift(timedelta(seconds=1))
        assert detail() == "too many failed sign-ins for this username: try again in 119 s"


def test_a_successful_sign_in_clears_the_count(client, people):
    assert statuses(client, "li", ["wrong"] * 4 + ["li-pw"] + ["wrong"] * 4 + ["li-pw"]) == [401] * 4 + [200] + \
        [401] * 4 + [200]


@pytest.mark.sqlite
def test_a_departed_user_is_refused_with_the_right_password_like_a_wrong_one(client, db, people):
    assert attempt(client, "li", "li-pw").status_code == 200
    with db.transaction() as s:  # what recording a departure leaves on the user
        s.execute(select(User).where(User.username == "li")).scalar_one().active = False
    departed = assert_problem(attempt(client, "li", "li-pw"), 401, "unauthenticated")
    wrong = assert_problem(attempt(client, "zhao", "wrong"), 401, "unauthenticated")
    assert "token" not in departed and departed["detail"] == wrong["detail"]


def test_a_username_nobody_has_is_throttled_exactly_like_a_real_one(client, people):
    """Enumeration through the throttle: the same answers, in the same order, with the same
    words, for a real username and one nobody has."""
    def answers(username: str) -> list[tuple[int, str | None, str]]:
        result = []
        for _ in range(21):
            response = attempt(client, username, "wrong", address=f"192.0.2.{len(username)}")
            body = response.get_json()
            result.append((response.status_code, body["code"], body["detail"].replace(username, "<u>")))
        return result

    with time_machine.travel("2026-03-02 01:00:00+00:00", tick=False) as clock:
        real = []
        ghost = []
        for _ in range(4):
            real += answers("li")
            ghost += answers("nx")
            clock.shift(timedelta(minutes=16))
    assert real == ghost
    assert {code for _, code, _ in real} == {"unauthenticated", "signin_throttled", "signin_locked"}


def test_an_address_is_throttled_after_30_failures_a_minute_whatever_the_usernames(client, people):
    for n in range(30):
        assert attempt(client, f"probe{n}", "wrong", GATEWAY).status_code == 401
    problem = assert_problem(attempt(client, "li", "li-pw", GATEWAY), 429, "signin_throttled")
    assert 1 <= problem["retry_after"] <= 60
    assert problem["detail"] == f"too many failed sign-ins from this address: try again in {problem['retry_after']} s"
    # Only that address: li signs in from the office.
    assert attempt(client, "li", "li-pw", OFFICE).status_code == 200


def test_an_administrator_unlocks_a_locked_username_and_it_is_audited(client, db, people, auth):
    with db.transaction() as s:
        identity.add_member(s, group_key="admin", username="owner")
    with time_machine.travel("2026-03-02 01:00:00+00:00", tick=False) as clock:
        for _ in range(4):
            statuses(client, "li", ["wrong"] * 5)
            clock.shift(timedelta(minutes=16))
        assert_problem(attempt(client, "li", "li-pw"), 429, "signin_locked")

        refused = assert_problem(client.post(f"{API}/auth/unlock", json={"username": "li"}, headers=auth("boss")),
                                 403, "forbidden")
        assert refused["detail"] == "unlocking a sign-in needs the admin role"
        assert_problem(client.post(f"{API}/auth/unlock", json={"username": "nobody"}, headers=auth("owner")),
                       404, "user_not_found")
        assert_problem(client.post(f"{API}/auth/unlock", json={}, headers=auth("owner")), 422, "invalid_request")
        unlocked = client.post(f"{API}/auth/unlock", json={"username": "li"}, headers=auth("owner"))
        assert unlocked.status_code == 200 and unlocked.json == {"username": "li", "was_locked": True}
        assert attempt(client, "li", "li-pw").status_code == 200
    [event] = system_events(db, "auth.unlocked")
    assert event.actor == "owner" and event.data == {"username": "li", "was_locked": True}


# -- several processes: the counts in Redis --------------------------------------------------
def own_redis(database: int):
    url = f"{REDIS_SERVER}/{database}"
    connection = Redis.from_url(url)
    connection.flushdb()
    yield url
    connection.flushdb()
    connection.close()


@pytest.fixture
def redis_13():
    yield from own_redis(13)


@pytest.fixture
def redis_14():
    yield from own_redis(14)


def worker_app(settings: Settings, db, rt, redis_url: str):
    """One gunicorn worker: an app of its own (its own throttle) over the shared database."""
    from api import create_app

    return create_app(Settings.from_env({"BPM_DATABASE_URL": settings.database_url, "BPM_REDIS_URL": redis_url}),
                      runtime=rt, database=db)


def test_gunicorn_workers_count_failures_together_in_redis(settings, db, rt, people, redis_13):
    first, second = (worker_app(settings, db, rt, redis_13).test_client() for _ in range(2))
    assert statuses(first, "li", ["wrong"] * 3) + statuses(second, "li", ["wrong"] * 2) == [401] * 5
    assert_problem(attempt(first, "li", "li-pw"), 429, "signin_throttled")
    assert_problem(attempt(second, "li", "li-pw"), 429, "signin_throttled")
    # Nothing of the username or the address is kept in Redis, only digests, under keys of their
    # own (the queue's jobs may share the database).
    names = Redis.from_url(redis_13).keys("*")
    keys = b" ".join(names)
    assert keys and b"/li/" not in keys and OFFICE.encode() not in keys
    assert all(name.startswith(b"bpm-signin:") for name in names), names


def test_bpm_user_unlock_reaches_the_workers_through_redis(settings, db, rt, people, redis_14):
    client = worker_app(settings, db, rt, redis_14).test_client()
    with time_machine.travel("2026-03-02 01:00:00+00:00", tick=False) as clock:
        for _ in range(4):
            statuses(client, "li", ["wrong"] * 5)
            clock.shift(timedelta(minutes=16))
        assert_problem(attempt(client, "li", "li-pw"), 429, "signin_locked")
        result = bpm(settings.database_url, "user", "unlock", "li", BPM_REDIS_URL=redis_14)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "li unlocked"
        assert attempt(client, "li", "li-pw").status_code == 200
    [event] = system_events(db, "auth.unlocked")
    assert event.actor == "cli" and event.data == {"username": "li", "was_locked": True}


def test_bpm_user_unlock_without_redis_says_where_the_counts_are(settings, people):
    result = bpm(settings.database_url, "user", "unlock", "li")
    assert result.exit_code == 1
    assert "memory of `bpm serve`" in result.stderr and "POST /api/v1/auth/unlock" in result.stderr


def test_sign_in_goes_on_throttled_in_memory_when_redis_is_down(settings, db, rt, people, caplog):
    # Nothing listens on port 1: every Redis call fails at once.
    client = worker_app(settings, db, rt, "redis://127.0.0.1:1/0").test_client()
    assert attempt(client, "li", "li-pw").status_code == 200
    assert statuses(client, "li", ["wrong"] * 5) == [401] * 5
    assert_problem(attempt(client, "li", "li-pw"), 429, "signin_throttled")
    assert "Redis unavailable" in caplog.text


def test_sign_in_goes_on_in_memory_when_redis_takes_connections_but_never_answers(settings, db, rt, people, caplog):
    """A hung Redis holds each sign-in for its read timeout (2 s a call), not for ever."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # connections wait in the backlog; nothing is ever read or answered
    port = hung.getsockname()[1]
    try:
        client = worker_app(settings, db, rt, f"redis://127.0.0.1:{port}/0").test_client()
        assert attempt(client, "li", "li-pw").status_code == 200
    finally:
        hung.close()
    assert (f"sign-in throttling: Redis unavailable (Timeout reading from 127.0.0.1:{port}); "
            "counting in this process's memory") in caplog.messages


# -- behind a reverse proxy -----------------------------------------------------------------
def test_behind_a_trusted_proxy_the_address_is_the_forwarded_one(settings, db, rt, people):
    from api import create_app

    proxied = create_app(Settings.from_env({"BPM_DATABASE_URL": settings.database_url, "BPM_TRUSTED_PROXIES": "1"}),
                         runtime=rt, database=db).test_client()

    def via_proxy(username: str, password: str, client_address: str):
        return proxied.post(f"{API}/auth/login", json={"username": username, "password": password},
                            environ_base={"REMOTE_ADDR": "127.0.0.1"}, headers={"X-Forwarded-For": client_address})

    for n in range(30):
        assert via_proxy(f"probe{n}", "wrong", GATEWAY).status_code == 401
    assert_problem(via_proxy("li", "li-pw", GATEWAY), 429, "signin_throttled")
    # Another client behind the same proxy is not held up by the first one's failures.
    assert via_proxy("li", "li-pw", OFFICE).status_code == 200
