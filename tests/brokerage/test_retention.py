"""workflows/retention.bpmn (客户转销户挽留, brief §2.2) driven through the engine services on the
demo data: who gets each task, the end state (X1–X4), due dates from workflows/sla/retention.json
on the right calendar (instructions on trading days, reviews on working days), the audit trail,
and the post-closure callback started in workflows/callback.bpmn by a thrown message.
The diagram's own times are on the trading calendar through the date functions
(engine/date_functions.py): the instructions are due by the 15:00 close, and the exchange's
result is chased at 10:00 on the next trading day.

The rule every path checks in its own way: retention never blocks or delays the request [P8].
The conversation happens only if the client agreed, runs beside the operational track and is
cut off when the instructions are submitted; the branch's review comes after, never before.
Time moves with time-machine; the exchange's return is a message sent by the test."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import time_machine
from lxml import etree
from sqlalchemy import select

from engine.access import identity
from engine.bpmn import bundle
from engine.brokerage import figures, settings
from engine.brokerage.services.retention import check_preconditions, outcome_of, prepare, settings_of, wrap_up
from engine.calendars import SHANGHAI, Unit
from engine.config import PROJECT_ROOT
from engine.errors import MessageNotCorrelated, TaskNotFound
from engine.models import AuditEvent, MessageSubscription, ProcessInstance, Task, Timer
from engine.process import deployments, instances, messages, tasks
from engine.sla import admin as sla_admin
from engine.sla.calendar_store import CALENDARS
from engine.timers import firing
from tests.support.cases import CaseDriver

# Process and diagram logic: the same on either store (SQLite runs the processes end to end
# in tests/api/test_process_end_to_end.py).
pytestmark = pytest.mark.store_independent

WORKFLOWS = PROJECT_ROOT / "workflows"
END_STATES = {"end_completed": "X1", "end_retained": "X2", "end_lapsed": "X3", "end_rejected": "X4"}
REVIEW_ENDS = {"end_reviewed", "end_head_reviewed", "end_review_skipped"}
# Demo clients (brief §4.4); branch, group and assets travel in the request until the client
# registry supplies them. C05 孙立平: SX01-G1, ¥550,000 (above the ¥500,000 review threshold).
# C10 何静: HZ01 branch pool (no service group), ¥6,000.
C05 = {"client_id": "C05", "branch_code": "SX01", "service_group": "SX01-G1", "client_assets": 550000}
C10 = {"client_id": "C10", "branch_code": "HZ01", "service_group": None, "client_assets": 6000}
C06 = {"client_id": "C06", "branch_code": "HZ01", "service_group": "HZ01-G2", "client_assets": 380000}
ACCEPT_TRANSFER = {"request_types": ["sz_transfer", "sh_dedesignation"], "target_broker": "XX证券",
                   "target_seat_no": "123456", "identity_verified": True, "identity_method": "counter_id_face",
                   "client_reason_stated": "commission", "client_open_to_retention_talk": True,
                   "informed_of_procedure_and_timeline": True, "recording_id": "REC-R1"}
ACCEPT_CLOSURE = {"request_types": ["fund_account_closure", "securities_account_cancellation"],
                  "identity_verified": True, "identity_method": "counter_id_face",
                  "client_open_to_retention_talk": False, "informed_of_procedure_and_timeline": True}
SUBMITTED = {"submitted_at": "2025-06-16T10:30:00+08:00", "instruction_refs": ["SZ-TG-0001", "SH-CX-0001"]}
COMPLETED = {"completed_at": "2025-06-17T10:30:00+08:00", "notice_channel": "sms", "closure_certificate_issued": False}
REVIEWED = {"reason_validated": "confirmed", "service_failure_found": False, "obstruction_found": False}
NOT_RETAINED = {"reason_code": "commission", "competitor": "XX证券", "offers_made": ["commission_adjustment"],
                "within_fee_schedule": True, "retention_outcome": "not_retained", "retention_recording_id": "REC-B1"}


def sh(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


class Case(CaseDriver):
    """One retention case, driven the way the worklist would: inbox, then complete."""

    process_key = "retention"
    never_fails = True

    def receive(self, client: dict[str, Any], **data: Any) -> None:
        """R0: the request arrives (counter, app or phone appointment) as a message."""
        payload = {"channel": "counter", "account_status": {}, **client, **data}
        with self.db.transaction() as s:
            self.instance_id = messages.correlate(s, self.rt, name="retention_request_received",
                                                  correlation_key=self.key, actor=identity.Actor.system("counter"),
                                                  payload=payload).id

    def message(self, message: str, payload: dict[str, Any] | None = None, sender: str = "client") -> None:
        """A message from ``sender`` (an outside system or the client's channel) to the case."""
        self.send(message, payload, actor=identity.Actor.system(sender))

    def task_data(self, element: str) -> dict[str, Any]:
        """The variables an open task sees (what its form is shown with)."""
        task = self.task(element)
        with self.db.transaction() as s:
            workflow = self.rt.load(s, s.get(ProcessInstance, self.instance_id))
            return dict(workflow.get_task_from_id(UUID(task.task_uuid)).data)

    def own_ends(self) -> set[str]:
        """The process's own end events reached (X1–X4 and the review's ends; not the
        sub-process's inner ones)."""
        return set(self.ends()) & (set(END_STATES) | REVIEW_ENDS)

    def end_state(self) -> str:
        """The case reached exactly one of the end states X1–X4."""
        reached = self.own_ends() & set(END_STATES)
        assert len(reached) == 1, reached
        return END_STATES[reached.pop()]

    def subscriptions(self) -> list[str]:
        with self.db.transaction() as s:
            return sorted(s.execute(select(MessageSubscription.message_name).where(
                MessageSubscription.instance_id == self.instance_id)).scalars())

    def trail(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self.db.transaction() as s:
            events = s.execute(select(AuditEvent).where(AuditEvent.stream == f"instance:{self.instance_id}")
                               .order_by(AuditEvent.seq)).scalars()
            return [(e.kind, e.actor, dict(e.data or {})) for e in events]

    def completions(self) -> list[tuple[str | None, str]]:
        return [(d.get("element_id"), a) for k, a, d in self.trail() if k == "task.completed"]

    def task_row(self, task_id: int) -> Task:
        with self.db.transaction() as s:
            return s.get(Task, task_id)

    def waiting_timers(self) -> list[tuple[str, datetime]]:
        """The diagram's timers waiting now (not SLA milestones): (element, due)."""
        with self.db.transaction() as s:
            return [(e, due) for e, due in s.execute(
                select(Timer.element_id, Timer.due_at).where(Timer.instance_id == self.instance_id,
                                                             Timer.kind == "bpmn", Timer.status == "waiting")
                .order_by(Timer.id)).all()]


def _callbacks(db) -> list[ProcessInstance]:
    with db.transaction() as s:
        return list(s.execute(select(ProcessInstance).where(ProcessInstance.process_key == "callback")).scalars())


def _trading_days_after(db, start: datetime, amount: int) -> datetime:
    """``amount`` trading days after ``start`` on the calendar in the database."""
    with db.transaction() as s:
        return CALENDARS.get(s, "default").add(start, amount, Unit.TRADING_DAYS).at


# -- X1: completed ----------------------------------------------------------------------------
def test_a_transfer_completes_beside_a_conversation_that_does_not_retain_the_client(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0002")  # brief §4.5
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        case.receive(C05)
        accept = case.task("accept")
        assert (accept.lane, accept.form_key) == ("柜员", "retention_accept")
        assert accept.candidate_groups == ["SX01:counter_staff"]
        assert (accept.due_at, accept.due_source) == (sh(2025, 6, 16, 11, 30), "policy")  # 2 working hours
        clock.move_to(sh(2025, 6, 16, 10))
        case.do("accept", "s302", ACCEPT_TRANSFER)
        # Both tracks open at once: the instructions do not wait for the conversation.
        assert sorted(t.element_id for t in case.open_tasks()) == ["retention_conversation", "submit_instructions"]
        submit, talk = case.task("submit_instructions"), case.task("retention_conversation")
        # Ready at 10:00 on a trading day: due by that day's close (the diagram's due date).
        assert submit.candidate_groups == ["SX01:counter_staff"] and submit.due_at == sh(2025, 6, 16, 15)
        assert talk.candidate_groups == ["SX01-G1"] and talk.due_at == sh(2025, 6, 17, 10)  # before submission
        assert case.subscriptions() == ["retention_client_withdraws"]
        clock.move_to(sh(2025, 6, 16, 10, 20))
        case.do("retention_conversation", "s303", NOT_RETAINED)
        case.do("submit_instructions", "s302", SUBMITTED)
        # After submission the client can no longer withdraw: the case waits for the exchange,
        # which is chased if nothing has come by 10:00 on the next trading day.
        assert case.subscriptions() == ["retention_exchange_result"]
        assert case.waiting_timers() == [("result_due", sh(2025, 6, 17, 10))]
        clock.move_to(sh(2025, 6, 17, 10))
        case.message("retention_exchange_result",
                  {"exchange_result": "success", "returned_at": "2025-06-17T10:00:00+08:00"}, sender="csdc")
        complete = case.do("complete_notify", "s302", COMPLETED)
        assert complete.due_at == sh(2025, 6, 18, 10)  # 1 TD
        assert "end_completed" in case.own_ends()  # X1 is reached before (and whatever) the review
        review = case.task("review_ops")
        assert review.candidate_groups == ["SX01:branch_ops_director"] and review.due_at == sh(2025, 6, 24, 10)  # 5 WD
        case.do("review_ops", "s301", REVIEWED)
        head = case.task("review_head")  # ¥550,000 > retention.review_asset_threshold
        assert head.candidate_groups == ["SX01:branch_head"] and head.due_at == sh(2025, 6, 24, 10)
        case.do("review_head", "s301", REVIEWED)
    assert case.instance().status == "completed"
    assert case.end_state() == "X1" and case.own_ends() == {"end_completed", "end_head_reviewed"}
    assert case.handled == [
        ("accept", ["SX01:counter_staff"], "s302"), ("retention_conversation", ["SX01-G1"], "s303"),
        ("submit_instructions", ["SX01:counter_staff"], "s302"), ("complete_notify", ["SX01:counter_staff"], "s302"),
        ("review_ops", ["SX01:branch_ops_director"], "s301"), ("review_head", ["SX01:branch_head"], "s301"),
    ]
    data = case.data()
    assert (data["outcome"], data["accepted_by"], data["submitted_by"], data["retention_handled_by"]) == \
        ("completed", "s302", "s302", "s303")
    # Both tracks' variables survive the join: the conversation's record is the case's.
    assert (data["retention_outcome"], data["retention_recording_id"], data["recording_id"]) == \
        ("not_retained", "REC-B1", "REC-R1")
    assert data["review_excluded_users"] == ["s302", "s303"]  # whoever worked the case
    trail = case.trail()
    assert [k for k, _, _ in trail][:2] == ["instance.started", "message.received"]
    assert trail[-1][0] == "instance.completed"
    returns = [(k, a) for k, a, d in trail if d.get("message") == "retention_exchange_result"]
    assert returns == [("message.received", "csdc")]
    assert case.completions() == [(e, who) for e, _, who in case.handled]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 09:30+2 WH; the talk 1 TD from 10:00; instructions by the 15:00 close; completion 1 TD
    # from the 06-17 10:00 result; both reviews 5 WD from then (06-18..06-24), recusing who worked it.
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 6, 17, 10)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("complete_notify", ["SX01:counter_staff"], None, [], sh(2025, 6, 18, 10)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302", "user:s303"], sh(2025, 6, 24, 10)),
        ("review_head", ["SX01:branch_head"], None, ["user:s302", "user:s303"], sh(2025, 6, 24, 10)),
    ]


def test_a_closure_without_a_retention_conversation_goes_straight_through(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250613-0001")  # brief §4.5: C10 declined a retention talk
    with time_machine.travel(sh(2025, 6, 13, 9, 30), tick=False) as clock:
        case.receive(C10)
        case.do("accept", "s104", ACCEPT_CLOSURE)
        # Declined: nobody is asked to contact the client about retention, ever.
        assert [t.element_id for t in case.open_tasks()] == ["submit_instructions"]
        case.do("submit_instructions", "s104", SUBMITTED)
        clock.move_to(sh(2025, 6, 13, 15))
        case.message("retention_exchange_result", {"exchange_result": "success"}, sender="csdc")
        case.do("complete_notify", "s104", {**COMPLETED, "closure_certificate_issued": True})
        assert case.task("review_ops").candidate_groups == ["HZ01:branch_ops_director"]
        case.do("review_ops", "s102", REVIEWED)  # ¥6,000: no branch-head review
    assert case.instance().status == "completed"
    assert case.end_state() == "X1" and case.own_ends() == {"end_completed", "end_reviewed"}
    with db.transaction() as s:
        assert s.execute(select(Task).where(Task.business_key == case.key,
                                            Task.element_id == "retention_conversation")).first() is None
    data = case.data()
    assert data.get("retention_handled_by") is None and data["review_by_branch_head"] is False
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # Fri 06-13: accept 09:30+2 WH, instructions by 15:00; completion 1 TD from 15:00 (Mon 06-16);
    # review 5 WD from Fri 15:00 (06-16..06-20), recusing the counter clerk.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 13, 11, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 13, 15)),
        ("complete_notify", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 6, 20, 15)),
    ]


def test_the_post_closure_callback_is_started_as_a_callback_process(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250613-0001")
    with time_machine.travel(sh(2025, 6, 13, 9, 30), tick=False) as clock:
        case.receive(C10)
        case.do("accept", "s104", ACCEPT_CLOSURE)
        case.do("submit_instructions", "s104", SUBMITTED)
        clock.move_to(sh(2025, 6, 13, 15))
        case.message("retention_exchange_result", {"exchange_result": "success"}, sender="csdc")
        case.do("complete_notify", "s104", {**COMPLETED, "completed_at": "2025-06-13T15:00:00+08:00"})
    (callback,) = _callbacks(db)  # exactly one post-closure callback was started
    assert callback.business_key.startswith("CB-")  # numbered by the callback process (brief §2.0)
    assert (callback.status, callback.client_id, callback.branch_code) == ("running", "C10", "HZ01")
    sent = [d for k, _, d in case.trail() if k == "message.sent"]
    assert sent == [{"message": "post_closure_callback_requested", "correlation_key": None,
                     "to_instance": callback.id, "to_process": "callback"}]
    with db.transaction() as s:
        call = s.execute(select(Task).where(Task.instance_id == callback.id, Task.element_id == "call_attempt")
                         ).scalar_one()
        data = instances.data_of(s, rt, callback)
        started = s.execute(select(AuditEvent.kind).where(AuditEvent.stream == f"instance:{callback.id}")
                            .order_by(AuditEvent.seq)).scalars().all()
    # brief §4.5: "R7 post-closure callback due 2025-06-20 (5 WD)", to the independent call centre.
    assert call.candidate_groups == ["call_center_agent"] and call.due_at == sh(2025, 6, 20, 15)
    assert (data["callback_type"], data["origin_business_key"], data["service_group"]) == \
        ("post_closure", "RET-20250613-0001", "HZ01:account_manager")  # branch-pool client: the branch's AMs
    assert started[:2] == ["instance.started", "message.received"]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # As the closure above; the review is still open (no assignee).
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 13, 11, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 13, 15)),
        ("complete_notify", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 6, 20, 15)),
    ]


