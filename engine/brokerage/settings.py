"""Every tunable of the brokerage's processes and figures, once: its key, default, type
and meaning.

A tunable reaches the product one of two ways:

- **per case** (``variable`` set): the default becomes a process variable when the case is
  prepared; a value the case already carries under that name (from its start message or an
  earlier step) wins, so a deployment or a monthly run can tune one case without a code
  change;
- **stored** (``stored=True``): a ``bpm_setting`` row with the same key overrides the
  default firm-wide; a process owner writes it with ``bpm settings set KEY VALUE``, checked
  by the tunable's parser and audited.

One tunable may be both (the extension limit: the figures read the stored value, a case
carries its default as ``extension_max_days``). ``bpm settings list`` prints them all, with
the stored values; ``docs/settings.md`` is generated from :data:`TUNABLES` by the same code.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.roles import PROCESS_OWNER
from engine.audit import record_system_event
from engine.calendars import Unit
from engine.errors import InvalidInput, PermissionDenied
from engine.models import Setting

AUDIT_KIND = "setting.changed"


# -- parsers: text as stored (or typed at the CLI) -> value -----------------------------------
@dataclass(frozen=True)
class Target:
    """An amount of a calendar unit, e.g. 15 working days (``15 WD``)."""

    amount: int
    unit: Unit


def target(value: str, *, units: tuple[Unit, ...] = tuple(Unit)) -> Target:
    amount, _, unit = value.strip().partition(" ")
    try:
        parsed = Target(int(amount), Unit(unit.strip()))
    except ValueError:
        raise InvalidInput(f"{value!r} is not an amount and a unit such as '15 WD'") from None
    if parsed.amount < 0 or parsed.unit not in units:
        raise InvalidInput(f"{value!r}: a non-negative amount in {', '.join(u.value for u in units)}")
    return parsed


def working_days(value: str) -> Target:
    return target(value, units=(Unit.WORKING_DAYS,))


def day_buckets(value: str) -> tuple[int, ...]:
    try:
        edges = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise InvalidInput(f"ageing buckets {value!r} must be whole working-day counts such as 2,5,10") from None
    return check_buckets(edges)


def check_buckets(edges: Iterable[float]) -> tuple[int, ...]:
    """Each bucket's last whole working day overdue, increasing: 2,5,10 gives 0-2, 3-5, 6-10
    and >10 WD."""
    edges = tuple(edges)
    if (not edges or any(e <= 0 or not float(e).is_integer() for e in edges)
            or list(edges) != sorted(set(edges))):
        raise InvalidInput("ageing buckets are increasing positive whole working-day counts such as 2,5,10")
    return tuple(int(e) for e in edges)


def names(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def steps(value: str) -> tuple[tuple[str, str], ...]:
    found = []
    for item in names(value):
        process, _, element = item.partition(":")
        if not process or not element:
            raise InvalidInput(f"{item!r} must be process:element")
        found.append((process, element))
    return tuple(found)


def positive_int(value: str) -> int:
    if not value.strip().isdigit():
        raise InvalidInput(f"{value!r} is not a whole number")
    return int(value)


def whole(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.strip().isdigit() or not low <= int(value) <= high:
            raise InvalidInput(f"{value!r} must be a whole number from {low} to {high}")
        return int(value)
    return parse


def share(value: str) -> Decimal:
    """A share in (0, 1], e.g. a quota ratio."""
    try:
        ratio = Decimal(value.strip())
    except InvalidOperation:
        raise InvalidInput(f"{value!r} is not a number") from None
    if not 0 < ratio <= 1:
        raise InvalidInput(f"{value!r} must be a share between 0 and 1")
    return ratio


def factor(value: str) -> Decimal:
    try:
        parsed = Decimal(value.strip())
    except InvalidOperation:
        raise InvalidInput(f"{value!r} is not a number") from None
    # Below 1 would under-sample the clients the batch is meant to over-sample.
    if not parsed.is_finite() or not 1 <= parsed <= 100:
        raise InvalidInput(f"{value!r} must be a factor between 1 and 100")
    return parsed


def score_weights(value: str) -> dict[str, float]:
    weights: dict[str, float] = {}
    for item in names(value):
        name, _, number = item.partition("=")
        if name.strip() not in ("growth", "turnover", "referrals"):
            raise InvalidInput(f"score weight {name!r}: growth, turnover or referrals")
        try:
            weights[name.strip()] = float(number)
        except ValueError:
            raise InvalidInput(f"score weight {item!r} must be name=number") from None
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise InvalidInput("score weights are non-negative, not all zero: growth=0.5,turnover=0.3,referrals=0.2")
    return weights


def text(value: str) -> str:
    return value.strip()


# -- the registry --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tunable:
    key: str
    # The value when nothing overrides it: text for a stored tunable (as its row would hold
    # it), the variable's value for a per-case one; None: none (the figure is not computed).
    default: Any
    meaning: str
    # The process variable a case carries it as (per case); None: not a case variable.
    variable: str | None = None
    # Overridable firm-wide by a bpm_setting row, parsed by ``parse``.
    stored: bool = False
    parse: Callable[[str], Any] = text
    # Where the value comes from: "seed" (the brokerage's own procedures), "public" (public
    # regulatory material, to re-check against the official text), "assumed" (a working
    # assumption to confirm with the brokerage), "input" (data the brokerage supplies).
    source: str = "assumed"


def _case(key: str, default: Any, meaning: str, *, variable: str | None = None, source: str = "assumed") -> Tunable:
    return Tunable(key, default, meaning, variable=variable or key.split(".", 1)[1], source=source)


def _stored(key: str, default: str | None, meaning: str, parse: Callable[[str], Any], *,
            source: str = "assumed", variable: str | None = None) -> Tunable:
    return Tunable(key, default, meaning, variable=variable, stored=True, parse=parse, source=source)


_ALL = (
    # -- complaints (投诉纠纷) --------------------------------------------------------------------
    _case("complaint.major_amount", 50000, "Compensation claimed above this (¥) makes a complaint major."),
    _case("complaint.branch_limit", 5000, "The branch head approves compensation up to this (¥); above it, HQ."),
    _case("complaint.compliance_cosign_amount", 50000, "Compliance co-signs compensation above this (¥)."),
    _case("complaint.group_threshold", 3, "Complaints on the same matter that make a group complaint."),
    _case("complaint.elderly_age", 65, "A complainant this old or older makes a complaint major."),
    _case("complaint.csat_alert_max", 2, "A satisfaction score (1-5) at or below this opens a service-quality "
          "ticket."),
    _case("complaint.satisfaction_delay", "P1D", "Wait after closure before the satisfaction call (ISO 8601)."),
    _case("complaint.no_response_wd", 10, "Working days to wait for the client's answer to the result before "
          "closing without one (closure_reason no_response), on the working-day calendar."),
    _case("complaint.contact_retries", 2, "Further attempts to reach a client the first contact missed, each in "
          "another half-day of a working day; then the client is sent an SMS."),
    _case("complaint.contact_retry_after", "PT4H", "Least spacing between attempts to reach the client (ISO 8601); "
          "a retry is offered at the first moment after it within the calling hours, in another half-day."),
    _case("complaint.calling_hours", None, "Hours (Asia/Shanghai) in which complainants are called back, e.g. "
          "09:00-12:00,13:00-20:00; none: the business hours of the working-day calendar.",
          variable="contact_hours"),
    _case("complaint.group_window_wd", 10, "Working days within which complaints on the same matter count towards "
          "complaint.group_threshold."),
    _case("complaint.archive_years", 20, "Years the archived case file is kept (the legal minimum is 3).",
          source="public"),
    _stored("complaint.extension.max", "15 WD", "An extension of the resolution deadline is granted once, for at "
            "most this long. Cases carry the amount as extension_max_days; the figures read the stored value.",
            working_days, variable="extension_max_days"),
    _stored("complaint.sla.resolve.general", "15 WD", "Resolution deadline of a general complaint.", target),
    _stored("complaint.sla.resolve.major", "30 WD", "Resolution deadline of a major complaint.", target),
    _stored("complaint.sla.resolve.group", "30 WD", "Resolution deadline of a group complaint (none is given: "
            "as a major one).", target),
    _stored("complaint.sla.resolve.regulator", "30 WD", "Resolution deadline of a complaint the regulator "
            "transferred, and never later than the regulator's due date less the margin below.", target),
    _stored("complaint.sla.regulator_margin", "2 WD", "Feedback to the regulator is due this long before the "
            "regulator's own due date.", working_days),
    # -- transfer and closure with retention (转销户挽留) ------------------------------------------
    _case("retention.lapse_trading_days", 20, "A request lapses when its blocking items are not cleared within "
          "this many trading days after the client was told them (the trading-day calendar)."),
    _case("retention.review_asset_threshold", 500000, "The branch head reviews the case as well when the client's "
          "assets exceed this (¥)."),
    _case("retention.review_sample_rate", 1.0, "Share of completed transfers and closures given a post-hoc review "
          "(retained, lapsed and rejected cases are always reviewed)."),
    _case("retention.submit_cutoff", "15:00", "Instructions are due by this time (Asia/Shanghai) of the trading "
          "day the preconditions are met, else by it on the next trading day."),
    _case("retention.result_check_at", "10:00", "The exchange's result is chased at this time of the next trading "
          "day when it has not arrived."),
    _case("retention.winback_after_days", 90, "A closed-out client who consented may be contacted by the former "
          "service group this many calendar days after the closure."),
    # -- callbacks (回访) ----------------------------------------------------------------------------
    _case("callback.max_attempts", 3, "Call attempts before a callback is closed as unreachable."),
    _case("callback.retry_after", "PT4H", "Least spacing between call attempts (ISO 8601); a retry is offered at "
          "the first moment after it within the calling hours of a working day, in another half-day than the "
          "attempt before."),
    _case("callback.calling_hours", None, "Hours (Asia/Shanghai) in which clients are called, e.g. "
          "09:00-12:00,13:00-20:00; none: the business hours of the working-day calendar."),
    _case("callback.qa_sample_rate", 0.1, "Share of completed callbacks sampled for quality review (every "
          "exception is reviewed)."),
    _stored("callback.new_account.deadline", "1 CM", "A new account's callback is due within this of the opening.",
            target, source="public"),
    _stored("callback.periodic.min_ratio", "0.10", "Share of active clients the periodic callbacks must reach "
            "in a year (of the prior year-end active clients).", share, source="public"),
    _stored("callback.periodic.quarterly_ratio", "0.025", "Share of active clients the quarterly batch samples "
            "(4 quarters x 2.5 % = 10 % a year).", share),
    _stored("callback.periodic.oversample_factor", "2", "Draw weight of a VIP or elderly client in the quarterly "
            "batch.", factor),
    _stored("callback.periodic.elderly_age", "65", "Age from which a client is over-sampled as elderly.",
            whole(1, 150)),
    _stored("callback.periodic.recent_months", "6", "A client called back this recently is not sampled.",
            whole(0, 120)),
    _stored("callback.periodic.escalation_ratio", "0.80", "At a quarter's end, periodic-callback coverage below "
            "this share of the year-to-date quota is escalated.", share),
    _stored("callback.periodic.escalate_to", "call_center_supervisor,process_owner", "Groups told when the "
            "quarter-end coverage falls short (the call centre's supervisor and the process owner).", names),
    # -- VIP clients (贵宾客户) ----------------------------------------------------------------------
    _case("vip.silver", 50_000, "Average daily assets (¥) for the silver tier (银卡).", variable="silver_threshold",
          source="seed"),
    _case("vip.gold", 300_000, "Average daily assets (¥) for the gold tier (金卡).", variable="gold_threshold",
          source="seed"),
    _case("vip.diamond", 1_000_000, "Average daily assets (¥) for the diamond tier (钻石卡).",
          variable="diamond_threshold"),
    _case("vip.downgrade_grace_months", 3, "Consecutive monthly evaluations below the tier before a downgrade."),
    _case("vip.prospect_ratio", 0.8, "A prospect has at least this share of the next tier's threshold."),
    _case("vip.hq_approval_assets", 10_000_000, "A diamond client at or above these assets (¥) is approved by HQ."),
    _case("vip.advisory_risk_level", "R3", "Risk rating of the advisory benefits (stock picks, strategy research)."),
    _case("vip.pre_downgrade_contact_wd", 10, "The pre-downgrade contact is due this many working days before the "
          "downgrade's effective date; when the grace period ends later than that, the downgrade moves a month."),
    _case("vip.downgrade_notice_days", 14, "Calendar days after the grace period's end from which the downgrade "
          "takes effect on the 1st of the following month (the contact's deadline is vip.pre_downgrade_contact_wd)."),
    _case("risk.validity_months", 24, "A risk assessment older than this has expired (the published maximum).",
          variable="risk_validity_months", source="public"),
    _case("vip.commission_threshold.silver", None, "Trailing-12-month commission (¥) that also qualifies for "
          "silver; none: not used.", variable="commission_threshold_silver"),
    _case("vip.commission_threshold.gold", None, "As above, for gold.", variable="commission_threshold_gold"),
    _case("vip.commission_threshold.diamond", None, "As above, for diamond.",
          variable="commission_threshold_diamond"),
    # -- figures -------------------------------------------------------------------------------------
    _stored("figures.ageing_buckets", "2,5,10", "The overdue-ageing buckets: the last whole working day (on the "
            "figures' business calendar) of each bucket but the open-ended last; 2,5,10 gives 0-2, 3-5, 6-10 and "
            ">10 WD overdue.", day_buckets),
    _stored("figures.regulatory_policies", "callback.new_account.deadline", "SLA policies whose deadlines are "
            "regulatory (shown apart).", names),
    _stored("figures.regulatory_steps", "complaint:report_regulator", "process:element pairs whose due date is "
            "the regulator's.", steps),
    _stored("figures.business_hours", "default", "The business hours the figures' working-day arithmetic uses.",
            text),
    _stored("figures.satisfied_min", "4", "A 1-5 satisfaction score at or above this counts as satisfied.",
            positive_int),
    _stored("figures.group_score.weights", "growth=0.5,turnover=0.3,referrals=0.2", "Weights of the "
            "service-group assessment score.", score_weights),
    _stored("figures.group_rank.highlight", "2", "How many service groups the ranking marks at the top and at "
            "the bottom.", positive_int, source="seed"),
)
TUNABLES: dict[str, Tunable] = {t.key: t for t in _ALL}

# Prior year-end active clients (dormant and suspended accounts excluded), the base of the
# periodic callback quota: an input, for the firm or one branch. No default: no input, no quota.
ACTIVE_CLIENTS = "callback.periodic.active_clients"
ACTIVE_CLIENTS_PATTERN = Tunable(f"{ACTIVE_CLIENTS}.<year>[.<branch>]", None, "Active clients at the end of "
                                 "<year> (dormant and suspended excluded), for the firm or one branch: the base "
                                 "of the periodic callback quota.", stored=True, parse=positive_int, source="input")
_ACTIVE_CLIENTS_KEY = re.compile(r"^callback\.periodic\.active_clients\.(\d{4})(?:\.([A-Za-z0-9_-]{1,26}))?$")


def find(key: str) -> Tunable:
    """The tunable of ``key`` (a year-end active-client count included)."""
    if key in TUNABLES:
        return TUNABLES[key]
    if _ACTIVE_CLIENTS_KEY.match(key):
        return ACTIVE_CLIENTS_PATTERN
    raise InvalidInput(f"unknown setting {key!r}; `bpm settings list` names them all")


def active_clients_key(key: str) -> tuple[int, str | None] | None:
    """(year, branch) of a year-end active-client key, or None for any other key."""
    match = _ACTIVE_CLIENTS_KEY.match(key)
    return None if match is None else (int(match.group(1)), match.group(2))


def case_values(data: Mapping[str, Any], prefix: str, *, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The per-case tunables whose key starts with ``prefix`` (but those in ``exclude``), as
    process variables: the case's own value where it has one, else the default."""
    values = {}
    skipped = set(exclude)
    for tunable in TUNABLES.values():
        if tunable.key.startswith(prefix) and tunable.variable is not None and tunable.key not in skipped:
            value = data.get(tunable.variable)
            values[tunable.variable] = case_default(tunable) if value in (None, "") else value
    return values


