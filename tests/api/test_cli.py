"""The ``bpm`` command and the configuration it starts from.

Commands run in-process through click's CliRunner (``api.cli.main``); error mapping is
tested through the console entry point ``api.cli.run``, in-process with ``sys.argv``
patched, and once as the installed ``bpm`` script in a subprocess.
"""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, func, inspect, select, text

from api import cli
from engine.config import Settings
from engine.errors import ConfigError
from engine.models import Deployment, ProcessVersion
from engine.process import instances, tasks
from tests.conftest import FIXTURES
from tests.support.cli import bpm, run_entry_point

REVIEW = FIXTURES / "review"
LINE = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+) (?P<element>\S+): (?P<message>\S.*)$")


def problem_lines(output):
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines:
        assert LINE.match(line), f"not file:line element-id: message -> {line!r}"
    return lines


def counts(db):
    with db.transaction() as s:
        return (s.execute(select(func.count()).select_from(ProcessVersion)).scalar_one(),
                s.execute(select(func.count()).select_from(Deployment)).scalar_one())


# -- bpm deploy --check ---------------------------------------------------------------------
@pytest.mark.sqlite
def test_deploy_check_accepts_the_review_bundle_when_its_groups_exist(database_url, db, people):
    result = bpm(database_url, "deploy", "--check", REVIEW)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: 1 diagram(s), 2 form(s)"
    assert counts(db) == (0, 0)  # --check stores nothing


@pytest.mark.sqlite
def test_deploy_check_without_the_groups_prints_one_located_line_per_problem(database_url, db):
    result = bpm(database_url, "deploy", "--check", REVIEW)
    assert result.exit_code == 1
    advice = "does not exist: create it (bpm group create) or fix the lane/candidateGroups"
    assert problem_lines(result.stdout) == [
        f"review.bpmn:18 register: candidate group 'clerks' {advice}",
        f"review.bpmn:25 approve_big: candidate group 'managers' {advice}",
        f"review.bpmn:26 approve_small: candidate group 'clerks' {advice}",
    ]
    assert "Traceback" not in result.output
    for key in ("clerks", "managers"):
        assert bpm(database_url, "group", "create", key, "--name", "柜员").exit_code == 0
    accepted = bpm(database_url, "deploy", "--check", REVIEW)
    assert accepted.exit_code == 0, accepted.output
    assert counts(db) == (0, 0)


def test_deploy_check_without_a_database_lints_what_needs_none(tmp_path):
    result = bpm(f"sqlite:///{tmp_path / 'never-migrated.sqlite3'}", "deploy", "--check", REVIEW)
    assert result.exit_code == 0, result.output
    assert "candidate groups were not checked" in result.stderr
    assert result.stdout.strip() == "ok: 1 diagram(s), 2 form(s)"


GARBAGE = {
    "binary-junk": ("x.bpmn", bytes(range(256)) * 4, "not well-formed XML"),
    "xml-bomb": ("bomb.bpmn", b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                 b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
                 b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
                 b"<lolz>&lol3;</lolz>", "DOCTYPE declarations are not allowed"),
    "external-entity": ("xxe.bpmn", b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
                        b"<d>&x;</d>", "DOCTYPE declarations are not allowed"),
    "empty": ("empty.bpmn", b"", "not well-formed XML"),
    "not-a-zip": ("bundle.zip", b"PK\x03\x04 this is not a zip", "not a zip file"),
    "truncated-zip": ("cut.zip", b"", "not a zip file"),
    "not-bpmn-xml": ("plain.bpmn", b"<html><body>hello</body></html>", ""),
}


def test_deploy_check_on_garbage_exits_1_with_one_line_per_problem_and_no_traceback(database_url, db, tmp_path):
    for kind, (name, content, message) in sorted(GARBAGE.items()):
        path = tmp_path / kind / name
        path.parent.mkdir()
        path.write_bytes(content)
        result = bpm(database_url, "deploy", "--check", path)
        assert result.exit_code == 1, (kind, result.output)
        assert "Traceback" not in result.output, kind
        assert result.exception is None or isinstance(result.exception, SystemExit), kind  # no crash
        lines = problem_lines(result.stdout)
        assert lines and lines[0].startswith(f"{name}:"), kind
        assert message in lines[0], kind
        assert "root:" not in result.output  # no external entity was resolved


