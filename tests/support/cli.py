"""Running the ``bpm`` command in-process, with only the settings a test gives it."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from click.testing import CliRunner, Result

from api import cli

# Every variable the command reads, unset unless the test sets it, so a developer's shell
# never leaks into a test.
BPM_VARIABLES = ("BPM_DATABASE_URL", "BPM_REDIS_URL", "BPM_SECRET_KEY", "BPM_ALLOW_SCRIPT_TASKS",
                 "BPM_EXPRESSION_TIMEOUT_MS", "BPM_SERVICE_MODULES", "BPM_TIMER_CATCH_UP", "BPM_SMTP_URL",
                 "BPM_WORKFLOW_CACHE", "BPM_AUDIT_KEY", "BPM_AUDIT_KEY_FILE", "BPM_AUDIT_ANCHOR_DIR",
                 "BPM_MAX_VARIABLE_BYTES", "BPM_MAX_CASE_BYTES", "BPM_IDEMPOTENCY_HOURS")
# The audit key every test database is written with (tests/conftest.py ``settings``), as a
# deployment would set it; a test about the unkeyed embedded default passes BPM_AUDIT_KEY="".
AUDIT_KEY = "test-audit-key-not-secret-0123456789abcdef"


def bpm(database_url: str, *args: Any, **env: str) -> Result:
    """``bpm ARGS`` through click's runner (``api.cli.main``) on ``database_url``, with the
    tests' audit key unless ``env`` says otherwise."""
    environment: dict[str, str | None] = dict.fromkeys(BPM_VARIABLES)
    environment.update({"BPM_DATABASE_URL": database_url, "BPM_AUDIT_KEY": AUDIT_KEY, **env})
    return CliRunner().invoke(cli.main, [str(a) for a in args], env=environment)


def run_entry_point(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: Any,
                    **env: str) -> tuple[int, str, str]:
    """``bpm ARGS`` through the console entry point ``api.cli.run``, which maps errors to one
    line and an exit code: (exit code, stdout, stderr)."""
    for name in BPM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in {"BPM_AUDIT_KEY": AUDIT_KEY, **env}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(sys, "argv", ["bpm", *map(str, args)])
    with pytest.raises(SystemExit) as exited:
        cli.run()
    captured = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err
