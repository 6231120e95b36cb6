"""How much a case may hold: one variable (``BPM_MAX_VARIABLE_BYTES``, 256 KiB by default) and
all its variables (``BPM_MAX_CASE_BYTES``, 1 MiB), checked by the engine's services on every
way data comes in (start, message, task completion, data correction, a schedule's start
data): 413 ``data_too_large`` naming each variable, and nothing stored, in the case or the
audit trail."""

import pytest
from sqlalchemy import func, select

from api import create_app
from engine.bootstrap import build_runtime
from engine.config import Settings
from engine.errors import ConfigError
from engine.models import AuditEvent, ProcessInstance, Schedule
from engine.process import deployments, passage
from tests.api.test_instances import GATEWAY, patch_data
from tests.api.test_messages import drive_to_the_ack, send, snapshot
from tests.support.api import API, assert_problem, command, start, task_of
from tests.support.bpmn import bundle_of

MB = 1024 * 1024


def _counts(db):
    with db.transaction() as s:
        return (s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one(),
                s.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


def too_large(response):
    """The 413's errors, field to message."""
    problem = assert_problem(response, 413, "data_too_large")
    assert problem["limit_bytes"] > 0
    return {e["field"]: e["message"] for e in problem["errors"]}


@pytest.mark.sqlite
def test_a_10_mb_start_payload_is_413_and_stored_nowhere(client, auth, db, review):
    before = _counts(db)
    response = client.post(f"{API}/processes/review/instances", headers=auth("li"),
                           json={"business_key": "BIG-1", "data": {"attachment": "x" * (10 * MB), "note": "ok"}})
    errors = too_large(response)
    assert list(errors) == ["data/attachment"] and "at most 262144 bytes" in errors["data/attachment"]
    assert _counts(db) == before


@pytest.mark.sqlite
def test_variables_each_small_enough_but_over_a_case_together_are_413(client, auth, db, review):
    data = {f"part{i}": "字" * 80_000 for i in range(5)}  # 240 KB each, 1.2 MB together
    response = client.post(f"{API}/processes/review/instances", json={"business_key": "BIG-2", "data": data},
                           headers=auth("li"))
    assert "bytes for the case" in too_large(response)["data"]
    assert _counts(db)[0] == 0


@pytest.mark.sqlite
def test_an_oversized_message_payload_is_413_and_changes_nothing(client, auth, db, review):
    li = auth("li")
    drive_to_the_ack(client, li, "MSG-BIG")
    before = snapshot(db)
    response = send(client, li, "client_ack", "MSG-BIG", {"recording": "0" * MB})
    assert list(too_large(response)) == ["payload/recording"]
    assert snapshot(db) == before


@pytest.mark.sqlite
def test_an_oversized_form_is_413_and_the_task_stays_open(client, auth, db, review):
    li = auth("li")
    start(client, li, "FORM-BIG")
    task = task_of(client, li, "FORM-BIG")
    response = command(client, li, task["id"], "complete", {"data": {"amount": 1, "summary": "字" * 100_000}})
    assert list(too_large(response)) == ["data/summary"]
    assert task_of(client, li, "FORM-BIG")["status"] == "open"


@pytest.mark.sqlite
def test_an_oversized_data_correction_is_413_and_the_case_is_unchanged(client, auth, db, rt, people):
    with db.transaction() as s:
        deployments.deploy(s, rt, bundle_of(GATEWAY), actor=people.owner)
    failed = client.post(f"{API}/processes/gateway_flow/instances", json={"business_key": "G-BIG"},
                         headers=auth("li")).json
    boss = auth("boss")
    response = patch_data(client, boss, failed["id"], {"set": {"amount": 1, "evidence": "x" * MB}, "reason": "补录"})
    assert list(too_large(response)) == ["set/evidence"]
    history = client.get(f"{API}/instances/{failed['id']}/history", headers=boss).json
    assert [e["kind"] for e in history if e["kind"] not in passage.KINDS] == ["instance.started", "instance.failed"]


@pytest.mark.sqlite
def test_a_schedule_whose_start_data_no_case_could_take_is_413(client, auth, db, review):
    response = client.post(f"{API}/schedules", headers=auth("owner"), json={
        "key": "big", "process_key": "review", "rule": "first_working_day_of_month", "at_time": "09:00",
        "data": {"template": "x" * MB}})
    assert list(too_large(response)) == ["data/template"]
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(Schedule)).scalar_one() == 0


@pytest.mark.sqlite
def test_the_limits_are_settings(database_url, db, people, review):
    settings = Settings.from_env({"BPM_DATABASE_URL": database_url, "BPM_MAX_VARIABLE_BYTES": "2048",
                                  "BPM_MAX_CASE_BYTES": "4096"})
    assert (settings.max_variable_bytes, settings.max_case_bytes) == (2048, 4096)
    client = create_app(settings, runtime=build_runtime(settings), database=db).test_client()
    token = client.post(f"{API}/auth/login", json={"username": "li", "password": "li-pw"}).json["token"]
    headers = {"Authorization": f"Bearer {token}"}
    over = client.post(f"{API}/processes/review/instances", headers=headers,
                       json={"business_key": "S-1", "data": {"remark": "x" * 3000}})
    assert "at most 2048 bytes" in too_large(over)["data/remark"]
    assert start(client, headers, "S-2", remark="x" * 1800, remark2="x" * 1800)["status"] == "running"
    # Each form value is small, but the case would then hold more than 4096 bytes.
    task = task_of(client, headers, "S-2")
    full = command(client, headers, task["id"], "complete", {"data": {"amount": 1, "summary": "字" * 300}})
    assert "bytes for the case" in too_large(full)["data"]
    assert task_of(client, headers, "S-2")["status"] == "open"


@pytest.mark.parametrize(("env", "message"), [
    ({"BPM_MAX_VARIABLE_BYTES": "lots"}, "BPM_MAX_VARIABLE_BYTES must be an integer"),
    ({"BPM_MAX_CASE_BYTES": "100"}, "BPM_MAX_CASE_BYTES must be at least 1024"),
    ({"BPM_MAX_VARIABLE_BYTES": "8192", "BPM_MAX_CASE_BYTES": "4096"}, "BPM_MAX_CASE_BYTES (4096) must be at least"),
    ({"BPM_IDEMPOTENCY_HOURS": "0"}, "BPM_IDEMPOTENCY_HOURS must be at least 1"),
])
def test_a_bad_limit_stops_the_process_naming_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Settings.from_env(env)


def test_the_defaults_hold_a_generous_case():
    defaults = Settings.from_env({})
    assert (defaults.max_variable_bytes, defaults.max_case_bytes, defaults.idempotency_hours) == (
        256 * 1024, MB, 168)
