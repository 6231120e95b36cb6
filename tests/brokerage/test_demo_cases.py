"""`make run`'s open cases (brief §4.5), driven through the real diagrams by engine.demo_cases:
each case in its process and state, dates relative to the day of loading (something due
today, something at risk, something overdue, also right after a holiday, early, late and on
a weekend), recusal on the complaint's investigation, and a reload that changes nothing."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

import pytest
import time_machine
from sqlalchemy import func, select

from engine import audit
from engine.access import identity
from engine.brokerage import demo, demo_cases
from engine.calendars import SHANGHAI
from engine.config import PROJECT_ROOT
from engine.models import AuditEvent, MessageSubscription, ProcessInstance, Task, Timer, User
from engine.process import instances, messages, tasks
from engine.sla import clock as sla_clock
from tests.support.bpmn import row_counts

WORKFLOWS = PROJECT_ROOT / "workflows"
OPEN = ("open", "claimed")


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


THURSDAY = sh(2026, 11, 26, 10, 30)  # an ordinary working day, mid-morning
# Keys on THURSDAY: each brief date moved by its working-day distance from Monday 2025-06-16.
# 2025-04-01 is 50 WD before it; 50 WD before 2026-11-26 crosses 中秋 and National Day (2026-09-11).
KEYS = {
    "CMP-20250612-0001": ("complaint", "CMP-20261124-0001"),
    "CMP-20250610-0002": ("complaint", "CMP-20261120-0002"),
    "RET-20250616-0002": ("retention", "RET-20261126-0002"),
    "RET-20250613-0001": ("retention", "RET-20261125-0001"),
    "CB-20250603-0031": ("callback", "CB-20261113-0031"),
    "CB-20250612-0044": ("callback", "CB-20261124-0044"),
    "CB-20250401-0107": ("callback", "CB-20260911-0107"),
    "VIP-20250603-0004": ("vip_onboarding", "VIP-20261113-0004"),
    "VIP-20250603-0011": ("vip_onboarding", "VIP-20261113-0011"),
}


def _load(db, rt, now: datetime, *, cases_only: bool = False) -> list[demo_cases.CaseResult]:
    """``bpm demo load`` at ``now``: people, diagrams and SLA policies, then the cases."""
    with time_machine.travel(now, tick=False):
        if not cases_only:
            with db.transaction() as s:
                demo.load(s, rt)
                demo.load_workflows(s, rt, WORKFLOWS)
        with db.transaction() as s:
            return demo_cases.load_cases(s, rt, now=rt.now())


@pytest.fixture
def loaded(db, rt, snapshot) -> dict[str, demo_cases.CaseResult]:
    results = snapshot(f"demo cases at {THURSDAY.isoformat()}", lambda: _load(db, rt, THURSDAY))
    assert [(r.error, r.created) for r in results] == [(None, True)] * 9
    return {r.spec.brief_key: r for r in results}


def _instance(db, key: str) -> ProcessInstance:
    with db.transaction() as s:
        return s.execute(select(ProcessInstance).where(ProcessInstance.business_key == key)).scalar_one()


def _open(db, key: str, kind: str = "bpmn") -> list[Task]:
    with db.transaction() as s:
        return list(s.execute(select(Task).where(Task.business_key == key, Task.kind == kind,
                                                 Task.status.in_(OPEN)).order_by(Task.element_id)).scalars())


def _data(db, rt, key: str) -> dict[str, Any]:
    with db.transaction() as s:
        return instances.data_of(s, rt, s.execute(select(ProcessInstance).where(
            ProcessInstance.business_key == key)).scalar_one())


def _trail(db, key: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    instance = _instance(db, key)
    with db.transaction() as s:
        return [(e.kind, e.actor, e.data) for e in s.execute(select(AuditEvent).where(
            AuditEvent.stream == f"instance:{instance.id}").order_by(AuditEvent.seq)).scalars()]


def _completed(db, key: str) -> list[tuple[str, str]]:
    return [(d["element_id"], actor) for kind, actor, d in _trail(db, key) if kind == "task.completed"]


def _waiting(db, key: str) -> tuple[set[tuple[str, datetime]], set[str]]:
    instance = _instance(db, key)
    with db.transaction() as s:
        waiting = {(t.element_id, t.due_at) for t in s.execute(select(Timer).where(
            Timer.instance_id == instance.id, Timer.kind == "bpmn", Timer.status == "waiting")).scalars()}
        subscribed = set(s.execute(select(MessageSubscription.message_name).where(
            MessageSubscription.instance_id == instance.id)).scalars())
    return waiting, subscribed


def _actor(db, username: str) -> identity.Actor:
    with db.transaction() as s:
        return identity.actor_for(s, identity.get_user(s, username))


def _inbox(db, username: str, now: datetime) -> list[Task]:
    with db.transaction() as s:
        rows, _ = tasks.inbox(s, actor=identity.actor_for(s, identity.get_user(s, username)),
                              query=tasks.InboxQuery(limit=200), now=now)
    return rows


def _states(db, now: datetime) -> dict[str, list[Task]]:
    """The supervisors' inbox (everything nobody is recused from) by SLA state, plus the
    tasks due on ``now``'s day."""
    by_state: dict[str, list[Task]] = {"due_today": []}
    for task in _inbox(db, "admin", now):
        by_state.setdefault(sla_clock.state(task, now)[0], []).append(task)
        if task.due_at is not None and task.due_at.astimezone(SHANGHAI).date() == now.date():
            by_state["due_today"].append(task)
    return by_state


