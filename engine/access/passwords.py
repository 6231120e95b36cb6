"""Password hashes: argon2id at current guidance, and the older scrypt ones.

New hashes are argon2id with the first configuration the OWASP Password Storage Cheat
Sheet recommends: 46 MiB, one pass, one lane (which it ranks with scrypt at N=2^17). That
is three times the memory of the scrypt hashes of the earlier releases (N=2^14, 16 MiB)
for about 1.5 times their time, some 0.1 s. (RFC 9106's option for memory-constrained
systems, 64 MiB and 3 passes, costs five times the old time on a 2-core machine, and the
sign-in of every test that signs in would pay it.) A hash records its own parameters, so a
stored hash made with weaker ones, or an scrypt hash of the earlier releases
(``scrypt$salt$digest``), still verifies, and :func:`verify` says it should be replaced:
sign-in rehashes it with the password it was just given.

Checking a password for a user who does not exist, is inactive or has no password spends
the same work as for a real one (:func:`verify` with ``None`` checks against a dummy hash
of the same parameters), so the time of a refusal does not tell whether the username is
taken.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass

from argon2 import Parameters, PasswordHasher, Type, low_level
from argon2.exceptions import InvalidHashError, VerificationError

PARAMETERS = Parameters(type=Type.ID, version=19, salt_len=16, hash_len=32, time_cost=1, memory_cost=46 * 1024,
                        parallelism=1)
_hasher = PasswordHasher.from_parameters(PARAMETERS)
# What an argon2id hash made with PARAMETERS starts with; the rest is salt and digest.
_ARGON2ID = "$argon2id$"
_LEGACY_SCRYPT = "scrypt$"


@dataclass(frozen=True)
class Verified:
    ok: bool
    # The stored hash is of an older kind or weaker parameters: store a new one.
    needs_rehash: bool = False


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify(password: str, stored: str | None) -> Verified:
    """Whether ``password`` matches ``stored``; ``None`` (no such user, or no password) is
    checked against a dummy hash, at the same cost, and never matches."""
    if stored is None:
        _verify_argon2(_dummy_hash(), password)
        return Verified(ok=False)
    if stored.startswith(_LEGACY_SCRYPT):
        return Verified(ok=_verify_legacy_scrypt(password, stored), needs_rehash=True)
    if not stored.startswith(_ARGON2ID):
        # Not a hash this product writes (edited by hand?): refuse, at the usual cost.
        _verify_argon2(_dummy_hash(), password)
        return Verified(ok=False)
    ok = _verify_argon2(stored, password)
    return Verified(ok=ok, needs_rehash=ok and _hasher.check_needs_rehash(stored))


def _verify_argon2(stored: str, password: str) -> bool:
    # Through argon2.low_level, where the work is done, so that a test can count the calls.
    try:
        return bool(low_level.verify_secret(stored.encode("ascii"), password.encode(), Type.ID))
    except (VerificationError, InvalidHashError, UnicodeEncodeError):
        return False


def _verify_legacy_scrypt(password: str, stored: str) -> bool:
    try:
        _, salt_hex, digest_hex = stored.split("$")
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), n=2**14, r=8, p=1)
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), digest_hex)


_dummy: str | None = None
_dummy_lock = threading.Lock()


def _dummy_hash() -> str:
    """A hash of a random password with the current parameters, made once per process."""
    global _dummy
    if _dummy is None:
        with _dummy_lock:
            if _dummy is None:
                _dummy = hash_password(secrets.token_urlsafe(24))
    return _dummy
