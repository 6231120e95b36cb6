"""The monthly evaluation (VIP step V0a, docs/domain.md#vip; docs/domain.md#classification):
classify every client, then hand each tier change to the VIP process.

Run by the schedule ``vip-monthly`` (job ``vip.monthly_evaluation``, first working day of
each month, 09:00 Asia/Shanghai). ``bpm registry evaluate`` classifies by hand but starts no
cases.
``classification.evaluate`` decides classes and tiers as data; this module turns its
changes into cases:

* ``tier_upgraded`` and ``grace_started`` start a ``vip_onboarding`` case (welcome and
  approval, or the grace period with its pre-downgrade contact);
* ``grace_cleared`` and ``grace_expired`` are told, as ``vip_reevaluated``, to the client's
  open VIP case waiting in its grace period, which then ends or goes on to the downgrade.

The evaluation only records the evaluated tier; the client's effective tier changes when the
case activates or applies it (``engine.vip_tier``). A case starts with the thresholds and
the grace period of the rule version that decided the change, so it computes the same tier.

Each change runs in a savepoint: one client's case failing to start (say, a client without
a branch) is reported and leaves the others started.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.brokerage import classification
from engine.calendars import SHANGHAI
from engine.errors import BpmError
from engine.models import Client, InstanceStatus, MessageSubscription, ProcessInstance
from engine.process import instances, messages
from engine.process.runtime import Runtime

PROCESS_KEY = "vip_onboarding"
JOB_NAME = "vip.monthly_evaluation"
EVALUATION_ACTOR = Actor.system("vip-evaluation")
STARTS = (classification.TIER_UPGRADED, classification.GRACE_STARTED)
TOLD = (classification.GRACE_CLEARED, classification.GRACE_EXPIRED)


@dataclass
class Outcome:
    as_of: date
    evaluated: int = 0
    started: list[str] = field(default_factory=list)  # business keys of the new VIP cases
    told: list[str] = field(default_factory=list)  # business keys of cases told of a re-evaluation
    problems: list[str] = field(default_factory=list)


def previous_period(as_of: date) -> str:
    """The month the evaluation is about: the one before ``as_of``."""
    last = as_of.replace(day=1) - timedelta(days=1)
    return f"{last:%Y-%m}"


def run(session: Session, rt: Runtime, *, as_of: date, evaluated_at: datetime) -> Outcome:
    result = classification.evaluate(session, as_of=as_of, actor=EVALUATION_ACTOR, now=rt.now())
    outcome = Outcome(as_of=as_of, evaluated=result.evaluated)
    period = previous_period(as_of)
    book = classification.RuleBook(session)
    for change in result.changes:
        if change.kind not in STARTS + TOLD:
            continue
        client = session.get(Client, change.client_id)
        if client is None:  # pragma: no cover - evaluate() just read it under a lock
            continue
        payload = {"client_id": client.client_id, "avg_daily_assets_prev_month": float(client.assets),
                   "evaluation_period": period, "evaluated_at": evaluated_at.isoformat()}
        try:
            with session.begin_nested():
                if change.kind in STARTS:
                    data = {**payload, "trigger": "evaluation", "previous_tier": change.before or "none",
                            "new_tier": client.evaluated_tier or "none", "risk_level": client.risk_level,
                            **_rule_settings(book.for_branch(client.branch_code, as_of))}
                    if change.kind == classification.GRACE_STARTED:
                        data["months_below_threshold"] = 1
                    case = instances.start(session, rt, process_key=PROCESS_KEY, business_key=None,
                                           actor=EVALUATION_ACTOR, data=data, client_id=client.client_id)
                    outcome.started.append(case.business_key)
                else:
                    key = _waiting_case(session, client.client_id)
                    if key is None:
                        outcome.problems.append(f"{client.client_id}: {change.kind} but no VIP case waits in grace")
                        continue
                    messages.correlate(session, rt, name="vip_reevaluated", correlation_key=key,
                                       actor=EVALUATION_ACTOR, payload=payload)
                    outcome.told.append(key)
        except BpmError as exc:
            outcome.problems.append(f"{client.client_id}: {change.kind}: {exc}")
    return outcome


def _rule_settings(rules: classification.Rules) -> dict[str, Any]:
    """The rule version's thresholds and grace as the case's variables (see engine.brokerage.settings)."""
    return {**{f"{tier}_threshold": str(amount) for tier, amount in rules.vip_thresholds},
            "downgrade_grace_months": rules.downgrade_grace_months}


def _waiting_case(session: Session, client_id: str) -> str | None:
    return session.execute(
        select(ProcessInstance.business_key)
        .join(MessageSubscription, MessageSubscription.instance_id == ProcessInstance.id)
        .where(ProcessInstance.process_key == PROCESS_KEY, ProcessInstance.client_id == client_id,
               ProcessInstance.status == InstanceStatus.RUNNING, MessageSubscription.message_name == "vip_reevaluated")
        .order_by(ProcessInstance.id.desc()).limit(1)
    ).scalar_one_or_none()


def job(session: Session, rt: Runtime, *, slot: datetime) -> dict[str, Any]:
    """The schedule's entry point: the slot's date in Shanghai is the evaluation date."""
    outcome = run(session, rt, as_of=slot.astimezone(SHANGHAI).date(), evaluated_at=slot)
    return {"as_of": outcome.as_of.isoformat(), "evaluated": outcome.evaluated, "started": outcome.started,
            "told": outcome.told, "problems": outcome.problems}
