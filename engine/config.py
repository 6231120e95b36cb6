"""Settings from environment variables, checked at start.

A bad value stops the process with a message naming the variable, instead of failing
later inside a request.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from engine.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_PATH = PROJECT_ROOT / "var" / "bpm.sqlite3"
# Flask's secret key when BPM_SECRET_KEY is unset: good enough for `bpm serve` on a laptop,
# refused by the production entry points (Settings.require_secret_key).
DEV_SECRET_KEY = "dev-only-not-secret"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str | None
    secret_key: str
    allow_script_tasks: bool = False
    expression_timeout_ms: int = 100
    # Extra modules that register service-task functions (comma-separated dotted names).
    service_modules: tuple[str, ...] = ()
    # After downtime, a cycle timer fires "once" (skipping missed occurrences) or "all".
    timer_catch_up: str = "once"
    smtp_url: str | None = None
    # Workflows kept in memory per process between changes (0: restore the state every time).
    workflow_cache: int = 256
    # The pages' session cookie is sent over HTTPS only (set behind a TLS-terminating proxy).
    secure_cookies: bool = False
    workflows_dir: Path = PROJECT_ROOT / "workflows"
    # The secret the audit chain is keyed with (HMAC-SHA256), kept outside the database so that
    # whoever holds the database cannot rewrite the trail and recompute it (docs/operations.md#audit-trail).
    # None: the embedded default's plain SHA-256 chain. Left out of repr: settings get logged.
    audit_key: bytes | None = field(default=None, repr=False)
    # Where `bpm audit anchor` writes the signed checkpoints of every stream's head, and where
    # `bpm audit verify` reads them: outside the database, ideally write-once storage.
    audit_anchor_dir: Path | None = None
    # Whether BPM_SECRET_KEY was set, rather than the development value used.
    secret_key_set: bool = False
    # Reverse proxies in front of the API whose X-Forwarded-For is trusted for the client's
    # address (sign-in throttling counts failures per address).
    trusted_proxies: int = 0
    # What one case may hold, as UTF-8 JSON: one variable, and all its variables together.
    # A case keeps its variables in its state and in the audit trail, and reads them on
    # every step, so an oversized upload is refused instead of stored twice.
    max_variable_bytes: int = 256 * 1024
    max_case_bytes: int = 1024 * 1024
    # How long an inbound message's idempotency key is remembered: a repeat within this
    # many hours gets the first answer instead of a second delivery.
    idempotency_hours: int = 168
    # A PostgreSQL replica (streaming, hot standby) the board's and the figures' reads go to
    # (docs/scale.md#replica); unset: the primary, in a read-only transaction all the same.
    read_database_url: str | None = None

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def require_audit_key(self) -> None:
        """Production (PostgreSQL) keys its audit chain: a server or a worker without the key
        stops at start instead of refusing its first audited change."""
        if self.audit_key is None and not self.is_sqlite:
            raise ConfigError(f"{AUDIT_KEY} (or {AUDIT_KEY_FILE}) must be set with a PostgreSQL database: "
                              "its audit chain is keyed with it (docs/operations.md#audit-trail)")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        database_url = env.get("BPM_DATABASE_URL") or f"sqlite:///{DEFAULT_DB_PATH}"
        _check_database_url(database_url)
        read_database_url = env.get("BPM_READ_DATABASE_URL") or None
        if read_database_url is not None:
            _check_database_url(read_database_url)
        redis_url = env.get("BPM_REDIS_URL") or None
        if redis_url is not None:
            _check_redis_url(redis_url)
        secret_key = env.get("BPM_SECRET_KEY") or DEV_SECRET_KEY
        if env.get("BPM_SECRET_KEY") is not None and len(secret_key) < 16:
            raise ConfigError("BPM_SECRET_KEY must be at least 16 characters long")
        max_variable_bytes = _int(env, "BPM_MAX_VARIABLE_BYTES", 256 * 1024, minimum=1024)
        max_case_bytes = _int(env, "BPM_MAX_CASE_BYTES", 1024 * 1024, minimum=1024)
        if max_case_bytes < max_variable_bytes:
            raise ConfigError(f"BPM_MAX_CASE_BYTES ({max_case_bytes}) must be at least BPM_MAX_VARIABLE_BYTES "
                              f"({max_variable_bytes}): a case holds its largest variable")
        return cls(
            database_url=database_url,
            read_database_url=read_database_url,
            redis_url=redis_url,
            secret_key=secret_key,
            allow_script_tasks=_bool(env, "BPM_ALLOW_SCRIPT_TASKS", False),
            expression_timeout_ms=_int(env, "BPM_EXPRESSION_TIMEOUT_MS", 100, minimum=1),
            service_modules=_modules(env, "BPM_SERVICE_MODULES"),
            timer_catch_up=_choice(env, "BPM_TIMER_CATCH_UP", "once", ("once", "all")),
            smtp_url=env.get("BPM_SMTP_URL") or None,
            workflow_cache=_int(env, "BPM_WORKFLOW_CACHE", 256, minimum=0),
            secure_cookies=_bool(env, "BPM_SECURE_COOKIES", False),
            **_audit(env),
            secret_key_set=bool(env.get("BPM_SECRET_KEY")),
            trusted_proxies=_int(env, "BPM_TRUSTED_PROXIES", 0, minimum=0),
            max_variable_bytes=max_variable_bytes,
            max_case_bytes=max_case_bytes,
            idempotency_hours=_int(env, "BPM_IDEMPOTENCY_HOURS", 168, minimum=1),
        )

    def require_secret_key(self, entry_point: str) -> None:
        """The production entry points (gunicorn's ``api.wsgi``, ``bpm worker``) refuse to
        start on the development key: anything signed with it could be forged by anyone
        who has read this file. ``bpm serve`` (``make run``) does without."""
        if not self.secret_key_set:
            raise ConfigError(f"BPM_SECRET_KEY is not set: {entry_point} does not start without a secret key "
                              "of at least 16 characters (for instance the output of "
                              "python3 -c 'import secrets; print(secrets.token_urlsafe(32))')")


AUDIT_KEY, AUDIT_KEY_FILE, AUDIT_ANCHOR_DIR = "BPM_AUDIT_KEY", "BPM_AUDIT_KEY_FILE", "BPM_AUDIT_ANCHOR_DIR"
AUDIT_KEY_MIN_LENGTH = 32  # characters: 32 random ones carry well over 128 bits


def _audit(env: Mapping[str, str]) -> dict[str, Any]:
    """The audit key, from the variable or from the file it names (one of them), and the
    anchor directory, which is only of use with a key (the anchors are signed with it)."""
    text, path = env.get(AUDIT_KEY) or None, env.get(AUDIT_KEY_FILE) or None
    if text is not None and path is not None:
        raise ConfigError(f"{AUDIT_KEY} and {AUDIT_KEY_FILE} are both set: set one")
    where = AUDIT_KEY
    if path is not None:
        where = f"{AUDIT_KEY_FILE} ({path})"
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{AUDIT_KEY_FILE} cannot be read: {exc}") from None
    if text is not None and len(text) < AUDIT_KEY_MIN_LENGTH:
        raise ConfigError(f"{where} must hold a key of at least {AUDIT_KEY_MIN_LENGTH} characters, "
                          f"got {len(text)}")
    anchors = env.get(AUDIT_ANCHOR_DIR) or None
    if anchors is not None and text is None:
        raise ConfigError(f"{AUDIT_ANCHOR_DIR} needs {AUDIT_KEY} or {AUDIT_KEY_FILE}: the anchors are signed with it")
    return {"audit_key": text.encode("utf-8") if text is not None else None,
            "audit_anchor_dir": Path(anchors) if anchors is not None else None}


def _check_database_url(url: str) -> None:
    scheme = urlparse(url).scheme
    if scheme == "sqlite":
        return
    if scheme in ("postgresql", "postgresql+psycopg"):
        if not urlparse(url).hostname and "host=" not in url:
            raise ConfigError(f"BPM_DATABASE_URL has no host: {url!r}")
        return
    raise ConfigError(
        f"BPM_DATABASE_URL must start with sqlite:/// or postgresql+psycopg://, got {url!r}"
    )


def _check_redis_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss", "unix") or (
        parsed.scheme != "unix" and not parsed.hostname
    ):
        raise ConfigError(f"BPM_REDIS_URL must look like redis://host:6379/0, got {url!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name) or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _modules(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    raw = env.get(name) or ""
    modules = tuple(m.strip() for m in raw.split(",") if m.strip())
    for module in modules:
        if not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(f"{name} must be comma-separated module names, got {module!r}")
    return modules


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None:
        return default
    if raw.strip().lower() in _TRUE:
        return True
    if raw.strip().lower() in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value
