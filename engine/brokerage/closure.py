"""销户: what a completed full account closure does to the client and to the client's other
open cases (docs/domain.md#retention, end X1).

A retention case (``workflows/retention.bpmn``) whose request closed the fund account
(``fund_account_closure``: the client leaves the firm) and which ended completed has closed
the account. Its service tasks are data only, so the case cannot write the registry itself;
as with a VIP case's tier (``engine.brokerage.vip_tier``), :func:`hook` (installed on the
runtime by ``engine.brokerage``) applies the closure when a save of the case sets
``outcome = completed``, in the same transaction as that step:

- the registry: ``account_status`` becomes ``closed``; the effective VIP tier, its date and
  any pending downgrade are cleared (a closed account is served at no tier); the client
  leaves its service group (``service_group_key`` empty);
- the client's open callbacks, except post-closure ones, are cancelled: the brief's end K-E5
  "cancelled (account closed before the callback; replaced by a post-closure callback)";
- the client's open VIP case ends "Closed": told ``vip_account_closed`` where it waits for
  it (grace period, notice time), cancelled otherwise (a welcome call or an approval for a
  client who has left).

Every change is audited on the retention case (``client.account_closed``); each cancelled
case also carries its own ``instance.cancelled`` event with the reason. A transfer alone
(转托管, 撤销指定交易) keeps the fund account open and changes nothing here.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_instance_event
from engine.calendars import SHANGHAI
from engine.models import Client, InstanceStatus, MessageSubscription, ProcessInstance
from engine.process import instances, messages
from engine.process.runtime import FactsChanged, Runtime

PROCESS_KEY = "retention"
FULL_CLOSURE = "fund_account_closure"
CLOSED = "closed"
ACCOUNT_CLOSED_MESSAGE = "vip_account_closed"
ACTOR = Actor.system("account-closure")
REASON = "客户已销户 account closed: replaced by the post-closure callback"


def closes_account(facts: dict[str, Any]) -> bool:
    return facts.get("outcome") == "completed" and FULL_CLOSURE in (facts.get("request_types") or [])


def hook(rt: Runtime) -> FactsChanged:
    """The runtime's facts hook, bound to the runtime the cases it ends are run by."""
    def on_facts_changed(session: Session, instance: ProcessInstance, before: dict[str, Any],
                         after: dict[str, Any]) -> None:
        if instance.process_key != PROCESS_KEY or not instance.client_id:
            return
        if not closes_account(after) or closes_account(before):
            return
        close(session, rt, instance)
    return on_facts_changed


def _day(moment: datetime) -> date:
    return moment.astimezone(SHANGHAI).date()


def close(session: Session, rt: Runtime, retention: ProcessInstance) -> dict[str, Any]:
    """Apply a completed closure to the registry and the client's other open cases."""
    at = retention.updated_at
    client = session.get(Client, retention.client_id, with_for_update=True)
    result: dict[str, Any] = {"client_id": retention.client_id}
    if client is None:
        result["registry"] = "the client is not in the registry"
    else:
        fields = ("account_status", "vip_tier", "tier_since", "downgrade_grace_until", "service_group_key")
        old = {name: getattr(client, name) for name in fields}
        client.account_status, client.service_group_key = CLOSED, None
        client.vip_tier = client.tier_since = client.downgrade_grace_until = None
        result["changes"] = {name: [_text(old[name]), _text(getattr(client, name))]
                             for name in fields if old[name] != getattr(client, name)}
    ended: list[dict[str, Any]] = []
    others = session.execute(select(ProcessInstance).where(
        ProcessInstance.client_id == retention.client_id, ProcessInstance.id != retention.id,
        ProcessInstance.status.in_((InstanceStatus.RUNNING, InstanceStatus.FAILED)),
        ProcessInstance.process_key.in_(("callback", "vip_onboarding"))).order_by(ProcessInstance.id)).scalars()
    for other in list(others):
        if other.process_key == "callback":
            if (other.facts or {}).get("callback_type") == "post_closure":
                continue
            instances.cancel(session, rt, instance_id=other.id, actor=ACTOR, reason=REASON)
            ended.append({"business_key": other.business_key, "process_key": other.process_key,
                          "how": "cancelled"})
        else:
            waiting = session.execute(select(MessageSubscription.correlation_key).where(
                MessageSubscription.instance_id == other.id,
                MessageSubscription.message_name == ACCOUNT_CLOSED_MESSAGE)).scalar()
            if waiting and other.status == InstanceStatus.RUNNING:
                messages.correlate(session, rt, name=ACCOUNT_CLOSED_MESSAGE, correlation_key=waiting, actor=ACTOR)
                how = ACCOUNT_CLOSED_MESSAGE
            else:
                instances.cancel(session, rt, instance_id=other.id, actor=ACTOR, reason=REASON)
                how = "cancelled"
            ended.append({"business_key": other.business_key, "process_key": other.process_key, "how": how})
    result["cases_ended"] = ended
    record_instance_event(session, retention, kind="client.account_closed", actor=None, at=at, data=result)
    return result


def _text(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value
