"""What starts or moves a callback from outside (brief §2.3 "Callback types and triggers",
§6.3 "Staff departure"): the message starts "account opened", "high-risk permission
opened" and "anomaly detected"; "client calls back" during the wait between call attempts;
and a staff member's departure, which starts a departed_staff callback for every client of
their service group. Demo registry (brief §4); time moves with time-machine."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from click.testing import CliRunner
from lxml import etree
from sqlalchemy import func, select

from api import cli
from engine.access import identity
from engine.access.identity import Actor
from engine.brokerage import departures, registry
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.errors import (
    AuthenticationFailed,
    InvalidInput,
    MessageNotCorrelated,
    PermissionDenied,
    StaffAlreadyDeparted,
)
from engine.models import (
    AuditEvent,
    Client,
    Group,
    GroupMember,
    MessageSubscription,
    ProcessInstance,
    ProcessVersion,
    SlaPolicy,
    StaffProfile,
    Task,
    Timer,
    User,
)
from engine.process import instances, messages, tasks
from engine.timers import firing
from tests.support.api import API, assert_problem
from tests.support.cli import AUDIT_KEY

AGENT = "s003"
NO_ANSWER = {"attempt_at": "2025-06-16T10:05:00+08:00", "dialled_number_masked": "177****5089",
             "result": "no_answer"}
OPENING_SYSTEM = Actor.system("account_opening")
BPMN = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
        "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
        "dc": "http://www.omg.org/spec/DD/20100524/DC", "di": "http://www.omg.org/spec/DD/20100524/DI"}


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


@pytest.fixture
def callback(demo_loaded) -> None:
    """Demo people, groups and clients; workflows/ deployed with its SLA policies."""


def _actor(db, username: str) -> Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


def _send(db, rt, name: str, payload: dict[str, Any], key: str | None = None) -> ProcessInstance:
    with db.transaction() as s:
        return messages.correlate(s, rt, name=name, correlation_key=key, actor=OPENING_SYSTEM, payload=payload)


def _open_tasks(db, key: str, element: str) -> list[Task]:
    with db.transaction() as s:
        return list(s.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                                 Task.status.in_(("open", "claimed")))).scalars())


def _data(db, rt, instance_id: int) -> dict[str, Any]:
    with db.transaction() as s:
        return instances.data_of(s, rt, s.get(ProcessInstance, instance_id))


def _complete(db, rt, task: Task, username: str, data: dict[str, Any]) -> None:
    actor = _actor(db, username)
    with db.transaction() as s:
        tasks.complete(s, rt, task_id=task.id, actor=actor, data=data)


def _policy_key(db, task: Task) -> str:
    with db.transaction() as s:
        return s.get(SlaPolicy, task.sla_policy_id).key


def _kinds(db, instance_id: int) -> list[str]:
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent.kind).where(AuditEvent.stream == f"instance:{instance_id}")
                              .order_by(AuditEvent.seq)).scalars())


# -- message starts --------------------------------------------------------------------------
@pytest.mark.sqlite
@pytest.mark.parametrize(("message", "payload", "callback_type", "at", "due"), [
    # 1 calendar month, clamped to February's end (a 30-day count would say 03-02).
    ("account_opened", {"client_id": "C08", "opened_at": "2025-01-31"}, "new_account",
     sh(2025, 1, 31, 10), sh(2025, 2, 28, 10)),
    # 2 trading days: the 调休 make-up Sunday 04-27 is a working day but the exchanges are shut.
    ("high_risk_permission_opened", {"client_id": "C06", "permission": "创业板"}, "risk_disclosure",
     sh(2025, 4, 25, 10), sh(2025, 4, 29, 10)),
    # 1 working day: that same make-up Sunday counts.
    ("anomaly_detected", {"client_id": "C03", "anomaly_kind": "联系方式变更后大额转出"}, "anomaly",
     sh(2025, 4, 25, 10), sh(2025, 4, 27, 10)),
])
def test_each_message_start_opens_a_numbered_callback_of_its_type_due_on_its_calendar(
        db, rt, callback, message, payload, callback_type, at, due):
    with time_machine.travel(at, tick=False):
        instance = _send(db, rt, message, payload)
    assert instance.status == "running" and instance.business_key == f"CB-{at:%Y%m%d}-0001"
    [attempt] = _open_tasks(db, instance.business_key, "call_attempt")
    assert attempt.candidate_groups == ["call_center_agent"]
    assert attempt.due_at == due and attempt.due_source == "policy" and not attempt.calendar_incomplete
    assert _policy_key(db, attempt) == f"callback.{callback_type}.deadline"
    data = _data(db, rt, instance.id)
    assert data["callback_type"] == callback_type and data["attempt_no"] == 1
    with db.transaction() as s:
        client = s.get(Client, payload["client_id"])
        # Branch and service group come from the client registry, not from the message.
        assert (instance.branch_code, data["service_group"]) == (client.branch_code, client.service_group_key)
    assert _kinds(db, instance.id)[:2] == ["instance.started", "message.received"]


@pytest.mark.sqlite
def test_the_permission_opened_is_kept_for_the_questionnaire(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False):
        instance = _send(db, rt, "high_risk_permission_opened", {"client_id": "C06", "permission": "两融"})
    assert _data(db, rt, instance.id)["product_or_permission"] == "两融"


@pytest.mark.sqlite
@pytest.mark.parametrize("payload", [{"client_id": "C06", "permission": "美股"}, {"client_id": "C06"}])
def test_a_permission_outside_the_briefs_list_fails_the_case_naming_the_reason(db, rt, callback, payload):
    with time_machine.travel(sh(2025, 6, 12, 10), tick=False):
        instance = _send(db, rt, "high_risk_permission_opened", payload)
    assert instance.status == "failed"
    assert "set_risk_disclosure" in instance.error and "permission must be one of 创业板" in instance.error
    assert _open_tasks(db, instance.business_key, "call_attempt") == []


@pytest.mark.sqlite
def test_a_message_start_through_the_api_cannot_change_the_type_the_diagram_sets(db, rt, callback, client):
    with db.transaction() as s:
        token = identity.issue_token(s, username="admin", now=rt.now())
    with time_machine.travel(sh(2025, 6, 3, 10), tick=False):
        response = client.post(f"{API}/messages", headers={"Authorization": f"Bearer {token}"},
                               json={"name": "account_opened", "payload": {"client_id": "C08",
                                                                          "callback_type": "periodic"}})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["business_key"] == "CB-20250603-0001" and body["facts"]["callback_type"] == "new_account"
    [attempt] = _open_tasks(db, body["business_key"], "call_attempt")
    assert attempt.due_at == sh(2025, 7, 3, 10)  # brief §4.5: CB-20250603-0031 opened 06-03, due 07-03


# -- client calls back -------------------------------------------------------------------------
def _retry_timers(db, instance_id: int) -> list[Timer]:
    with db.transaction() as s:
        return list(s.execute(select(Timer).where(Timer.instance_id == instance_id,
                                                  Timer.element_id == "retry_wait").order_by(Timer.id)).scalars())


@pytest.mark.sqlite
def test_a_client_calling_back_ends_the_wait_and_offers_the_next_attempt_at_once(db, rt, callback):
    start = sh(2025, 6, 16, 10)
    with time_machine.travel(start, tick=False) as clock:
        instance = _send(db, rt, "account_opened", {"client_id": "C08"})
        key = instance.business_key
        [first] = _open_tasks(db, key, "call_attempt")
        _complete(db, rt, first, AGENT, NO_ANSWER)
        [timer] = _retry_timers(db, instance.id)
        assert timer.status == "waiting" and timer.due_at == start + timedelta(hours=4)
        assert _open_tasks(db, key, "call_attempt") == []

        returned = _send(db, rt, "client_called_back", {"inbound_number_masked": "177****5089"}, key=key)

        assert returned.id == instance.id and rt.now() == start  # the clock never moved
        [second] = _open_tasks(db, key, "call_attempt")
        assert second.id != first.id and second.candidate_groups == ["call_center_agent"]
        assert [t.status for t in _retry_timers(db, instance.id)] == ["cancelled"]
        with db.transaction() as s:
            # The call back is no longer awaited; the new call attempt awaits only its own
            # messages (a do-not-call request, a fraud report).
            assert sorted(s.execute(select(MessageSubscription.message_name)
                                    .where(MessageSubscription.instance_id == instance.id)).scalars()) == [
                "client_do_not_call", "fraud_reported"]
        data = _data(db, rt, instance.id)
        assert data["attempt_no"] == 2 and data["inbound_number_masked"] == "177****5089"
        assert "message.received" in _kinds(db, instance.id)
        # The cancelled wait never fires: at the old retry time nothing happens.
        clock.move_to(start + timedelta(hours=4, seconds=1))
        assert firing.fire_due(db, rt) == 0
        assert [t.id for t in _open_tasks(db, key, "call_attempt")] == [second.id]


@pytest.mark.sqlite
def test_an_inbound_call_taken_by_an_agent_goes_straight_to_identity_verification_with_that_agent(
        db, rt, callback):
    # Brief §2.3: the client's call interrupts the attempt loop and jumps to K4 (inbound).
    from tests.brokerage.test_callback import IDENTITY_OK

    start = sh(2025, 6, 16, 10)
    with time_machine.travel(start, tick=False):
        instance = _send(db, rt, "account_opened", {"client_id": "C08"})
        key = instance.business_key
        [first] = _open_tasks(db, key, "call_attempt")
        _complete(db, rt, first, AGENT, NO_ANSWER)
        before = _data(db, rt, instance.id)
        # The telephony system says who answered; it cannot name the caller, skip QA or move the case.
        _send(db, rt, "client_called_back", {"inbound_number_masked": "177****5089", "answered_by": "s004",
                                             "caller": "s999", "qa_sampled": False, "client_id": "C01"}, key=key)
        assert _open_tasks(db, key, "call_attempt") == []  # no dialling out: the client is on the line
        [verify] = _open_tasks(db, key, "verify_identity")
        assert (verify.assignee, verify.status) == ("s004", "claimed")
        data = _data(db, rt, instance.id)
        assert (data["caller"], data["inbound"], data["answered_by"], data["attempt_no"]) == ("s004", True, None, 1)
        assert (data["client_id"], data["qa_sampled"]) == ("C08", before["qa_sampled"])
        with db.transaction() as s:
            events = s.execute(select(AuditEvent).where(AuditEvent.instance_id == instance.id,
                                                        AuditEvent.kind == "message.received")).scalars().all()
        [received] = [e for e in events if e.data["message"] == "client_called_back"]
        assert received.data["dropped"] == ["caller", "client_id", "qa_sampled"]
        _complete(db, rt, verify, "s004", IDENTITY_OK)
        [questionnaire] = _open_tasks(db, key, "questionnaire")
        assert questionnaire.assignee == "s004"  # the same call goes on with the same agent


@pytest.mark.sqlite
def test_a_call_back_while_no_wait_is_running_changes_nothing(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance = _send(db, rt, "account_opened", {"client_id": "C08"})
        with pytest.raises(MessageNotCorrelated):
            _send(db, rt, "client_called_back", {}, key=instance.business_key)
        assert len(_open_tasks(db, instance.business_key, "call_attempt")) == 1
        assert _data(db, rt, instance.id)["attempt_no"] == 1


@pytest.mark.sqlite
def test_without_a_call_back_the_wait_still_ends_by_its_timer(db, rt, callback):
    start = sh(2025, 6, 16, 10)
    with time_machine.travel(start, tick=False) as clock:
        instance = _send(db, rt, "account_opened", {"client_id": "C08"})
        [first] = _open_tasks(db, instance.business_key, "call_attempt")
        _complete(db, rt, first, AGENT, NO_ANSWER)
        clock.move_to(start + timedelta(hours=4, seconds=1))
        assert firing.fire_due(db, rt) == 1
    assert [t.status for t in _retry_timers(db, instance.id)] == ["fired"]
    assert len(_open_tasks(db, instance.business_key, "call_attempt")) == 1
    with db.transaction() as s:  # the call back is no longer awaited (the new attempt awaits only its own messages)
        assert s.execute(select(MessageSubscription).where(MessageSubscription.instance_id == instance.id,
                                                           MessageSubscription.message_name == "client_called_back")
                         ).first() is None


# -- staff departure -----------------------------------------------------------------------------
def _depart(db, rt, username: str, by: str, on: date) -> departures.Departure:
    actor = _actor(db, by)
    with db.transaction() as s:
        return departures.staff_departed(s, rt, username=username, departed_on=on, actor=actor, now=rt.now())


def _staff(db, username: str) -> tuple[bool, str | None, set[str]]:
    """Active, the service group on the staff row, the service groups of the user's memberships."""
    with db.transaction() as s:
        user, profile = registry.get_staff(s, username)
        groups = set(s.execute(select(Group.key).join(GroupMember, GroupMember.group_id == Group.id)
                               .where(GroupMember.user_id == user.id, Group.kind == "service_group")).scalars())
        return user.active, profile.service_group_key, groups