# -- the nine cases ------------------------------------------------------------------------------
@pytest.mark.sqlite  # what `make run` loads on the embedded default
def test_the_nine_cases_exist_in_their_processes_with_the_briefs_numbers_on_moved_dates(db, loaded):
    assert {brief: (r.spec.process_key, r.key) for brief, r in loaded.items()} == KEYS
    with db.transaction() as s:
        report = audit.verify(s)
    assert report.broken == [] and report.events > 0  # the replayed history is a valid audit trail
    for process_key, key in KEYS.values():
        instance = _instance(db, key)
        assert instance.process_key == process_key and instance.error is None
    assert _instance(db, KEYS["VIP-20250603-0004"][1]).status == "completed"  # V6 runs as soon as V3 is done
    assert {_instance(db, key).status for brief, (_, key) in KEYS.items() if brief != "VIP-20250603-0004"} == \
        {"running"}


def test_the_mis_selling_complaint_is_investigated_by_the_branch_cs_director(db, rt, loaded):
    key = KEYS["CMP-20250612-0001"][1]
    (investigate,) = _open(db, key)
    assert (investigate.element_id, investigate.status, investigate.assignee) == ("investigate", "claimed", "s103")
    assert investigate.candidate_groups == ["HZ01:branch_cs_director", "HZ01:account_manager"]
    assert investigate.due_at == sh(2026, 12, 8, 11)  # complaint.investigate.major: 10 WD from C5 (11-24 11:00)
    data = _data(db, rt, key)
    assert (data["severity"], data["severity_reasons"]) == ("major", ["alleged_violation", "elderly_client"])
    assert (data["channel"], data["business_line"], data["amount_claimed"]) == ("counter", "product_sales", 38000)
    assert data["subject_staff_ids"] == ["s107"] and data["first_contact_owner"] == "s104"
    assert data["notifications"] == [{"to": "compliance", "reason": "major"}]  # C4: compliance is told
    assert _completed(db, key) == [("register", "s104"), ("acknowledge", "s104")]
    assigned = [(a, d["assignee"]) for k, a, d in _trail(db, key) if k == "task.assigned"]
    assert assigned == [("s101", "s103")]  # 黄建华 gave it to 彭涛