def test_a_request_sent_without_a_case_number_is_numbered_ret_date_sequence(db, rt, staff):
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False), db.transaction() as s:
        first = messages.correlate(s, rt, name="retention_request_received", correlation_key=None,
                                   actor=identity.Actor.system("app"), payload={**C06, "channel": "app"})
        second = messages.correlate(s, rt, name="retention_request_received", correlation_key=None,
                                    actor=identity.Actor.system("app"), payload={**C10, "channel": "app"})
        keys = (first.business_key, second.business_key)
    assert keys == ("RET-20250616-0001", "RET-20250616-0002")  # brief §2.0


# -- X2: retained ------------------------------------------------------------------------------
def test_a_retained_client_withdraws_the_request_themselves(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0003")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        case.receive(C05, review_sample_rate=0)  # retained cases are reviewed whatever the sample rate
        case.do("accept", "s302", ACCEPT_TRANSFER)
        submit = case.task("submit_instructions")
        case.do("retention_conversation", "s304", {**NOT_RETAINED, "retention_outcome": "retained",
                                                   "offers_made": ["service_upgrade"]})
        # "Retained" in a staff member's form changes nothing: the transfer is still on track.
        assert [t.element_id for t in case.open_tasks()] == ["submit_instructions"]
        clock.move_to(sh(2025, 6, 16, 11))
        case.message("retention_client_withdraws", {"withdrawal_requested_at": "2025-06-16T11:00:00+08:00"})
        assert case.task_row(submit.id).status == "cancelled"
        confirm = case.do("confirm_withdrawal", "s302", {"withdrawal_channel": "counter",
                                                         "withdrawal_confirmed_by_client": True,
                                                         "signature_ref": "SIG-0003"})
        assert confirm.candidate_groups == ["SX01:counter_staff"] and confirm.due_at == sh(2025, 6, 16, 15)  # 4 WH
        assert "end_retained" in case.own_ends()
        case.do("review_ops", "s301", REVIEWED)
        case.do("review_head", "s301", REVIEWED)
    assert case.instance().status == "completed" and case.end_state() == "X2"
    assert case.subscriptions() == [] and _callbacks(db) == []
    assert case.data()["review_excluded_users"] == ["s302", "s304"]
    received = [d["message"] for k, _, d in case.trail() if k == "message.received"]
    assert received == ["retention_request_received", "retention_client_withdraws"]
    # The retention figure counts the client as retained from what the case recorded.
    with db.transaction() as s:
        june = figures.Scope(start=sh(2025, 6, 1), end=sh(2025, 7, 1))
        result = figures.retention_figures(s, scope=june, now=sh(2025, 6, 30))
    assert (result.requests, result.open_to_talk, result.conversations_held, result.retained) == (1, 1, 1, 1)
    assert result.success_rate == 1.0
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # Talk 1 TD from 09:30; the cancelled instructions were due by 15:00; confirm 11:00+4 WH;
    # reviews 5 WD from 11:00 (06-17..06-23), recusing both who worked it.
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 6, 17, 9, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("confirm_withdrawal", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302", "user:s304"], sh(2025, 6, 23, 11)),
        ("review_head", ["SX01:branch_head"], None, ["user:s302", "user:s304"], sh(2025, 6, 23, 11)),
    ]


def test_the_client_may_withdraw_while_blocking_items_are_being_cleared(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0004")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C06, account_status={"same_day_orders": True})
        case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
        case.do("inform_blocking", "s104", {"items_explained": True, "expected_clear_date": "2025-06-17"})
        assert case.subscriptions() == ["retention_client_withdraws", "retention_items_cleared"]
        case.message("retention_client_withdraws")
        case.do("confirm_withdrawal", "s104", {"withdrawal_channel": "phone_recorded",
                                               "withdrawal_confirmed_by_client": True, "recording_id": "REC-W"})
        case.do("review_ops", "s102", REVIEWED)
    assert case.end_state() == "X2" and case.subscriptions() == []
    with db.transaction() as s:  # the lapse timer died with the wait
        assert s.execute(select(Timer.status).where(Timer.instance_id == case.instance_id,
                                                    Timer.element_id == "lapse_timer")).scalar_one() == "cancelled"
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # inform 09:30+4 WH; confirm 4 WH from 09:30; review 5 WD from 09:30 (06-17..06-23).
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("inform_blocking", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("confirm_withdrawal", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 6, 23, 9, 30)),
    ]


def test_submitting_the_instructions_cuts_the_conversation_off_and_ends_the_right_to_withdraw(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0005")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C05)
        case.do("accept", "s302", ACCEPT_TRANSFER)
        talk = case.task("retention_conversation")
        case.do("submit_instructions", "s302", SUBMITTED)  # the conversation has not happened yet
        assert case.task_row(talk.id).status == "cancelled"
        assert case.open_tasks() == [] and case.subscriptions() == ["retention_exchange_result"]
        with db.transaction() as s, pytest.raises(MessageNotCorrelated):
            messages.correlate(s, rt, name="retention_client_withdraws", correlation_key=case.key,
                               actor=identity.Actor.system("client"), payload={})
    assert ("retention_conversation", "s303") not in case.completions()
    assert case.data().get("retention_handled_by") is None
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The talk (cut off, never claimed) was due 1 TD from 09:30; instructions by the 15:00 close.
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 6, 17, 9, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
    ]


def test_a_withdrawal_also_closes_a_conversation_still_open(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0013")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C05)
        case.do("accept", "s302", ACCEPT_TRANSFER)
        talk, submit = case.task("retention_conversation"), case.task("submit_instructions")
        case.message("retention_client_withdraws")
        assert (case.task_row(talk.id).status, case.task_row(submit.id).status) == ("cancelled", "cancelled")
        assert [t.element_id for t in case.open_tasks()] == ["confirm_withdrawal"]
        case.do("confirm_withdrawal", "s302", {"withdrawal_channel": "app", "withdrawal_confirmed_by_client": True,
                                               "recording_id": "REC-APP"})
        case.do("review_ops", "s301", REVIEWED)
        case.do("review_head", "s301", REVIEWED)
    assert case.end_state() == "X2" and case.data().get("retention_handled_by") is None
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # Both cancelled tracks as offered; confirm 09:30+4 WH; reviews 5 WD from 09:30 (06-23).
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 6, 17, 9, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("confirm_withdrawal", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302"], sh(2025, 6, 23, 9, 30)),
        ("review_head", ["SX01:branch_head"], None, ["user:s302"], sh(2025, 6, 23, 9, 30)),
    ]


# -- preconditions, X3 and X4 -----------------------------------------------------------------
def test_blocking_items_are_explained_and_the_request_goes_on_once_the_client_clears_them(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0006")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        case.receive(C10, account_status={"holdings": 12000, "fund_balance": "3500.00", "suspended_securities": True})
        case.do("accept", "s104", ACCEPT_CLOSURE)
        # Suspended securities only block a 深市转托管, which this closure does not include.
        assert [i["code"] for i in case.task_data("inform_blocking")["blocking_items"]] == ["holdings", "fund_balance"]
        inform = case.task("inform_blocking")
        assert inform.candidate_groups == ["HZ01:counter_staff"] and inform.due_at == sh(2025, 6, 16, 13, 30)  # 4 WH
        case.do("inform_blocking", "s104", {"items_explained": True, "expected_clear_date": "2025-06-18"})
        clock.move_to(sh(2025, 6, 18, 10))
        case.message("retention_items_cleared", {"account_status": {"fund_balance": 0}})
        assert [t.element_id for t in case.open_tasks()] == ["submit_instructions"]
        assert case.task("submit_instructions").due_at == sh(2025, 6, 18, 15)  # the close of the re-check's day
        data = case.task_data("submit_instructions")
    assert (data["preconditions_met"], data["blocking_items"], data["precondition_checks"]) == (True, [], 2)
    assert [d["message"] for k, _, d in case.trail() if k == "message.received"] == \
        ["retention_request_received", "retention_items_cleared"]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # inform 09:30+4 WH; the instructions by the close of the re-check day (06-18 15:00).
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("inform_blocking", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 18, 15)),
    ]


def test_a_request_whose_items_are_not_cleared_lapses_after_twenty_trading_days(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250922-0001")
    informed = sh(2025, 9, 22, 10)  # the National Day closure (10-01..10-08) falls in the window
    with time_machine.travel(informed, tick=False) as clock:
        case.receive(C06, account_status={"margin_debt": 80000})
        case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
        inform = case.task("inform_blocking")
        assert (inform.candidate_groups, inform.assignee, inform.due_at) == \
            (["HZ01:counter_staff"], None, sh(2025, 9, 22, 14))  # 4 WH
        case.do("inform_blocking", "s104", {"items_explained": True})
        assert case.open_tasks() == []  # waiting for the client: nothing offered to anyone
        with db.transaction() as s:
            timer = s.execute(select(Timer).where(Timer.instance_id == case.instance_id,
                                                  Timer.element_id == "lapse_timer")).scalar_one()
        # 20 trading days on the trading calendar: National Day (10-01..10-08) and the make-up
        # working Sunday 09-28 and Saturday 10-11 (no trading) are skipped: 2025-10-28 10:00,
        # not 40 calendar days (2025-11-01).
        assert settings.default("retention.lapse_trading_days") == 20
        assert timer.due_at == _trading_days_after(db, informed, 20) == sh(2025, 10, 28, 10)
        clock.move_to(timer.due_at)
        assert firing.fire_due(db, rt) == 0
        clock.shift(timedelta(minutes=1))
        assert firing.fire_due(db, rt) >= 1
        case.assert_not_failed()
        assert "end_lapsed" in case.own_ends() and case.subscriptions() == []
        review = case.task("review_ops")
        assert (review.candidate_groups, review.assignee, review.due_at) == \
            (["HZ01:branch_ops_director"], None, sh(2025, 11, 4, 10, 1))  # 5 WD
        case.do("review_ops", "s102", REVIEWED)  # lapses are always reviewed
    assert case.instance().status == "completed" and case.end_state() == "X3"
    assert ("timer.fired", "timer") in [(k, a) for k, a, _ in case.trail()]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 10:00+2 WH; inform +4 WH; review 5 WD from the lapse 10-28 10:01 (10-29..11-04).
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 9, 22, 12)),
        ("inform_blocking", ["HZ01:counter_staff"], None, [], sh(2025, 9, 22, 14)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 11, 4, 10, 1)),
    ]