def test_deploy_check_reports_every_bad_file_of_a_directory(database_url, db, tmp_path):
    for name, content, _ in GARBAGE.values():
        if name.endswith(".bpmn"):
            (tmp_path / name).write_bytes(content)
    forms = tmp_path / "forms"
    forms.mkdir()
    (forms / "broken.json").write_text('{"type": "object",', encoding="utf-8")
    result = bpm(database_url, "deploy", "--check", tmp_path)
    assert result.exit_code == 1
    lines = problem_lines(result.stdout)
    files = [LINE.match(line)["file"] for line in lines]
    assert set(files) == {"bomb.bpmn", "empty.bpmn", "plain.bpmn", "x.bpmn", "xxe.bpmn", "forms/broken.json"}
    assert "Traceback" not in result.output


def test_deploy_of_a_missing_path_is_a_one_line_error(database_url, db, tmp_path):
    result = bpm(database_url, "deploy", "--check", tmp_path / "nothing-here")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no such file or directory")
    assert "Traceback" not in result.output


# -- bpm deploy -----------------------------------------------------------------------------
@pytest.mark.sqlite
def test_deploy_stores_and_an_identical_redeploy_is_unchanged(database_url, db, people):
    first = bpm(database_url, "deploy", REVIEW)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "deployed: review v1"
    assert counts(db) == (1, 1)
    again = bpm(database_url, "deploy", REVIEW)
    assert again.exit_code == 0
    assert again.stdout.strip() == "unchanged: review v1"
    assert counts(db) == (1, 1)
    with db.transaction() as s:
        assert s.execute(select(Deployment.deployed_by)).scalar_one() == "cli"


@pytest.mark.sqlite
def test_deploy_of_a_zip_bundle(database_url, db, people, tmp_path):
    archive = tmp_path / "review.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(REVIEW / "review.bpmn", "review/review.bpmn")
        for form in (REVIEW / "forms").glob("*.json"):
            z.write(form, f"review/forms/{form.name}")
    result = bpm(database_url, "deploy", archive)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "deployed: review v1"


@pytest.mark.sqlite
def test_deploy_of_a_rejected_bundle_prints_the_problems_and_stores_nothing(database_url, db):
    result = bpm(database_url, "deploy", REVIEW)  # no groups exist
    assert result.exit_code == 1
    assert len(problem_lines(result.stdout)) == 3
    assert counts(db) == (0, 0)


# -- bpm redeploy ---------------------------------------------------------------------------
@pytest.mark.sqlite
def test_redeploy_brings_an_earlier_version_back_as_the_next_one(database_url, db, people, tmp_path,
                                                                 monkeypatch, capsys):
    changed = tmp_path / "review"
    (changed / "forms").mkdir(parents=True)
    (changed / "review.bpmn").write_bytes((REVIEW / "review.bpmn").read_bytes().replace(
        "经理审批".encode(), "经理复核".encode()))
    for form in (REVIEW / "forms").glob("*.json"):
        (changed / "forms" / form.name).write_bytes(form.read_bytes())
    assert bpm(database_url, "deploy", REVIEW).exit_code == 0
    assert bpm(database_url, "deploy", changed).stdout.strip() == "deployed: review v2"
    result = bpm(database_url, "redeploy", "review", 1, "--reason", "复核改名撤回", "--as", "owner")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "deployed: review v3 (version 1 again)"
    with db.transaction() as s:
        third = s.execute(select(ProcessVersion).where(ProcessVersion.version == 3)).scalar_one()
        assert third.redeployed_from == 1 and "经理审批" in third.bpmn_xml
        assert s.get(Deployment, third.deployment_id).deployed_by == "owner"
    # The latest version itself, or no reason: a one-line error, nothing stored.
    code, _, err = run_entry_point(monkeypatch, capsys, "redeploy", "review", 3, "--reason", "x",
                                   BPM_DATABASE_URL=database_url)
    assert code == 1 and err.startswith("error: version_conflict: version 3 is the latest")
    code, _, err = run_entry_point(monkeypatch, capsys, "redeploy", "review", 1, "--reason", " ",
                                   BPM_DATABASE_URL=database_url)
    assert code == 1 and "a rollback states its reason" in err
    assert counts(db) == (3, 3)


