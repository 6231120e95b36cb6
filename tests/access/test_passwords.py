"""Password hashes: their cost, the rehash of older ones at sign-in, and the same work for a
username that does not exist as for one that does (engine/access/passwords.py,
engine/access/signin.py)."""

from __future__ import annotations

import hashlib
import statistics
import time

import argon2
import pytest
from argon2 import PasswordHasher, extract_parameters
from limits.storage import MemoryStorage
from sqlalchemy import select

from engine.access import identity, passwords, signin
from engine.access.signin import ThrottlePolicy, Tier
from engine.models import User


def stored_hash(db, username: str) -> str | None:
    with db.transaction() as s:
        return s.execute(select(User.password_hash).where(User.username == username)).scalar_one()


def set_hash(db, username: str, value: str | None) -> None:
    with db.transaction() as s:
        s.execute(select(User).where(User.username == username)).scalar_one().password_hash = value


def sign_in(db, rt, username: str, password: str, throttle: signin.Throttle | None = None) -> signin.SignIn:
    with db.transaction() as s:
        return signin.sign_in(s, throttle or roomy_throttle(), username=username, password=password,
                              address="192.0.2.1", now=rt.now())


def roomy_throttle() -> signin.Throttle:
    """A throttle that never refuses: these tests are about the password check."""
    roomy = Tier(10_000, 60)
    return signin.Throttle(MemoryStorage(), ThrottlePolicy(username=(roomy,), lockout=Tier(10_000, 86_400),
                                                           address=(roomy,)))


def legacy_scrypt_hash(password: str) -> str:
    """A hash as the earlier releases wrote it (scrypt, N=2^14)."""
    salt = b"0123456789abcdef"
    return f"scrypt${salt.hex()}${hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1).hex()}"


def test_new_hashes_are_argon2id_at_owasps_first_recommended_parameters():
    stored = identity.hash_password("li-pw")
    parameters = extract_parameters(stored)
    assert stored.startswith("$argon2id$")
    assert (parameters.memory_cost, parameters.time_cost, parameters.parallelism) == (46 * 1024, 1, 1)
    assert passwords.verify("li-pw", stored) == passwords.Verified(ok=True, needs_rehash=False)
    assert passwords.verify("li-pw!", stored) == passwords.Verified(ok=False)


def test_a_legacy_scrypt_hash_still_signs_in_and_is_replaced_by_argon2id(db, rt, people):
    set_hash(db, "li", legacy_scrypt_hash("li-pw"))
    assert sign_in(db, rt, "li", "wrong").refusal is not None
    assert stored_hash(db, "li").startswith("scrypt$")  # a failed attempt changes nothing

    assert sign_in(db, rt, "li", "li-pw").token is not None
    rehashed = stored_hash(db, "li")
    assert rehashed.startswith("$argon2id$") and extract_parameters(rehashed) == passwords.PARAMETERS
    assert sign_in(db, rt, "li", "li-pw").token is not None
    assert stored_hash(db, "li") == rehashed  # rehashed once, not at every sign-in


def test_an_argon2_hash_with_weaker_parameters_is_replaced_at_sign_in(db, rt, people):
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash("li-pw")
    set_hash(db, "li", weak)
    assert sign_in(db, rt, "li", "li-pw").token is not None
    assert extract_parameters(stored_hash(db, "li")) == passwords.PARAMETERS


@pytest.fixture
def hash_calls(monkeypatch):
    """Every call of the functions that do a password check's work, with the parameters it
    was done at: argon2's (read from the hash it checks against) and scrypt's."""
    calls: list[tuple] = []
    verify_secret, scrypt = argon2.low_level.verify_secret, hashlib.scrypt

    def counted_verify(hash: bytes, secret: bytes, type: argon2.Type) -> bool:
        p = extract_parameters(hash.decode())
        calls.append(("argon2", type, p.memory_cost, p.time_cost, p.parallelism, p.salt_len, p.hash_len, len(secret)))
        return verify_secret(hash, secret, type)

    def counted_scrypt(password: bytes, **kwargs) -> bytes:
        calls.append(("scrypt", kwargs["n"], kwargs["r"], kwargs["p"], len(password)))
        return scrypt(password, **kwargs)

    monkeypatch.setattr(argon2.low_level, "verify_secret", counted_verify)
    monkeypatch.setattr(hashlib, "scrypt", counted_scrypt)
    return calls


def test_a_refusal_does_the_same_hashing_work_whoever_the_username_is(db, rt, people, hash_calls):
    """Timing by counting: the check is one argon2 verification at the same parameters,
    with a password of the same length, for an active user's wrong password, a username
    nobody has, an inactive user, a user without a password and a hash nobody can use.
    (Wall time on a shared machine is too noisy to tell 60 ms from 4 ms reliably; the work
    is what makes the time.)"""
    with db.transaction() as s:
        s.execute(select(User).where(User.username == "zhao")).scalar_one().active = False
    set_hash(db, "wang", None)
    set_hash(db, "chen", "md5$not-a-hash-this-product-writes")

    work: dict[str, list[tuple]] = {}
    for username in ("li", "nobody", "zhao", "wang", "chen"):
        hash_calls.clear()
        attempt = sign_in(db, rt, username, "guess-pw")
        assert str(attempt.refusal) == "wrong username or password"
        work[username] = list(hash_calls)
    assert len(work["li"]) == 1 and work["li"][0][0] == "argon2"
    assert {name: calls for name, calls in work.items()} == dict.fromkeys(work, work["li"])


def test_a_refusal_takes_as_much_cpu_time_for_an_unknown_username_as_for_a_known_one(db, rt, people):
    """The same, measured: CPU time of the whole sign-in (this process's, every thread's, so
    other processes on the machine hardly disturb it), interleaved, median of five. Before
    the dummy check an unknown username cost about a twentieth of a known one."""
    sign_in(db, rt, "nobody", "warm-up")  # the dummy hash is made once per process
    throttle = roomy_throttle()
    spent: dict[str, list[float]] = {"li": [], "nobody": []}
    for _ in range(5):
        for username in spent:
            started = time.process_time()
            sign_in(db, rt, username, "guess-pw", throttle)
            spent[username].append(time.process_time() - started)
    ratio = statistics.median(spent["nobody"]) / statistics.median(spent["li"])
    assert 0.5 < ratio < 2, spent
