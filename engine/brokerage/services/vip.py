"""Service-task functions of the VIP process (贵宾客户准入 / 等级调整, docs/domain.md#vip,
which defines the step ids V0a… used below; ``workflows/vip_onboarding.bpmn``): data only,
no I/O, no clock.

Every tier threshold, the grace period and the other tunables are in
``engine.brokerage.settings`` (keys ``vip.*`` and ``risk.validity_months``), with the process
variable each one becomes; a value the instance already carries under that name (from the
start data) wins over the default, so a deployment or a monthly run can override any of
them without a code change. Due dates are not computed here: the
SLA policies in ``workflows/sla/vip_onboarding.json`` put them on the working-day calendar.
Times this module computes (end of the grace period, effective date of a downgrade) are
calendar arithmetic on the evaluation's own timestamp, never "now".

The ``outcome`` a function returns is what the case did to the client: ``activated``,
``downgraded``, ``recovered`` and ``closed`` change the client's effective tier (or settle a
pending downgrade) in the registry, through ``engine.brokerage.vip_tier``, as the step is saved.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from engine.bpmn.service_tasks import ServiceRegistry
from engine.brokerage import settings

# The functions diagrams call by topic; engine.brokerage.install registers them.
functions = ServiceRegistry()

SHANGHAI = ZoneInfo("Asia/Shanghai")

NONE, SILVER, GOLD, DIAMOND = "none", "silver", "gold", "diamond"
TIERS = (NONE, SILVER, GOLD, DIAMOND)  # in rank order
UPGRADE, DOWNGRADE, PROSPECT, NO_CHANGE = "upgrade", "downgrade", "prospect", "none"
TRIGGERS = ("evaluation", "nomination")

# Benefits per tier (the brokerage's procedures). ``advisory`` ones are investment-advisory
# content (stock picks, strategy research): only with a suitability match and a signed
# advisory agreement (a compliance requirement, docs/domain.md#vip). The brokerage's
# procedures give no diamond benefits: diamond gets gold's until HQ defines its own.
BENEFITS: dict[str, list[tuple[str, str, bool]]] = {
    SILVER: [
        ("trading_platform_standard", "惠+ 交易平台标准版", False),
        ("sms_info_package", "资讯短信包（新股上市/持仓信息/中签/重大事项）", False),
        ("sms_weekly_picks", "每周精选个股短信", True),
        ("member_events", "会员活动", False),
        ("points", "积分", False),
    ],
    GOLD: [
        ("trading_platform_deep_info", "优+ 深度资讯版", False),
        ("trading_platform_flexible", "优+ 灵活交易版", False),
        ("strategy_research", "优+ 策略研报", True),
        ("sms_stock_picks", "荐股短信", True),
        ("mobile_bulletins", "早晚移动快讯", False),
        ("private_room", "理财空间（营业部贵宾室）", False),
        ("online_vip_zone", "网上贵宾专区", False),
        ("member_events", "会员活动", False),
        ("points", "积分", False),
    ],
}
BENEFITS[DIAMOND] = list(BENEFITS[GOLD])
BENEFITS[NONE] = []

# Suitability (docs/domain.md#risk-tolerance): an ordinary investor Cn may receive services
# rated R1..Rn; the C1 lowest category only R1; a professional investor R1..R5.
_RISK_LEVEL = re.compile(r"^C([1-5])$")
_SERVICE_LEVEL = re.compile(r"^R([1-5])$")
_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


def settings_of(data: dict[str, Any]) -> dict[str, Any]:
    """The tunables as process variables: the instance's own value, else the default."""
    values = {**settings.case_values(data, "vip."), **settings.case_values(data, "risk.")}
    if not (_money(values["silver_threshold"]) < _money(values["gold_threshold"])
            < _money(values["diamond_threshold"])):
        raise ValueError("tier thresholds must increase: silver < gold < diamond")
    # 0 is a rule version's "no grace" (engine.classification): the contact and the
    # effective date still come before the downgrade.
    if int(values["downgrade_grace_months"]) < 0:
        raise ValueError("downgrade_grace_months cannot be negative")
    if not 0 < float(values["prospect_ratio"]) < 1:
        raise ValueError("prospect_ratio is a fraction between 0 and 1")
    if not _SERVICE_LEVEL.match(str(values["advisory_risk_level"])):
        raise ValueError("advisory_risk_level is R1..R5")
    return values


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount") from None


