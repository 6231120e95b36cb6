"""The client's effective VIP tier (``bpm_client.vip_tier``, ``tier_since``) has one writer
after the registry creates the client: the VIP case (``workflows/vip_onboarding.bpmn``).

The monthly evaluation only records the tier the rules give (``evaluated_tier``); the case
decides whether and when that becomes the tier the client is served at: at its activation
step, after the welcome call and any approval (VIP steps V3–V6, docs/domain.md#vip); on the
downgrade's effective date, after the grace period and the pre-downgrade contact (V7–V9);
never when the approval is refused or the client declines.

A service task is data only (``engine.bpmn.service_tasks``), so the case cannot write the
row itself. What it did is already in its report facts (``outcome``, ``previous_tier``,
``vip_tier``, copied onto the instance row on every save); when a save changes a VIP case's
``outcome``, :func:`on_facts_changed` (installed on the runtime by ``engine.brokerage``)
applies that outcome to the client row, in the same transaction as the step. A later save
of the same case (a task after the activation) leaves ``outcome`` as it was and applies
nothing again.

Each change is conditional on the row as it is now, so an old case never undoes a newer
one: an activation only raises the tier, a downgrade only applies to the tier it was
started for. Every outcome applied or passed over is in the case's audit trail.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.orm import Session

from engine.audit import record_instance_event
from engine.brokerage.classification import TIERS, rank
from engine.calendars import SHANGHAI
from engine.models import Client, ProcessInstance

PROCESS_KEY = "vip_onboarding"
ACTIVATED, DOWNGRADED, CLOSED, RECOVERED = "activated", "downgraded", "closed", "recovered"
EFFECTS = (ACTIVATED, DOWNGRADED, CLOSED, RECOVERED)  # the other outcomes leave the tier alone
NONE = "none"  # the process's word for "no tier"; the client row says NULL


def _tier(value: Any) -> str | None:
    """The process's tier as the client row stores it."""
    if value in (None, "", NONE):
        return None
    if value not in TIERS:
        raise ValueError(f"a VIP case gave the tier {value!r}, not one of {', '.join(TIERS)}")
    return str(value)


def apply(session: Session, instance: ProcessInstance, facts: dict[str, Any], *, on: date) -> dict[str, Any]:
    """Apply a VIP case's ``outcome`` to its client's row; returns what was done (audited)."""
    outcome = facts.get("outcome")
    # Locked: the checks below read the row the change is conditional on. Lock order is
    # instance, then client; the monthly evaluation takes clients first, then instances, so
    # a case step applying a tier at the very moment the evaluation tells that same case
    # something can deadlock: PostgreSQL aborts one, and both are retried (the timer or
    # the schedule's slot stays unfired; a person's step answers 503 concurrent_change,
    # nothing saved, to be sent again: api/errors.py).
    # Re-read the row, unless this transaction has unflushed changes to it (the monthly
    # evaluation's, when it tells the case in the same transaction): re-reading would drop them.
    loaded = session.identity_map.get(session.identity_key(Client, instance.client_id))
    fresh = loaded is None or not sqlalchemy_inspect(loaded).modified
    client = session.get(Client, instance.client_id, with_for_update=True, populate_existing=fresh)
    if client is None:
        return {"client_id": instance.client_id, "outcome": outcome, "applied": False,
                "reason": "the client is not in the registry"}
    before, grace_until = client.vip_tier, client.downgrade_grace_until
    refused = None
    if outcome == ACTIVATED:
        to = _tier(facts.get("vip_tier"))
        if rank(to) > rank(before):
            client.vip_tier, client.tier_since = to, on
        else:
            refused = f"the client's tier is {before or NONE} already"
    else:
        if outcome == DOWNGRADED:
            to, started_for = _tier(facts.get("vip_tier")), _tier(facts.get("previous_tier"))
            if before == started_for and rank(to) < rank(before):
                client.vip_tier, client.tier_since = to, (on if to else None)
            else:
                refused = f"the case downgrades from {started_for or NONE}; the client's tier is {before or NONE}"
        elif outcome == CLOSED:
            client.vip_tier, client.tier_since = None, None
        # A grace case has ended (downgraded, recovered or closed): no downgrade is pending.
        client.downgrade_grace_until = None
    return {"client_id": client.client_id, "outcome": outcome, "before": before, "after": client.vip_tier,
            "applied": client.vip_tier != before or client.downgrade_grace_until != grace_until,
            **({"reason": refused} if refused else {}),
            **({"grace_cleared": grace_until} if client.downgrade_grace_until != grace_until else {})}


def on_facts_changed(session: Session, instance: ProcessInstance, before: dict[str, Any],
                     after: dict[str, Any]) -> None:
    """The runtime's facts hook: a VIP case whose step set a new ``outcome`` that changes the
    tier applies it to its client, audited on the case."""
    if instance.process_key != PROCESS_KEY or not instance.client_id:
        return
    outcome = after.get("outcome")
    if outcome not in EFFECTS or outcome == before.get("outcome"):
        return
    # ``updated_at`` is the moment of the step that set the outcome (the unit of work's save).
    at = instance.updated_at
    result = apply(session, instance, after, on=at.astimezone(SHANGHAI).date())
    record_instance_event(session, instance, kind="client.vip_tier", actor=None, at=at, data=result)