def _clients_of(db, group: str) -> list[str]:
    with db.transaction() as s:
        return list(s.execute(select(Client.client_id).where(Client.service_group_key == group)
                              .order_by(Client.client_id)).scalars())


@pytest.mark.sqlite
def test_a_departure_starts_one_callback_per_client_of_the_group_due_in_ten_working_days(db, rt, callback):
    # 钱磊, 杜娟, 沈洁 serve C01 and C02 (brief §4.3); 杜娟 leaves on the Friday before National Day.
    assert _staff(db, "s107") == (True, "HZ01-G1", {"HZ01-G1"})
    with time_machine.travel(sh(2025, 9, 26, 10), tick=False):
        result = _depart(db, rt, "s107", by="s101", on=date(2025, 9, 26))
    assert result.service_group == "HZ01-G1" and result.groups_needing_replacement == []
    assert [(c.business_key, c.client_id) for c in result.callbacks] == [
        ("CB-20250926-0001", "C01"), ("CB-20250926-0002", "C02")]
    for callback_instance in result.callbacks:
        assert callback_instance.status == "running" and callback_instance.started_by == "s101"
        data = _data(db, rt, callback_instance.id)
        assert (data["callback_type"], data["departed_staff"], data["service_group"]) == \
            ("departed_staff", "s107", "HZ01-G1")
        [attempt] = _open_tasks(db, callback_instance.business_key, "call_attempt")
        # 10 WD: 09-28 (make-up Sunday) … 10-16, skipping the 10-01..10-08 holiday, counting
        # the make-up Saturday 10-11.
        assert attempt.due_at == sh(2025, 10, 16, 10) and _policy_key(db, attempt) == "callback.departed_staff.deadline"
        assert attempt.candidate_groups == ["call_center_agent"]
    # The person is gone; the clients are not: they stay with the group.
    assert _staff(db, "s107") == (False, None, set())
    assert _clients_of(db, "HZ01-G1") == ["C01", "C02"]
    with db.transaction() as s:
        user = identity.get_user(s, "s107")
        token = identity.issue_token(s, username="s107", now=rt.now())
        with pytest.raises(AuthenticationFailed):
            identity.authenticate(s, token, now=rt.now())
        assert not user.active
        events = {e.kind: e for e in s.execute(select(AuditEvent).where(AuditEvent.stream == "system")).scalars()}
    departed = events["staff.departed"]
    assert departed.actor == "s101" and departed.data["callbacks"] == ["CB-20250926-0001", "CB-20250926-0002"]
    assert departed.data["departed_on"] == "2025-09-26" and departed.data["group_needs_replacement"] is None
    assert events["service_group.members"].data["changes"]["members"] == [["s105", "s106", "s107"], ["s105", "s106"]]


