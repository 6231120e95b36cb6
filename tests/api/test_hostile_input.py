"""Input a person or a system can send that used to crash the server (500): each is now a 4xx
problem with a reason, and nothing is stored."""

import io
import zipfile

import pytest
from sqlalchemy import func, select

from engine.models import AuditEvent, CalendarDay, ProcessInstance, SlaPolicy, Timer
from tests.conftest import FIXTURES
from tests.support.api import API, assert_problem, login

BEYOND_BIGINT = 2**63


def _count(db, model):
    with db.transaction() as s:
        return s.execute(select(func.count()).select_from(model)).scalar_one()


def refused(response, status=422, code="invalid_request"):
    """The problem's ``errors``, field to message, after checking it is the expected problem."""
    problem = assert_problem(response, status, code)
    return {entry["field"]: entry["message"] for entry in problem["errors"]}


# -- text a database cannot store --------------------------------------------------------------
@pytest.mark.sqlite
def test_login_with_a_lone_surrogate_or_a_nul_is_422_naming_the_field(client, people):
    surrogate = client.post(f"{API}/auth/login", data='{"username": "li\\ud800", "password": "li-pw"}',
                            content_type="application/json")
    assert "surrogate" in refused(surrogate)["username"]
    nul = client.post(f"{API}/auth/login", json={"username": "li", "password": "li-pw\x00"})
    assert "U+0000" in refused(nul)["password"]


@pytest.mark.sqlite
def test_a_nul_anywhere_a_request_carries_text_is_422_and_nothing_is_stored(client, auth, db, review):
    li, boss = auth("li"), auth("boss")
    audited = _count(db, AuditEvent)
    cases = [
        ("get", "/instances?process=review%00", None, "process"),
        ("get", "/instances?x%00=1", None, "x\x00"),
        ("get", "/clients/C%0001", None, "client_id"),
        ("get", "/processes/rev%00iew/versions", None, "process_key"),
        ("post", "/processes/review/instances", {"business_key": "K\x00", "data": {}}, "business_key"),
        ("post", "/processes/review/instances", {"business_key": "K1", "data": {"note": ["ok", "a\x00"]}},
         "data/note/1"),
        ("post", "/processes/review/instances", {"business_key": "K2", "data": {"no\x00te": 1}}, "data/no\x00te"),
        ("post", "/messages", {"name": "client_ack", "correlation_key": "K", "payload": {"x": "\x00"}}, "payload/x"),
    ]
    for method, path, body, field in cases:
        response = getattr(client, method)(f"{API}{path}", json=body, headers=boss if method == "get" else li)
        assert field in refused(response), path
    upload = client.post(f"{API}/registry/import", headers=boss,
                         data={"clients": (io.BytesIO(b"client_id\n"), "clients\x00.csv")})
    assert "clients" in refused(upload)
    assert (_count(db, ProcessInstance), _count(db, AuditEvent)) == (0, audited)


# -- JSON the parser cannot take ---------------------------------------------------------------
@pytest.mark.sqlite
def test_json_nested_50000_deep_is_400(client, auth):
    response = client.post(f"{API}/processes/review/instances", data="[" * 50_000 + "]" * 50_000,
                           content_type="application/json", headers=auth("li"))
    assert "nested too deeply" in assert_problem(response, 400, "bad_request")["detail"]


@pytest.mark.sqlite
def test_json_nested_deeper_than_case_data_may_is_422_naming_where(client, auth, db, review):
    deep: object = "bottom"
    for _ in range(40):
        deep = {"level": deep}
    response = client.post(f"{API}/processes/review/instances", json={"business_key": "DEEP", "data": {"x": deep}},
                           headers=auth("li"))
    problem = assert_problem(response, 422, "invalid_request")
    assert any("nested more than" in e["message"] and e["field"].startswith("data/x/level") for e in problem["errors"])
    assert _count(db, ProcessInstance) == 0


@pytest.mark.sqlite
def test_an_integer_of_100000_digits_is_400(client, auth, people):
    response = client.post(f"{API}/messages", data='{"name": "m", "payload": {"n": ' + "9" * 100_000 + "}}",
                           content_type="application/json", headers=auth("li"))
    assert "4300 digits" in assert_problem(response, 400, "bad_request")["detail"]


@pytest.mark.sqlite
def test_a_body_that_is_not_utf8_is_400(client, auth):
    response = client.post(f"{API}/auth/login", data=b'{"username": "\xff"}', content_type="application/json")
    assert "UTF-8" in assert_problem(response, 400, "bad_request")["detail"]


# -- numbers past what the database holds -------------------------------------------------------
@pytest.mark.sqlite
def test_path_ids_of_2_to_the_63_or_more_are_404(client, auth, people):
    boss = auth("boss")
    for method, path, body in [
        ("get", f"/instances/{BEYOND_BIGINT}", None),
        ("post", f"/instances/{BEYOND_BIGINT}/cancel", {"reason": "x"}),
        ("post", f"/tasks/{BEYOND_BIGINT}/delegate", {"username": "zhao"}),
        ("post", f"/timers/{BEYOND_BIGINT}/reschedule", {"due_at": "2026-01-05T09:00:00+08:00"}),
        ("get", "/tasks/" + "9" * 100_000, None),
    ]:
        assert_problem(getattr(client, method)(f"{API}{path}", json=body, headers=boss), 404, "not_found")