def test_a_judicial_freeze_is_refused_with_its_legal_basis(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0007")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C06, account_status={"judicial_freeze": True, "holdings": 1000})
        case.do("accept", "s104", ACCEPT_TRANSFER)
        assert [t.element_id for t in case.open_tasks()] == ["inform_rejection"]  # no retention talk, no blocking list
        rejection = case.do("inform_rejection", "s104", {"rejection_reason": "judicial_freeze",
                                                         "legal_basis": "法院协助冻结通知书（2025）浙0102执123号",
                                                         "informed_at": "2025-06-16T10:00:00+08:00"})
        assert rejection.candidate_groups == ["HZ01:counter_staff"]
        case.do("review_ops", "s102", REVIEWED)
    assert case.end_state() == "X4" and case.data()["outcome"] == "rejected"
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # inform_rejection 09:30+4 WH; review 5 WD from 09:30 (06-17..06-23), recusing s104.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("inform_rejection", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 6, 23, 9, 30)),
    ]


def test_an_unverified_identity_is_refused_before_anything_else(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0008")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C06)
        case.do("accept", "s104", {"request_types": ["sz_transfer"], "target_broker": "XX证券",
                                   "target_seat_no": "123456", "identity_verified": False,
                                   "client_open_to_retention_talk": True, "informed_of_procedure_and_timeline": True})
        assert [t.element_id for t in case.open_tasks()] == ["inform_rejection"]
        case.do("inform_rejection", "s104", {"rejection_reason": "identity_not_verified",
                                             "legal_basis": "《证券账户管理规则》本人办理，身份证件与人像不符",
                                             "informed_at": "2025-06-16T09:45:00+08:00"})
        case.do("review_ops", "s102", REVIEWED)
    assert case.end_state() == "X4"
    with db.transaction() as s:
        assert s.execute(select(Task).where(Task.business_key == case.key, Task.element_id.in_(
            ("submit_instructions", "retention_conversation")))).first() is None
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # inform_rejection 09:30+4 WH; review 5 WD from 09:30 (06-17..06-23), recusing s104.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("inform_rejection", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 6, 23, 9, 30)),
    ]