@pytest.mark.sqlite
def test_a_group_left_too_small_is_reported_and_the_departure_still_recorded(db, rt, callback):
    # 任静 is NB01-G1's only middle/back-office member; 姚斌 stays alone.
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        result = _depart(db, rt, "s204", by="s201", on=date(2025, 6, 13))
    [shortfall] = result.groups_needing_replacement
    assert (shortfall.key, shortfall.members, shortfall.problems) == ("NB01-G1", ["s205"], ["size", "back_office"])
    assert "NB01-G1 needs a replacement" in shortfall.message
    assert sorted(c.client_id for c in result.callbacks) == ["C03", "C04"]
    assert _staff(db, "s204") == (False, None, set())
    assert _staff(db, "s205") == (True, "NB01-G1", {"NB01-G1"})
    assert _clients_of(db, "NB01-G1") == ["C03", "C04"]


@pytest.mark.sqlite
def test_the_departed_persons_claimed_tasks_go_back_to_their_group(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        with db.transaction() as s:
            instance = instances.start(s, rt, process_key="callback", business_key="CB-ALT", actor=OPENING_SYSTEM,
                                       client_id="C01", data={"callback_type": "periodic", "qa_sample_rate": 0})
        [attempt] = _open_tasks(db, "CB-ALT", "call_attempt")
        _complete(db, rt, attempt, AGENT, {**NO_ANSWER, "result": "invalid_number"})
        [alt] = _open_tasks(db, "CB-ALT", "alt_channel")
        with db.transaction() as s:
            tasks.claim(s, rt, task_id=alt.id, actor=_actor(db, "s107"))
        result = _depart(db, rt, "s107", by="admin", on=date(2025, 6, 16))
    assert result.released_tasks == 1
    [alt] = _open_tasks(db, "CB-ALT", "alt_channel")
    assert (alt.status, alt.assignee, alt.candidate_groups) == ("open", None, ["HZ01-G1"])
    assert _kinds(db, instance.id)[-1] == "task.unclaimed"


@pytest.mark.sqlite
@pytest.mark.parametrize("by", ["s201", "s106", "s002", "s103"])
def test_only_an_admin_or_the_branch_head_of_the_persons_branch_records_a_departure(db, rt, callback, by):
    # Another branch's head, a teammate, the call-centre supervisor, the branch's 客服总监.
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False), pytest.raises(PermissionDenied):
        _depart(db, rt, "s107", by=by, on=date(2025, 6, 16))
    assert _staff(db, "s107") == (True, "HZ01-G1", {"HZ01-G1"})
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one() == 0


