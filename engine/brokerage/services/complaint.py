"""Service-task functions of the complaint process (workflows/complaint.bpmn;
docs/domain.md#complaints, which defines the step ids C1… used below).

Reviewed, side-effect-free functions: each reads a copy of the case data and returns the
variables to set. Every threshold is a tunable of ``engine.brokerage.settings`` (keys
``complaint.*``); a value already in the case data (from the start message or an earlier
step) wins over the default, so a deployment can override any of them per case without a
code change.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from engine.bpmn.service_tasks import ServiceRegistry
from engine.brokerage import settings

# The functions diagrams call by topic; engine.brokerage.install registers them.
functions = ServiceRegistry()

# Alleged violations that make a complaint major on their own (complaint step C2, classification).
MAJOR_VIOLATIONS = frozenset({
    "suitability_mismatch", "discretionary_trading", "staff_operating_account",
    "transfer_obstruction", "misappropriation",
})
REGULATOR_CHANNELS = frozenset({"12386", "csrc_bureau", "sac"})
GENERAL, MAJOR, GROUP, REGULATOR = "general", "major", "group", "regulator"


def settings_of(data: dict[str, Any]) -> dict[str, Any]:
    """The tunables as process variables: the case's own value, else the default
    (``engine.brokerage.settings``, keys ``complaint.*``)."""
    return settings.case_values(data, "complaint.")


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except InvalidOperation:
        return Decimal(0)


def classify(data: dict[str, Any]) -> dict[str, Any]:
    """Severity per complaint steps C2/C4: regulator-transferred, group, major or general."""
    tunables = settings_of(data)
    reasons: list[str] = []
    regulator = bool(data.get("regulator_ref")) or data.get("channel") in REGULATOR_CHANNELS
    group = bool(data.get("joint_complaint")) or int(data.get("same_matter_count") or 0) >= int(
        tunables["group_threshold"])
    if _money(data.get("amount_claimed")) > _money(tunables["major_amount"]):
        reasons.append("amount_claimed")
    if MAJOR_VIOLATIONS.intersection(data.get("alleged_violations") or []):
        reasons.append("alleged_violation")
    if data.get("media_or_litigation_threat"):
        reasons.append("media_or_litigation_threat")
    # A registered client's age is the registry's, on the case's start day (set by the engine
    # at start); an age typed at registration counts only for a client the registry has no
    # birth date of (a walk-in complainant).
    age = data.get("client_age_at_start")
    if age is None:
        age = data.get("client_age")
    if isinstance(age, (int, float)) and age >= tunables["elderly_age"]:
        reasons.append("elderly_client")
    if regulator:
        severity = REGULATOR
    elif group:
        severity = GROUP
    elif reasons:
        severity = MAJOR
    else:
        severity = GENERAL
    branch = data.get("branch_code")
    return {
        **tunables,
        "severity": severity,
        "severity_reasons": reasons + (["group"] if group else []) + (["regulator"] if regulator else []),
        # SLA policies and the closing level distinguish two tracks: general, and the rest.
        "sla_track": GENERAL if severity == GENERAL else MAJOR,
        "is_regulator_transfer": regulator,
        "assigned_branch": branch,
        # Who approves an extension (docs/domain.md#complaints): the branch's 客服总监 on general
        # cases, HQ otherwise.
        "extension_approvers": [f"{branch}:branch_cs_director" if branch else "branch_cs_director"]
        if severity == GENERAL else ["hq_complaint_dept"],
        # Defaults for variables that diagram expressions read before a form sets them.
        "first_contact_owner": data.get("first_contact_owner") or None,
        "regulator_due_at": data.get("regulator_due_at") or None,
        "notifications": list(data.get("notifications") or []),
    }


@functions.register("complaint_classify")
def _classify(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Complaint step C2 分类分级: severity, SLA track and the tunables as process variables."""
    return classify({**data, **params})


@functions.register("complaint_notify")
def _notify(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Records that a group must be told (complaint step C4: compliance on major, group and
    regulator cases). Delivery to people is not done here: the engine has no notification
    step yet."""
    notice = {"to": str(params.get("to") or ""), "reason": str(params.get("reason") or "")}
    return {"notifications": [*list(data.get("notifications") or []), notice]}


@functions.register("complaint_archive")
def _archive(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Complaint step C18 归档: marks the case archived with its retention period. The
    write-once (WORM) copy of the records is not made here (no archive store yet)."""
    return {"archived": True, "archive_years": settings_of(data)["archive_years"]}


@functions.register("complaint_contact_failed")
def _contact_failed(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Complaint step C5, the client was not reached: one more failed attempt (the diagram
    retries ``contact_retries`` times, each in another half-day, then sends an SMS)."""
    attempts = int(data.get("contact_attempts") or 0) + 1
    failures = [*list(data.get("contact_failures") or []),
                {"contact_at": data.get("contact_at"), "contact_channel": data.get("contact_channel")}]
    return {"contact_attempts": attempts, "contact_failures": failures}


@functions.register("complaint_contact_sms")
def _contact_sms(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Complaint step C5, the retries missed the client too: the SMS itself is written to the
    outbox by ``engine.brokerage.complaint_events`` (it needs the client's phone, which never
    enters the case data)."""
    return {"contact_sms_sent": True}


@functions.register("complaint_chase")
def _chase(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """客户来电催办: the chase is counted in the case facts and kept with what the client said
    (who is told is ``engine.brokerage.complaint_events``'s)."""
    chases = [*list(data.get("chases") or []),
              {"inbound_contact_at": data.get("inbound_contact_at"), "summary": data.get("chase_summary"),
               "channel": data.get("chase_channel"), "recording_id": data.get("recording_id")}]
    return {"chase_count": len(chases), "chases": chases}


@functions.register("complaint_evidence")
def _evidence(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """客户补充材料: the attachment's reference joins the case's evidence."""
    refs = [*list(data.get("evidence_refs") or []),
            {"ref": data.get("evidence_ref"), "description": data.get("evidence_description"),
             "received_at": data.get("evidence_received_at")}]
    return {"evidence_refs": refs}


@functions.register("complaint_reclassify_regulator")
def _reclassify_regulator(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The client took the same matter to 12386 (or the bureau, the association): the case is
    regulator-transferred from now on, as if it had come in that way (C2/C4): HQ approves an
    extension and closes it, the feedback to the regulator (C16) runs after closing, and
    compliance is told. Its deadline moves in ``engine.brokerage.complaint_events``."""
    reasons = [r for r in list(data.get("severity_reasons") or []) if r != "regulator"]
    notices = list(data.get("notifications") or [])
    if data.get("severity") not in (MAJOR, GROUP, REGULATOR):
        notices.append({"to": "compliance", "reason": REGULATOR})
    return {
        "severity": REGULATOR, "severity_reasons": [*reasons, "regulator"], "sla_track": MAJOR,
        "is_regulator_transfer": True, "regulator_ref": data.get("regulator_ref"),
        "regulator_due_at": data.get("regulator_due_at"), "extension_approvers": ["hq_complaint_dept"],
        "notifications": notices,
    }