def test_the_complaints_investigation_excludes_the_subject_and_her_service_group(db, loaded):
    (investigate,) = _open(db, KEYS["CMP-20250612-0001"][1])
    for member in ("s105", "s106", "s107"):  # HZ01-G1: 沈洁, 钱磊, 杜娟
        assert tasks.is_excluded(investigate, _actor(db, member)), member
    assert not tasks.is_excluded(investigate, _actor(db, "s103"))
    assert investigate.id not in {t.id for t in _inbox(db, "s107", THURSDAY)}


def test_the_12386_complaint_is_contacted_by_hq_and_investigated_at_sx01(db, rt, loaded):
    key = KEYS["CMP-20250610-0002"][1]
    (investigate,) = _open(db, key)
    assert (investigate.element_id, investigate.assignee) == ("investigate", "s301")
    assert investigate.candidate_groups == ["SX01:branch_cs_director", "SX01:account_manager"]
    data = _data(db, rt, key)
    assert (data["severity"], data["channel"], data["is_regulator_transfer"]) == ("regulator", "12386", True)
    # 2025-07-04 is 14 WD after the brief's today: 14 WD after 2026-11-26.
    assert datetime.fromisoformat(data["regulator_due_at"]) == sh(2026, 12, 16, 17)
    assert data["alleged_violations"] == ["transfer_obstruction"] and data["subject_staff_ids"] == ["s302"]
    assert _completed(db, key) == [("register_12386", "s007"), ("acknowledge", "s007")]


def test_the_transfer_runs_both_tracks_and_the_closure_is_done_with_its_callback_due(db, rt, loaded):
    transfer = KEYS["RET-20250616-0002"][1]
    talk, submit = _open(db, transfer)  # by element id
    assert (submit.element_id, submit.candidate_groups) == ("submit_instructions", ["SX01:counter_staff"])
    assert (talk.element_id, talk.candidate_groups) == ("retention_conversation", ["SX01-G1"])
    assert submit.due_at == sh(2026, 11, 26, 15)  # by the close of today, a trading day (accepted 09:15)
    assert _waiting(db, transfer)[1] == {"retention_client_withdraws"}
    assert _data(db, rt, transfer)["client_open_to_retention_talk"] is True

    closure = KEYS["RET-20250613-0001"][1]
    (review,) = _open(db, closure)
    assert (review.element_id, review.candidate_groups) == ("review_ops", ["HZ01:branch_ops_director"])
    assert _instance(db, closure).facts["outcome"] == "completed"  # Track A done (X1)
    assert [e for e, _ in _completed(db, closure)] == ["accept", "submit_instructions", "complete_notify"]
    (sent,) = [d for k, _, d in _trail(db, closure) if k == "message.sent"]
    with db.transaction() as s:
        callback = s.get(ProcessInstance, sent["to_instance"])
    (call,) = _open(db, callback.business_key)
    assert (callback.process_key, callback.client_id, callback.business_key) == ("callback", "C10", "CB-20261125-0001")
    assert (call.element_id, call.candidate_groups) == ("call_attempt", ["call_center_agent"])
    assert call.due_at == sh(2026, 12, 2, 15, 10)  # R7: 5 WD after the completion (15:10 the day before)


