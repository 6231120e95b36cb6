"""Production does not start without ``BPM_SECRET_KEY``: gunicorn's ``api.wsgi`` and ``bpm
worker`` refuse, with one message naming the variable; ``bpm serve`` (``make run``) starts
without it."""

from __future__ import annotations

import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from engine.config import Settings
from engine.errors import ConfigError
from tests.support.cli import BPM_VARIABLES, run_entry_point

ROOT = Path(__file__).resolve().parents[2]
SECRET = "a-secret-key-of-32-characters-00"


@pytest.fixture
def sqlite_url(sqlite_template, tmp_path) -> str:
    path = tmp_path / "bpm.sqlite3"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


def test_settings_say_whether_the_secret_key_was_set():
    assert Settings.from_env({}).secret_key_set is False
    assert Settings.from_env({"BPM_SECRET_KEY": ""}).secret_key_set is False
    assert Settings.from_env({"BPM_SECRET_KEY": SECRET}).secret_key_set is True
    with pytest.raises(ConfigError, match="BPM_SECRET_KEY is not set: gunicorn"):
        Settings.from_env({}).require_secret_key("gunicorn")
    Settings.from_env({"BPM_SECRET_KEY": SECRET}).require_secret_key("gunicorn")


def test_the_wsgi_module_refuses_to_build_the_app_without_a_secret_key(monkeypatch, sqlite_url):
    for name in BPM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BPM_DATABASE_URL", sqlite_url)
    with pytest.raises(ConfigError, match="BPM_SECRET_KEY is not set: the API under gunicorn"):
        runpy.run_module("api.wsgi")
    monkeypatch.setenv("BPM_SECRET_KEY", SECRET)
    app = runpy.run_module("api.wsgi")["app"]
    assert isinstance(app, Flask) and app.config["SECRET_KEY"] == SECRET


def gunicorn_check(sqlite_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``gunicorn --check-config 'api.wsgi:app'``: loads the app as a start does, then exits."""
    environment = {k: v for k, v in os.environ.items() if k not in BPM_VARIABLES}
    environment.update(BPM_DATABASE_URL=sqlite_url, **env)
    return subprocess.run([str(Path(sys.executable).parent / "gunicorn"), "--check-config", "api.wsgi:app"],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120, check=False)


def test_gunicorn_does_not_start_without_a_secret_key(sqlite_url):
    refused = gunicorn_check(sqlite_url)
    assert refused.returncode != 0
    assert "BPM_SECRET_KEY is not set" in refused.stderr
    started = gunicorn_check(sqlite_url, BPM_SECRET_KEY=SECRET)
    assert started.returncode == 0, started.stderr


def test_bpm_worker_does_not_start_without_a_secret_key(monkeypatch, capsys, sqlite_url):
    # Port 1: were the worker to get as far as Redis, it would fail there instead.
    code, out, err = run_entry_point(monkeypatch, capsys, "worker", "--burst", BPM_DATABASE_URL=sqlite_url,
                                     BPM_REDIS_URL="redis://127.0.0.1:1/0")
    assert code == 1
    assert err.startswith("error: BPM_SECRET_KEY is not set: bpm worker does not start")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err


def test_bpm_serve_starts_without_a_secret_key(monkeypatch, capsys, sqlite_url):
    served: list[Flask] = []
    monkeypatch.setattr(Flask, "run", lambda app, **_: served.append(app))
    code, out, err = run_entry_point(monkeypatch, capsys, "serve", BPM_DATABASE_URL=sqlite_url)
    assert code == 0, err
    assert "Brokerage BPM is running" in out
    [app] = served
    assert app.config["SECRET_KEY"] == "dev-only-not-secret"
