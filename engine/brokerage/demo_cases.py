"""The nine open demo cases for ``make run``, driven through the real diagrams.

Nothing is written behind the engine's back: every case is started, worked and told its
messages through the same services the API calls (``instances.start``,
``messages.correlate``, ``tasks.claim``/``assign``/``complete`` with valid form data), as
the demo staff (``engine.brokerage.demo``). The history is replayed on a copy of the runtime
whose clock is set to each historical moment, so tasks, SLA clocks, milestones and the audit
trail carry the dates they would have had; SLA milestones that fell due during that history
(reminders, CB-…0107's breach and escalation to the call-centre supervisor) are fired at
their own moments. A BPMN timer started during the replay (CB-…0031's wait before its next
call) counts from the runtime's clock like any other step.

**Dates move with the day of loading.** The cases are written as of Monday 2025-06-16, the
scenario's "today" (``BRIEF_TODAY``). Their dates are mapped onto the real calendar by
*working days*: a date N working days before 2025-06-16 (on the 2025 calendar, so 清明 and the
调休 Sunday count as they did) becomes the date N working days before the demo's business day,
which is today, or the next working day when today is not one. Times of day are kept. So the
cases' SLA relationships hold whatever the weekday and whatever holiday lies in between:
CB-…0044 (2 TD) is due on the business day, CB-…0107 (20 WD, 50 WD old) is overdue and
escalated, the rest are on track. Two adjustments keep the snapshot consistent with the
moment of loading:

* CB-…0044 is started two trading days before it falls due, one hour from now while that
  is within today's trading hours (10:00 at the earliest, 16:59 at the latest), else at
  10:00 on the next trading day: it is at risk (80 % of its two trading days are gone) and
  not yet breached whenever the demo is loaded;
* RET-…0002's instructions are due at the next 15:00 close still ahead, with little of that
  time gone (``Timeline.request_times``): during a trading day the request came this
  morning; after the close it came after today's close; before 09:15 or on a day off it is
  the previous working day's, received after that day's close (16:00). So loading the demo
  after 15:00 never shows the instructions breached and escalated.

The SLA states of the open tasks (on track, at risk, breached) and the escalations are the
same at every moment of loading (``tests/brokerage/test_demo_cases.py`` loads the demo early
in the morning, at 15:30, on a Friday evening and on the eve of a holiday).

On a day that is not a working day no task of these diagrams can be due that day: every due
date lies on the working- or trading-day calendar (the only calendar-month deadline, the
new-account callback's, is not on an open task while CB-…0031 waits for its next attempt).

Case numbers keep the scenario's sequence numbers with the mapped dates
(``CMP-<date>-0001``); the day's counter is moved past them, so cases numbered later that
day never collide. Loading is idempotent: a case counts as loaded when its process has an
instance for the same client whose number ends with the scenario's sequence number, whatever
its date (a reload on a later day creates nothing either).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case as sql_case
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from engine.access import identity
from engine.access.identity import Actor
from engine.calendars import SHANGHAI, BusinessCalendar
from engine.errors import BpmError
from engine.models import (
    ACTIVE_TASK_STATES,
    AuditEvent,
    Counter,
    InstanceStatus,
    MessageSubscription,
    ProcessInstance,
    Task,
    TaskKind,
    Timer,
    TimerKind,
    TimerStatus,
    User,
)
from engine.process import instances, messages, tasks
from engine.process.runtime import Runtime
from engine.sla import calendar_store
from engine.sla import clock as sla_clock
from engine.timers import firing

BRIEF_TODAY = date(2025, 6, 16)  # the scenario's "today" (a Monday), which the cases' dates assume
DUE_TODAY_LEAD = timedelta(hours=1)  # CB-…0044 falls due this long after loading (see above)
EARLIEST_DUE, LATEST_DUE = time(10), time(16, 59)
RET_TODAY_RECEIVED, RET_TODAY_ACCEPTED = time(9), time(9, 15)
# A request from the previous working day came after its 15:00 close: its instructions are
# due at the business day's close: the scenario has them "to be submitted today".
RET_LATE_RECEIVED, RET_LATE_ACCEPTED = time(16), time(16, 15)
SUBMIT_CUTOFF = time(15)  # retention.submit_cutoff's default: the instructions' daily deadline

# Systems that start cases or send messages (not people).
ACCOUNT_SYSTEM = Actor.system("account-system")  # account opened, permission opened
SCHEDULER = Actor.system("schedule")  # the quarterly periodic-callback batch
MONTHLY_EVALUATION = Actor.system("vip-monthly")  # the monthly tier evaluation (VIP step V0a)
CSDC = Actor.system("csdc")  # the exchange / CSDC return


class DemoCaseError(BpmError):
    code = "demo_case_failed"


@dataclass
class _SettableClock:
    """The demo's clock: set to each historical moment while the history is replayed. Like
    the system clock it answers in UTC (the audit chain hashes the moment as written)."""

    at: datetime

    def now(self) -> datetime:
        return self.at.astimezone(UTC)


def _whole_seconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


class Timeline:
    """The scenario's dates on the real calendar (see the module docstring)."""

    def __init__(self, calendar: BusinessCalendar, now: datetime) -> None:
        self.calendar = calendar
        self.now = now.astimezone(SHANGHAI)
        self.today = self.now.date()
        self.business_day = self.today if self.working(self.today) else self.step(self.today, 1)

    def working(self, d: date) -> bool:
        return self.calendar.day(d)[0].working

    def trading(self, d: date) -> bool:
        return self.calendar.day(d)[0].trading

    def step(self, d: date, n: int, *, trading: bool = False) -> date:
        """``n`` working (or trading) days after ``d`` (before it when ``n`` is negative)."""
        is_open = self.trading if trading else self.working
        direction = 1 if n > 0 else -1
        for _ in range(abs(n)):
            d += timedelta(days=direction)
            while not is_open(d):
                d += timedelta(days=direction)
        return d

    def offset(self, brief_day: date) -> int:
        """Signed working days from the scenario's today to ``brief_day``, on the 2025 calendar."""
        if not self.working(brief_day):
            raise ValueError(f"{brief_day} is not a working day")
        lo, hi = sorted((brief_day, BRIEF_TODAY))
        count = sum(1 for i in range((hi - lo).days) if self.working(lo + timedelta(days=i + 1)))
        return count if brief_day > BRIEF_TODAY else -count

    def day(self, brief_day: date) -> date:
        return self.step(self.business_day, self.offset(brief_day))

    def at(self, brief_day: date, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(self.day(brief_day), time(hour, minute), SHANGHAI)

    def first_trading_day(self) -> date:
        """The first trading day on or after the business day (a 调休 working Saturday is not one)."""
        d = self.business_day
        while not self.trading(d):
            d += timedelta(days=1)
        return d

    def risk_due(self) -> datetime:
        """When CB-…0044 falls due: an hour from now when that is still within today's
        trading hours, else 10:00 on the next trading day. Either way it is ahead of now and
        most of its two trading days are gone: at risk, not breached, at any hour."""
        lead = (self.now + DUE_TODAY_LEAD).replace(second=0, microsecond=0)
        if (self.trading(self.today) and self.now.time() >= time(9) and lead.date() == self.today
                and lead.time() <= LATEST_DUE):
            return datetime.combine(self.today, max(lead.time(), EARLIEST_DUE), SHANGHAI)
        d = self.today + timedelta(days=1) if self.now.time() >= EARLIEST_DUE else self.today
        while not self.trading(d):
            d += timedelta(days=1)
        return datetime.combine(d, EARLIEST_DUE, SHANGHAI)

    def last_calling_moment(self) -> datetime:
        """When CB-…0031's unanswered call was made: a minute ago during the business hours of
        a working day, else just before the last closing. Its retry, at least 4 hours later
        within business hours and in another half-day, is then always still ahead, so the
        case waits for its next attempt at whatever moment the demo is loaded."""
        hours = self.calendar.hours.periods
        if self.working(self.today):
            for begin, end in hours:
                opening = datetime.combine(self.today, begin, SHANGHAI)
                if opening <= self.now < datetime.combine(self.today, end, SHANGHAI):
                    return max(self.now - timedelta(minutes=1), opening)
        d = self.today
        while True:
            if self.working(d):
                for _begin, end in reversed(hours):
                    closing = datetime.combine(d, end, SHANGHAI) - timedelta(minutes=1)
                    if closing <= self.now:
                        return closing
            d -= timedelta(days=1)

    def request_day(self) -> date:
        """The day RET-…0002 was received and accepted (see the module docstring)."""
        return self.request_times()[0].date()

    def request_times(self) -> tuple[datetime, datetime]:
        """When RET-…0002 was received and accepted, so that its instructions are due at the
        next close still ahead and little of that time is gone, at any hour of any day:

        - a trading day between 09:15 and the close: received this morning, accepted a
          quarter of the time left to the close ago (09:15 at the earliest);
        - a trading day after the close: received after today's close (16:00 at the latest),
          due at the next trading day's close;
        - otherwise: this morning's on a working day that does not trade (a 调休 Saturday)
          once 09:15 has passed, else the previous working day's, received after its close."""
        close = datetime.combine(self.today, SUBMIT_CUTOFF, SHANGHAI)
        morning = datetime.combine(self.today, RET_TODAY_ACCEPTED, SHANGHAI)
        if self.trading(self.today) and morning <= self.now < close:
            accepted = max(self.now - (close - self.now) / 4, morning)
            received = max(accepted - timedelta(minutes=15), datetime.combine(self.today, RET_TODAY_RECEIVED,
                                                                                 SHANGHAI))
            return _whole_seconds(received), _whole_seconds(accepted)
        if self.trading(self.today) and self.now >= close:
            received = close + min(timedelta(hours=1), (self.now - close) / 2)
            accepted = received + min(timedelta(minutes=15), (self.now - received) / 2)
            return _whole_seconds(received), _whole_seconds(accepted)
        if self.working(self.today) and morning <= self.now:
            return datetime.combine(self.today, RET_TODAY_RECEIVED, SHANGHAI), morning
        day = self.step(self.business_day, -1)
        return (datetime.combine(day, RET_LATE_RECEIVED, SHANGHAI),
                datetime.combine(day, RET_LATE_ACCEPTED, SHANGHAI))


# -- steps ------------------------------------------------------------------------------------
Action = Callable[[Session, Runtime, str], None]


@dataclass(frozen=True)
class Step:
    at: datetime
    what: str
    action: Action


@dataclass(frozen=True)
class CaseSpec:
    brief_key: str  # the scenario's number, e.g. CMP-20250612-0001
    process_key: str
    client_id: str
    key: str  # the same sequence number on the mapped date
    brief_state: str  # the state the scenario gives the case, for the record
    steps: list[Step] = field(default_factory=list)


@dataclass
class CaseResult:
    spec: CaseSpec
    key: str  # the instance's business key (an earlier load's, if it existed)
    created: bool
    error: str | None = None
    lines: list[str] = field(default_factory=list)  # what is open now, for the CLI


def _actor(session: Session, username: str) -> Actor:
    return identity.actor_for(session, identity.get_user(session, username))


def _open_task(session: Session, key: str, element: str) -> Task:
    found = session.execute(select(Task).where(Task.business_key == key, Task.element_id == element,
                                               Task.kind == TaskKind.BPMN, Task.status.in_(ACTIVE_TASK_STATES))
                            ).scalars().all()
    if len(found) != 1:
        raise DemoCaseError(f"{key}: expected one open {element!r} task, found {len(found)}")
    return found[0]


def start(process_key: str, data: dict[str, Any], actor: Actor) -> Action:
    def run(session: Session, rt: Runtime, key: str) -> None:
        instances.start(session, rt, process_key=process_key, business_key=key, actor=actor, data=data)
    return run


def message(name: str, payload: dict[str, Any], sender: Actor | str) -> Action:
    """A message for the case (or one that starts it, under the case's number)."""
    def run(session: Session, rt: Runtime, key: str) -> None:
        actor = _actor(session, sender) if isinstance(sender, str) else sender
        messages.correlate(session, rt, name=name, correlation_key=key, actor=actor, payload=payload)
    return run


def complete(element: str, username: str, data: dict[str, Any]) -> Action:
    def run(session: Session, rt: Runtime, key: str) -> None:
        task = _open_task(session, key, element)
        tasks.complete(session, rt, task_id=task.id, actor=_actor(session, username), data=data)
    return run


def claim(element: str, username: str) -> Action:
    def run(session: Session, rt: Runtime, key: str) -> None:
        task = _open_task(session, key, element)
        tasks.claim(session, rt, task_id=task.id, actor=_actor(session, username))
    return run


def assign(element: str, username: str, *, by: str) -> Action:
    def run(session: Session, rt: Runtime, key: str) -> None:
        task = _open_task(session, key, element)
        tasks.assign(session, rt, task_id=task.id, username=username, actor=_actor(session, by))
    return run


def _number(prefix: str, day: date, seq: int) -> str:
    return f"{prefix}-{day:%Y%m%d}-{seq:04d}"


def _iso(moment: datetime) -> str:
    return moment.isoformat()


# -- the nine demo cases ----------------------------------------------------------------------
def specs(tl: Timeline) -> list[CaseSpec]:
    """The cases, their numbers and their histories, from the scenario's dates."""
    return [
        _complaint_mis_selling(tl, received=date(2025, 6, 12)),
        _complaint_12386(tl, received=date(2025, 6, 10), contacted_on=date(2025, 6, 11)),
        _retention_transfer(tl),  # "today": see Timeline.request_day
        _retention_closure(tl, received=date(2025, 6, 13)),
        _callback_new_account(tl, opened=date(2025, 6, 3)),
        _callback_risk_disclosure(tl),  # 2 TD before it falls due: see Timeline.risk_due
        _callback_periodic(tl, created=date(2025, 4, 1)),
        _vip_upgrade(tl, evaluated=date(2025, 6, 3), welcomed_on=date(2025, 6, 5)),
        _vip_grace(tl, evaluated=date(2025, 6, 3)),
    ]


def _complaint_mis_selling(tl: Timeline, *, received: date) -> CaseSpec:
    """C02 王秀兰 at the HZ01 counter: an R4 product recommended to a C3 client by 杜娟
    (HZ01-G1). Major: a suitability violation is alleged and she is 67."""
    t0 = tl.at(received, 10)
    register = {
        "received_at": _iso(t0), "channel": "counter", "request_kind": "complaint", "client_id": "C02",
        "client_age": 67, "business_line": "product_sales", "subject_staff_ids": ["s107"],
        "summary": "客户称客户经理杜娟向其（风险承受能力 C3）推荐 R4 级代销产品，产品亏损，要求赔偿",
        "client_request": "compensation", "amount_claimed": 38000,
        "alleged_violations": ["suitability_mismatch"], "consent_contact_channel": "phone",
    }
    contacted = {"contact_at": _iso(tl.at(received, 10, 50)), "contact_channel": "face_to_face",
                 "contact_result": "reached", "client_expectation": "赔偿亏损 38,000 元并说明推荐依据",
                 "recording_id": f"REC-{received:%m%d}-HZ01-0001"}
    return CaseSpec(
        "CMP-20250612-0001", "complaint", "C02", _number("CMP", tl.day(received), 1),
        "C6 Investigate, assigned to 彭涛 (HZ01-G1 excluded); compliance notified",
        [Step(t0, "counter receives the complaint (蒋芳)",
              message("complaint_received", {"channel": "counter", "client_id": "C02"}, "s104")),
         Step(tl.at(received, 10, 20), "C1 register (蒋芳, first-contact owner)",
              complete("register", "s104", register)),
         Step(tl.at(received, 11), "C5 acknowledge and contact (蒋芳)", complete("acknowledge", "s104", contacted)),
         Step(tl.at(received, 14), "C6 assigned to 彭涛 by 黄建华", assign("investigate", "s103", by="s101"))],
    )


def _complaint_12386(tl: Timeline, *, received: date, contacted_on: date) -> CaseSpec:
    """C09 冯志强 via 12386: the counter delayed his 转托管. Registered by HQ (邓华), who
    contacts him; SX01's 客服总监 金国平 investigates (邵琳, the counter operator, is the
    subject)."""
    t0 = tl.at(received, 9, 30)
    ref = f"12386-ZJ-{t0:%Y}-{t0:%m%d}01"
    due = _iso(tl.at(date(2025, 7, 4), 17))  # the 12386 feedback's hard deadline (complaint step C16)
    register = {
        "received_at": _iso(t0), "channel": "12386", "request_kind": "complaint", "client_id": "C09",
        "client_age": 63, "business_line": "account_services", "subject_staff_ids": ["s302"],
        "summary": "客户经 12386 投诉：在营业部办理深市转托管时柜台拖延办理（转销户受阻）",
        "client_request": "explanation", "amount_claimed": 0, "alleged_violations": ["transfer_obstruction"],
        "regulator_ref": ref, "regulator_due_at": due, "consent_contact_channel": "phone",
    }
    contacted = {"contact_at": _iso(tl.at(contacted_on, 9, 40)), "contact_channel": "phone",
                 "contact_result": "reached", "client_expectation": "说明转托管延误原因并尽快办结",
                 "recording_id": f"REC-{received:%m%d}-HQ-0002"}
    return CaseSpec(
        "CMP-20250610-0002", "complaint", "C09", _number("CMP", tl.day(received), 2),
        "C5 done; C6 in progress (邵琳 excluded); C16 due by the regulator's date",
        [Step(t0, "12386 transfer arrives at HQ",
              message("complaint_12386_transfer", {"channel": "12386", "client_id": "C09", "regulator_ref": ref,
                                                   "regulator_due_at": due}, "s007")),
         Step(tl.at(received, 10, 30), "C1 register the transfer (邓华)", complete("register_12386", "s007", register)),
         Step(tl.at(contacted_on, 10), "C5 acknowledge and contact (邓华)", complete("acknowledge", "s007", contacted)),
         Step(tl.at(contacted_on, 14), "C6 taken by 金国平", claim("investigate", "s301"))],
    )


def _retention_transfer(tl: Timeline) -> CaseSpec:
    """C05 孙立平 transfers to a competitor for a lower commission and is open to a talk."""
    day = tl.request_day()
    received, accepted = tl.request_times()
    accept = {"request_types": ["sz_transfer", "sh_dedesignation"], "target_broker": "XX证券",
              "target_seat_no": "123456", "identity_verified": True, "identity_method": "counter_id_face",
              "client_reason_stated": "commission", "client_open_to_retention_talk": True,
              "informed_of_procedure_and_timeline": True, "recording_id": f"REC-{day:%m%d}-SX01-0002"}
    request = {"channel": "counter", "client_id": "C05", "client_assets": 550000, "account_status": {}}
    return CaseSpec(
        "RET-20250616-0002", "retention", "C05", _number("RET", day, 2),
        "A1 instructions due (TD); B1 retention talk with SX01-G1, cut off when A1 is submitted",
        [Step(received, "transfer request at the SX01 counter",
              message("retention_request_received", request, "s302")),
         Step(accepted, "R1 verify identity and accept (邵琳)",
              complete("accept", "s302", accept))],
    )


def _retention_closure(tl: Timeline, *, received: date) -> CaseSpec:
    """C10 何静 (branch pool) closes her accounts and declined a retention talk."""
    refs = [f"XH-{received:%m%d}-0001", f"ZX-{received:%m%d}-0001"]
    accept = {"request_types": ["fund_account_closure", "securities_account_cancellation"],
              "identity_verified": True, "identity_method": "counter_id_face",
              "client_open_to_retention_talk": False, "informed_of_procedure_and_timeline": True}
    request = {"channel": "counter", "client_id": "C10", "client_assets": 6000, "account_status": {}}
    return CaseSpec(
        "RET-20250613-0001", "retention", "C10", _number("RET", tl.day(received), 1),
        "Track A done; R7 post-closure callback due in 5 WD; R6 post-hoc review",
        [Step(tl.at(received, 9, 30), "closure request at the HZ01 counter",
              message("retention_request_received", request, "s104")),
         Step(tl.at(received, 9, 40), "R1 accept (蒋芳); no retention talk", complete("accept", "s104", accept)),
         Step(tl.at(received, 10), "A1 submit the closure instructions (蒋芳)",
              complete("submit_instructions", "s104", {"submitted_at": _iso(tl.at(received, 10)),
                                                       "instruction_refs": refs})),
         Step(tl.at(received, 15), "A3 CSDC returns success",
              message("retention_exchange_result", {"exchange_result": "success",
                                                    "returned_at": _iso(tl.at(received, 15))}, CSDC)),
         Step(tl.at(received, 15, 10), "A4 complete and notify (蒋芳)",
              complete("complete_notify", "s104", {"completed_at": _iso(tl.at(received, 15, 10)),
                                                   "notice_channel": "sms", "closure_certificate_issued": True}))],
    )


def _callback_new_account(tl: Timeline, *, opened: date) -> CaseSpec:
    """C08 郑佳怡 opened an account: a new-account callback within 1 CM; the last call went
    unanswered and the next one waits for its slot (see :meth:`Timeline.last_calling_moment`)."""
    attempt = tl.last_calling_moment()
    return CaseSpec(
        "CB-20250603-0031", "callback", "C08", _number("CB", tl.day(opened), 31),
        "Due 1 CM after opening; 1 failed attempt; next attempt scheduled",
        [Step(tl.at(opened, 10), "account opened: new-account callback",
              message("account_opened", {"client_id": "C08", "opened_at": tl.day(opened).isoformat()},
                      ACCOUNT_SYSTEM)),
         Step(attempt, "K2 first call: no answer (马丽)",
              complete("call_attempt", "s004", {"attempt_at": _iso(attempt), "dialled_number_masked": "177****5089",
                                                "result": "no_answer", "comment": "无人接听"}))],
    )


def _callback_risk_disclosure(tl: Timeline) -> CaseSpec:
    """C06 周晓燕 was given 创业板 permission two trading days before the business day."""
    due = tl.risk_due()
    opened = datetime.combine(tl.step(due.date(), -2, trading=True), due.time(), SHANGHAI)
    return CaseSpec(
        "CB-20250612-0044", "callback", "C06", _number("CB", opened.date(), 44),
        "Due 2 TD after the permission: today",
        [Step(opened, "创业板 permission opened: risk-disclosure callback",
              message("high_risk_permission_opened", {"client_id": "C06", "permission": "创业板",
                                                      "permission_opened_at": _iso(opened)}, ACCOUNT_SYSTEM))],
    )


def _callback_periodic(tl: Timeline, *, created: date) -> CaseSpec:
    """C03 李建国 in the quarterly periodic batch: 20 WD, long overdue, escalated."""
    t0 = tl.at(created, 9, 30)
    return CaseSpec(
        "CB-20250401-0107", "callback", "C03", _number("CB", t0.date(), 107),
        "Overdue (20 WD); escalated to 许婧; still open",
        [Step(t0, "quarterly periodic batch",
              start("callback", {"callback_type": "periodic", "client_id": "C03",
                                 "batch": f"{t0:%Y}-Q{(t0.month - 1) // 3 + 1}"}, SCHEDULER))],
    )


def _evaluation(tl: Timeline, evaluated: date, client_id: str, previous: str, assets: int,
                **extra: Any) -> dict[str, Any]:
    """A monthly tier evaluation of the previous month, as the monthly run (VIP step V0a)
    sends it."""
    at = tl.at(evaluated, 10)
    first = at.date().replace(day=1)
    period = (first - timedelta(days=1)).strftime("%Y-%m")
    return {"client_id": client_id, "investor_type": "ordinary", "previous_tier": previous,
            "avg_daily_assets_prev_month": assets, "evaluation_period": period, "evaluated_at": _iso(at),
            "risk_assessed_at": (at.date() - timedelta(days=266)).isoformat(), **extra}


def _vip_upgrade(tl: Timeline, *, evaluated: date, welcomed_on: date) -> CaseSpec:
    """C04 赵敏: May's average assets of ¥720,000 make her gold; no advisory agreement."""
    welcomed = {"client_contacted": True, "client_accepts_membership": "yes", "preferred_channels": ["app", "sms"],
                "marketing_consent": True, "risk_assessment_valid": True, "advisory_agreement_signed": False,
                "recording_id": f"REC-{evaluated:%m%d}-NB01-0004", "notes": "客户未签署投顾协议，荐股短信暂不开通"}
    return CaseSpec(
        "VIP-20250603-0004", "vip_onboarding", "C04", _number("VIP", tl.day(evaluated), 4),
        "V3 welcome done; V6 activation (advisory SMS not enabled: no advisory agreement)",
        [Step(tl.at(evaluated, 10), "monthly evaluation: silver → gold",
              start("vip_onboarding", _evaluation(tl, evaluated, "C04", "silver", 720_000), MONTHLY_EVALUATION)),
         Step(tl.at(welcomed_on, 11, 30), "V3 verify and welcome (姚斌)",
              complete("verify_welcome", "s205", welcomed))],
    )


def _vip_grace(tl: Timeline, *, evaluated: date) -> CaseSpec:
    """C07 吴海涛: below the gold threshold for a second month, in the downgrade grace."""
    data = _evaluation(tl, evaluated, "C07", "gold", 180_000, months_below_threshold=2, preferred_channels=["phone"])
    return CaseSpec(
        "VIP-20250603-0011", "vip_onboarding", "C07", _number("VIP", tl.day(evaluated), 11),
        "In grace (at-risk list); V8 pre-downgrade contact if next month is also below",
        [Step(tl.at(evaluated, 10), "monthly evaluation: second month below gold",
              start("vip_onboarding", data, MONTHLY_EVALUATION))],
    )


# -- loading ----------------------------------------------------------------------------------
def load_cases(session: Session, rt: Runtime, *, now: datetime) -> list[CaseResult]:
    """Create the demo cases that are not there yet, as of ``now``; describe all of them.

    Each case is driven in its own savepoint: one that cannot be driven (a diagram changed
    under it) is reported with the reason and leaves the others loaded."""
    timeline = Timeline(calendar_store.CALENDARS.get(session, "default"), now)
    clock = _SettableClock(now)
    history = dataclasses.replace(rt, clock=clock)
    results = []
    for spec in specs(timeline):
        existing = _existing(session, spec)
        if existing is not None:
            results.append(CaseResult(spec, existing, created=False))
            continue
        result = CaseResult(spec, spec.key, created=True)
        try:
            with session.begin_nested():
                _drive(session, history, clock, spec, now)
        except BpmError as exc:
            result.created, result.error = False, str(exc)
        results.append(result)
    clock.at = now
    for result in results:
        if result.error is None:
            result.lines = describe(session, result.key, result.spec.process_key, now=now)
    return results


def _existing(session: Session, spec: CaseSpec) -> str | None:
    prefix, _, seq = spec.brief_key.split("-")
    found: str | None = session.execute(
        select(ProcessInstance.business_key).where(
            ProcessInstance.process_key == spec.process_key, ProcessInstance.client_id == spec.client_id,
            ProcessInstance.business_key.like(f"{prefix}-%-{seq}"))
        .order_by(ProcessInstance.id).limit(1)
    ).scalar_one_or_none()
    return found


def _drive(session: Session, rt: Runtime, clock: _SettableClock, spec: CaseSpec, now: datetime) -> None:
    """Replay the case's history; SLA milestones of the case (and of cases it started) fire
    at their own moments in between, as the timer runner would have fired them."""
    first_new = (session.execute(select(ProcessInstance.id).order_by(ProcessInstance.id.desc()).limit(1))
                 .scalar_one_or_none() or 0) + 1
    _reserve_number(session, spec.key)
    for step in spec.steps:
        if step.at > now:
            raise DemoCaseError(f"{spec.key}: {step.what} would be in the future ({step.at:%Y-%m-%d %H:%M})")
        _fire_milestones(session, rt, clock, first_new, until=step.at)
        clock.at = step.at
        step.action(session, rt, spec.key)
        failed = session.execute(select(ProcessInstance.business_key, ProcessInstance.error).where(
            ProcessInstance.id >= first_new, ProcessInstance.status == InstanceStatus.FAILED)).first()
        if failed is not None:
            raise DemoCaseError(f"{spec.key}: {step.what}: {failed.business_key} failed: {failed.error}")
    _fire_milestones(session, rt, clock, first_new, until=now)


def _fire_milestones(session: Session, rt: Runtime, clock: _SettableClock, first_instance: int, *,
                     until: datetime) -> None:
    """Fire, in order and each at its own moment, the SLA timers of the instances this load
    created that fell due before ``until``. (BPMN timers are left to the timer runner:
    SpiffWorkflow decides their moment by the wall clock.)"""
    tried: set[int] = set()
    while True:
        due = session.execute(
            select(Timer.id, Timer.due_at).where(Timer.kind == TimerKind.SLA, Timer.status == TimerStatus.WAITING,
                                                 Timer.instance_id >= first_instance, Timer.due_at < until,
                                                 Timer.id.not_in(tried or {0}))
            .order_by(Timer.due_at, Timer.id).limit(1)
        ).first()
        if due is None:
            return
        tried.add(due.id)
        clock.at = due.due_at + firing.FIRE_DELAY
        firing.fire(session, rt, due.id)


def _reserve_number(session: Session, key: str) -> None:
    """Move the day's counter past the case's sequence number, so the next case numbered that
    day (``businessKeyFormat``) does not collide with the demo's."""
    prefix, day, seq = key.rsplit("-", 2)
    value = int(seq)
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Counter).values(name=f"{prefix}-{day}-#", value=value)
    statement = statement.on_conflict_do_update(
        index_elements=[Counter.name], set_={"value": sql_case((Counter.value < value, value), else_=Counter.value)})
    session.execute(statement)