def test_the_callbacks_wait_for_a_retry_are_due_today_and_overdue_and_escalated(db, rt, loaded):
    new_account = KEYS["CB-20250603-0031"][1]
    assert _open(db, new_account) == []
    waiting, _ = _waiting(db, new_account)
    # The last call a minute ago (10:29); the next at least 4 hours later, in the afternoon.
    assert waiting == {("retry_wait", sh(2026, 11, 26, 14, 29))}
    assert _instance(db, new_account).facts["attempt_no"] == 1
    attempts = [d for k, _, d in _trail(db, new_account) if k == "task.completed"]
    assert [(d["element_id"], d["data"]["result"]) for d in attempts] == [("call_attempt", "no_answer")]

    assert _instance(db, new_account).facts["callback_type"] == "new_account"  # started by "account opened"

    risk_key = KEYS["CB-20250612-0044"][1]
    (risk,) = _open(db, risk_key)
    assert _data(db, rt, risk_key)["product_or_permission"] == "创业板"  # "high-risk permission opened"
    assert risk.due_at == THURSDAY + timedelta(hours=1)  # 2 TD from 11-24 11:30: today, an hour from now
    assert sla_clock.state(risk, THURSDAY)[0] == "at_risk"

    periodic = KEYS["CB-20250401-0107"][1]
    (call,) = _open(db, periodic)
    assert call.due_at == sh(2026, 10, 15, 9, 30)  # 20 WD from 09-11, across National Day
    assert call.breached_at is not None and sla_clock.state(call, THURSDAY)[0] == "breached"
    (escalation,) = _open(db, periodic, kind="escalation")
    assert escalation.candidate_groups == ["call_center_supervisor"]
    assert escalation.id in {t.id for t in _inbox(db, "s002", THURSDAY)}  # 许婧
    kinds = [k for k, _, _ in _trail(db, periodic)]
    assert kinds.count("sla.milestone") == 3 and kinds.count("sla.breached") == 1


def test_the_vip_cases_are_activated_without_advisory_benefits_and_in_grace(db, rt, loaded):
    upgrade = KEYS["VIP-20250603-0004"][1]
    facts = _instance(db, upgrade).facts
    assert (facts["change_type"], facts["vip_tier"], facts["outcome"]) == ("upgrade", "gold", "activated")
    assert facts["advisory_benefits_enabled"] is False
    assert _data(db, rt, upgrade)["advisory_withheld_reason"] == "no_advisory_agreement"
    assert _completed(db, upgrade) == [("verify_welcome", "s205")]  # 姚斌, NB01-G1

    grace = KEYS["VIP-20250603-0011"][1]
    assert _open(db, grace) == [] and _instance(db, grace).facts["at_risk"] is True
    waiting, subscribed = _waiting(db, grace)
    assert waiting == {("grace_expired", sh(2026, 12, 13, 10))}  # one calendar month after the evaluation
    assert "vip_reevaluated" in subscribed


# -- dates relative to the day of loading ---------------------------------------------------------
@pytest.mark.parametrize("now", [
    THURSDAY,
    sh(2026, 11, 26, 0, 40),  # before opening: the transfer is yesterday's and due today
    sh(2026, 10, 8, 9, 30),  # the first working day after National Day (10-01..10-07)
    sh(2026, 2, 24, 14, 0),  # the first working day after the Spring Festival (02-15..02-23)
], ids=["working-day", "before-opening", "after-national-day", "after-spring-festival"])
def test_something_is_due_today_something_at_risk_and_something_overdue(db, rt, now):
    results = _load(db, rt, now)
    assert [r.error for r in results] == [None] * 9
    states = _states(db, now)
    assert states["due_today"] and states.get("at_risk") and states.get("breached")
    keys = {r.spec.brief_key: r.key for r in results}
    (risk,) = _open(db, keys["CB-20250612-0044"])
    assert risk.due_at.astimezone(SHANGHAI).date() == now.date()  # due today during the trading day
    (overdue,) = _open(db, keys["CB-20250401-0107"])
    assert sla_clock.state(overdue, now)[0] == "breached"


def test_after_the_trading_day_the_risk_disclosure_callback_is_due_the_next_morning_and_at_risk(db, rt):
    """Loaded in the evening, nothing can still fall due today: CB-…0044 is due at 10:00 on
    the next trading day, at risk and not breached."""
    evening = sh(2026, 11, 26, 20, 0)
    results = _load(db, rt, evening)
    assert [r.error for r in results] == [None] * 9
    keys = {r.spec.brief_key: r.key for r in results}
    (risk,) = _open(db, keys["CB-20250612-0044"])
    assert (risk.candidate_groups, risk.due_at) == (["call_center_agent"], sh(2026, 11, 27, 10))
    assert sla_clock.state(risk, evening)[0] == "at_risk"