@pytest.mark.sqlite
def test_a_departure_is_recorded_once_and_never_ahead_of_time(db, rt, callback):
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        with pytest.raises(InvalidInput, match="future"):
            _depart(db, rt, "s108", by="s101", on=date(2025, 6, 17))
        assert _staff(db, "s108") == (True, "HZ01-G2", {"HZ01-G2"})
        first = _depart(db, rt, "s108", by="s101", on=date(2025, 6, 16))
        with pytest.raises(StaffAlreadyDeparted):
            _depart(db, rt, "s108", by="admin", on=date(2025, 6, 16))
    assert [c.client_id for c in first.callbacks] == ["C06"]
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(ProcessInstance)).scalar_one() == 1


def test_a_departure_through_the_api(db, rt, callback, client):
    with db.transaction() as s:
        headers = {u: {"Authorization": f"Bearer {identity.issue_token(s, username=u, now=rt.now())}"}
                   for u in ("s101", "s201")}
    url = f"{API}/staff/s108/departure"
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        assert_problem(client.post(url, json={"departed_on": "2025-06-16"}), 401, "unauthenticated")
        assert_problem(client.post(url, json={"departed_on": "2025-06-16"}, headers=headers["s201"]), 403, "forbidden")
        assert_problem(client.post(url, json={}, headers=headers["s101"]), 422, "invalid_request")
        assert_problem(client.post(f"{API}/staff/nobody/departure", json={"departed_on": "2025-06-16"},
                                   headers=headers["s101"]), 404, "user_not_found")
        response = client.post(url, json={"departed_on": "2025-06-16"}, headers=headers["s101"])
        assert response.status_code == 201, response.get_data(as_text=True)
        again = client.post(url, json={"departed_on": "2025-06-16"}, headers=headers["s101"])
    body = response.get_json()
    assert (body["username"], body["departed_on"], body["service_group"]) == ("s108", "2025-06-16", "HZ01-G2")
    assert [(c["business_key"], c["client_id"], c["facts"]["callback_type"]) for c in body["callbacks"]] == [
        ("CB-20250616-0001", "C06", "departed_staff")]
    # 魏强 leaves 蒋芳 alone: still a back-office member, but one person is not a group.
    assert body["groups_needing_replacement"] == [{
        "key": "HZ01-G2", "members": ["s104"], "problems": ["size"],
        "message": "service group HZ01-G2 needs a replacement: 1 member(s) left, needs 2–3"}]
    assert body["released_tasks"] == 0
    assert_problem(again, 409, "staff_already_departed")


