"""Service-task functions of the transfer/closure retention process (转销户挽留,
docs/domain.md#retention, which defines the step ids R0…, A1…, B0… and ends X1… used
below; ``workflows/retention.bpmn``): data only, no I/O.

``retention_prepare`` checks the start data and fills the tunables (``engine.brokerage.settings``) the case
did not bring; ``retention_check_preconditions`` turns the account snapshot into blocking items
(R2); ``retention_wrap_up`` names the outcome (X1–X4), decides the post-hoc review (R6) and
builds the start data of the post-closure callback (R7), which the diagram throws as a
message to ``workflows/callback.bpmn``.

Due dates are not computed here: the SLA policies in ``workflows/sla/retention.json`` put
them on the right calendar (instructions on trading days, reviews on working days); the
diagram's own waits use the date functions (the lapse after ``retention.lapse_trading_days``
trading days, the exchange's result at 10:00 on the next trading day).
"""

from __future__ import annotations

import random
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.bpmn.service_tasks import ServiceRegistry
from engine.brokerage import settings

# The functions diagrams call by topic; engine.brokerage.install registers them.
functions = ServiceRegistry()

REQUEST_TYPES = ("sz_transfer", "sh_dedesignation", "fund_account_closure", "securities_account_cancellation",
                 "credit_account_closure", "custody_cancellation")
CLOSURES = frozenset({"fund_account_closure", "securities_account_cancellation", "custody_cancellation"})
_TIME_OF_DAY = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
# Who worked the case (camunda:property completedByVariable on the user tasks): none of them
# may do its post-hoc review (separation of duties: whoever handled the case does not review it).
HANDLER_VARIABLES = ("accepted_by", "blocking_informed_by", "rejected_by", "submitted_by", "retention_handled_by",
                     "result_chased_by", "failure_resolved_by", "completed_by_staff", "withdrawal_confirmed_by")
COMPLETED, RETAINED, LAPSED, REJECTED = "completed", "retained", "lapsed", "rejected"


def settings_of(data: dict[str, Any]) -> dict[str, Any]:
    """The tunables as process variables: the case's own value, else the default."""
    # The win-back wait belongs to the post-closure callback, which reads it itself.
    values = settings.case_values(data, "retention.", exclude=("retention.winback_after_days",))
    lapse = values["lapse_trading_days"]
    if isinstance(lapse, bool) or not isinstance(lapse, int | str) or not str(lapse).isdigit() \
            or not 1 <= int(lapse) <= 1000:
        raise ValueError(f"lapse_trading_days must be a whole number of trading days from 1 to 1000, got {lapse!r}")
    values["lapse_trading_days"] = int(lapse)
    rate = float(values["review_sample_rate"])
    if not 0.0 <= rate <= 1.0:
        raise ValueError("review_sample_rate is a fraction between 0 and 1")
    values["review_sample_rate"] = rate
    for name in ("submit_cutoff", "result_check_at"):
        if not _TIME_OF_DAY.match(str(values[name])):
            raise ValueError(f"{name} must be a time of day HH:MM (Asia/Shanghai), got {values[name]!r}")
    values["review_asset_threshold"] = _money(values["review_asset_threshold"])
    return values


def _money(value: Any) -> float:
    try:
        return float(Decimal(str(value))) if value not in (None, "") else 0.0
    except InvalidOperation:
        raise ValueError(f"not an amount of money: {value!r}") from None


