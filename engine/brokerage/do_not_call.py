"""拒绝回访/免打扰 (brief §2.3 "Message events from outside"): a client who asks, during a
callback, not to be called again.

The callback's message ``client_do_not_call`` interrupts the call (or the wait before the
next attempt): the case records the refusal (``result`` refused, ``dnc_marketing`` true in its
facts) and, for a regulatory callback (new account, periodic, risk disclosure), goes on by a
written channel; otherwise it ends refused. A service task is data only, so the client row is
written here, when a save turns the case's ``dnc_marketing`` fact true
(:func:`on_facts_changed`, installed by ``engine.brokerage``), audited on the case.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from engine.audit import record_instance_event
from engine.models import Client, ProcessInstance

PROCESS_KEY = "callback"
FLAG = "dnc_marketing"


def on_facts_changed(session: Session, instance: ProcessInstance, before: dict[str, Any],
                     after: dict[str, Any]) -> None:
    """The runtime's facts hook: a callback whose step set ``dnc_marketing`` marks its client."""
    if instance.process_key != PROCESS_KEY or after.get(FLAG) is not True or before.get(FLAG) is True:
        return
    at = instance.updated_at
    client = session.get(Client, instance.client_id, with_for_update=True) if instance.client_id else None
    if client is None:
        record_instance_event(session, instance, kind="client.do_not_call", actor=None, at=at,
                              data={"client_id": instance.client_id, "applied": False,
                                    "reason": "the client is not in the registry"})
        return
    already = client.dnc_marketing
    if not already:
        client.dnc_marketing, client.dnc_since = True, at
    record_instance_event(session, instance, kind="client.do_not_call", actor=None, at=at,
                          data={"client_id": client.client_id, "applied": not already,
                                "since": (client.dnc_since or at).isoformat()})