def _picture(db, results: list[demo_cases.CaseResult], now: datetime) -> dict[str, Any]:
    """Per demo case: each open step's SLA state and whether an escalation is open on it.
    (An escalation left open on a step that is over is the engine's matter, not the demo's.)"""
    picture: dict[str, Any] = {}
    for r in results:
        escalated = {t.element_id for t in _open(db, r.key, kind="escalation")}
        picture[r.spec.brief_key] = sorted((t.element_id, sla_clock.state(t, now)[0],
                                            f"{t.element_id}.escalation" in escalated) for t in _open(db, r.key))
    return picture


# The demo as loaded on THURSDAY at 10:30 (test_the_same_picture_at_any_moment_of_loading
# checks the reference moment too).
PICTURE = {
    "CMP-20250612-0001": [("investigate", "on_track", False)],
    "CMP-20250610-0002": [("investigate", "on_track", False)],
    "RET-20250616-0002": [("retention_conversation", "on_track", False), ("submit_instructions", "on_track", False)],
    "RET-20250613-0001": [("review_ops", "on_track", False)],
    "CB-20250603-0031": [],
    "CB-20250612-0044": [("call_attempt", "at_risk", False)],
    "CB-20250401-0107": [("call_attempt", "breached", True)],
    "VIP-20250603-0004": [],
    "VIP-20250603-0011": [],
}


@pytest.mark.parametrize("now", [
    THURSDAY,
    sh(2026, 11, 26, 6, 0),  # early morning
    sh(2026, 11, 26, 15, 30),  # after the exchange's close: the transfer used to show breached and escalated
    sh(2026, 11, 27, 19, 0),  # a Friday evening
    sh(2026, 9, 30, 16, 0),  # the eve of National Day (10-01..10-07)
], ids=["reference", "early-morning", "after-the-close", "friday-evening", "holiday-eve"])
def test_the_same_picture_at_any_moment_of_loading(db, rt, now):
    results = _load(db, rt, now)
    assert [r.error for r in results] == [None] * 9
    assert _picture(db, results, now) == PICTURE
    keys = {r.spec.brief_key: r.key for r in results}
    submit = next(t for t in _open(db, keys["RET-20250616-0002"]) if t.element_id == "submit_instructions")
    # Due at the next close still ahead, offered to the branch's counter.
    assert submit.candidate_groups == ["SX01:counter_staff"] and submit.due_at > now
    assert submit.due_at.astimezone(SHANGHAI).time() == datetime(2000, 1, 1, 15).time()


def test_on_a_weekend_the_items_are_due_on_the_next_working_day(db, rt):
    """No task of these diagrams can be due on a day off: every due date is on the working-
    or trading-day calendar. On Saturday the business day is Monday: the risk-disclosure
    callback and the transfer's instructions (received on Friday) are due then; the rest
    holds."""
    saturday, monday = sh(2026, 11, 28, 11), date(2026, 11, 30)
    results = _load(db, rt, saturday)
    assert [r.error for r in results] == [None] * 9
    states = _states(db, saturday)
    assert states["due_today"] == [] and states.get("at_risk") and states.get("breached")
    keys = {r.spec.brief_key: r.key for r in results}
    assert keys["RET-20250616-0002"] == "RET-20261127-0002"  # Friday's request
    (risk,) = _open(db, keys["CB-20250612-0044"])
    submit = next(t for t in _open(db, keys["RET-20250616-0002"]) if t.element_id == "submit_instructions")
    assert risk.due_at == sh(2026, 11, 30, 10) and submit.due_at.astimezone(SHANGHAI).date() == monday
    assert sla_clock.state(risk, saturday)[0] == "at_risk"