@functions.register("retention_prepare")
def prepare(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Retention step R0: refuse a request that could never be worked; tunables and defaults
    as variables."""
    for name in ("client_id", "branch_code"):
        if not data.get(name):
            raise ValueError(f"a transfer/closure request needs {name} in its start data")
    branch = str(data["branch_code"])
    group = data.get("service_group") or None
    return {
        **settings_of(data),
        "service_group": group,
        # The retention talk (step B1) goes to the client's service group; clients in the
        # branch pool (no group) to the branch's account managers ("account_manager on duty").
        "retention_groups": [group] if group else [f"{branch}:account_manager"],
        "client_assets": _money(data.get("client_assets")),
        "request_state": "received",
        # Read by gateways before any form sets them. Nothing the two parallel tracks set
        # (exit_state, the handlers, the conversation's fields) is initialised here: at the
        # join a track's stale copy of a variable would overwrite the other track's value.
        "identity_verified": None, "client_open_to_retention_talk": False, "exchange_result": None,
        "blocking_items": [], "judicial_freeze": False, "preconditions_met": False,
    }


# Retention step R2: what blocks which request. A snapshot of the account (``account_status``,
# sent with the request and again with "client reports items cleared") is checked against
# every request type asked for. Code -> (label, request types it blocks; empty = all of them).
_ALL: frozenset[str] = frozenset()
BLOCKERS: dict[str, tuple[str, frozenset[str]]] = {
    "margin_debt": ("两融负债未了结 Margin debt outstanding", _ALL),
    "open_repo": ("回购/质押/约定购回未了结 Repo or pledge open", _ALL),
    "pending_subscriptions": ("申购/配股/基金认购未了结 Subscriptions pending", _ALL),
    "credit_account_open": ("信用账户须先销户 Close the credit account first",
                            frozenset({"fund_account_closure", "securities_account_cancellation"})),
    "same_day_orders": ("当日有委托或成交 Orders or trades today",
                        frozenset({"sh_dedesignation", "fund_account_closure", "securities_account_cancellation"})),
    "suspended_securities": ("持有当日停牌证券 Securities suspended today", frozenset({"sz_transfer"})),
    "holdings": ("证券余额未清零 Securities still held", CLOSURES - {"custody_cancellation"}),
    "fund_balance": ("资金余额未清零 Funds still in the account", frozenset({"fund_account_closure",
                                                                             "custody_cancellation"})),
    "in_transit_entitlements": ("在途权益（红利等）未到账 Entitlements in transit", CLOSURES),
}


def _blocking(status: dict[str, Any]) -> set[str]:
    """The blocking facts in a snapshot: a true flag or a positive amount."""
    found = set()
    for code in BLOCKERS:
        value = status.get(code)
        if isinstance(value, bool):
            present = value
        elif isinstance(value, (int, float)):
            present = value > 0
        elif isinstance(value, str):
            present = _money(value) > 0
        else:
            present = bool(value)
        if present:
            found.add(code)
    return found


@functions.register("retention_check_preconditions")
def check_preconditions(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Retention steps R2/R3: blocking items for the requested types; a judicial freeze is a
    legal impediment (rejection, end X4), not something the client can clear."""
    types = data.get("request_types") or []
    unknown = [t for t in types if t not in REQUEST_TYPES]
    if not types or unknown:
        raise ValueError(f"request_types must be a non-empty list of {', '.join(REQUEST_TYPES)}; got {types!r}")
    status = dict(data.get("account_status") or {})
    if status.get("judicial_freeze"):
        return {"judicial_freeze": True, "blocking_items": [], "preconditions_met": False,
                "request_state": "frozen", "exit_state": "frozen"}
    found = _blocking(status)
    if "credit_account_closure" in types:
        found.discard("credit_account_open")  # closed first, by the same instructions
    items = [{"code": code, "label": label} for code, (label, blocks) in BLOCKERS.items()
             if code in found and (not blocks or blocks.intersection(types))]
    return {"judicial_freeze": False, "blocking_items": items, "preconditions_met": not items,
            "request_state": "blocked" if items else "ready",
            "precondition_checks": int(data.get("precondition_checks") or 0) + 1}


def outcome_of(data: dict[str, Any]) -> str:
    """Which end state the case reached, from the facts each path leaves behind: how it left
    the sub-process before submission (``exit_state``), or the identity check, or the return."""
    exit_state = data.get("exit_state")
    if exit_state == "withdrawn":
        return RETAINED
    if exit_state == "lapsed":
        return LAPSED
    if data.get("identity_verified") is False or exit_state == "frozen":
        return REJECTED
    if exit_state == "submitted" and data.get("exchange_result") == "success":
        return COMPLETED
    raise ValueError("the case reached wrap-up without an outcome (no withdrawal, lapse, rejection or success)")


@functions.register("retention_wrap_up")
def wrap_up(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Retention steps R6/R7: outcome, whether (and by whom not) the case is reviewed, and
    the start data of the post-closure callback for a completed transfer/closure."""
    settings = settings_of(data)
    outcome = outcome_of(data)
    # Retained, lapsed and rejected cases are where forced retention or obstruction would hide
    # (a firm may not restrict or delay a transfer or closure, a regulatory requirement):
    # always reviewed. Completed ones are sampled.
    sampled = outcome != COMPLETED or random.random() < settings["review_sample_rate"]
    handlers = sorted({str(data[n]) for n in HANDLER_VARIABLES if data.get(n)})
    result: dict[str, Any] = {
        **settings,
        "outcome": outcome,
        "review_required": sampled,
        "review_by_branch_head": sampled and _money(data.get("client_assets")) > settings["review_asset_threshold"],
        "review_excluded_users": handlers,
        "post_closure_callback": None,
    }
    if outcome == COMPLETED:
        branch = str(data["branch_code"])
        # The engine adds origin_business_key (this RET- case) and origin_process; the callback
        # process numbers its own case (CB-…).
        result["post_closure_callback"] = {
            "callback_type": "post_closure",
            "client_id": data["client_id"],
            "branch_code": branch,
            # The callback process needs a group for its alternative channel: the branch pool
            # (its account managers) for clients without one.
            "service_group": data.get("service_group") or f"{branch}:account_manager",
            "request_types": list(data.get("request_types") or []),
            "closure_reason_stated": data.get("client_reason_stated") or data.get("reason_code"),
            "completed_at": data.get("completed_at"),
        }
    return result
