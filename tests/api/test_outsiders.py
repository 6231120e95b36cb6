"""Every endpoint refuses the outsiders of a case (docs/permissions.md#outsiders), with the
exact answer: 404 where the case, task, timer or client must not be revealed, 403 where the
caller may know the thing exists (or asks the same of any id) but may not act, 401 for a
departed user's token. Nothing a refusal answers changes anything.

The case: C02 王秀兰 complains at the HZ01 counter; 沈洁 (s105) registers it naming 黄建华
(s101, HZ01's head and a supervisor) as the staff complained about, with 蒋芳 (s104) as the
first-contact owner, who acknowledges it. The investigation (C6) is open, recusing s101 from
the whole case. The outsiders:

- ``nb_head``: 袁志明 (s201), NB01's head and a supervisor: another branch's staff;
- ``subject``: 黄建华 (s101), recused case-wide, whatever his roles;
- ``agent``: 罗斌 (s005), a call-centre agent offered the registration, who took no part;
- ``departed``: 沈洁 (s105), who registered it, then left the firm (departure recorded).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.access import identity
from engine.access.identity import Actor
from engine.brokerage import departures
from engine.calendars import SHANGHAI
from engine.models import AuditEvent, ProcessInstance, Task, Timer, TimerStatus
from engine.process import messages, tasks
from tests.conftest import FIXTURES
from tests.support import probe
from tests.support.api import API, assert_problem

OUTSIDERS = {"nb_head": "s201", "subject": "s101", "agent": "s005", "departed": "s105"}
REGISTRATION = {"received_at": "2026-03-02T09:00:00+08:00", "channel": "counter", "request_kind": "complaint",
                "client_id": "C02", "business_line": "product_sales",
                "summary": "客户称营业部负责人推荐的产品与其风险等级不符",
                "client_request": "explanation", "amount_claimed": 0, "subject_staff_ids": ["s101"]}
CONTACTED = {"contact_at": "2026-03-02T10:30:00+08:00", "contact_channel": "face_to_face", "contact_result": "reached",
             "client_expectation": "说明推荐依据", "recording_id": "REC-OUT-1"}


def _actor(db, username: str) -> Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


def _open_task(db, instance_id: int, element: str) -> int:
    with db.transaction() as s:
        return s.execute(select(Task.id).where(Task.instance_id == instance_id, Task.element_id == element,
                                               Task.status.in_(("open", "claimed")))).scalar_one()


def _build(db, rt) -> dict[str, Any]:
    with db.transaction() as s:
        case = messages.correlate(s, rt, name="complaint_received", correlation_key=None, actor=_actor(db, "s104"),
                                  payload={"channel": "counter", "client_id": "C02"})
        instance_id, key = case.id, case.business_key
    for element, who, data in (("register", "s104", REGISTRATION), ("acknowledge", "s104", CONTACTED)):
        task_id = _open_task(db, instance_id, element)
        with db.transaction() as s:
            tasks.complete(s, rt, task_id=task_id, actor=_actor(db, who), data=data)
    investigate = _open_task(db, instance_id, "investigate")
    with db.transaction() as s:
        register = s.execute(select(Task.id).where(Task.instance_id == instance_id,
                                                   Task.element_id == "register")).scalar_one()
        timer = s.execute(select(Timer.id).where(Timer.instance_id == instance_id,
                                                 Timer.status == TimerStatus.WAITING).limit(1)).scalar_one()
        tokens = {name: identity.issue_token(s, username=username, now=rt.now())
                  for name, username in {**OUTSIDERS, "control": "s103", "hq": "s008"}.items()}
    with db.transaction() as s:  # 沈洁 leaves: her token stops working
        departures.staff_departed(s, rt, username="s105", departed_on=rt.now().astimezone(SHANGHAI).date(),
                                  actor=Actor.system("admin"), now=rt.now())
    return {"instance": instance_id, "key": key, "investigate": investigate, "register": register, "timer": timer,
            "tokens": tokens, "today": rt.now().astimezone(SHANGHAI).date().isoformat(),
            "due": (rt.now() + timedelta(days=3)).isoformat()}


@pytest.fixture
def scene(db, rt, snapshot, demo_loaded) -> dict[str, Any]:
    def build() -> dict[str, Any]:
        return _build(db, rt)

    moment = f"{rt.now().astimezone(SHANGHAI):%Y-%m-%d %H}h"
    built: dict[str, Any] = snapshot(f"outsiders {moment}", build)
    return built


def _headers(scene: dict[str, Any], persona: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {scene['tokens'][persona]}"}


def _upload() -> dict[str, Any]:
    review = FIXTURES / "review"
    files = [("review.bpmn", (review / "review.bpmn").read_bytes()),
             *((f.name, f.read_bytes()) for f in sorted((review / "forms").glob("*.json")))]
    return {"data": {"files": [(io.BytesIO(data), name) for name, data in files]},
            "content_type": "multipart/form-data"}


Request = Callable[[Any, dict[str, Any], dict[str, str]], Any]


def _call(method: str, path: str, body: Callable[[dict[str, Any]], Any] | None = None) -> Request:
    def request(client: Any, scene: dict[str, Any], headers: dict[str, str]) -> Any:
        url = API + path.format(**scene)
        if method == "GET":
            return client.get(url, headers=headers)
        payload = body(scene) if body is not None else {}
        return getattr(client, method.lower())(url, json=payload, headers=headers)
    return request


def _deploy_check(client: Any, scene: dict[str, Any], headers: dict[str, str]) -> Any:
    return client.post(f"{API}/deployments?check=true", headers=headers, **_upload())


NOT_CASE, NOT_TASK, NOT_CLIENT = (404, "instance_not_found"), (404, "task_not_found"), (404, "client_not_found")
NOBODY_WAITS, NOT_TIMER, FORBIDDEN = (404, "message_not_correlated"), (404, "not_found"), (403, "forbidden")
GONE = (401, "unauthenticated")

# endpoint -> (request, {persona: (status, code)}). A persona left out is not an outsider of
# that resource (HZ01's head sees HZ01's clients; an agent starts cases for any client).
ENDPOINTS: dict[str, tuple[Request, dict[str, tuple[int, str]]]] = {
    "GET /instances/{id}": (_call("GET", "/instances/{instance}"),
                            {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": NOT_CASE, "departed": GONE}),
    "GET /instances/{id}/history": (_call("GET", "/instances/{instance}/history"),
                                    {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": NOT_CASE, "departed": GONE}),
    "GET /instances/{id}/activity": (_call("GET", "/instances/{instance}/activity"),
                                     {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": NOT_CASE, "departed": GONE}),
    "GET /instances/{id}/comments": (_call("GET", "/instances/{instance}/comments"),
                                     {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": NOT_CASE, "departed": GONE}),
    "POST /instances/{id}/comments": (_call("POST", "/instances/{instance}/comments", lambda _: {"body": "看看"}),
                                      {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": NOT_CASE, "departed": GONE}),
    "POST /instances/{id}/cancel": (_call("POST", "/instances/{instance}/cancel", lambda _: {"reason": "重复"}),
                                    {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": FORBIDDEN, "departed": GONE}),
    "POST /instances/{id}/retry": (_call("POST", "/instances/{instance}/retry"),
                                   {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": FORBIDDEN, "departed": GONE}),
    "PATCH /instances/{id}/data": (_call("PATCH", "/instances/{instance}/data",
                                         lambda _: {"set": {"amount_claimed": 1}, "reason": "更正"}),
                                   {"nb_head": NOT_CASE, "subject": NOT_CASE, "agent": FORBIDDEN, "departed": GONE}),
    "GET /tasks/{id}": (_call("GET", "/tasks/{investigate}"),
                        {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "GET /tasks/{id} (a finished step)": (_call("GET", "/tasks/{register}"),
                                          {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK,
                                           "departed": GONE}),
    "POST /tasks/{id}/claim": (_call("POST", "/tasks/{investigate}/claim"),
                               {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "POST /tasks/{id}/unclaim": (_call("POST", "/tasks/{investigate}/unclaim"),
                                 {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "POST /tasks/{id}/complete": (_call("POST", "/tasks/{investigate}/complete", lambda _: {"data": {}}),
                                  {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "POST /tasks/{id}/assign": (_call("POST", "/tasks/{investigate}/assign", lambda _: {"username": "s103"}),
                                {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": FORBIDDEN, "departed": GONE}),
    "POST /tasks/{id}/delegate": (_call("POST", "/tasks/{investigate}/delegate", lambda _: {"username": "s103"}),
                                  {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "POST /tasks/{id}/pause": (_call("POST", "/tasks/{investigate}/pause", lambda _: {"reason": "等待客户"}),
                               {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "POST /tasks/{id}/resume": (_call("POST", "/tasks/{investigate}/resume"),
                                {"nb_head": NOT_TASK, "subject": NOT_TASK, "agent": NOT_TASK, "departed": GONE}),
    "POST /messages (to the case)": (_call("POST", "/messages", lambda s: {
        "name": "client_withdraws", "correlation_key": s["key"], "payload": {"withdrawal_channel": "phone"}}),
        {"nb_head": NOBODY_WAITS, "subject": NOBODY_WAITS, "agent": NOBODY_WAITS, "departed": GONE}),
    "POST /timers/{id}/reschedule": (_call("POST", "/timers/{timer}/reschedule", lambda s: {"due_at": s["due"]}),
                                     {"nb_head": NOT_TIMER, "subject": NOT_TIMER, "agent": FORBIDDEN,
                                      "departed": GONE}),
    "GET /clients/{id}": (_call("GET", "/clients/C02"), {"nb_head": NOT_CLIENT, "agent": NOT_CLIENT, "departed": GONE}),
    "POST /clients/{id}/reveal": (_call("POST", "/clients/C02/reveal", lambda _: {
        "field": "id_number", "reason": "complaint_investigation"}),
        {"nb_head": NOT_CLIENT, "agent": NOT_CLIENT, "departed": GONE}),
    "POST /processes/{key}/instances (for the client)": (_call("POST", "/processes/callback/instances", lambda _: {
        "data": {"callback_type": "periodic", "client_id": "C02"}}), {"nb_head": NOT_CLIENT, "departed": GONE}),
    "POST /messages (a start for the client)": (_call("POST", "/messages", lambda s: {
        "name": "account_opened", "payload": {"client_id": "C02", "opened_at": s["today"]}}),
        {"nb_head": NOT_CLIENT, "departed": GONE}),
    "GET /service-groups/{key}": (_call("GET", "/service-groups/HZ01-G1"),
                                  {"nb_head": (404, "service_group_not_found"),
                                   "agent": (404, "service_group_not_found"), "departed": GONE}),
    "POST /staff/{username}/departure": (_call("POST", "/staff/s104/departure", lambda s: {"departed_on": s["today"]}),
                                         {"nb_head": FORBIDDEN, "agent": FORBIDDEN, "departed": GONE}),
    "GET /figures/complaints (HZ01)": (_call("GET", "/figures/complaints?branch=HZ01"),
                                       {"nb_head": FORBIDDEN, "agent": FORBIDDEN, "departed": GONE}),
    "POST /deployments?check=true": (_deploy_check, {"nb_head": FORBIDDEN, "subject": FORBIDDEN, "agent": FORBIDDEN,
                                                     "departed": GONE}),
}


def _state(db, instance_id: int) -> tuple[Any, ...]:
    """What any refused request could have changed."""
    with db.transaction() as s:
        instance = s.get(ProcessInstance, instance_id)
        assert instance is not None
        return (instance.status, instance.audit_seq, instance.state,
                s.execute(select(func.count()).select_from(AuditEvent)).scalar_one(),
                s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one(),
                sorted(s.execute(select(Task.id, Task.status, Task.assignee)).all()),
                sorted(s.execute(select(Timer.id, Timer.due_at)).all()))


@pytest.mark.parametrize(("endpoint", "persona"),
                         [(e, p) for e, (_, expected) in ENDPOINTS.items() for p in expected])
def test_each_endpoint_refuses_each_outsider_with_the_exact_answer(client, db, scene, endpoint, persona):
    request, expected = ENDPOINTS[endpoint]
    before = _state(db, scene["instance"])
    status, code = expected[persona]
    assert_problem(request(client, scene, _headers(scene, persona)), status, code)
    assert _state(db, scene["instance"]) == before


@pytest.mark.parametrize("persona", ["nb_head", "subject", "agent"])
def test_a_bulk_claim_reports_the_case_step_as_not_found_to_each_outsider(client, db, scene, persona):
    before = _state(db, scene["instance"])
    answer = client.post(f"{API}/tasks/claim", json={"task_ids": [scene["investigate"]]},
                         headers=_headers(scene, persona))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    (result,) = answer.json["results"]
    assert (result["claimed"], result["status"], result["code"]) == (False, 404, "task_not_found")
    assert _state(db, scene["instance"]) == before


@pytest.mark.parametrize("persona", ["nb_head", "subject", "agent"])
def test_the_lists_leave_the_case_out_for_each_outsider(client, scene, persona):
    headers = _headers(scene, persona)
    listed = client.get(f"{API}/instances?limit=500", headers=headers)
    assert listed.status_code == 200 and scene["instance"] not in [i["id"] for i in listed.json]
    found = client.get(f"{API}/tasks?business_key={scene['key']}&status=open&status=claimed&status=completed",
                       headers=headers)
    assert found.status_code == 200 and found.json["items"] == [] and found.json["total"] == 0
    timers = client.get(f"{API}/timers", headers=headers)
    if persona == "agent":
        assert_problem(timers, 403, "forbidden")
    else:
        assert timers.status_code == 200 and scene["instance"] not in [t["instance_id"] for t in timers.json]


def test_the_departed_user_is_refused_on_the_lists_too(client, scene):
    for path in ("/instances", "/tasks", "/timers", "/clients"):
        assert_problem(client.get(f"{API}{path}", headers=_headers(scene, "departed")), 401, "unauthenticated")


def test_those_the_case_is_for_are_answered(client, scene):
    """The same requests are answered for whom they are meant: the refusals above are the
    outsiders', not ids that do not exist."""
    control, hq = _headers(scene, "control"), _headers(scene, "hq")  # HZ01's 客服总监 (C6 candidate); HQ supervisor
    for path in ("/instances/{instance}", "/instances/{instance}/history", "/tasks/{investigate}", "/clients/C02"):
        response = client.get(API + path.format(**scene), headers=control)
        assert response.status_code == 200, (path, response.get_data(as_text=True))
    assert client.get(f"{API}/tasks/{scene['register']}", headers=hq).status_code == 200
    assert scene["instance"] in [t["instance_id"] for t in client.get(f"{API}/timers", headers=hq).json]
    moved = client.post(f"{API}/timers/{scene['timer']}/reschedule", json={"due_at": scene["due"]}, headers=hq)
    assert moved.status_code == 200, moved.get_data(as_text=True)