def test_a_departure_from_the_cli(db, rt, callback, database_url):
    environment = dict.fromkeys(("BPM_REDIS_URL", "BPM_SECRET_KEY", "BPM_ALLOW_SCRIPT_TASKS",
                                 "BPM_EXPRESSION_TIMEOUT_MS", "BPM_SERVICE_MODULES", "BPM_TIMER_CATCH_UP"))
    environment["BPM_DATABASE_URL"] = database_url
    environment["BPM_AUDIT_KEY"] = AUDIT_KEY  # the departure is audited, keyed on PostgreSQL
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        missing = CliRunner().invoke(cli.main, ["registry", "staff-departed", "s303"], env=environment)
        result = CliRunner().invoke(cli.main, ["registry", "staff-departed", "s303", "--on", "2025-06-16"],
                                    env=environment)
    assert missing.exit_code == 2 and "--on" in missing.output
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "CB-20250616-0001 departed_staff callback for C05 (running)",
        "CB-20250616-0002 departed_staff callback for C07 (running)",
        "s303 departed on 2025-06-16: deactivated, left SX01-G1; 2 callback(s) started",
    ]
    assert _staff(db, "s303") == (False, None, set())
    assert _clients_of(db, "SX01-G1") == ["C05", "C07"]
    with db.transaction() as s:
        assert s.execute(select(AuditEvent.actor).where(AuditEvent.kind == "staff.departed")).scalar_one() == "cli"
        assert s.execute(select(func.count()).select_from(StaffProfile)
                         .where(StaffProfile.service_group_key == "SX01-G1")).scalar_one() == 2
        assert not s.execute(select(User.active).where(User.username == "s303")).scalar_one()