def _rank(tier: Any) -> int:
    if tier not in TIERS:
        raise ValueError(f"a tier is one of {', '.join(TIERS)}, got {tier!r}")
    return TIERS.index(tier)


def threshold(tier: str, settings: dict[str, Any]) -> Decimal:
    return _money(settings[f"{tier}_threshold"])


def tier_by_assets(assets: Decimal, settings: dict[str, Any]) -> str:
    for tier in (DIAMOND, GOLD, SILVER):
        if assets >= threshold(tier, settings):
            return tier
    return NONE


def tier_by_commission(commission: Any, settings: dict[str, Any]) -> str:
    """Contribution thresholds are off (None) by default: then contribution never lifts a tier."""
    if commission in (None, ""):
        return NONE
    for tier in (DIAMOND, GOLD, SILVER):
        limit = settings[f"commission_threshold_{tier}"]
        if limit not in (None, "") and _money(commission) >= _money(limit):
            return tier
    return NONE


def _evaluated_at(data: dict[str, Any]) -> datetime:
    """When the evaluation ran: given, or 09:00 on the 1st of the month after the period."""
    if data.get("evaluated_at"):
        value = datetime.fromisoformat(str(data["evaluated_at"]))
        if value.tzinfo is None:
            raise ValueError(f"evaluated_at {data['evaluated_at']!r} has no UTC offset")
        return value
    match = _PERIOD.match(str(data.get("evaluation_period") or ""))
    if match is None:
        raise ValueError("a VIP evaluation needs evaluation_period as YYYY-MM")
    year, month = int(match.group(1)), int(match.group(2))
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return datetime(year, month, 1, 9, tzinfo=SHANGHAI)


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months (CM): the same local date N months on, clamped to the month's end."""
    local = moment.astimezone(SHANGHAI)
    index = local.month - 1 + months
    year, month = local.year + index // 12, index % 12 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    return local.replace(year=year, month=month, day=day)


def _first_of_next_month(moment: datetime) -> datetime:
    local = moment.astimezone(SHANGHAI)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime.combine(date(year, month, 1), time(0), tzinfo=SHANGHAI)


def risk_assessment_valid(data: dict[str, Any], settings: dict[str, Any], at: datetime) -> bool:
    """A C-level from an assessment no older than ``risk.validity_months``; a legacy-only
    client (no C-level) has no valid assessment (the legacy 4-level scale is never mapped
    to C-levels, docs/domain.md#risk-tolerance)."""
    if data.get("investor_type") != "professional" and not _RISK_LEVEL.match(str(data.get("risk_level") or "")):
        return False
    assessed = data.get("risk_assessed_at")
    if not assessed:
        return False
    assessed_on = date.fromisoformat(str(assessed)[:10])
    expires = add_months(datetime.combine(assessed_on, time(0), tzinfo=SHANGHAI),
                         int(settings["risk_validity_months"]))
    return at < expires


def suitability_match(data: dict[str, Any], service_level: str) -> bool:
    """The client's C-level (or professional status) covers the service's R-level."""
    service = _SERVICE_LEVEL.match(service_level)
    if service is None:
        raise ValueError(f"a service risk level is R1..R5, got {service_level!r}")
    needed = int(service.group(1))
    if data.get("investor_type") == "professional":
        return True
    level = _RISK_LEVEL.match(str(data.get("risk_level") or ""))
    if level is None:
        return False
    allowed = 1 if data.get("c1_lowest") else int(level.group(1))
    return needed <= allowed