# -- what the demo shows ----------------------------------------------------------------------
def _local(moment: datetime) -> str:
    return f"{moment.astimezone(SHANGHAI):%Y-%m-%d %H:%M}"


def describe(session: Session, key: str, process_key: str, *, now: datetime) -> list[str]:
    """One line per open task (who has it, due date, SLA state), else what the case waits for."""
    instance = session.execute(select(ProcessInstance).where(
        ProcessInstance.process_key == process_key, ProcessInstance.business_key == key)).scalar_one()
    lines = []
    for task in session.execute(select(Task).where(Task.instance_id == instance.id,
                                                   Task.status.in_(ACTIVE_TASK_STATES))
                                .order_by(Task.kind, Task.id)).scalars():
        who = _person(session, task.assignee) if task.assignee else ",".join(task.candidate_groups or [])
        if task.kind == TaskKind.ESCALATION:
            lines.append(f"{task.name} → {who}")
            continue
        due = f"due {_local(task.due_at)} ({sla_clock.state(task, now)[0]})" if task.due_at else "no due date"
        lines.append(f"{task.name} [{task.element_id}] → {who}, {due}")
    if not lines:
        waiting = [f"timer {t.element_id} at {_local(t.due_at)}" for t in session.execute(
            select(Timer).where(Timer.instance_id == instance.id, Timer.kind == TimerKind.BPMN,
                                Timer.status == TimerStatus.WAITING)
            .order_by(Timer.due_at)).scalars()]
        waiting += [f"message {name}" for name in session.execute(
            select(MessageSubscription.message_name).where(MessageSubscription.instance_id == instance.id)
            .order_by(MessageSubscription.message_name)).scalars()]
        if waiting:
            lines.append("waiting for " + "; ".join(waiting))
        else:
            facts = instance.facts or {}
            notes = [str(facts["outcome"])] if facts.get("outcome") else []
            if facts.get("advisory_benefits_enabled") is False:
                notes.append("advisory benefits not enabled")
            lines.append(instance.status + (f" ({', '.join(notes)})" if notes else ""))
    for started in _started_by(session, instance.id):
        lines.extend(f"↳ {started.business_key} ({started.process_key}): {line}"
                     for line in describe(session, started.business_key, started.process_key, now=now))
    return lines


def _person(session: Session, username: str) -> str:
    name = session.execute(select(User.display_name).where(User.username == username)).scalar_one_or_none()
    return f"{username} {name}" if name else username


def _started_by(session: Session, instance_id: int) -> list[ProcessInstance]:
    """Cases this case started with a thrown message (RET-…'s post-closure callback)."""
    ids = [event.data.get("to_instance") for event in session.execute(
        select(AuditEvent).where(AuditEvent.stream == f"instance:{instance_id}", AuditEvent.kind == "message.sent")
        .order_by(AuditEvent.seq)).scalars()]
    return [p for p in (session.get(ProcessInstance, i) for i in ids if i) if p is not None]