# -- the operational track -----------------------------------------------------------------------
# accepted: 2 working hours (09:00–17:00, make-up days count) from the request, 10 minutes before ready.
@pytest.mark.parametrize(("ready", "due", "accept_due"), [
    # Monday before the close: that day's close
    (sh(2025, 6, 16, 14, 59), sh(2025, 6, 16, 15), sh(2025, 6, 16, 16, 49)),
    (sh(2025, 6, 16, 15), sh(2025, 6, 17, 15), sh(2025, 6, 16, 16, 50)),  # at the close: the next trading day's
    (sh(2025, 6, 13, 18, 40), sh(2025, 6, 16, 15), sh(2025, 6, 16, 11)),  # Friday evening: over the weekend to Monday
    # the day before National Day (10-01..10-08 closed)
    (sh(2025, 9, 30, 16), sh(2025, 10, 9, 15), sh(2025, 10, 9, 9, 50)),
    # make-up Sunday 09-28: branches open, exchanges closed
    (sh(2025, 9, 28, 10), sh(2025, 9, 29, 15), sh(2025, 9, 28, 11, 50)),
    # Friday: Saturday 10-11 is a make-up working day, not a TD
    (sh(2025, 10, 10, 16), sh(2025, 10, 13, 15), sh(2025, 10, 11, 9, 50)),
    (sh(2025, 10, 11, 10, 30), sh(2025, 10, 13, 15), sh(2025, 10, 11, 12, 20)),  # ready on that make-up Saturday
], ids=["before-close", "at-close", "friday-evening", "before-national-day", "make-up-sunday",
        "before-make-up-saturday", "on-make-up-saturday"])
def test_instructions_are_due_by_the_close_of_the_trading_day_the_request_became_ready(db, rt, staff, ready, due,
                                                                                      accept_due):
    # Timer behaviour changed with the date functions: this was "1 TD from the clock start"
    # (retention.sla.submit); the diagram now gives the due date, the policy the reminders.
    case = Case(db, rt, staff, "RET-TD")
    with time_machine.travel(ready - timedelta(minutes=10), tick=False) as clock:
        case.receive(C06)
        clock.move_to(ready)
        case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
    submit = case.task("submit_instructions")
    assert (submit.due_at, submit.due_source, submit.calendar_incomplete) == (due, "diagram", False)
    with db.transaction() as s:
        breach = s.execute(select(Timer.payload).where(Timer.kind == "sla", Timer.task_uuid == submit.task_uuid,
                                                       Timer.due_at == due)).scalars().all()
    assert sorted((p["action"], p["to"]) for p in breach) == [
        ("escalate", "branch:branch_ops_director"), ("escalate", "compliance")]
    assert case.offers() == [("accept", ["HZ01:counter_staff"], None, [], accept_due),
                             ("submit_instructions", ["HZ01:counter_staff"], None, [], due)]


def test_the_submission_cut_off_and_the_result_check_time_are_tunables(db, rt, staff):
    # An exchange (or a branch) with an earlier cut-off: the case's own values, not the diagram's.
    case = Case(db, rt, staff, "RET-CUTOFF")
    with time_machine.travel(sh(2025, 6, 16, 14, 30), tick=False):  # Monday, after a 14:00 cut-off
        case.receive(C06, submit_cutoff="14:00", result_check_at="09:30")
        case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
    assert case.task("submit_instructions").due_at == sh(2025, 6, 17, 14)  # the next trading day's cut-off
    with time_machine.travel(sh(2025, 6, 17, 10), tick=False):
        case.do("submit_instructions", "s104", {**SUBMITTED, "submitted_at": "2025-06-17T10:00:00+08:00"})
    with db.transaction() as s:
        [chase_at] = s.execute(select(Timer.due_at).where(Timer.instance_id == case.instance_id, Timer.kind == "bpmn",
                                                          Timer.element_id == "result_due")).scalars().all()
    assert chase_at == sh(2025, 6, 18, 9, 30)  # T+1 at the case's check time
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 14:30+2 WH; instructions by the next TD's 14:00 cut-off.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 16, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 17, 14)),
    ]