# -- bpm user / group -----------------------------------------------------------------------
@pytest.mark.sqlite
def test_user_create_with_groups_and_a_token_that_the_api_accepts(database_url, db, client):
    result = bpm(database_url, "user", "create", "ai.li", "--name", "艾莉", "--password", "s3cret-pw",
                 "--branch", "HZ01", "--group", "clerks", "--group", "reviewers", "--token")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "created user ai.li"
    token = re.fullmatch(r"token: (bpm_\S+)", lines[1])[1]
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json == {"username": "ai.li", "groups": ["clerks", "reviewers"], "branch_code": "HZ01"}
    login = client.post("/api/v1/auth/login", json={"username": "ai.li", "password": "s3cret-pw"})
    assert login.status_code == 200

    without = bpm(database_url, "user", "create", "bo")
    assert without.exit_code == 0 and "token:" not in without.stdout
    issued = bpm(database_url, "user", "token", "bo")
    assert issued.exit_code == 0
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {issued.stdout.strip()}"}).json == {
        "username": "bo", "groups": [], "branch_code": None}


@pytest.mark.sqlite
def test_group_add_gives_a_user_a_group(database_url, db, client):
    assert bpm(database_url, "user", "create", "cai").exit_code == 0
    assert bpm(database_url, "group", "create", "managers", "--name", "经理").exit_code == 0
    added = bpm(database_url, "group", "add", "managers", "cai")
    assert added.exit_code == 0 and added.stdout.strip() == "added 1 user(s) to managers"
    token = bpm(database_url, "user", "token", "cai").stdout.strip()
    assert client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"}).json["groups"] == ["managers"]


@pytest.mark.sqlite
def test_user_errors_are_one_line_through_the_entry_point(database_url, db, monkeypatch, capsys):
    env = {"BPM_DATABASE_URL": database_url}
    assert run_entry_point(monkeypatch, capsys, "user", "create", "dup", **env)[0] == 0
    code, out, err = run_entry_point(monkeypatch, capsys, "user", "create", "dup", **env)
    assert code == 1
    assert err.strip() == "error: conflict: user 'dup' already exists"
    code, out, err = run_entry_point(monkeypatch, capsys, "group", "add", "clerks", "ghost", **env)
    assert (code, err.strip()) == (1, "error: user_not_found: no user 'ghost'")
    code, out, err = run_entry_point(monkeypatch, capsys, "user", "create", "bad name!", **env)
    assert code == 1 and err.startswith("error: invalid_input:")
    assert "Traceback" not in out + err


# -- bpm audit verify -----------------------------------------------------------------------
def _activity(db, rt, people):
    """Deployments, users, an instance with a claim and a completion: several streams."""
    from tests.conftest import deploy_fixture

    deploy_fixture(db, rt, "review", people.owner)
    with db.transaction() as s:
        instance = instances.start(s, rt, process_key="review", business_key="AU-1", actor=people.clerk,
                                   data={"priority": None, "due_at": None})
    with db.transaction() as s:
        task, _ = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(candidate_me=True), now=rt.now())
        tasks.complete(s, rt, task_id=task[0].id, actor=people.clerk, data={"amount": 1, "summary": "ok"})
    return instance.id


@pytest.mark.sqlite
def test_audit_verify_passes_then_names_the_altered_event_after_a_raw_sql_tamper(database_url, db, rt, people):
    instance_id = _activity(db, rt, people)
    clean = bpm(database_url, "audit", "verify")
    assert clean.exit_code == 0, clean.output
    assert re.fullmatch(r"\d+ events in \d+ streams; 0 broken chain\(s\)", clean.stdout.splitlines()[-1])

    stream = f"instance:{instance_id}"
    with db.engine.begin() as conn:
        event_id = conn.execute(text("SELECT id FROM bpm_audit_event WHERE stream = :s AND seq = 2"),
                                {"s": stream}).scalar_one()
        conn.execute(text("UPDATE bpm_audit_event SET actor = 'mallory' WHERE id = :id"), {"id": event_id})
    result = bpm(database_url, "audit", "verify")
    assert result.exit_code == 1
    broken = [line for line in result.stdout.splitlines() if line.startswith("BROKEN")]
    assert broken == [f"BROKEN {stream} #2 (event {event_id}): content does not match its hash "
                      "(the event was altered)"]
    assert result.stdout.strip().endswith("1 broken chain(s)")


