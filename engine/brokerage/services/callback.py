"""Service-task functions of the callback process (回访, docs/domain.md#callbacks, which
defines the step ids K1… used below): data only, no I/O.

``callback_prepare`` checks the start data and fills the tunables (``engine.brokerage.settings``)
the instance did not bring; ``callback_assess`` turns the questionnaire's answers into the
exception route (callback step K6). Due dates are not computed here: the SLA policies in
``workflows/sla/callback.json`` put them on the right calendar per ``callback_type``.
"""

from __future__ import annotations

import random
import re
from datetime import datetime, timedelta
from typing import Any

from engine.bpmn.service_tasks import ServiceRegistry
from engine.brokerage import settings

# The functions diagrams call by topic; engine.brokerage.install registers them.
functions = ServiceRegistry()

CALLBACK_TYPES = ("new_account", "periodic", "post_closure", "risk_disclosure", "departed_staff", "anomaly")
# The permissions whose opening triggers a risk-disclosure callback (docs/domain.md#callbacks).
HIGH_RISK_PERMISSIONS = ("创业板", "科创板", "两融", "港股通", "期权", "北交所")
# The retry timer counts days, hours, minutes and seconds (a month has no fixed length).
_ISO_DURATION = re.compile(r"^P(?!$)(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+S)?)?$")
_HH_MM = r"([01]\d|2[0-3]):[0-5]\d"
_CALLING_HOURS = re.compile(rf"^{_HH_MM}-{_HH_MM}(,{_HH_MM}-{_HH_MM})*$")


@functions.register("callback_prepare")
def prepare(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Callback step K1: refuse a callback that could never be worked; set the attempt
    loop's counters."""
    callback_type = data.get("callback_type")
    if callback_type not in CALLBACK_TYPES:
        raise ValueError(f"callback_type must be one of {', '.join(CALLBACK_TYPES)}, got {callback_type!r}")
    for name in ("client_id", "branch_code"):
        if not data.get(name):
            raise ValueError(f"a callback needs {name} in its start data")
    # A client in the branch pool (no service group yet, like most new accounts) is served
    # by the branch's account managers (docs/domain.md#service-groups): they stand in for the
    # group.
    pool = not data.get("service_group")
    service_group = data.get("service_group") or f"{data['branch_code']}:account_manager"
    max_attempts = int(data.get("max_attempts") or settings.default("callback.max_attempts"))
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    retry_after = str(data.get("retry_after") or settings.default("callback.retry_after"))
    if not _ISO_DURATION.match(retry_after):
        raise ValueError(f"retry_after must be an ISO 8601 duration such as PT4H, got {retry_after!r}")
    calling_hours = data.get("calling_hours") or settings.default("callback.calling_hours")
    if calling_hours is not None and not _CALLING_HOURS.match(str(calling_hours)):
        raise ValueError(f"calling_hours must be periods such as 09:00-12:00,13:00-20:00, got {calling_hours!r}")
    rate = float(data.get("qa_sample_rate", settings.default("callback.qa_sample_rate")))
    if not 0.0 <= rate <= 1.0:
        raise ValueError("qa_sample_rate is a fraction between 0 and 1")
    return {
        "service_group": service_group, "branch_pool": pool,
        "max_attempts": max_attempts, "retry_after": retry_after, "calling_hours": calling_hours, "attempt_no": 0,
        "qa_sample_rate": rate, "qa_sampled": random.random() < rate,
        "exception_route": "none", "exception_items": [], "conduct_items": [], "service_items": [],
        # Set by the telephony system's client_called_back message when an agent took the
        # client's call: the case goes straight to identity verification with that agent.
        "answered_by": None, "inbound": False,
        # Retention step R8 (win-back): asked in the post-closure questionnaire; the win-back
        # waits until win_back_at.
        "consent_marketing_contact": None, "win_back_at": _win_back_at(data),
    }


def _win_back_at(data: dict[str, Any]) -> str | None:
    """When the former service group may try to win back a client who closed out (retention
    step R8, docs/domain.md#retention): ``retention.winback_after_days`` calendar days after
    the closure was completed (the retention case's ``completed_at``, carried by its
    message). None for other callbacks."""
    if data.get("callback_type") != "post_closure" or not data.get("completed_at"):
        return None
    completed = datetime.fromisoformat(str(data["completed_at"]))
    if completed.tzinfo is None:
        raise ValueError(f"completed_at {data['completed_at']!r} has no UTC offset")
    days = int(data.get("winback_after_days") or settings.default("retention.winback_after_days"))
    return (completed + timedelta(days=days)).isoformat()


@functions.register("callback_permission_opened")
def permission_opened(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Message "high-risk permission opened": a risk-disclosure callback about the
    permission the message names. An unknown name fails the case rather than calling a
    client about something nobody can tell them (the questionnaire asks about it)."""
    permission = data.get("permission")
    if permission not in HIGH_RISK_PERMISSIONS:
        raise ValueError(f"permission must be one of {', '.join(HIGH_RISK_PERMISSIONS)}, got {permission!r}")
    return {"callback_type": "risk_disclosure", "product_or_permission": permission}


# Callback step K6: which answers are an exception, and whose. Staff-conduct items go to
# compliance, service items to the branch; a wish to complain (or obstruction) becomes a
# complaint.
_CONDUCT = {
    "opened_by_self": "否", "staff_operated_account": "是", "discretionary_mandate": "是",
    "risk_disclosed": "否",
}
_SERVICE = {"account_changes_confirmed": "否", "suitability_result_known": "不知晓"}


@functions.register("callback_assess")
def assess(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Route by precedence complaint > compliance > branch; every item found is kept."""
    conduct = [k for k, bad in _CONDUCT.items() if data.get(k) == bad]
    service = [k for k, bad in _SERVICE.items() if data.get(k) == bad]
    complaint = bool(data.get("wants_to_complain")) or data.get("obstructed") == "是"
    route = "complaint" if complaint else "compliance" if conduct else "branch" if service else "none"
    items = (["wants_to_complain"] if complaint else []) + conduct + service
    return {"exception_route": route, "exception_items": items, "conduct_items": conduct,
            "service_items": service, "qa_sampled": bool(data.get("qa_sampled")) or route != "none"}