def check_start(data: dict[str, Any]) -> str:
    """VIP step V1 (receive): refuse an evaluation result that could never be worked; returns
    the trigger."""
    for name in ("client_id", "branch_code"):
        if not data.get(name):
            raise ValueError(f"a VIP evaluation needs {name} in its start data")
    trigger = data.get("trigger") or "evaluation"
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
    _rank(data.get("previous_tier") or NONE)
    if data.get("avg_daily_assets_prev_month") in (None, ""):
        raise ValueError("a VIP evaluation needs avg_daily_assets_prev_month")
    if _money(data["avg_daily_assets_prev_month"]) < 0:
        raise ValueError("avg_daily_assets_prev_month cannot be negative")
    _evaluated_at(data)
    return str(trigger)


@functions.register("vip_receive")
def _receive(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """VIP step V1, 受理 (receive): the start data is usable; the trigger the first gateway
    reads."""
    settings_of(data)  # a bad override fails here, before anyone is given a task
    return {"trigger": check_start(data), "previous_tier": data.get("previous_tier") or NONE}


def evaluate(data: dict[str, Any]) -> dict[str, Any]:
    """VIP step V1 计算等级: target tier and change type, who approves, and the tunables."""
    settings = settings_of(data)
    trigger = check_start(data)
    previous = data.get("previous_tier") or NONE
    assets = _money(data["avg_daily_assets_prev_month"])
    evaluated_at = _evaluated_at(data)
    by_assets = tier_by_assets(assets, settings)
    by_commission = tier_by_commission(data.get("trailing12m_commission"), settings)
    earned = max(by_assets, by_commission, key=_rank)  # tier = max(by assets, by contribution)

    override = False
    if trigger == "nomination":
        target = data.get("proposed_tier")
        if _rank(target) <= _rank(previous):
            raise ValueError(f"a nomination proposes a tier above {previous}, got {target!r}")
        change = UPGRADE
        override = _rank(earned) < _rank(target)  # below the threshold: a manual override (VIP step V0c)
    else:
        given = data.get("new_tier")
        if given not in (None, "") and given != earned:
            raise ValueError(f"the evaluation's new_tier {given!r} disagrees with the thresholds, "
                             f"which give {earned!r} for assets {assets}")
        target = earned
        if _rank(target) > _rank(previous):
            change = UPGRADE
        elif _rank(target) < _rank(previous):
            change = DOWNGRADE
        elif previous != DIAMOND and assets >= threshold(TIERS[_rank(previous) + 1], settings) * Decimal(
                str(settings["prospect_ratio"])):
            change = PROSPECT
        else:
            change = NO_CHANGE

    # VIP steps V4/V5: diamond, overrides and nominations need an approver who is not the nominator.
    approval_required = change == UPGRADE and (target == DIAMOND or override or trigger == "nomination")
    hq = override or (target == DIAMOND and assets >= _money(settings["hq_approval_assets"]))
    service_group = data.get("service_group") or None
    branch = data["branch_code"]
    return {
        **settings,
        "trigger": trigger,
        "previous_tier": previous,
        "vip_tier": data.get("vip_tier") or previous,
        "target_tier": target,
        "tier_by_assets": by_assets,
        "change_type": change,
        "is_override": override,
        "approval_required": approval_required,
        "approval_level": ("hq" if hq else "branch") if approval_required else None,
        "evaluated_at": evaluated_at.isoformat(),
        "months_below_threshold": int(data.get("months_below_threshold") or (1 if change == DOWNGRADE else 0)),
        "prospect_target_tier": TIERS[_rank(previous) + 1] if change == PROSPECT else None,
        "service_group": service_group,
        # The welcome call (VIP step V3) goes to the client's group, or to the branch pool if
        # the client has none yet.
        "unassigned_pool": [] if service_group else [f"{branch}:account_manager"],
        # Read by the approval's recusal (excludeUsers) before any nomination set it.
        "nominated_by": data.get("nominated_by") or None,
        "risk_assessment_valid": risk_assessment_valid(data, settings, evaluated_at),
        "advisory_agreement_signed": bool(data.get("advisory_agreement_signed")),
        "preferred_channels": list(data.get("preferred_channels") or []),
        "notifications": list(data.get("notifications") or []),
        "client_notifications": list(data.get("client_notifications") or []),
        "vip_opt_out": bool(data.get("vip_opt_out")),
        "at_risk": False,
    }


@functions.register("vip_evaluate")
def _evaluate(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return evaluate({**data, **params})


def advisory_gate(data: dict[str, Any]) -> dict[str, Any]:
    """Advisory benefits only with a valid assessment, a suitability match and a signed
    advisory agreement; the reason when they are withheld."""
    level = str(data.get("advisory_risk_level") or settings.default("vip.advisory_risk_level"))
    if not data.get("risk_assessment_valid"):
        reason = "risk_assessment_invalid"
    elif not suitability_match(data, level):
        reason = "no_suitability_match"
    elif not data.get("advisory_agreement_signed"):
        reason = "no_advisory_agreement"
    else:
        reason = None
    return {"advisory_benefits_enabled": reason is None, "advisory_withheld_reason": reason}


def benefits_for(tier: str, *, advisory: bool) -> list[str]:
    return [key for key, _name, is_advisory in BENEFITS[tier] if advisory or not is_advisory]


def activate(data: dict[str, Any]) -> dict[str, Any]:
    """VIP step V6 开通权益: the tier, the service marker, the non-advisory benefits, and the
    advisory ones only through :func:`advisory_gate`."""
    tier = data["target_tier"]
    # The answer at the welcome call (V3) can only take validity away: an expired or
    # legacy-only assessment stays invalid.
    valid = data.get("risk_assessment_valid") is not False and risk_assessment_valid(
        data, settings_of(data), _evaluated_at(data))
    gate = advisory_gate({**data, "risk_assessment_valid": valid})
    has_advisory = any(is_advisory for _k, _n, is_advisory in BENEFITS[tier])
    return {
        **gate,
        "advisory_benefits_enabled": gate["advisory_benefits_enabled"] and has_advisory,
        "vip_tier": tier,
        "vip_since": str(data["evaluated_at"])[:10],  # the evaluation that granted the tier
        "service_marker": f"VIP-{tier.upper()}",  # CRM 服务标识
        "priority_queue": True,  # counter and call centre serve the client first
        "benefits": benefits_for(tier, advisory=gate["advisory_benefits_enabled"]),
        "advisory_benefits_withheld": [] if gate["advisory_benefits_enabled"] else
        [key for key, _name, is_advisory in BENEFITS[tier] if is_advisory],
        "risk_assessment_valid": valid,
        "outcome": "activated",
    }


@functions.register("vip_activate")
def _activate(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return activate(data)


@functions.register("vip_review_advisory")
def _review_advisory(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """After the re-assessment task: the advisory gate again, on the new C-level."""
    return activate({**data, "risk_assessment_valid": True})


@functions.register("vip_opt_out")
def _opt_out(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The client declines membership: no VIP tier; tier-based service stays available on request."""
    return {"vip_opt_out": True, "outcome": "declined", "vip_tier": data.get("previous_tier") or NONE}


@functions.register("vip_grace_start")
def _grace_start(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """VIP step V7: the client is at risk; the grace period ends after
    ``downgrade_grace_months`` consecutive evaluations below the threshold, i.e. that many
    calendar months after the first one, less the months already counted. The downgrade
    takes effect on the 1st of the month after the grace period plus the notice time
    (≈ 10 WD for the pre-downgrade contact, V8)."""
    grace = int(data["downgrade_grace_months"])
    below = int(data.get("months_below_threshold") or 1)
    evaluated_at = datetime.fromisoformat(str(data["evaluated_at"]))
    grace_ends_at = add_months(evaluated_at, max(grace - below, 0))
    effective = _first_of_next_month(grace_ends_at + timedelta(days=int(data["downgrade_notice_days"])))
    return {
        "at_risk": True,  # on the service group's "at-risk VIP" list (retention signal)
        "recovery_threshold": float(threshold(data["previous_tier"], data)),
        "grace_ends_at": grace_ends_at.isoformat(),
        "downgrade_effective_at": effective.isoformat(),
        # Where the downgrade moves when the contact no longer fits before ``effective``.
        "downgrade_postponed_effective_at": _first_of_next_month(effective).isoformat(),
        "recovered": False,
        "below_counted_for": data.get("evaluation_period"),  # the month the count already includes
    }


@functions.register("vip_schedule_contact")
def _schedule_contact(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """VIP step V8: the pre-downgrade contact is due ``pre_downgrade_contact_wd`` working
    days before the effective date (the diagram's parameters count them on the working-day
    calendar). When the grace period ends too late for that, the downgrade moves to the 1st
    of the following month, so the client is never contacted with less notice."""
    if str(params["contact_due_at"]) > str(params["now_at"]):
        return {"pre_downgrade_contact_due_at": params["contact_due_at"], "downgrade_postponed": False}
    return {"pre_downgrade_contact_due_at": params["later_contact_due_at"], "downgrade_postponed": True,
            "downgrade_effective_at": data["downgrade_postponed_effective_at"]}


def reevaluate(data: dict[str, Any]) -> dict[str, Any]:
    """A re-evaluation during the grace period or the notice time (the monthly run, or an
    ad-hoc one after a large deposit): recovered when the assets are back at the tier's
    threshold. Otherwise the target follows the assets, and a new month's evaluation (a new
    ``evaluation_period``) counts one more month below; an ad-hoc one counts none."""
    assets = _money(data["avg_daily_assets_prev_month"])
    by_assets = max(tier_by_assets(assets, data), tier_by_commission(data.get("trailing12m_commission"), data),
                    key=_rank)
    if _rank(by_assets) >= _rank(data["previous_tier"]):
        return {"recovered": True, "at_risk": False, "outcome": "recovered", "tier_by_assets": by_assets}
    period = data.get("evaluation_period")
    below = int(data.get("months_below_threshold") or 0)
    if period and period != data.get("below_counted_for"):
        below += 1
    return {"recovered": False, "tier_by_assets": by_assets, "target_tier": by_assets,
            "months_below_threshold": below, "below_counted_for": period}


@functions.register("vip_reevaluate")
def _reevaluate(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    return reevaluate(data)


@functions.register("vip_notify")
def _notify(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """Records that a role must be told (a dissatisfied client before a downgrade is a
    retention signal for the branch, VIP step V8). Delivery to people is not done here."""
    notice = {"to": str(params.get("to") or ""), "reason": str(params.get("reason") or "")}
    return {"notifications": [*list(data.get("notifications") or []), notice]}


def _client_notice(data: dict[str, Any], reason: str) -> list[dict[str, Any]]:
    channels = list(data.get("preferred_channels") or [])
    notice = {"channel": channels[0] if channels else "sms", "reason": reason}
    return [*list(data.get("client_notifications") or []), notice]


@functions.register("vip_apply_downgrade")
def _apply_downgrade(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """VIP step V9 调整权益: the lower tier and its benefits from the effective date; the client
    is told on their preferred channel. Advisory benefits stay only if they were enabled."""
    tier = data["target_tier"]
    advisory = bool(data.get("advisory_benefits_enabled"))
    return {
        "vip_tier": tier,
        "benefits": benefits_for(tier, advisory=advisory),
        "advisory_benefits_enabled": advisory and any(a for _k, _n, a in BENEFITS[tier]),
        "service_marker": f"VIP-{tier.upper()}" if tier != NONE else None,
        "priority_queue": tier != NONE,
        "downgraded_from": data["previous_tier"],
        "at_risk": False,
        "outcome": "downgraded",
        "client_notifications": _client_notice(data, "downgrade"),
    }


@functions.register("vip_close")
def _close(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The client closed the account: every VIP benefit ends with it."""
    return {"vip_tier": NONE, "benefits": [], "advisory_benefits_enabled": False, "service_marker": None,
            "priority_queue": False, "at_risk": False, "outcome": "closed"}


@functions.register("vip_record_prospect")
def _record_prospect(data: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """VIP step V10: on the service group's nurturing list (目标贵宾客户培育); nothing the client sees."""
    return {"prospect": True, "outcome": "nurtured"}