def test_a_due_date_beyond_the_known_calendar_is_flagged(db, rt, staff):
    case = Case(db, rt, staff, "RET-20261231-0001")
    with time_machine.travel(sh(2026, 12, 31, 16), tick=False):  # 2027's holidays are not known yet
        case.receive(C06)
        case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
    submit = case.task("submit_instructions")
    # 2027-01-01 is a Friday: beyond the known data only weekends are closed, so it is a
    # guess (New Year's Day will close the exchanges) and the task says so.
    assert (submit.due_at, submit.calendar_incomplete) == (sh(2027, 1, 1, 15), True)
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 12-31 16:00+2 WH (1 h that day, 1 h on Fri 2027-01-01, a guessed working day).
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2027, 1, 1, 10)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2027, 1, 1, 15)),
    ]


def test_instructions_not_submitted_within_a_trading_day_escalate_and_flag_compliance(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0009")
    with time_machine.travel(sh(2025, 6, 16, 10), tick=False) as clock:
        case.receive(C06)
        case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
        submit = case.task("submit_instructions")
        clock.move_to(sh(2025, 6, 17, 10, 1))
        firing.fire_due(db, rt)
        with db.transaction() as s:
            escalations = s.execute(select(Task).where(Task.instance_id == case.instance_id,
                                                       Task.kind == "escalation")).scalars().all()
        assert sorted(g for t in escalations for g in t.candidate_groups) == ["HZ01:branch_ops_director", "compliance"]
        assert case.task_row(submit.id).breached_at is not None
        case.do("submit_instructions", "s104", SUBMITTED)  # late, but nothing ever stops it
    kinds = [k for k, _, _ in case.trail()]
    assert kinds.count("sla.escalated") == 2 and "sla.breached" in kinds
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The late submission (result due 06-17 10:00 already past) is chased at once: 10:01+2 WH.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 12)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("chase_result", ["HZ01:counter_staff"], None, [], sh(2025, 6, 17, 12, 1)),
    ]


def test_an_exchange_failure_is_resolved_resubmitted_and_then_completed(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0010")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        case.receive(C05)
        case.do("accept", "s302", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
        case.do("submit_instructions", "s302", SUBMITTED)
        clock.move_to(sh(2025, 6, 17, 10))
        case.message("retention_exchange_result", {"exchange_result": "failed", "failure_reason": "转入席位号有误"},
                  sender="csdc")
        failure = case.task("resolve_failure")
        assert failure.candidate_groups == ["SX01:counter_staff"] and failure.due_at == sh(2025, 6, 18, 10)  # 1 TD
        case.do("resolve_failure", "s302", {"resolution": "与客户核对后更正席位号", "instruction_refs": ["SZ-TG-0002"],
                                            "resubmitted_at": "2025-06-17T10:30:00+08:00"})
        assert case.subscriptions() == ["retention_exchange_result"]
        assert case.waiting_timers() == [("result_due", sh(2025, 6, 18, 10))]  # T+1 of the resubmission
        clock.move_to(sh(2025, 6, 18, 10))
        case.message("retention_exchange_result", {"exchange_result": "success", "failure_reason": None}, sender="csdc")
        case.do("complete_notify", "s302", COMPLETED)
    assert case.end_state() == "X1"
    assert [d["payload"]["exchange_result"] for k, _, d in case.trail()
            if k == "message.received" and d["message"] == "retention_exchange_result"] == ["failed", "success"]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # resolve 1 TD from 06-17 10:00; completion 1 TD from 06-18 10:00; review 5 WD (06-19..06-25).
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("resolve_failure", ["SX01:counter_staff"], None, [], sh(2025, 6, 18, 10)),
        ("complete_notify", ["SX01:counter_staff"], None, [], sh(2025, 6, 19, 10)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302"], sh(2025, 6, 25, 10)),
    ]


# -- waiting for the exchange (A2/A3) ----------------------------------------------------------
def _submitted(db, rt, staff, key: str, submitted_at: str) -> Case:
    """A transfer whose instructions were submitted at ``submitted_at`` (recorded then)."""
    case = Case(db, rt, staff, key)
    case.receive(C06)
    case.do("accept", "s104", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
    case.do("submit_instructions", "s104", {**SUBMITTED, "submitted_at": submitted_at})
    return case


# offered: (accept due 2 WH after the request, submit due at the ready day's 15:00 close or the next TD's).
@pytest.mark.parametrize(("submitted_at", "chase_at", "offered"), [
    # Monday: T+1 is Tuesday
    ("2025-06-16T10:30:00+08:00", sh(2025, 6, 17, 10), (sh(2025, 6, 16, 12, 30), sh(2025, 6, 16, 15))),
    # at the 15:00 cut-off: T is the next trading day
    ("2025-06-16T15:00:00+08:00", sh(2025, 6, 18, 10), (sh(2025, 6, 16, 17), sh(2025, 6, 17, 15))),
    # Friday: over the weekend
    ("2025-06-13T14:00:00+08:00", sh(2025, 6, 16, 10), (sh(2025, 6, 13, 16), sh(2025, 6, 13, 15))),
    # Friday after the cut-off: T Monday, T+1 Tuesday
    ("2025-06-13T16:00:00+08:00", sh(2025, 6, 17, 10), (sh(2025, 6, 16, 10), sh(2025, 6, 16, 15))),
    # before National Day (10-01..10-08 closed)
    ("2025-09-30T14:00:00+08:00", sh(2025, 10, 9, 10), (sh(2025, 9, 30, 16), sh(2025, 9, 30, 15))),
    # Friday: make-up Sunday 09-28 is no trading day
    ("2025-09-26T14:00:00+08:00", sh(2025, 9, 29, 10), (sh(2025, 9, 26, 16), sh(2025, 9, 26, 15))),
    # recorded on that make-up Sunday: T is Monday
    ("2025-09-28T10:00:00+08:00", sh(2025, 9, 30, 10), (sh(2025, 9, 28, 12), sh(2025, 9, 29, 15))),
], ids=["monday", "at-cut-off", "friday", "friday-after-cut-off", "before-national-day",
        "before-make-up-sunday", "on-make-up-sunday"])
def test_the_exchange_result_is_awaited_until_ten_on_the_next_trading_day(db, rt, staff, submitted_at, chase_at,
                                                                          offered):
    with time_machine.travel(datetime.fromisoformat(submitted_at), tick=False):
        case = _submitted(db, rt, staff, "RET-WAIT", submitted_at)
    assert case.subscriptions() == ["retention_exchange_result"]  # the result may come at any time
    assert case.waiting_timers() == [("result_due", chase_at)]
    accept_due, submit_due = offered
    assert case.offers() == [("accept", ["HZ01:counter_staff"], None, [], accept_due),
                             ("submit_instructions", ["HZ01:counter_staff"], None, [], submit_due)]


def test_a_result_missing_at_ten_on_the_next_trading_day_is_chased_and_recorded(db, rt, staff):
    with time_machine.travel(sh(2025, 9, 30, 14), tick=False) as clock:
        case = _submitted(db, rt, staff, "RET-20250930-0001", "2025-09-30T14:00:00+08:00")
        clock.move_to(sh(2025, 10, 9, 10))  # due, but a timer fires only once its time has passed
        assert firing.fire_due(db, rt) == 0 and case.open_tasks() == []
        clock.shift(timedelta(minutes=1))
        assert firing.fire_due(db, rt) == 1
        chase = case.task("chase_result")
        assert (chase.candidate_groups, chase.due_at) == (["HZ01:counter_staff"], sh(2025, 10, 9, 12, 1))  # 2 WH
        assert case.subscriptions() == ["retention_exchange_result"]  # a late result still closes the wait
        clock.move_to(sh(2025, 10, 9, 10, 20))
        case.do("chase_result", "s104", {"exchange_result": "success", "result_source": "csdc_terminal",
                                         "result_checked_at": "2025-10-09T10:20:00+08:00"})
        assert [t.element_id for t in case.open_tasks()] == ["complete_notify"]
        assert case.subscriptions() == [] and case.waiting_timers() == []
        case.do("complete_notify", "s104", {**COMPLETED, "completed_at": "2025-10-09T10:30:00+08:00"})
        case.do("review_ops", "s102", REVIEWED)
    data = case.data()
    assert (data["exchange_result"], data["result_chased_by"], data["outcome"]) == ("success", "s104", "completed")
    assert "s104" in data["review_excluded_users"]
    assert ("timer.fired", "timer") in [(k, a) for k, a, _ in case.trail()]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 14:00+2 WH; the chase 10-09 10:01+2 WH; completion 1 TD from 10:20 (10-10); review
    # 5 WD from 10-09 10:20: 10-10, Sat 10-11 (make-up working day), 10-13, 10-14, 10-15.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 9, 30, 16)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 9, 30, 15)),
        ("chase_result", ["HZ01:counter_staff"], None, [], sh(2025, 10, 9, 12, 1)),
        ("complete_notify", ["HZ01:counter_staff"], None, [], sh(2025, 10, 10, 10, 20)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104"], sh(2025, 10, 15, 10, 20)),
    ]


def test_a_result_arriving_while_it_is_chased_closes_the_chase_and_a_resubmission_waits_again(db, rt, staff):
    with time_machine.travel(sh(2025, 6, 16, 10, 30), tick=False) as clock:
        case = _submitted(db, rt, staff, "RET-20250616-0030", "2025-06-16T10:30:00+08:00")
        clock.move_to(sh(2025, 6, 17, 10, 1))
        firing.fire_due(db, rt)
        chase = case.task("chase_result")
        clock.move_to(sh(2025, 6, 17, 10, 15))
        case.message("retention_exchange_result", {"exchange_result": "failed", "failure_reason": "转入席位号有误"},
                  sender="csdc")
        assert case.task_row(chase.id).status == "cancelled"
        assert [t.element_id for t in case.open_tasks()] == ["resolve_failure"]
        clock.move_to(sh(2025, 6, 17, 15, 30))
        case.do("resolve_failure", "s104", {"resolution": "更正席位号后重新提交", "instruction_refs": ["SZ-TG-0031"],
                                            "resubmitted_at": "2025-06-17T15:30:00+08:00"})
        # Resubmitted after the cut-off: T is Wednesday 06-18, the result is due Thursday 10:00.
        assert case.waiting_timers() == [("result_due", sh(2025, 6, 19, 10))]
        assert case.subscriptions() == ["retention_exchange_result"]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The cancelled chase 10:01+2 WH; resolve 1 TD from the failure at 06-17 10:15.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 12, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("chase_result", ["HZ01:counter_staff"], None, [], sh(2025, 6, 17, 12, 1)),
        ("resolve_failure", ["HZ01:counter_staff"], None, [], sh(2025, 6, 18, 10, 15)),
    ]


def test_a_calendar_correction_applies_to_waits_armed_after_the_revision_moves(db, rt, staff):
    with time_machine.travel(sh(2025, 6, 16, 10, 30), tick=False):
        before = _submitted(db, rt, staff, "RET-20250616-0040", "2025-06-16T10:30:00+08:00")
        with db.transaction() as s:  # the exchanges close on Tuesday 06-17 (a typhoon)
            sla_admin.set_day(s, day=date(2025, 6, 17), working=False, trading=False, name="台风休市",
                        actor=staff["s001"], now=rt.now())
        after = _submitted(db, rt, staff, "RET-20250616-0041", "2025-06-16T10:30:00+08:00")
    # A timer keeps the due time it was armed with (SpiffWorkflow stores it); one armed after
    # the correction counts on the corrected calendar.
    assert before.waiting_timers() == [("result_due", sh(2025, 6, 17, 10))]
    assert after.waiting_timers() == [("result_due", sh(2025, 6, 18, 10))]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 10:30+2 WH and the instructions by 15:00, both before and after the correction.
    assert before.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 12, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
    ]
    assert after.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 12, 30)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
    ]


