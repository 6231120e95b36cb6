"""Client classification (客户分类, docs/domain.md#classification) and VIP tiers (贵宾等级,
docs/domain.md#vip).

The standard is data: a versioned rule set in ``bpm_class_rule_set`` holds the turnover
threshold, the asset bands with the class on each side of the threshold, the VIP asset
thresholds and the downgrade grace. 经纪业务管理总部 re-sets the threshold each year-end
(the brokerage's procedures), which is a new version effective from a date; a client row
remembers the version that classified it, so an old evaluation keeps its version when a new
one arrives.

:func:`evaluate` classifies every client as of a date and returns the changes. It starts
no process and sends nothing: its only writes are the client rows (and one audit event
recording them), so the monthly VIP evaluation can start instances from the list.

It never changes a client's effective VIP tier (``vip_tier``, ``tier_since``): that is the
VIP case's, which welcomes the client, gets the approval a diamond tier or an override
needs, and runs the grace period and the pre-downgrade contact first (``engine.vip_tier``).
The evaluation records the tier the rules give (``evaluated_tier``, with the assets and the
rule version in the audit event) and whether a downgrade is pending (``downgrade_grace_until``).
"""

from __future__ import annotations

import calendar as pycalendar
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_system_event
from engine.errors import InvalidInput, PermissionDenied, RuleSetNotFound
from engine.models import Branch, ClassRuleSet, Client

CLASSES = ("A+", "B+", "A", "B", "C", "D", "C-", "D-", "E", "F", "G")
TIERS = ("silver", "gold", "diamond")  # ascending
COMPANY = "company"
RULES_ROLE = "hq_brokerage_mgmt"  # owns the classification standard and the VIP programme (docs/domain.md#roles)

# Version 1, seeded by migration 0003. The turnover threshold and the silver and gold
# thresholds are the brokerage's procedures; the bands and their classes, the diamond
# threshold and the grace months are assumed defaults (docs/domain.md#open-points).
DEFAULT_EFFECTIVE_FROM = date(2000, 1, 1)
DEFAULT_RULES: dict[str, Any] = {
    "turnover_threshold": "3",
    "bands": [
        {"min_assets": "0", "active": "G", "inactive": "G"},
        {"min_assets": "10000", "active": "E", "inactive": "F"},
        {"min_assets": "100000", "active": "C-", "inactive": "D-"},
        {"min_assets": "500000", "active": "C", "inactive": "D"},
        {"min_assets": "1000000", "active": "A", "inactive": "B"},
        {"min_assets": "5000000", "active": "A+", "inactive": "B+"},
    ],
    "vip_thresholds": {"silver": "50000", "gold": "300000", "diamond": "1000000"},
    "downgrade_grace_months": 3,
}
DEFAULT_APPROVED_BY = "brief §3.2/§3.3 defaults"

CLASS_CHANGED = "class_changed"
TIER_UPGRADED = "tier_upgraded"  # the rules give a tier above the effective one: a case may activate it
GRACE_STARTED = "grace_started"  # assets fell below the effective tier: kept until grace ends
GRACE_CLEARED = "grace_cleared"  # back at or above the effective tier during grace
GRACE_EXPIRED = "grace_expired"  # still below when grace ended: the case goes on to the downgrade


@dataclass(frozen=True)
class Band:
    min_assets: Decimal
    active: str
    inactive: str


@dataclass(frozen=True)
class Rules:
    id: int
    scope: str
    version: int
    effective_from: date
    effective_to: date | None
    turnover_threshold: Decimal
    bands: tuple[Band, ...]
    vip_thresholds: tuple[tuple[str, Decimal], ...]  # ascending, as TIERS
    downgrade_grace_months: int

    @classmethod
    def of(cls, row: ClassRuleSet) -> Rules:
        return cls(
            id=row.id, scope=row.scope, version=row.version, effective_from=row.effective_from,
            effective_to=row.effective_to, turnover_threshold=Decimal(row.turnover_threshold),
            bands=tuple(Band(Decimal(b["min_assets"]), b["active"], b["inactive"]) for b in row.bands),
            vip_thresholds=tuple((t, Decimal(row.vip_thresholds[t])) for t in TIERS),
            downgrade_grace_months=row.downgrade_grace_months,
        )

    @property
    def label(self) -> str:
        return f"{self.scope} v{self.version}"

    def classify(self, assets: Decimal, turnover: Decimal) -> str:
        """The band whose lower bound (inclusive) the assets reach; then the side of the
        turnover threshold (≥ is active)."""
        band = self.bands[0]
        for candidate in self.bands:
            if assets >= candidate.min_assets:
                band = candidate
        return band.active if turnover >= self.turnover_threshold else band.inactive

    def tier_for(self, assets: Decimal) -> str | None:
        tier = None
        for name, threshold in self.vip_thresholds:
            if assets >= threshold:
                tier = name
        return tier