# -- reloading -----------------------------------------------------------------------------------
@pytest.mark.sqlite  # what `make run` loads on the embedded default
def test_loading_the_cases_again_changes_no_row_counts_that_day_or_the_next(db, rt, loaded):
    before = row_counts(db)
    for later in (THURSDAY, THURSDAY + timedelta(days=1)):  # a later day maps to other dates: still nothing
        again = _load(db, rt, later, cases_only=True)
        assert [(r.created, r.error) for r in again] == [(False, None)] * 9
        assert {r.spec.brief_key: r.key for r in again} == {b: k for b, (_, k) in KEYS.items()}
        assert row_counts(db) == before


@pytest.mark.sqlite  # what `make run` loads on the embedded default
def test_a_second_demo_load_writes_nothing_but_the_importers_own_record(db, rt, loaded):
    """The registry importer audits every import, even one that changes nothing (as it does
    for an administrator's); saving the unchanged SLA policies again would re-arm every open
    task's milestone timers, so they are left alone."""
    def audit_kinds() -> dict[str, int]:
        with db.transaction() as s:
            return dict(s.execute(select(AuditEvent.kind, func.count()).group_by(AuditEvent.kind)).all())

    before, kinds = row_counts(db), audit_kinds()
    again = _load(db, rt, THURSDAY + timedelta(days=1))
    assert [(r.created, r.error) for r in again] == [(False, None)] * 9
    after = row_counts(db)
    assert {t: (before[t], n) for t, n in after.items() if before[t] != n} == {
        "bpm_audit_event": (before["bpm_audit_event"], before["bpm_audit_event"] + 4)}
    assert {k: n - kinds.get(k, 0) for k, n in audit_kinds().items() if n != kinds.get(k)} == {"registry.imported": 4}


def test_a_case_numbered_later_that_day_does_not_collide_with_the_demos(db, rt, loaded):
    with time_machine.travel(THURSDAY + timedelta(hours=1), tick=False), db.transaction() as s:
        started = messages.correlate(s, rt, name="retention_request_received", correlation_key=None,
                                     actor=identity.Actor.system("app"),
                                     payload={"channel": "app", "client_id": "C06", "account_status": {}})
        assert started.business_key == "RET-20261126-0003"  # after the demo's RET-…-0002


@pytest.mark.sqlite  # what `make run` loads on the embedded default
def test_the_personas_of_the_readme_see_their_work(db, loaded):
    def inbox(username: str) -> set[tuple[str, str]]:
        return {(t.business_key, t.element_id) for t in _inbox(db, username, THURSDAY)}

    key = {brief: k for brief, (_, k) in KEYS.items()}
    assert {(key["CB-20250612-0044"], "call_attempt"), (key["CB-20250401-0107"], "call_attempt"),
            ("CB-20261125-0001", "call_attempt")} <= inbox("s003")  # 高晨, call centre
    assert (key["CB-20250401-0107"], "call_attempt.escalation") in inbox("s002")  # 许婧
    assert (key["CMP-20250612-0001"], "investigate") in inbox("s103")  # 彭涛
    assert (key["CMP-20250610-0002"], "investigate") in inbox("s301")  # 金国平
    assert (key["RET-20250616-0002"], "submit_instructions") in inbox("s302")  # 邵琳
    assert (key["RET-20250616-0002"], "retention_conversation") in inbox("s303")  # 孔伟, SX01-G1
    assert (key["RET-20250613-0001"], "review_ops") in inbox("s102")  # 曹莉
    branch_head = inbox("s101")  # 黄建华 supervises HZ01's tasks
    assert {(key["CMP-20250612-0001"], "investigate"), (key["RET-20250613-0001"], "review_ops"),
            (key["CB-20250612-0044"], "call_attempt")} <= branch_head
    assert (key["RET-20250616-0002"], "submit_instructions") not in branch_head  # SX01's
    with db.transaction() as s:
        assert s.execute(select(User.display_name).where(User.username == "s103")).scalar_one() == "彭涛"