# -- the diagram ---------------------------------------------------------------------------------
def _box(shape: Any) -> tuple[float, float, float, float]:
    b = shape.find("dc:Bounds", BPMN)
    x, y = float(b.get("x")), float(b.get("y"))
    return x, y, x + float(b.get("width")), y + float(b.get("height"))


def _inside(inner: tuple[float, ...], outer: tuple[float, ...]) -> bool:
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def _touches(point: tuple[float, float], box: tuple[float, ...], slack: float = 2.0) -> bool:
    return box[0] - slack <= point[0] <= box[2] + slack and box[1] - slack <= point[1] <= box[3] + slack


def test_the_diagram_declares_the_messages_and_draws_every_node_in_its_lane(db, rt, callback):
    with db.transaction() as s:
        starts = s.execute(select(ProcessVersion.start_messages).where(ProcessVersion.process_key == "callback")
                           ).scalar_one()
    assert sorted(starts) == ["account_opened", "anomaly_detected", "high_risk_permission_opened",
                              "post_closure_callback_requested"]
    tree = etree.parse(str(PROJECT_ROOT / "workflows" / "callback.bpmn"))
    process = tree.find("bpmn:process", BPMN)
    shapes = {el.get("bpmnElement"): _box(el) for el in tree.iterfind(".//bpmndi:BPMNShape", BPMN)}
    lanes = {lane.get("id"): {ref.text for ref in lane.iterfind("bpmn:flowNodeRef", BPMN)}
             for lane in process.iterfind(".//bpmn:lane", BPMN)}
    nodes = {el.get("id"): el for el in process
             if isinstance(el.tag, str) and el.tag.endswith(("Event", "Task", "Gateway"))}
    assert {"start_account_opened", "start_high_risk_permission", "start_anomaly", "set_new_account",
            "set_risk_disclosure", "set_anomaly", "await_retry", "retry_wait"} <= set(nodes)
    for node_id, node in nodes.items():
        [lane] = [lane for lane, refs in lanes.items() if node_id in refs]
        if node.tag.endswith("boundaryEvent"):  # drawn on its activity's border
            host = shapes[node.get("attachedToRef")]
            x0, y0, x1, y1 = shapes[node_id]
            assert _touches(((x0 + x1) / 2, (y0 + y1) / 2), host, slack=0), f"{node_id} is off its activity"
        assert _inside(shapes[node_id], shapes[lane]), f"{node_id} is drawn outside lane {lane}"
    edges = {el.get("bpmnElement"): [(float(p.get("x")), float(p.get("y"))) for p in el.findall("di:waypoint", BPMN)]
             for el in tree.iterfind(".//bpmndi:BPMNEdge", BPMN)}
    for flow in process.iterfind("bpmn:sequenceFlow", BPMN):
        points = edges[flow.get("id")]
        assert _touches(points[0], shapes[flow.get("sourceRef")]), f"{flow.get('id')} starts off its source"
        assert _touches(points[-1], shapes[flow.get("targetRef")]), f"{flow.get('id')} ends off its target"


@pytest.mark.sqlite
def test_a_new_account_in_the_branch_pool_is_served_by_the_branchs_account_managers(db, rt, callback):
    # Brief §4.4: C09 冯志强 (SX01) has no service group, like most freshly opened accounts.
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False):
        instance = _send(db, rt, "account_opened", {"client_id": "C09", "opened_at": "2025-06-16"})
    assert instance.status == "running", instance.error
    data = _data(db, rt, instance.id)
    assert (data["service_group"], data["branch_pool"]) == ("SX01:account_manager", True)
    [attempt] = _open_tasks(db, instance.business_key, "call_attempt")
    assert attempt.due_at == sh(2025, 7, 16, 10)