def test_a_chase_time_beyond_the_known_calendar_is_flagged_in_the_case(db, rt, staff):
    with time_machine.travel(sh(2026, 12, 31, 10), tick=False) as clock:
        case = _submitted(db, rt, staff, "RET-20261231-0002", "2026-12-31T10:00:00+08:00")
        # 2027-01-01 is a Friday beyond the known data: counted as a trading day, and flagged.
        assert case.waiting_timers() == [("result_due", sh(2027, 1, 1, 10))]
        clock.move_to(sh(2027, 1, 1, 10, 1))
        firing.fire_due(db, rt)
        assert case.task_data("chase_result")["calendar_incomplete"] is True
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # accept 10:00+2 WH; the chase on 2027-01-01 (guessed working day) 10:01+2 WH.
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2026, 12, 31, 12)),
        ("submit_instructions", ["HZ01:counter_staff"], None, [], sh(2026, 12, 31, 15)),
        ("chase_result", ["HZ01:counter_staff"], None, [], sh(2027, 1, 1, 12, 1)),
    ]


# -- R6: the post-hoc review -------------------------------------------------------------------
def test_nobody_reviews_a_case_they_worked_on(db, rt, staff):
    # A deputy who also works the counter (as in small branches): HZ01's review group has two people.
    with db.transaction() as s:
        identity.create_user(s, username="s110", display_name="测试副总监", now=rt.now(), branch_code="HZ01",
                             groups=["counter_staff", "HZ01:counter_staff", "branch_ops_director",
                                     "HZ01:branch_ops_director"], actor="test")
        staff["s110"] = identity.actor_for(s, identity.get_user(s, "s110"))
    case = Case(db, rt, staff, "RET-20250616-0011")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C06, account_status={"judicial_freeze": True})
        case.do("accept", "s110", ACCEPT_TRANSFER)
        case.do("inform_rejection", "s104", {"rejection_reason": "judicial_freeze", "legal_basis": "协助冻结通知书",
                                             "informed_at": "2025-06-16T10:00:00+08:00"})
        review = case.task("review_ops")
        assert review.candidate_groups == ["HZ01:branch_ops_director"]
        with db.transaction() as s:
            inbox, _ = tasks.inbox(s, actor=staff["s110"], query=tasks.InboxQuery(business_key=case.key),
                                   now=rt.now())
            assert review.id not in {t.id for t in inbox}
        with db.transaction() as s, pytest.raises(TaskNotFound):
            tasks.complete(s, rt, task_id=review.id, actor=staff["s110"], data=REVIEWED)
        case.do("review_ops", "s102", REVIEWED)
    assert case.data()["review_excluded_users"] == ["s104", "s110"]  # accepted_by, rejected_by
    assert case.instance().status == "completed" and case.end_state() == "X4"
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # review 5 WD from 09:30 (06-17..06-23), recusing both s110 (accepted) and s104 (rejected).
    assert case.offers() == [
        ("accept", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("inform_rejection", ["HZ01:counter_staff"], None, [], sh(2025, 6, 16, 13, 30)),
        ("review_ops", ["HZ01:branch_ops_director"], None, ["user:s104", "user:s110"], sh(2025, 6, 23, 9, 30)),
    ]


def test_completed_cases_are_sampled_for_review_by_the_configured_rate(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0012")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False):
        case.receive(C05, review_sample_rate=0)
        case.do("accept", "s302", {**ACCEPT_TRANSFER, "client_open_to_retention_talk": False})
        case.do("submit_instructions", "s302", SUBMITTED)
        case.message("retention_exchange_result", {"exchange_result": "success"}, sender="csdc")
        case.do("complete_notify", "s302", COMPLETED)
    assert case.instance().status == "completed"
    assert case.own_ends() == {"end_completed", "end_review_skipped"}
    assert (case.data()["review_required"], case.open_tasks()) == (False, [])
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The result came at 09:30: completion 1 TD from then (06-17 09:30); no review offered.
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("complete_notify", ["SX01:counter_staff"], None, [], sh(2025, 6, 17, 9, 30)),
    ]


# -- service functions -------------------------------------------------------------------------
def test_tunables_come_from_the_case_or_the_brief_defaults():
    assert settings_of({}) == {"lapse_trading_days": 20, "review_asset_threshold": 500000.0,
                               "review_sample_rate": 1.0, "submit_cutoff": "15:00", "result_check_at": "10:00"}
    assert settings_of({"lapse_trading_days": "15", "review_sample_rate": "0.25"})["lapse_trading_days"] == 15
    for bad in ("P40D", 0, True, 1.5):
        with pytest.raises(ValueError, match="lapse_trading_days must be a whole number"):
            settings_of({"lapse_trading_days": bad})
    with pytest.raises(ValueError, match="between 0 and 1"):
        settings_of({"review_sample_rate": 2})
    with pytest.raises(ValueError, match="submit_cutoff must be a time of day"):
        settings_of({"submit_cutoff": "3pm"})
    with pytest.raises(ValueError, match="branch_code"):
        prepare({"client_id": "C05"}, {})
    assert prepare({"client_id": "C10", "branch_code": "HZ01"}, {})["retention_groups"] == \
        ["HZ01:account_manager"]  # branch-pool clients: the branch's account managers


def test_blocking_items_depend_on_what_is_requested():
    snapshot = {"account_status": {"same_day_orders": True, "holdings": 100, "suspended_securities": True}}
    assert [i["code"] for i in check_preconditions({**snapshot, "request_types": ["sz_transfer"]}, {})
            ["blocking_items"]] == ["suspended_securities"]  # a transfer moves the holdings; orders do not block it
    assert [i["code"] for i in check_preconditions({**snapshot, "request_types": ["sh_dedesignation"]}, {})
            ["blocking_items"]] == ["same_day_orders"]
    closure = check_preconditions({**snapshot, "request_types": ["securities_account_cancellation"]}, {})
    assert [i["code"] for i in closure["blocking_items"]] == ["same_day_orders", "holdings"]
    assert check_preconditions({"request_types": ["sz_transfer"], "account_status": {"margin_debt": "0.00"}}, {})[
        "preconditions_met"] is True
    credit = {"account_status": {"credit_account_open": True}}
    assert [i["code"] for i in check_preconditions({**credit, "request_types": ["fund_account_closure"]}, {})
            ["blocking_items"]] == ["credit_account_open"]  # the credit account is closed first…
    assert check_preconditions({**credit, "request_types": ["credit_account_closure", "fund_account_closure"]}, {})[
        "preconditions_met"] is True  # …which a request that includes it does
    frozen = check_preconditions({"request_types": ["sz_transfer"], "account_status": {"judicial_freeze": True}}, {})
    assert (frozen["exit_state"], frozen["preconditions_met"]) == ("frozen", False)
    with pytest.raises(ValueError, match="request_types"):
        check_preconditions({"request_types": ["close_everything"]}, {})


def test_the_outcome_and_the_review_follow_the_facts_of_the_path():
    assert outcome_of({"exit_state": "withdrawn", "exchange_result": None}) == "retained"
    assert outcome_of({"exit_state": "lapsed"}) == "lapsed"
    assert outcome_of({"identity_verified": False}) == "rejected"
    assert outcome_of({"exit_state": "frozen", "identity_verified": True}) == "rejected"
    assert outcome_of({"exit_state": "submitted", "exchange_result": "success"}) == "completed"
    with pytest.raises(ValueError):
        outcome_of({"exit_state": "submitted", "exchange_result": "failed"})
    case = {"client_id": "C05", "branch_code": "SX01", "service_group": "SX01-G1",
            "exit_state": "lapsed", "client_assets": 500000, "review_sample_rate": 0,
            "accepted_by": "s302", "blocking_informed_by": "s302", "reviewed_by": "s301"}
    result = wrap_up(case, {})
    assert (result["review_required"], result["review_by_branch_head"]) == (True, False)  # not above the threshold
    assert result["review_excluded_users"] == ["s302"] and result["post_closure_callback"] is None
    done = wrap_up({**case, "exit_state": "submitted", "exchange_result": "success", "review_sample_rate": 1,
                    "client_assets": 500000.01}, {})
    assert (done["outcome"], done["review_required"], done["review_by_branch_head"]) == ("completed", True, True)
    assert done["post_closure_callback"] == {
        "callback_type": "post_closure", "client_id": "C05", "branch_code": "SX01", "service_group": "SX01-G1",
        "request_types": [], "closure_reason_stated": None, "completed_at": None}


# -- the diagram -------------------------------------------------------------------------------
def test_the_diagram_lints_and_has_interchange_for_every_element(rt):
    path = WORKFLOWS / "retention.bpmn"
    processes, problems = deployments.check(None, rt, bundle.from_paths([WORKFLOWS]))
    assert problems == [] and "retention" in [p.key for p in processes]
    ns = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
          "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI", "di": "http://www.omg.org/spec/DD/20100524/DI"}
    camunda = "{http://camunda.org/schema/1.0/bpmn}"
    tree = etree.parse(str(path))
    kinds = ("startEvent", "endEvent", "userTask", "serviceTask", "receiveTask", "exclusiveGateway",
             "parallelGateway", "intermediateCatchEvent", "intermediateThrowEvent", "boundaryEvent", "subProcess",
             "lane", "participant")
    nodes = {el.get("id") for kind in kinds for el in tree.iterfind(f".//bpmn:{kind}", ns)}
    shapes = {s.get("bpmnElement") for s in tree.iterfind(".//bpmndi:BPMNShape", ns)}
    edges = {e.get("bpmnElement"): len(e.findall("di:waypoint", ns)) for e in tree.iterfind(".//bpmndi:BPMNEdge", ns)}
    flows = {f.get("id") for f in tree.iterfind(".//bpmn:sequenceFlow", ns)} | {
        f.get("id") for f in tree.iterfind(".//bpmn:messageFlow", ns)}
    assert nodes - shapes == set() and flows - set(edges) == set() and min(edges.values()) >= 2
    for task in tree.iterfind(".//bpmn:userTask", ns):  # a form and candidate groups on every user task
        assert task.get(f"{camunda}candidateGroups")
        assert (WORKFLOWS / "forms" / f"{task.get(f'{camunda}formKey')}.json").exists()
    # The callback process starts on the message the retention case throws.
    callback = etree.parse(str(WORKFLOWS / "callback.bpmn"))
    names = {m.get("name") for m in callback.iterfind("bpmn:message", ns)}
    assert "post_closure_callback_requested" in names