def rank(tier: str | None) -> int:
    """A tier's place in :data:`TIERS`, no tier (None) lowest."""
    return 0 if tier is None else TIERS.index(tier) + 1


def add_months(day: date, months: int) -> date:
    """Same day ``months`` later, clamped to the month's end (Jan 31 + 1 = Feb 28/29)."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    return day.replace(year=year, month=month, day=min(day.day, pycalendar.monthrange(year, month)[1]))


# -- rule sets -----------------------------------------------------------------------------
def _decimal(value: Any, name: str) -> Decimal:
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInput(f"{name} must be a number, got {value!r}", field=name) from None
    if not number.is_finite():
        raise InvalidInput(f"{name} must be a finite number", field=name)
    return number


def validate_rules(values: Mapping[str, Any]) -> dict[str, Any]:
    """Normalise and check a rule set's values; raise :class:`InvalidInput` naming the field."""
    threshold = _decimal(values["turnover_threshold"], "turnover_threshold")
    if not Decimal(0) < threshold < Decimal(10000):
        raise InvalidInput("turnover_threshold must be above 0 and below 10000", field="turnover_threshold")
    raw_bands = values["bands"]
    if not isinstance(raw_bands, Sequence) or isinstance(raw_bands, str) or not raw_bands:
        raise InvalidInput("bands must be a non-empty list", field="bands")
    bands: list[dict[str, str]] = []
    previous: Decimal | None = None
    for number, band in enumerate(raw_bands, 1):
        if not isinstance(band, Mapping) or set(band) != {"min_assets", "active", "inactive"}:
            raise InvalidInput(f"band {number} needs exactly min_assets, active and inactive", field="bands")
        low = _decimal(band["min_assets"], "bands")
        if previous is None and low != 0:
            raise InvalidInput("the first band must start at 0 so that every client has a class", field="bands")
        if previous is not None and low <= previous:
            raise InvalidInput(f"band {number}: min_assets must increase from band to band", field="bands")
        for side in ("active", "inactive"):
            if band[side] not in CLASSES:
                raise InvalidInput(f"band {number}: {band[side]!r} is not one of {', '.join(CLASSES)}",
                                   field="bands")
        bands.append({"min_assets": str(low), "active": band["active"], "inactive": band["inactive"]})
        previous = low
    raw_vip = values["vip_thresholds"]
    if not isinstance(raw_vip, Mapping) or set(raw_vip) != set(TIERS):
        raise InvalidInput(f"vip_thresholds needs exactly {', '.join(TIERS)}", field="vip_thresholds")
    vip = {t: _decimal(raw_vip[t], "vip_thresholds") for t in TIERS}
    if not Decimal(0) < vip["silver"] < vip["gold"] < vip["diamond"]:
        raise InvalidInput("vip_thresholds must be positive and silver < gold < diamond", field="vip_thresholds")
    grace = values["downgrade_grace_months"]
    if not isinstance(grace, int) or isinstance(grace, bool) or not 0 <= grace <= 24:
        raise InvalidInput("downgrade_grace_months must be a whole number from 0 to 24",
                           field="downgrade_grace_months")
    return {"turnover_threshold": threshold.quantize(Decimal("0.0001")), "bands": bands,
            "vip_thresholds": {t: str(v) for t, v in vip.items()}, "downgrade_grace_months": grace}


