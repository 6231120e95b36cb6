"""SLA policies, task due dates and SLA states, business calendars, timers and schedules
through the HTTP API. Time moves with time-machine (``tick=False``); nothing sleeps.

Personas (conftest): li and zhao (clerks, HZ01), owner (process_owner), boss (supervisor).
Login tokens live 12 hours, so tests that move the clock log in again at the new time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import select

from engine.access import identity
from engine.calendars import SHANGHAI
from engine.models import AuditEvent, Notification, ProcessInstance, Timer
from engine.timers import firing
from tests.support.api import API, assert_problem, command, login, start, task_of

MONDAY_9 = datetime(2026, 3, 2, 9, tzinfo=SHANGHAI)
POLICY = {
    "name": "登记 2 个工作日", "position": 10, "process_key": "review", "element_id": "register",
    "target_amount": "2", "target_unit": "WD",
    "milestones": [{"at": 0.5, "action": "notify", "to": "assignee"},
                   {"at": 1.0, "action": "escalate", "to": "managers"}],
}
REGISTER = {"amount": 1200, "summary": "开户资料"}


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def at(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def put_policy(client, headers, key, **changes):
    return client.put(f"{API}/sla/policies/{key}", json={**POLICY, **changes}, headers=headers)


def audit_kinds(db, kind_prefix):
    with db.transaction() as s:
        return list(s.execute(select(AuditEvent.kind).where(AuditEvent.kind.like(f"{kind_prefix}%"))
                              .order_by(AuditEvent.id)).scalars())


# -- SLA policies ---------------------------------------------------------------------------
@pytest.mark.sqlite
def test_only_a_process_owner_may_save_a_policy_and_bad_policies_are_refused(client, auth, review):
    assert_problem(put_policy(client, auth("li"), "review.register"), 403, "forbidden")
    assert_problem(put_policy(client, auth("boss"), "review.register"), 403, "forbidden")

    owner = auth("owner")
    bad_unit = assert_problem(put_policy(client, owner, "p", target_unit="weeks"), 422, "invalid_request")
    assert [e["field"] for e in bad_unit["errors"]] == ["target_unit"]
    bad_action = assert_problem(put_policy(client, owner, "p", milestones=[{"at": 0.5, "action": "sms"}]),
                                422, "invalid_request")
    assert [e["field"] for e in bad_action["errors"]] == ["milestones/0/action"]
    bad_fraction = put_policy(client, owner, "p", milestones=[{"at": 0, "action": "notify"}])
    assert_problem(bad_fraction, 422, "invalid_request")
    # Well-formed but meaningless: a reassignment to nobody, business hours that do not exist.
    assert_problem(put_policy(client, owner, "p", milestones=[{"at": 1.0, "action": "reassign"}]),
                   400, "invalid_input")
    assert_problem(put_policy(client, owner, "p", business_hours="night-shift"), 400, "invalid_input")
    assert_problem(put_policy(client, owner, "p", target_amount="0"), 400, "invalid_input")

    listed = client.get(f"{API}/sla/policies", headers=auth("li"))
    assert listed.status_code == 200 and listed.json == []


@pytest.mark.sqlite
def test_saving_a_policy_recomputes_the_open_tasks_it_matches_and_says_how_many(client, auth, review):
    with time_machine.travel(MONDAY_9, tick=False):
        owner, li = login(client, "owner"), login(client, "li")
        first = put_policy(client, owner, "review.register")
        assert first.status_code == 200, first.get_data(as_text=True)
        assert first.json["recomputed_tasks"] == 0  # no open task yet
        policy = first.json["policy"]
        assert policy["key"] == "review.register" and policy["target_unit"] == "WD"
        assert policy["updated_by"] == "owner" and [m["at"] for m in policy["milestones"]] == [0.5, 1.0]

        start(client, li, "R-1")
        start(client, li, "R-2")
        assert at(task_of(client, li, "R-1")["due_at"]) == sh(2026, 3, 4, 9)  # 2 WD from Monday 09:00

        longer = put_policy(client, owner, "review.register", target_amount="5")
        assert longer.json["recomputed_tasks"] == 2
        for key in ("R-1", "R-2"):
            task = task_of(client, li, key)
            assert at(task["due_at"]) == sh(2026, 3, 9, 9) and task["due_source"] == "policy"
        assert put_policy(client, owner, "review.register", target_amount="5").json["recomputed_tasks"] == 0
        elsewhere = put_policy(client, owner, "other.process", process_key="account_opening", position=1,
                               target_amount="1")
        assert elsewhere.json["recomputed_tasks"] == 0
        assert at(task_of(client, li, "R-1")["due_at"]) == sh(2026, 3, 9, 9)
        # A policy placed first that matches takes the tasks over.
        urgent = put_policy(client, owner, "review.urgent", position=1, target_amount="4", target_unit="WH")
        assert urgent.json["recomputed_tasks"] == 2
        assert at(task_of(client, li, "R-2")["due_at"]) == sh(2026, 3, 2, 13)
    assert audit_kinds(client.application.extensions["bpm"].db, "sla.policy_saved") == ["sla.policy_saved"] * 5


@pytest.mark.sqlite
def test_policies_are_listed_in_matching_order(client, auth, review):
    owner = auth("owner")
    for key, position in (("c.last", 30), ("a.first", 10), ("b.middle", 20)):
        assert put_policy(client, owner, key, position=position).status_code == 200
    listed = client.get(f"{API}/sla/policies", headers=auth("li"))
    assert listed.status_code == 200
    assert [(p["key"], p["position"]) for p in listed.json] == [("a.first", 10), ("b.middle", 20), ("c.last", 30)]
    assert_problem(client.get(f"{API}/sla/policies"), 401, "unauthenticated")


# -- due dates and SLA state in the inbox ---------------------------------------------------
@pytest.mark.sqlite
def test_the_inbox_shows_due_date_sla_state_and_seconds_to_breach_as_time_moves(client, review):
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        assert put_policy(client, login(client, "owner"), "review.register").status_code == 200
        li = login(client, "li")
        start(client, li, "R-1")
        own_due = sh(2026, 3, 2, 12)
        start(client, li, "R-OWN", due=own_due)

        task = task_of(client, li, "R-1")
        assert at(task["due_at"]) == sh(2026, 3, 4, 9) and task["due_source"] == "policy"
        assert task["sla_state"] == "on_track" and task["seconds_to_breach"] == 2 * 86400
        assert task["calendar_incomplete"] is False and task["breached_at"] is None
        own = task_of(client, li, "R-OWN")  # the diagram's due date wins over the policy
        assert at(own["due_at"]) == own_due and own["due_source"] == "diagram"
        assert own["seconds_to_breach"] == 3 * 3600

        # At-risk at 80 % of the target in business terms: 1.6 WD = Tuesday 13:48.
        expected = [
            (sh(2026, 3, 3, 13, 47), "on_track", 19 * 3600 + 13 * 60),
            (sh(2026, 3, 3, 13, 48), "at_risk", 19 * 3600 + 12 * 60),
            (sh(2026, 3, 4, 9), "at_risk", 0),  # due < now is a breach; due == now is not yet
            (sh(2026, 3, 4, 9, 0, 1), "breached", -1),
        ]
        for moment, state, seconds in expected:
            clock.move_to(moment)
            task = task_of(client, login(client, "li"), "R-1")
            assert (task["sla_state"], task["seconds_to_breach"]) == (state, seconds), moment
        assert task_of(client, login(client, "li"), "R-OWN")["sla_state"] == "breached"
        overdue = client.get(f"{API}/tasks?overdue=true", headers=login(client, "li")).json
        assert {t["business_key"] for t in overdue["items"]} == {"R-1", "R-OWN"}


@pytest.mark.sqlite
def test_pause_and_resume_are_for_the_assignee_or_a_supervisor_and_move_the_due_date(client, review):
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        assert put_policy(client, login(client, "owner"), "review.register").status_code == 200
        li, zhao = login(client, "li"), login(client, "zhao")
        start(client, li, "R-1")
        task = task_of(client, li, "R-1")
        due = at(task["due_at"])
        assert command(client, li, task["id"], "claim").status_code == 200

        assert_problem(command(client, zhao, task["id"], "pause", {"reason": "x"}), 403, "not_assignee")
        paused = command(client, li, task["id"], "pause", {"reason": "等待客户补充材料"})
        assert paused.status_code == 200, paused.get_data(as_text=True)
        assert paused.json["sla_state"] == "paused" and at(paused.json["sla_paused_at"]) == MONDAY_9
        assert paused.json["seconds_to_breach"] == 2 * 86400
        with client.application.extensions["bpm"].db.transaction() as s:
            held = set(s.execute(select(Timer.status).where(Timer.kind == "sla")).scalars())
        assert held == {"paused"}

        clock.move_to(sh(2026, 3, 4, 12))  # past the original due time: the clock stood still
        task = task_of(client, login(client, "li"), "R-1")
        assert (task["sla_state"], task["seconds_to_breach"]) == ("paused", 2 * 86400)
        assert_problem(command(client, login(client, "zhao"), task["id"], "resume"), 403, "not_assignee")
        resumed = command(client, login(client, "boss"), task["id"], "resume")
        assert resumed.status_code == 200, resumed.get_data(as_text=True)
    paused_for = sh(2026, 3, 4, 12) - MONDAY_9
    assert at(resumed.json["due_at"]) == due + paused_for
    assert resumed.json["sla_state"] == "on_track" and resumed.json["sla_paused_at"] is None
    assert resumed.json["seconds_to_breach"] == 2 * 86400
    kinds = audit_kinds(client.application.extensions["bpm"].db, "sla.")
    assert [k for k in kinds if k != "sla.policy_saved"] == ["sla.paused", "sla.resumed"]


@pytest.mark.sqlite
def test_a_policy_change_while_a_task_is_paused_arms_no_milestone_until_it_resumes(client, db, rt, review):
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        assert put_policy(client, login(client, "owner"), "review.register").status_code == 200
        li = login(client, "li")
        start(client, li, "R-1")
        task = task_of(client, li, "R-1")
        assert command(client, li, task["id"], "claim").status_code == 200
        assert command(client, li, task["id"], "pause", {"reason": "等待客户"}).status_code == 200

        changed = put_policy(client, login(client, "owner"), "review.register", target_amount="3")
        assert changed.json["recomputed_tasks"] == 1
        task = task_of(client, li, "R-1")
        assert at(task["due_at"]) == sh(2026, 3, 5, 9) and task["sla_state"] == "paused"

        clock.move_to(sh(2026, 3, 6, 9))  # past every milestone of the new target: the clock stands still
        assert firing.fire_due(db, rt) == 0
        with db.transaction() as s:
            assert s.execute(select(Notification)).first() is None
        resumed = command(client, login(client, "li"), task["id"], "resume")
        assert resumed.status_code == 200
        # The four paused working days (Monday to Thursday) are excluded: 3 WD from Friday 09:00.
        assert at(resumed.json["due_at"]) == sh(2026, 3, 11, 9)
        assert firing.fire_due(db, rt) == 0  # the milestones moved with the due date
        clock.move_to(sh(2026, 3, 9, 13, 0, 1))  # half of 3 WD (Tuesday 13:00) + the 4 paused working days
        assert firing.fire_due(db, rt) == 1


@pytest.mark.sqlite
def test_a_later_recompute_keeps_the_time_a_task_was_paused(client, review):
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        assert put_policy(client, login(client, "owner"), "review.register").status_code == 200
        li = login(client, "li")
        start(client, li, "R-1")
        task = task_of(client, li, "R-1")
        assert command(client, li, task["id"], "claim").status_code == 200
        assert command(client, li, task["id"], "pause", {"reason": "等待客户"}).status_code == 200
        clock.move_to(sh(2026, 3, 3, 9))
        resumed = command(client, login(client, "li"), task["id"], "resume")
        assert at(resumed.json["due_at"]) == sh(2026, 3, 5, 9)  # moved by the paused day
        # Any later recompute (an unrelated policy saved, a calendar day edited) ...
        unrelated = put_policy(client, login(client, "owner"), "elsewhere", process_key="account_opening", position=1)
        assert unrelated.status_code == 200
        # ... must not take the paused day back.
        assert at(task_of(client, login(client, "li"), "R-1")["due_at"]) == sh(2026, 3, 5, 9)


@pytest.mark.sqlite
def test_a_policy_that_forbids_pausing_refuses_it(client, auth, review):
    assert put_policy(client, auth("owner"), "review.register", pausable=False).status_code == 200
    start(client, auth("li"), "R-1")
    task = task_of(client, auth("li"), "R-1")
    assert_problem(command(client, auth("boss"), task["id"], "pause", {"reason": "客户未回复"}), 400, "invalid_input")
    assert task_of(client, auth("li"), "R-1")["sla_state"] == "on_track"


# -- the business calendar ------------------------------------------------------------------
@pytest.mark.sqlite
def test_calendar_days_show_working_and_trading_days(client, auth, db):
    li = auth("li")
    response = client.get(f"{API}/calendar/days?from=2025-04-26&to=2025-05-06", headers=li)
    assert response.status_code == 200, response.get_data(as_text=True)
    days = {d["day"]: (d["working"], d["trading"]) for d in response.json}
    assert len(days) == 11
    assert days["2025-04-26"] == (False, False)  # Saturday
    assert days["2025-04-27"] == (True, False)  # 调休 make-up Sunday: working, but the exchanges are closed
    assert all(days[f"2025-05-0{d}"] == (False, False) for d in range(1, 6))  # 劳动节
    assert days["2025-05-06"] == (True, True)
    assert {d["source"] for d in response.json} == {"chinese-calendar"}

    assert_problem(client.get(f"{API}/calendar/days?from=2025-05-06&to=2025-04-26", headers=li), 400, "invalid_input")
    assert_problem(client.get(f"{API}/calendar/days?from=2024-01-01&to=2025-06-01", headers=li), 400, "invalid_input")
    assert_problem(client.get(f"{API}/calendar/days?from=2025-04-26", headers=li), 422, "invalid_request")
    assert_problem(client.get(f"{API}/calendar/days?from=2025-04-26&to=soon", headers=li), 422, "invalid_request")


@pytest.mark.sqlite
def test_an_administrator_edits_a_day_and_open_due_dates_follow(client, review):
    with time_machine.travel(MONDAY_9, tick=False):
        owner, li = login(client, "owner"), login(client, "li")
        assert put_policy(client, owner, "review.register").status_code == 200
        start(client, li, "R-1")
        assert at(task_of(client, li, "R-1")["due_at"]) == sh(2026, 3, 4, 9)

        holiday = {"working": False, "name": "临时假日"}
        assert_problem(client.put(f"{API}/calendar/days/2026-03-03", json=holiday, headers=li), 403, "forbidden")
        edited = client.put(f"{API}/calendar/days/2026-03-03", json=holiday, headers=owner)
        assert edited.status_code == 200, edited.get_data(as_text=True)
        assert edited.json["recomputed_tasks"] == 1
        assert at(task_of(client, li, "R-1")["due_at"]) == sh(2026, 3, 5, 9)  # Tuesday no longer counts

        (day,) = client.get(f"{API}/calendar/days?from=2026-03-03&to=2026-03-03", headers=li).json
        assert day == {"day": "2026-03-03", "working": False, "trading": False, "name": "临时假日",
                       "source": "admin", "updated_by": "owner"}

        # Refused: not a date, a trading day that is not a working day, a missing flag.
        assert_problem(client.put(f"{API}/calendar/days/2026-02-30", json=holiday, headers=owner), 400, "invalid_input")
        assert_problem(client.put(f"{API}/calendar/days/tomorrow", json=holiday, headers=owner), 400, "invalid_input")
        trading_holiday = client.put(f"{API}/calendar/days/2026-03-04", json={"working": False, "trading": True},
                                     headers=owner)
        assert_problem(trading_holiday, 400, "invalid_input")
        assert_problem(client.put(f"{API}/calendar/days/2026-03-04", json={"name": "x"}, headers=owner),
                       422, "invalid_request")
        (unchanged,) = client.get(f"{API}/calendar/days?from=2026-03-04&to=2026-03-04", headers=li).json
        assert (unchanged["working"], unchanged["trading"], unchanged["source"]) == (True, True, "chinese-calendar")

        # A 调休 make-up Saturday is a working day but, by default, not a trading day.
        makeup = client.put(f"{API}/calendar/days/2026-03-07", json={"working": True, "name": "调休"}, headers=owner)
        assert makeup.status_code == 200 and makeup.json["recomputed_tasks"] == 0  # the due date is before it
        (saturday,) = client.get(f"{API}/calendar/days?from=2026-03-07&to=2026-03-07", headers=li).json
        assert (saturday["working"], saturday["trading"]) == (True, False)
    assert audit_kinds(client.application.extensions["bpm"].db, "calendar.") == ["calendar.day_set"] * 2


@pytest.mark.sqlite
def test_coverage_shows_the_gap_past_the_known_calendar_until_an_administrator_fills_it(client, review):
    with time_machine.travel(sh(2026, 12, 31, 9), tick=False):
        owner, li = login(client, "owner"), login(client, "li")
        assert put_policy(client, owner, "review.register", target_amount="1").status_code == 200
        start(client, li, "R-NY")
        task = task_of(client, li, "R-NY")
        # 2027 is not known yet: Friday 1 January is guessed to be a working day, and flagged.
        assert at(task["due_at"]) == sh(2027, 1, 1, 9) and task["calendar_incomplete"] is True
        coverage = client.get(f"{API}/calendar/coverage", headers=li)
        assert coverage.status_code == 200
        assert (coverage.json["first"], coverage.json["last"], coverage.json["incomplete_open_tasks"]) == (
            "2004-01-01", "2026-12-31", 1)

        new_year = client.put(f"{API}/calendar/days/2027-01-01", json={"working": False, "name": "元旦"},
                              headers=owner)
        assert new_year.status_code == 200
        assert (new_year.json["last"], new_year.json["recomputed_tasks"], new_year.json["incomplete_open_tasks"]) == (
            "2027-01-01", 1, 1)
        task = task_of(client, li, "R-NY")
        assert at(task["due_at"]) == sh(2027, 1, 4, 9) and task["calendar_incomplete"] is True

        for day, working in (("2027-01-02", False), ("2027-01-03", False), ("2027-01-04", True)):
            response = client.put(f"{API}/calendar/days/{day}", json={"working": working}, headers=owner)
            assert response.status_code == 200, response.get_data(as_text=True)
        assert response.json["incomplete_open_tasks"] == 0
        assert client.get(f"{API}/calendar/coverage", headers=li).json["last"] == "2027-01-04"
        task = task_of(client, li, "R-NY")
        assert at(task["due_at"]) == sh(2027, 1, 4, 9) and task["calendar_incomplete"] is False


# -- timers ---------------------------------------------------------------------------------
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai


def _to_waiting_for_ack(client, li, key="R-1"):
    """Register and approve: the instance waits for the client's acknowledgement with a
    15-day boundary timer (``ack_timeout``)."""
    instance_id = start(client, li, key)["id"]
    task = task_of(client, li, key)
    assert command(client, li, task["id"], "complete", {"data": {"amount": 10, "summary": "小额"}}).status_code == 200
    task = task_of(client, li, key)
    assert command(client, li, task["id"], "complete", {"data": {"approved": True}}).status_code == 200
    return instance_id


@pytest.mark.sqlite
def test_a_supervisor_reschedules_a_timer_and_it_fires_at_the_new_time_not_the_old(client, db, rt, review):
    with time_machine.travel(START, tick=False) as clock:
        li, boss = login(client, "li"), login(client, "boss")
        instance_id = _to_waiting_for_ack(client, li)
        listed = client.get(f"{API}/timers", headers=boss)
        assert listed.status_code == 200
        (timer,) = listed.json
        assert (timer["kind"], timer["element_id"], timer["instance_id"], timer["status"]) == (
            "bpmn", "ack_timeout", instance_id, "waiting")
        assert at(timer["due_at"]) == START + timedelta(days=15)

        later = START + timedelta(days=20)
        url = f"{API}/timers/{timer['id']}/reschedule"
        assert_problem(client.post(url, json={"due_at": later.isoformat()}, headers=li), 403, "forbidden")
        assert_problem(client.post(url, json={"due_at": later.replace(tzinfo=None).isoformat()}, headers=boss),
                       422, "invalid_request")
        assert_problem(client.post(f"{API}/timers/999999/reschedule", json={"due_at": later.isoformat()},
                                   headers=boss), 404, "not_found")
        moved = client.post(url, json={"due_at": later.astimezone(SHANGHAI).isoformat()}, headers=boss)
        assert moved.status_code == 200, moved.get_data(as_text=True)
        assert at(moved.json["due_at"]) == later and moved.json["status"] == "waiting"

        clock.move_to(START + timedelta(days=15, seconds=1))  # the old time: nothing happens
        assert firing.fire_due(db, rt) == 0
        clock.move_to(later)  # due < now strictly
        assert firing.fire_due(db, rt) == 0
        clock.move_to(later + timedelta(seconds=1))
        assert firing.fire_due(db, rt) == 1
        assert firing.fire_due(db, rt) == 0
        boss = login(client, "boss")
        assert client.get(f"{API}/timers", headers=boss).json == []
        fired_again = client.post(url, json={"due_at": (later + timedelta(days=1)).isoformat()}, headers=boss)
        assert_problem(fired_again, 409, "instance_not_running")  # fired, and its instance has ended
    with db.transaction() as s:
        assert s.get(ProcessInstance, instance_id).status == "completed"  # the 15-day expiry path ran
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "timer.rescheduled")).scalars()
        assert event.actor == "boss" and event.instance_id == instance_id
        assert (event.data["timer_id"], event.data["timer_kind"]) == (timer["id"], "bpmn")
        assert datetime.fromisoformat(event.data["from"]) == START + timedelta(days=15)
        assert datetime.fromisoformat(event.data["to"]) == later
        fired = s.execute(select(AuditEvent).where(AuditEvent.kind == "timer.fired")).scalar_one()
        assert fired.occurred_at == later + timedelta(seconds=1)


@pytest.mark.sqlite
def test_the_timer_list_holds_sla_milestones_soonest_first(client, review):
    with time_machine.travel(MONDAY_9, tick=False):
        assert put_policy(client, login(client, "owner"), "review.register").status_code == 200
        start(client, login(client, "li"), "R-1")
        listed = client.get(f"{API}/timers", headers=login(client, "boss"))
    assert [(t["kind"], at(t["due_at"])) for t in listed.json] == [
        ("sla", sh(2026, 3, 3, 9)), ("sla", sh(2026, 3, 4, 9))]
    assert {t["element_id"] for t in listed.json} == {"register"}


# -- schedules ------------------------------------------------------------------------------
QUARTERLY = {"key": "CBQ", "process_key": "review", "rule": "first_working_day_of_quarter", "at_time": "09:00",
             "data": {"priority": 50, "due_at": None}}


@pytest.mark.sqlite
def test_a_process_owner_schedules_a_quarterly_start_that_the_timers_run(client, db, rt, review):
    with time_machine.travel(sh(2026, 3, 15, 12), tick=False) as clock:
        owner, li = login(client, "owner"), login(client, "li")
        assert_problem(client.post(f"{API}/schedules", json=QUARTERLY, headers=li), 403, "forbidden")
        created = client.post(f"{API}/schedules", json=QUARTERLY, headers=owner)
        assert created.status_code == 201, created.get_data(as_text=True)
        assert at(created.json["next_run_at"]) == sh(2026, 4, 1, 9)
        assert (created.json["key"], created.json["catch_up"], created.json["active"]) == ("CBQ", "once", True)
        assert created.json["last_run_at"] is None

        listed = client.get(f"{API}/schedules", headers=li)
        assert listed.status_code == 200 and [s["key"] for s in listed.json] == ["CBQ"]
        (timer,) = client.get(f"{API}/timers", headers=owner).json
        assert (timer["kind"], timer["element_id"], timer["instance_id"]) == ("schedule", "CBQ", None)
        assert at(timer["due_at"]) == sh(2026, 4, 1, 9)

        clock.move_to(sh(2026, 4, 1, 9, 0, 1))
        assert firing.fire_due(db, rt) == 1
        owner = login(client, "owner")
        (schedule,) = client.get(f"{API}/schedules", headers=owner).json
        assert at(schedule["next_run_at"]) == sh(2026, 7, 1, 9)
        assert at(schedule["last_run_at"]) == sh(2026, 4, 1, 9, 0, 1)
        boss = login(client, "boss")
        started = client.get(f"{API}/instances?business_key=CBQ-20260401", headers=boss)
        assert started.status_code == 200 and [i["status"] for i in started.json] == ["running"]

        # A schedule is company business: a branch supervisor neither lists nor moves its timers.
        assert [t for t in client.get(f"{API}/timers", headers=boss).json if t["instance_id"] is None] == []
        assert_problem(client.post(f"{API}/timers/{timer['id']}/reschedule",
                                   json={"due_at": "2026-04-02T09:00:00+08:00"}, headers=boss), 404, "not_found")
        # At headquarters, the fired slot cannot be moved; the next one can (a system-wide audit event).
        with db.transaction() as s:
            identity.create_user(s, username="hq_boss", display_name="总部主管", now=rt.now(), password="hq-boss-pw",
                                 groups=["supervisor"])
        hq = login(client, "hq_boss", "hq-boss-pw")
        fired = client.post(f"{API}/timers/{timer['id']}/reschedule", json={"due_at": "2026-04-02T09:00:00+08:00"},
                            headers=hq)
        assert_problem(fired, 400, "invalid_input")
        (upcoming,) = [t for t in client.get(f"{API}/timers", headers=hq).json if t["status"] == "waiting"]
        moved = client.post(f"{API}/timers/{upcoming['id']}/reschedule", json={"due_at": "2026-07-02T09:00:00+08:00"},
                            headers=hq)
        assert moved.status_code == 200, moved.get_data(as_text=True)
    with db.transaction() as s:
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "timer.rescheduled")).scalars()
    assert (event.actor, event.instance_id, event.data["timer_kind"]) == ("hq_boss", None, "schedule")
    assert datetime.fromisoformat(event.data["to"]) == sh(2026, 7, 2, 9)


@pytest.mark.sqlite
def test_bad_schedules_are_refused_without_storing_anything(client, auth, review):
    owner = auth("owner")
    assert_problem(client.post(f"{API}/schedules", json={**QUARTERLY, "rule": "every_full_moon"}, headers=owner),
                   400, "invalid_input")
    for changes in ({"at_time": "9am"}, {"catch_up": "sometimes"}, {"key": None}):
        assert_problem(client.post(f"{API}/schedules", json={**QUARTERLY, **changes}, headers=owner),
                       422, "invalid_request")
    assert_problem(client.post(f"{API}/schedules", json={**QUARTERLY, "at_time": "25:00"}, headers=owner),
                   400, "invalid_input")
    assert client.get(f"{API}/schedules", headers=owner).json == []
    assert client.post(f"{API}/schedules", json=QUARTERLY, headers=owner).status_code == 201
    assert_problem(client.post(f"{API}/schedules", json=QUARTERLY, headers=owner), 409, "conflict")
    assert [s["key"] for s in client.get(f"{API}/schedules", headers=owner).json] == ["CBQ"]


@pytest.mark.sqlite
def test_milestones_saved_through_the_api_with_their_defaults_fire(client, db, rt, review):
    """``to`` and ``by`` are optional in the API: a notify milestone goes to the assignee (or
    the candidates while unclaimed), raise_priority adds 20."""
    milestones = [{"at": 0.25, "action": "notify"}, {"at": 0.5, "action": "raise_priority"}]
    with time_machine.travel(MONDAY_9, tick=False) as clock:
        saved = put_policy(client, login(client, "owner"), "review.register", milestones=milestones)
        assert saved.status_code == 200, saved.get_data(as_text=True)
        start(client, login(client, "li"), "R-1")
        clock.move_to(sh(2026, 3, 3, 9, 0, 1))
        assert firing.fire_due(db, rt) == 2
        assert firing.fire_due(db, rt) == 0
        task = task_of(client, login(client, "li"), "R-1")
    assert task["priority"] == 70
    with db.transaction() as s:
        recipients = sorted(s.execute(select(Notification.recipient)).scalars())
        assert s.execute(select(Timer.status).where(Timer.kind == "sla")).scalars().all() == ["fired", "fired"]
    assert recipients == ["li", "zhao"]


# -- a cycle timer after downtime -----------------------------------------------------------
def _reminders(db, rt, instance_id):
    """How many times the non-interrupting hourly boundary timer has led to its reminder."""
    from SpiffWorkflow.util.task import TaskState

    with db.transaction() as s:
        workflow = rt.load(s, s.get(ProcessInstance, instance_id))
    return sum(1 for t in workflow.get_tasks() if t.task_spec.bpmn_id == "remind" and t.has_state(TaskState.COMPLETED))


def _fire_until_quiet(db, rt):
    fired = []
    while (count := firing.fire_due(db, rt)) and len(fired) < 20:
        fired.append(count)
    return sum(fired)


@pytest.mark.sqlite
@pytest.mark.parametrize(("catch_up", "caught_up", "in_all"), [
    ("once", 1, 2),  # the four missed occurrences run once; the fifth still comes
    ("all", 4, 5),  # every missed occurrence runs; then the fifth
])
def test_a_cycle_timer_catches_up_after_the_clock_jumps_by_its_policy(client, db, people, database_url, catch_up,
                                                                      caught_up, in_all):
    from engine.bootstrap import build_runtime
    from engine.config import Settings
    from engine.process import instances
    from tests.conftest import deploy_fixture

    env = {"BPM_DATABASE_URL": database_url}
    if catch_up != "once":  # "once" is the default
        env["BPM_TIMER_CATCH_UP"] = catch_up
    rt = build_runtime(Settings.from_env(env))
    assert rt.settings.timer_catch_up == catch_up
    deploy_fixture(db, rt, "cycle", people.owner)
    with time_machine.travel(START, tick=False) as clock:
        with db.transaction() as s:
            instance_id = instances.start(s, rt, process_key="cycle", business_key="C-1", actor=people.clerk,
                                          data={}).id
        (timer,) = client.get(f"{API}/timers", headers=login(client, "boss")).json
        assert (timer["element_id"], at(timer["due_at"])) == ("hourly", START + timedelta(hours=1))  # R5/PT1H

        clock.move_to(START + timedelta(hours=4, minutes=30))  # down for 4 h 30: four occurrences missed
        firings = _fire_until_quiet(db, rt)
        assert _reminders(db, rt, instance_id) == caught_up
        if catch_up == "once":
            assert firings == 1
        (waiting,) = client.get(f"{API}/timers", headers=login(client, "boss")).json
        assert (waiting["id"], waiting["status"]) == (timer["id"], "waiting")  # the same row waits again
        assert at(waiting["due_at"]) == START + timedelta(hours=5)  # for the next future occurrence

        clock.move_to(START + timedelta(hours=5, seconds=1))
        assert _fire_until_quiet(db, rt) == 1
        clock.move_to(START + timedelta(hours=9))
        assert _fire_until_quiet(db, rt) == 0  # R5: no more occurrences
        assert _reminders(db, rt, instance_id) == in_all
        assert client.get(f"{API}/timers", headers=login(client, "boss")).json == []
    task = task_of(client, login(client, "li"), "C-1")
    assert task["element_id"] == "ack" and task["status"] == "open"  # non-interrupting: the task stays
    with db.transaction() as s:
        assert s.get(ProcessInstance, instance_id).status == "running"


@pytest.mark.sqlite
def test_the_timer_list_is_not_for_clerks(client, review):
    assert_problem(client.get(f"{API}/timers", headers=login(client, "li")), 403, "forbidden")