# -- X1 for a full closure: the registry and the client's other open cases -------------------------
C07 = {"client_id": "C07", "branch_code": "SX01", "service_group": "SX01-G1", "client_assets": 180000}


def _registry_row(db, client_id: str) -> tuple[Any, ...]:
    from engine.models import Client

    with db.transaction() as s:
        c = s.get(Client, client_id)
        return c.account_status, c.vip_tier, c.tier_since, c.downgrade_grace_until, c.service_group_key


def _close_account(case: Case, clock: Any, request_types: list[str]) -> None:
    """C07 closes out at the SX01 counter, no retention talk; every step's offer and due date."""
    case.receive(C07)
    accept = case.task("accept")
    assert (accept.candidate_groups, accept.assignee, accept.due_at) == \
        (["SX01:counter_staff"], None, sh(2025, 6, 16, 11, 30))  # 2 working hours
    case.do("accept", "s302", {**ACCEPT_CLOSURE, "request_types": request_types})
    submit = case.task("submit_instructions")
    assert (submit.candidate_groups, submit.assignee, submit.due_at) == \
        (["SX01:counter_staff"], None, sh(2025, 6, 16, 15))  # the day's close
    case.do("submit_instructions", "s302", SUBMITTED)
    clock.move_to(sh(2025, 6, 16, 15))
    case.message("retention_exchange_result", {"exchange_result": "success"}, sender="csdc")
    notify = case.task("complete_notify")
    assert (notify.candidate_groups, notify.assignee, notify.due_at) == \
        (["SX01:counter_staff"], None, sh(2025, 6, 17, 15))  # 1 TD
    case.do("complete_notify", "s302", {**COMPLETED, "completed_at": "2025-06-16T15:00:00+08:00"})
    review = case.task("review_ops")
    assert (review.candidate_groups, review.assignee, review.due_at) == \
        (["SX01:branch_ops_director"], None, sh(2025, 6, 23, 15))  # 5 WD