def ensure_default(session: Session, *, now: datetime) -> ClassRuleSet | None:
    """Write version 1 from :data:`DEFAULT_RULES` when there is no company rule set (a
    database whose seeded row was removed); returns it, or None when rules exist."""
    if session.execute(select(ClassRuleSet.id).where(ClassRuleSet.scope == COMPANY).limit(1)).first():
        return None
    values = validate_rules(DEFAULT_RULES)
    row = ClassRuleSet(scope=COMPANY, version=1, effective_from=DEFAULT_EFFECTIVE_FROM, effective_to=None,
                       approved_by=DEFAULT_APPROVED_BY, note=None, created_by=None, created_at=now, **values)
    session.add(row)
    session.flush()
    return row


def get_all_rule_sets(session: Session, *, scope: str | None = None) -> list[ClassRuleSet]:
    query = select(ClassRuleSet).order_by(ClassRuleSet.scope, ClassRuleSet.version)
    if scope is not None:
        query = query.where(ClassRuleSet.scope == scope)
    return list(session.execute(query).scalars())


def create_rule_set(session: Session, *, actor: Actor, now: datetime, effective_from: date, approved_by: str,
                    scope: str = COMPANY, note: str | None = None, **changes: Any) -> ClassRuleSet:
    """A new version of ``scope``'s rules from ``effective_from``; values not given are
    copied from the scope's latest version (a branch's first version copies the company's).

    Versions only move forward: ``effective_from`` must be after the latest version's, whose
    ``effective_to`` it becomes, so no past evaluation's rules are rewritten."""
    if not actor.has_role(RULES_ROLE):
        raise PermissionDenied("the classification standard is set by 经纪业务管理总部 (hq_brokerage_mgmt)")
    unknown = set(changes) - set(DEFAULT_RULES)
    if unknown:
        raise InvalidInput(f"unknown rule values: {', '.join(sorted(unknown))}")
    if scope != COMPANY and session.get(Branch, scope) is None:
        raise InvalidInput(f"scope must be {COMPANY!r} or a branch code, got {scope!r}", field="scope")
    if not approved_by or len(approved_by) > 64:
        raise InvalidInput("approved_by (who approved this version, at most 64 characters) is required",
                           field="approved_by")
    latest = session.execute(
        select(ClassRuleSet).where(ClassRuleSet.scope == scope).order_by(ClassRuleSet.version.desc())
        .limit(1).with_for_update()
    ).scalar_one_or_none()
    base = latest or session.execute(
        select(ClassRuleSet).where(ClassRuleSet.scope == COMPANY).order_by(ClassRuleSet.version.desc()).limit(1)
    ).scalar_one_or_none()
    current: dict[str, Any] = dict(DEFAULT_RULES) if base is None else {
        "turnover_threshold": base.turnover_threshold, "bands": base.bands,
        "vip_thresholds": base.vip_thresholds, "downgrade_grace_months": base.downgrade_grace_months}
    values = validate_rules({**current, **{k: v for k, v in changes.items() if v is not None}})
    if latest is not None:
        if effective_from <= latest.effective_from:
            raise InvalidInput(f"effective_from must be after {latest.effective_from} (version {latest.version} "
                               "starts then); earlier versions are history and stay as they are",
                               field="effective_from")
        latest.effective_to = effective_from
    row = ClassRuleSet(scope=scope, version=(latest.version + 1) if latest else 1, effective_from=effective_from,
                       effective_to=None, approved_by=approved_by, note=note, created_by=actor.username,
                       created_at=now, **values)
    session.add(row)
    session.flush()
    record_system_event(session, kind="classification.rules_created", actor=actor.username, at=now,
                        data={"scope": scope, "version": row.version, "effective_from": effective_from,
                              "approved_by": approved_by, **values})
    return row


class RuleBook:
    """Every rule set, loaded once, answering "which rules apply to this branch on this
    day": the branch's own version if one is effective, else the company's."""

    def __init__(self, session: Session) -> None:
        self._by_scope: dict[str, list[Rules]] = {}
        for row in get_all_rule_sets(session):
            self._by_scope.setdefault(row.scope, []).append(Rules.of(row))

    def _effective(self, scope: str, day: date) -> Rules | None:
        for rules in self._by_scope.get(scope, ()):
            if rules.effective_from <= day and (rules.effective_to is None or day < rules.effective_to):
                return rules
        return None

    def for_branch(self, branch_code: str, day: date) -> Rules:
        rules = self._effective(branch_code, day) or self._effective(COMPANY, day)
        if rules is None:
            raise RuleSetNotFound(f"no classification rules are effective on {day}")
        return rules