@pytest.mark.sqlite
def test_audit_verify_notices_events_removed_from_the_end(database_url, db, rt, people):
    instance_id = _activity(db, rt, people)
    stream = f"instance:{instance_id}"
    with db.engine.begin() as conn:
        last = conn.execute(text("SELECT max(seq) FROM bpm_audit_event WHERE stream = :s"), {"s": stream}).scalar_one()
        conn.execute(text("DELETE FROM bpm_audit_event WHERE stream = :s AND seq = :q"), {"s": stream, "q": last})
    result = bpm(database_url, "audit", "verify")
    assert result.exit_code == 1
    (broken,) = [line for line in result.stdout.splitlines() if line.startswith("BROKEN")]
    assert broken.startswith(f"BROKEN {stream} #{last}")
    assert "removed from the end" in broken


# -- bpm db upgrade -------------------------------------------------------------------------
def test_db_upgrade_creates_a_fresh_sqlite_database(tmp_path):
    path = tmp_path / "fresh" / "bpm.sqlite3"
    url = f"sqlite:///{path}"
    result = bpm(url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("database is at the latest revision")
    engine = create_engine(url)
    try:
        names = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert {"bpm_process_version", "bpm_process_instance", "bpm_task", "bpm_message_subscription",
            "bpm_audit_event", "bpm_user", "bpm_group", "alembic_version"} <= names
    assert bpm(url, "db", "upgrade").exit_code == 0  # idempotent


@pytest.mark.sqlite
def test_db_upgrade_on_a_migrated_database_is_a_no_op_and_hides_the_password(database_url, db):
    result = bpm(database_url, "db", "upgrade")
    assert result.exit_code == 0, result.output
    if database_url.startswith("postgresql"):
        assert "***@" in result.stdout
    assert bpm(database_url, "user", "create", "after.upgrade").exit_code == 0


# -- configuration errors reach the user as one line ----------------------------------------
def test_a_bad_database_url_is_a_clean_error_from_the_installed_command(tmp_path):
    executable = Path(sys.executable).parent / "bpm"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BPM_")}
    env["BPM_DATABASE_URL"] = "mysql://x"
    completed = subprocess.run([str(executable), "db", "upgrade"], env=env, capture_output=True, text=True,
                               timeout=60, cwd=tmp_path, check=False)
    assert completed.returncode == 1
    assert completed.stderr.strip() == ("error: BPM_DATABASE_URL must start with sqlite:/// or "
                                        "postgresql+psycopg://, got 'mysql://x'")
    assert "Traceback" not in completed.stdout + completed.stderr


@pytest.mark.parametrize(("variable", "value"), [
    ("BPM_DATABASE_URL", "mysql://x"),
    ("BPM_DATABASE_URL", "postgresql+psycopg:///nohost"),
    ("BPM_REDIS_URL", "http://localhost:6379"),
    ("BPM_SECRET_KEY", "short"),
    ("BPM_ALLOW_SCRIPT_TASKS", "perhaps"),
])
def test_bad_settings_are_one_line_naming_the_variable(monkeypatch, capsys, tmp_path, variable, value):
    env = {"BPM_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}", variable: value}
    for args in (("db", "upgrade"), ("deploy", "--check", REVIEW), ("audit", "verify")):
        code, out, err = run_entry_point(monkeypatch, capsys, *args, **env)
        assert code == 1, (args, out, err)
        assert err.startswith(f"error: {variable} ")
        assert len(err.strip().splitlines()) == 1
        assert "Traceback" not in out + err


def test_worker_without_redis_says_what_it_needs(monkeypatch, capsys, tmp_path):
    code, out, err = run_entry_point(monkeypatch, capsys, "worker",
                                     BPM_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    assert code != 0
    assert "BPM_REDIS_URL" in err
    assert "Traceback" not in out + err


def test_help_lists_every_command():
    result = CliRunner().invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "deploy", "user", "group", "audit", "serve", "worker", "demo"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.MULTILINE), command


# -- engine.config.Settings.from_env --------------------------------------------------------
def test_settings_defaults_work_without_any_variable():
    settings = Settings.from_env({})
    assert settings.database_url.startswith("sqlite:///") and settings.database_url.endswith(".sqlite3")
    assert settings.redis_url is None
    assert settings.secret_key and settings.allow_script_tasks is False


def test_settings_accept_good_values():
    settings = Settings.from_env({
        "BPM_DATABASE_URL": "postgresql+psycopg://bpm:pw@db.internal:5432/bpm",
        "BPM_REDIS_URL": "redis://127.0.0.1:6379/3",
        "BPM_SECRET_KEY": "a-long-enough-secret-key",
        "BPM_ALLOW_SCRIPT_TASKS": "yes",
    })
    assert settings.database_url == "postgresql+psycopg://bpm:pw@db.internal:5432/bpm"
    assert settings.redis_url == "redis://127.0.0.1:6379/3"
    assert settings.secret_key == "a-long-enough-secret-key"
    assert settings.allow_script_tasks is True
    assert Settings.from_env({"BPM_ALLOW_SCRIPT_TASKS": "off"}).allow_script_tasks is False
    assert Settings.from_env({"BPM_DATABASE_URL": "postgresql://u@h/db"}).database_url == "postgresql://u@h/db"


@pytest.mark.parametrize(("variable", "value"), [
    ("BPM_DATABASE_URL", "mysql://x"),
    ("BPM_DATABASE_URL", "not a url"),
    ("BPM_DATABASE_URL", "postgresql+psycopg:///no-host"),
    ("BPM_DATABASE_URL", "oracle://scott:tiger@h/db"),
    ("BPM_REDIS_URL", "http://localhost:6379"),
    ("BPM_REDIS_URL", "redis://"),
    ("BPM_REDIS_URL", "localhost:6379"),
    ("BPM_SECRET_KEY", "short"),
    ("BPM_SECRET_KEY", "x" * 15),
    ("BPM_ALLOW_SCRIPT_TASKS", "perhaps"),
    ("BPM_ALLOW_SCRIPT_TASKS", "2"),
    ("BPM_EXPRESSION_TIMEOUT_MS", "fast"),
    ("BPM_EXPRESSION_TIMEOUT_MS", "0"),
])
def test_a_bad_setting_raises_config_error_naming_the_variable(variable, value):
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({variable: value})
    assert variable in raised.value.message
    assert raised.value.code == "config_invalid"


def test_a_bad_setting_stops_the_app_factory_at_start(monkeypatch, tmp_path):
    """``api.wsgi`` calls ``create_app()``, which reads the environment: gunicorn fails at start."""
    from api import create_app

    monkeypatch.setenv("BPM_DATABASE_URL", f"sqlite:///{tmp_path / 'x.sqlite3'}")
    monkeypatch.setenv("BPM_REDIS_URL", "nope")
    with pytest.raises(ConfigError, match="BPM_REDIS_URL"):
        create_app()


@pytest.mark.sqlite
def test_count_board_keeps_a_snapshot_the_board_then_reads(database_url, db, rt, demo_cases_loaded):
    from engine.brokerage import board_snapshot
    from engine.models import BoardCell, BoardSnapshot

    result = bpm(database_url, "figures", "count-board")
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"board counted as of \S+ in \d+ ms\n", result.stdout)
    with db.transaction() as s:
        (snapshot,) = s.execute(select(BoardSnapshot)).scalars().all()
        cells = s.execute(select(func.count()).select_from(BoardCell)
                          .where(BoardCell.snapshot_id == snapshot.id)).scalar()
        assert cells > 0
        assert board_snapshot.latest(s, now=snapshot.as_of) is not None