@pytest.mark.sqlite
def test_an_offset_of_10_to_the_30_is_422(client, auth, people):
    for path in ("/instances", "/tasks", "/clients"):
        response = client.get(f"{API}{path}?offset={10**30}", headers=auth("boss"))
        assert "offset" in refused(response), path


@pytest.mark.sqlite
def test_due_within_1e12_hours_is_422(client, auth):
    response = client.get(f"{API}/tasks?due_within_hours=1e12", headers=auth("li"))
    assert "due_within_hours" in refused(response)


# -- dates and targets out of any plausible range ----------------------------------------------
@pytest.mark.sqlite
def test_figures_from_year_1_to_9999_are_refused(client, staff):
    admin = login(client, "admin", "demo")
    response = client.get(f"{API}/figures/complaints?from=0001-01-01&to=9999-12-31", headers=admin)
    assert set(refused(response)) == {"from", "to"}
    assert client.get(f"{API}/figures/complaints?from=1990-01-01&to=2099-12-31", headers=admin).status_code == 200


@pytest.mark.sqlite
def test_calendar_days_in_year_1_or_9999_are_refused_and_not_stored(client, auth, db, people):
    before = _count(db, CalendarDay)
    for day in ("0001-01-01", "9999-12-31", "1989-12-31", "2100-01-01"):
        response = client.put(f"{API}/calendar/days/{day}", json={"working": True}, headers=auth("owner"))
        assert "must lie between 1990-01-01 and 2099-12-31" in assert_problem(response, 400, "invalid_input")["detail"]
    assert _count(db, CalendarDay) == before
    assert_problem(client.put(f"{API}/calendar/days/2025-02-30", json={"working": True}, headers=auth("owner")),
                   400, "invalid_input")


@pytest.mark.sqlite
def test_a_timer_moved_to_year_1_or_9999_is_refused_and_stays(client, auth, db, staff):
    admin = login(client, "admin", "demo")
    timer = client.get(f"{API}/timers", headers=admin).json[0]
    for due_at in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
        response = client.post(f"{API}/timers/{timer['id']}/reschedule", json={"due_at": due_at}, headers=admin)
        assert "due_at" in refused(response)
    with db.transaction() as s:
        assert s.get(Timer, timer["id"]).due_at.isoformat() == timer["due_at"]


@pytest.mark.sqlite
def test_an_sla_target_of_a_billion_working_days_is_400_and_not_saved(client, auth, db, people):
    for amount, unit in (("1000000000", "WD"), ("1e9", "CD"), (1e9, "CD"), ("121", "CM"), ("0", "WD")):
        response = client.put(f"{API}/sla/policies/huge", headers=auth("owner"),
                              json={"name": "太长", "target_amount": amount, "target_unit": unit})
        assert response.status_code in (400, 422), (amount, response.get_data(as_text=True))
        assert response.mimetype == "application/problem+json"
    assert _count(db, SlaPolicy) == 0
    saved = client.put(f"{API}/sla/policies/year", headers=auth("owner"),
                       json={"name": "一年", "target_amount": "250", "target_unit": "WD"})
    assert saved.status_code == 200, saved.get_data(as_text=True)


# -- uploads -----------------------------------------------------------------------------------
def _zip_with_a_bad_crc() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("review.bpmn", b"<definitions/>" * 10)
    data = bytearray(buffer.getvalue())
    data[data.index(b"<definitions/>")] ^= 0x01  # the stored bytes no longer match the CRC
    return bytes(data)


@pytest.mark.sqlite
def test_a_zip_entry_with_a_bad_crc_is_a_located_deployment_problem(client, auth, db, people):
    response = client.post(f"{API}/deployments", data=_zip_with_a_bad_crc(), content_type="application/zip",
                           headers=auth("owner"))
    problem = assert_problem(response, 422, "deployment_invalid")
    assert any("cannot read 'review.bpmn'" in e["message"] and "CRC" in e["message"] for e in problem["errors"])


@pytest.mark.sqlite
def test_a_form_that_is_not_utf8_or_holds_a_nul_is_a_deployment_problem(client, auth, people):
    bpmn = (FIXTURES / "review" / "review.bpmn").read_bytes()
    for form in (b'{"title": "\xff"}', b'{"title": "a\\u0000b", "type": "object"}'):
        response = client.post(f"{API}/deployments", headers=auth("owner"), content_type="multipart/form-data",
                               data={"files": [(io.BytesIO(bpmn), "review.bpmn"), (io.BytesIO(form), "register.json")]})
        problem = assert_problem(response, 422, "deployment_invalid")
        assert any(e["file"] == "forms/register.json" for e in problem["errors"]), problem


# -- HTTP ---------------------------------------------------------------------------------------
def test_a_405_names_the_allowed_methods(client, auth):
    response = client.delete(f"{API}/instances", headers=auth("li"))
    assert_problem(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}


@pytest.mark.sqlite
def test_authentication_is_checked_before_the_request_is_validated(client, people):
    for method, path, body in [("get", "/instances?limit=0", None), ("get", "/tasks?due_within_hours=-1", None),
                               ("post", "/processes/review/instances", {"business_key": 7}),
                               ("put", "/sla/policies/x", {}), ("get", "/instances?process=%00", None),
                               ("post", "/messages", "[" * 5000 + "]" * 5000), ("delete", "/instances", None)]:
        send = getattr(client, method)
        response = (send(f"{API}{path}", data=body, content_type="application/json") if isinstance(body, str)
                    else send(f"{API}{path}", json=body))
        assert_problem(response, 401, "unauthenticated")