def default(key: str) -> Any:
    """The value a case takes for ``key`` when it carries none."""
    return case_default(TUNABLES[key])


def case_default(tunable: Tunable) -> Any:
    """The value a case takes when it carries none: a stored tunable's default parsed (the
    amount of a target)."""
    if not tunable.stored:
        return tunable.default
    value = tunable.parse(tunable.default)
    return value.amount if isinstance(value, Target) else value


def load(session: Session, keys: Iterable[str]) -> dict[str, Any]:
    """The stored tunables ``keys``, parsed: the bpm_setting row's value, else the default."""
    wanted = [TUNABLES[k] for k in keys]
    rows = dict(session.execute(select(Setting.key, Setting.value)
                                .where(Setting.key.in_([t.key for t in wanted]))).all())
    return {t.key: t.parse(rows.get(t.key, t.default)) for t in wanted}


def stored_values(session: Session) -> dict[str, str]:
    """Every stored override, by key (the year-end active-client counts included)."""
    keys = [t.key for t in TUNABLES.values() if t.stored]
    return dict(session.execute(select(Setting.key, Setting.value).where(
        Setting.key.in_(keys) | Setting.key.like(f"{ACTIVE_CLIENTS}.%"))).all())


def set_value(session: Session, *, key: str, value: str, actor: Actor, now: datetime) -> Setting:
    """Override a stored tunable's default, or give a year-end active-client count: checked
    by its parser and audited with the value before and after. Process owners only."""
    if not actor.has_role(PROCESS_OWNER):
        raise PermissionDenied("settings need the process_owner or admin role")
    tunable = find(key)
    if not tunable.stored:
        raise InvalidInput(f"{key} is a per-case default: a case's start data sets it as {tunable.variable!r}; "
                           "it is not stored")
    tunable.parse(value)
    row = session.get(Setting, key)
    before = None if row is None else row.value
    if row is None:
        row = Setting(key=key, value=value.strip())
        session.add(row)
    row.value = value.strip()
    record_system_event(session, kind=AUDIT_KIND, actor=actor.username, at=now,
                        data={"key": key, "before": before, "after": row.value})
    return row