def _other_cases(db, rt, staff) -> tuple[Any, int]:
    """C07's open cases before the closure: a downgrade in its grace period and an anomaly callback."""
    from tests.brokerage.test_vip import GRACE_START
    from tests.brokerage.test_vip import Case as VipCase

    vip = VipCase(db, rt, staff, "VIP-20250616-0007")
    vip.start({**GRACE_START, "evaluated_at": "2025-06-16T09:00:00+08:00"})
    assert vip.open_tasks() == []  # waits in its grace period: nothing offered to anyone
    with db.transaction() as s:
        callback = instances.start(s, rt, process_key="callback", business_key="CB-20250616-0077",
                                   actor=identity.Actor.system("surveillance"),
                                   data={"callback_type": "anomaly", "client_id": "C07", "branch_code": "SX01",
                                         "service_group": "SX01-G1"})
        callback_id = callback.id
    call = s_task(db, "CB-20250616-0077", "call_attempt")
    assert (call.candidate_groups, call.assignee, call.due_at) == (["call_center_agent"], None, sh(2025, 6, 17, 9, 30))
    return vip, callback_id


def s_task(db, key: str, element: str) -> Task:
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                            Task.status.in_(("open", "claimed")))).scalar_one()


def test_a_full_closure_closes_the_account_and_ends_the_clients_open_cases(db, rt, staff):
    # Demo: C07 吴海涛 is a gold client of SX01-G1 with a downgrade pending until 2025-08-01.
    assert _registry_row(db, "C07") == ("active", "gold", date(2024, 5, 6), date(2025, 8, 1), "SX01-G1")
    case = Case(db, rt, staff, "RET-20250616-0005")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        vip, callback_id = _other_cases(db, rt, staff)
        _close_account(case, clock, ["fund_account_closure", "securities_account_cancellation"])
    assert case.data()["outcome"] == "completed"
    # The registry: closed, no tier, out of its service group.
    assert _registry_row(db, "C07") == ("closed", None, None, None, None)
    # The VIP case ends "Closed" by the account-closed message it waits for.
    assert vip.end_state() == "end_closed"
    with db.transaction() as s:
        callback = s.get(ProcessInstance, callback_id)
        assert (callback.status, callback.ended_by) == ("cancelled", "account-closure")
        cancelled = s.execute(select(AuditEvent.data).where(AuditEvent.stream == f"instance:{callback_id}",
                                                             AuditEvent.kind == "instance.cancelled")).scalar_one()
        assert "account closed" in cancelled["reason"]
        left = s.execute(select(Task.status).where(Task.instance_id == callback_id)).scalars().all()
        assert set(left) == {"cancelled"}
    # The post-closure callback replaces it, offered to the call centre, due 5 WD on.
    (post,) = [c for c in _callbacks(db) if c.id != callback_id]
    assert post.status == "running" and (post.facts or {}).get("callback_type") == "post_closure"
    call = s_task(db, post.business_key, "call_attempt")
    assert (call.candidate_groups, call.assignee, call.due_at) == (["call_center_agent"], None, sh(2025, 6, 23, 15))
    (closed,) = [d for k, _, d in case.trail() if k == "client.account_closed"]
    assert closed["changes"] == {
        "account_status": ["active", "closed"], "vip_tier": ["gold", None], "tier_since": ["2024-05-06", None],
        "downgrade_grace_until": ["2025-08-01", None], "service_group_key": ["SX01-G1", None]}
    assert closed["cases_ended"] == [
        {"business_key": "VIP-20250616-0007", "process_key": "vip_onboarding", "how": "vip_account_closed"},
        {"business_key": "CB-20250616-0077", "process_key": "callback", "how": "cancelled"}]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # completion 1 TD from 06-16 15:00; review 5 WD from then (06-17..06-23).
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("complete_notify", ["SX01:counter_staff"], None, [], sh(2025, 6, 17, 15)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302"], sh(2025, 6, 23, 15)),
    ]


def test_a_transfer_alone_leaves_the_account_and_the_clients_cases_as_they_were(db, rt, staff):
    case = Case(db, rt, staff, "RET-20250616-0006")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        vip, callback_id = _other_cases(db, rt, staff)
        _close_account(case, clock, ["sh_dedesignation"])
    assert case.data()["outcome"] == "completed"
    assert _registry_row(db, "C07") == ("active", "gold", date(2024, 5, 6), date(2025, 8, 1), "SX01-G1")
    assert vip.status() == "running"
    with db.transaction() as s:
        assert s.get(ProcessInstance, callback_id).status == "running"
    assert not [k for k, _, _ in case.trail() if k == "client.account_closed"]
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # completion 1 TD from 06-16 15:00; review 5 WD from then (06-17..06-23).
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
        ("complete_notify", ["SX01:counter_staff"], None, [], sh(2025, 6, 17, 15)),
        ("review_ops", ["SX01:branch_ops_director"], None, ["user:s302"], sh(2025, 6, 23, 15)),
    ]


def test_the_escalations_of_the_instructions_close_when_the_instructions_are_submitted(db, rt, staff):
    """RET-…-0002: submitting the instructions a day late escalated them twice (the branch's
    operations director and compliance); once they are submitted, neither escalation stays open."""
    from engine.models import AuditEvent, Task, TaskKind

    case = Case(db, rt, staff, "RET-20250616-0102")
    with time_machine.travel(sh(2025, 6, 16, 9, 30), tick=False) as clock:
        case.receive(C05)
        case.do("accept", "s302", ACCEPT_TRANSFER)
        submit = case.task("submit_instructions")
        assert (submit.candidate_groups, submit.assignee, submit.due_at) == \
            (["SX01:counter_staff"], None, sh(2025, 6, 16, 15))
        clock.move_to(sh(2025, 6, 16, 15, 1))
        assert firing.fire_due(db, rt) >= 2

        def escalations() -> list[tuple[list[str], str, int | None]]:
            with db.transaction() as s:
                return [(t.candidate_groups, t.status, t.escalated_task_id) for t in s.execute(
                    select(Task).where(Task.instance_id == case.instance_id, Task.kind == TaskKind.ESCALATION)
                    .order_by(Task.id)).scalars()]

        assert escalations() == [(["SX01:branch_ops_director"], "open", submit.id), (["compliance"], "open", submit.id)]
        case.do("submit_instructions", "s302", SUBMITTED, alone=False)
        assert escalations() == [(["SX01:branch_ops_director"], "cancelled", submit.id),
                                 (["compliance"], "cancelled", submit.id)]
    with db.transaction() as s:
        closed = s.execute(select(AuditEvent.data).where(AuditEvent.stream == f"instance:{case.instance_id}",
                                                         AuditEvent.kind == "task.escalation_closed")).scalars().all()
    assert [(c["escalated_task_id"], c["because"]) for c in closed] == [(submit.id, "completed")] * 2
    # Who was offered each step (groups, preset assignee, recused) and its due date:
    # The talk (cut off) 1 TD from 09:30; instructions by the 15:00 close.
    assert case.offers() == [
        ("accept", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 11, 30)),
        ("retention_conversation", ["SX01-G1"], None, [], sh(2025, 6, 17, 9, 30)),
        ("submit_instructions", ["SX01:counter_staff"], None, [], sh(2025, 6, 16, 15)),
    ]
