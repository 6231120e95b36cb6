"""A complaint's whole-case deadline (限时办结, docs/domain.md#complaints) on the engine's case
clock (``engine.sla.case_clock``).

Policy: the clock starts when the case is classified as a complaint, counted from its
arrival; it is due after the severity's target (``complaint.sla.resolve.*``: general 15 WD,
major, group and regulator-transferred 30 WD), a regulator-transferred case no later than the
regulator's due date less ``complaint.sla.regulator_margin`` (2 WD), on the figures' business
calendar. It stops when the client is told the result (C12) or the withdrawal is confirmed.
An approved extension moves it once, by at most ``complaint.extension.max`` working days: a
second approval, or a longer one, is refused. The SLA policy :data:`POLICY` says who is warned.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.brokerage import figures, settings
from engine.calendars import Unit
from engine.errors import Conflict, FieldError, FormValidationError
from engine.models import ProcessInstance
from engine.process.runtime import Runtime
from engine.sla import calendar_store, case_clock

# Who hears of a complaint running long is the SLA policy POLICY's data (workflows/sla/
# complaint.json: at half its time the branch's 客服总监, at 80 % also the branch's
# compliance, at the deadline the HQ complaint department as well), changed like any SLA
# policy (PUT /sla/policies/complaint.resolution), which re-arms the running clocks.
PROCESS, POLICY = "complaint", "complaint.resolution"
# The steps after which the case has answered: C12 反馈客户, and a confirmed withdrawal.
ANSWERED = frozenset({"communicate_result", "confirm_withdrawal"})
EXTENSION_STEP, VERIFICATION_STEP = "approve_extension", "withdrawal_verify"


def on_facts_changed(rt: Runtime, session: Session, instance: ProcessInstance, before: dict[str, Any],
                     after: dict[str, Any]) -> None:
    """Start the clock once the case is classified as a complaint."""
    if (instance.process_key != PROCESS or after.get("request_kind") != "complaint" or not after.get("severity")
            or case_clock.get(session, instance.id) is not None):
        return
    config = figures.load_config(session)
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    facts = {k: v for k, v in after.items() if k not in ("extension_decision", "extension_days")}
    regulator_due = facts.get("regulator_due_at")
    if isinstance(regulator_due, str) and len(regulator_due.strip()) == 10:
        # A date only: the end of that working day (as a step's date-only due date).
        facts["regulator_due_at"] = calendar.close_of_working_day(date.fromisoformat(regulator_due.strip())).isoformat()
    due = figures.resolution_due(calendar, config, instance.started_at, facts)
    if due is None:
        return
    case_clock.start(session, rt, instance=instance, policy=POLICY, started_at=instance.started_at, due_at=due,
                     milestones=case_clock.policy_milestones(session, POLICY), now=rt.now())


def on_task_completed(session: Session, rt: Runtime, instance: ProcessInstance, spiff_task: Any,
                      actor: Actor) -> None:
    if instance.process_key != PROCESS:
        return
    element = spiff_task.task_spec.bpmn_id
    if element in ANSWERED:
        case_clock.stop(session, instance=instance, now=rt.now())
    elif element == VERIFICATION_STEP and spiff_task.data.get("withdrawal_voluntary") is False:
        # A coerced withdrawal reopens the case: its deadline runs on from where it stopped.
        case_clock.restart(session, rt, instance=instance, now=rt.now())
    elif element == EXTENSION_STEP and spiff_task.data.get("extension_decision") == "approve":
        _extend(session, rt, instance, spiff_task.data.get("extension_days"), actor)


def _extend(session: Session, rt: Runtime, instance: ProcessInstance, days: Any, actor: Actor) -> None:
    clock = case_clock.get(session, instance.id)
    if clock is None:
        return
    if clock.extended_at is not None:
        raise Conflict(f"{instance.business_key} was extended once already ({clock.extended_by}); "
                                      "an extension is granted once")
    limit = settings.load(session, ["complaint.extension.max"])["complaint.extension.max"].amount
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= limit:
        raise FormValidationError("the extension is out of bounds", [FieldError(
            "extension_days", f"an approved extension gives 1 to {limit} working days (complaint.extension.max)")])
    config = figures.load_config(session)
    calendar = calendar_store.CALENDARS.get(session, config.business_hours)
    due = calendar.add(clock.due_at, days, Unit.WORKING_DAYS).at
    case_clock.move(session, rt, instance=instance, clock=clock, due_at=due, extended_by=f"{days} WD",
                    actor=actor.username, now=rt.now())