def markdown() -> str:
    """The registry as the page ``docs/settings.md``."""
    lines = [
        "# Settings",
        "",
        "Every tunable of the processes and figures, generated from `engine/brokerage/settings.py` "
        "(`bpm settings list --markdown`); `tests/brokerage/test_settings.py` fails when this page and the "
        "code differ.",
        "",
        "- **case**: the default becomes the named process variable when a case is prepared; a value in the "
        "case's start data wins.",
        "- **stored**: a process owner overrides the default firm-wide with `bpm settings set KEY VALUE` "
        "(checked and audited as `setting.changed`).",
        "- Source: *seed* (the brokerage's own procedures), *public* (public regulatory or industry material: "
        "compliance re-checks it against the official text before go-live), *assumed* (a working assumption, "
        "to confirm with the brokerage), *input* (data the brokerage supplies).",
        "",
        "| key | default | how | meaning | source |",
        "|---|---|---|---|---|",
    ]
    for tunable in (*TUNABLES.values(), ACTIVE_CLIENTS_PATTERN):
        how = " and ".join(part for part in (
            f"case: `{tunable.variable}`" if tunable.variable else "", "stored" if tunable.stored else "") if part)
        default = "none" if tunable.default is None else f"`{tunable.default}`"
        lines.append(f"| `{tunable.key}` | {default} | {how} | {tunable.meaning} | {tunable.source} |")
    return "\n".join(lines) + "\n"