# -- the case-wide recused supervisor and their own failed case -----------------------------------
@pytest.fixture
def subjects_cases(db, rt, client, demo_loaded) -> dict[str, Any]:
    """Two probe cases of HZ01 clients in which 黄建华 (s101), HZ01's head and a supervisor,
    holds a step and is the subject a step recuses case-wide: one failed, one running."""
    probe.deploy(db, rt)
    handler = Actor(username="handler", groups=frozenset({probe.HANDLERS}))
    failed = probe.start(db, rt, "P-OWN-F", "C01", holder="s101", subject="s101")
    probe.fail(db, rt, failed, handler)
    running = probe.start(db, rt, "P-OWN-R", "C06", holder="s101", subject="s101")
    with db.transaction() as s:
        token = identity.issue_token(s, username="s101", now=rt.now())
    return {"failed": failed, "running": running, "headers": {"Authorization": f"Bearer {token}"}}


def test_a_recused_supervisor_cannot_correct_the_data_of_the_failed_case_naming_them(client, db, subjects_cases):
    before = _state(db, subjects_cases["failed"])
    response = client.patch(f"{API}/instances/{subjects_cases['failed']}/data", headers=subjects_cases["headers"],
                            json={"set": {"amount": 1}, "reason": "补录金额"})
    assert_problem(response, 404, "instance_not_found")
    assert _state(db, subjects_cases["failed"]) == before


def test_a_recused_supervisor_cannot_message_the_case_naming_them(client, db, subjects_cases):
    before = _state(db, subjects_cases["running"])
    response = client.post(f"{API}/messages", headers=subjects_cases["headers"],
                           json={"name": probe.MESSAGE, "correlation_key": "P-OWN-R", "payload": {}})
    assert_problem(response, 404, "message_not_correlated")
    assert _state(db, subjects_cases["running"]) == before