# -- evaluation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Change:
    client_id: str
    branch_code: str
    service_group: str | None
    kind: str
    before: str | None
    after: str | None
    rules: str  # "company v1": the version that decided it
    grace_until: date | None = None
    assets: Decimal | None = None  # a tier change's evidence: the assets the rules were applied to

    def as_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "branch_code": self.branch_code, "service_group": self.service_group,
                "kind": self.kind, "before": self.before, "after": self.after, "rules": self.rules,
                "grace_until": self.grace_until.isoformat() if self.grace_until else None,
                "assets": None if self.assets is None else str(self.assets)}


@dataclass
class Evaluation:
    as_of: date
    evaluated: int = 0
    # Clients already evaluated as of a later date: an older evaluation never overwrites them.
    skipped: int = 0
    changes: list[Change] = field(default_factory=list)


def evaluate(session: Session, *, as_of: date, actor: Actor, now: datetime) -> Evaluation:
    """Classify every client and evaluate VIP tiers as of ``as_of``; return what changed.

    Tiers are compared with the client's effective tier, which this never changes. A tier by
    assets above it is ``tier_upgraded`` when the previous evaluation gave another tier (the
    same tier again has its case already, or had it refused or declined). A client below it
    is in grace until ``as_of`` + ``downgrade_grace_months`` (``grace_started``); back at or
    above it during grace clears it (``grace_cleared``); the first evaluation on or after the
    grace end that still finds them below says so (``grace_expired``). Running the same
    ``as_of`` twice changes nothing the second time.
    """
    if not actor.has_role(RULES_ROLE):
        raise PermissionDenied("running the classification needs hq_brokerage_mgmt")
    book = RuleBook(session)
    result = Evaluation(as_of=as_of)
    # Locked in key order, the order every other writer of client rows takes one lock in.
    clients = session.execute(select(Client).order_by(Client.client_id).with_for_update()).scalars().all()
    for client in clients:
        if client.classified_on is not None and client.classified_on > as_of:
            result.skipped += 1
            continue
        rules = book.for_branch(client.branch_code, as_of)
        result.evaluated += 1
        result.changes.extend(_evaluate_one(client, rules, as_of))
    if result.changes:
        record_system_event(session, kind="classification.evaluated", actor=actor.username, at=now,
                            data={"as_of": as_of, "evaluated": result.evaluated, "skipped": result.skipped,
                                  "changes": [c.as_dict() for c in result.changes]})
    return result


def _evaluate_one(client: Client, rules: Rules, as_of: date) -> list[Change]:
    changes: list[Change] = []
    assets, turnover = Decimal(client.assets), Decimal(client.turnover)

    def change(kind: str, before: str | None, after: str | None, grace_until: date | None = None) -> None:
        changes.append(Change(client.client_id, client.branch_code, client.service_group_key, kind, before, after,
                              rules.label, grace_until, None if kind == CLASS_CHANGED else assets))

    new_class = rules.classify(assets, turnover)
    if new_class != client.classification:
        change(CLASS_CHANGED, client.classification, new_class)
        client.classification = new_class
    if client.class_rule_set_id != rules.id:
        client.class_rule_set_id = rules.id
    previously_on, client.classified_on = client.classified_on, as_of

    effective, previous, by_assets = client.vip_tier, client.evaluated_tier, rules.tier_for(assets)
    client.evaluated_tier = by_assets
    grace_until = client.downgrade_grace_until
    if grace_until is not None and rank(by_assets) >= rank(effective):
        change(GRACE_CLEARED, effective, effective)
        client.downgrade_grace_until = None
    if rank(by_assets) > rank(effective):
        if by_assets != previous:
            change(TIER_UPGRADED, effective, by_assets)
    elif rank(by_assets) < rank(effective):
        if grace_until is None:
            # No grace configured (0 months) still starts one: the case contacts the client
            # before the downgrade's effective date either way.
            until = add_months(as_of, rules.downgrade_grace_months)
            change(GRACE_STARTED, effective, effective, until)
            client.downgrade_grace_until = until
        elif grace_until <= as_of and (previously_on is None or previously_on < grace_until):
            change(GRACE_EXPIRED, effective, by_assets, grace_until)
    return changes
