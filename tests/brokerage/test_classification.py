"""Classification (brief §3.2) and VIP tiers (§3.3) from the versioned rule table:
the eleven classes at their boundaries, tier thresholds, a configurable diamond threshold,
downgrade grace as time passes (time-machine, nothing sleeps), versions that keep old
evaluations as they were, and ``bpm registry evaluate``. The evaluation records the tier the
rules give (``evaluated_tier``); the effective tier (``vip_tier``) is the VIP case's to change
(tests/test_vip_evaluation.py), so here it stays what the registry was given."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import time_machine
from sqlalchemy import func, select

from engine.access.identity import Actor
from engine.brokerage import classification, registry, registry_import
from engine.brokerage.demo import FILES
from engine.calendars import SHANGHAI
from engine.errors import InvalidInput, PermissionDenied, RuleSetNotFound
from engine.models import AuditEvent, ClassRuleSet, Client, Notification, ProcessInstance, Task
from tests.support.cli import bpm

HQ = Actor("s001", frozenset({"hq_brokerage_mgmt"}))
ADMIN = Actor.system("importer")
NOW = datetime(2025, 6, 16, 2, tzinfo=UTC)

# Brief §3.2 with T = 3, written out here independently of engine.classification: every
# band's lower bound (inclusive) and the last cent below the next band, each with turnover
# exactly at the threshold (active) and just under it (inactive).
BOUNDARIES = [
    ("0.00", "9", "G"), ("0.00", "0", "G"),
    ("9999.99", "3", "G"), ("9999.99", "2.9999", "G"),
    ("10000.00", "3", "E"), ("10000.00", "2.9999", "F"),
    ("99999.99", "3", "E"), ("99999.99", "2.9999", "F"),
    ("100000.00", "3", "C-"), ("100000.00", "2.9999", "D-"),
    ("499999.99", "3", "C-"), ("499999.99", "2.9999", "D-"),
    ("500000.00", "3", "C"), ("500000.00", "2.9999", "D"),
    ("999999.99", "3", "C"), ("999999.99", "2.9999", "D"),
    ("1000000.00", "3", "A"), ("1000000.00", "2.9999", "B"),
    ("4999999.99", "3", "A"), ("4999999.99", "2.9999", "B"),
    ("5000000.00", "3", "A+"), ("5000000.00", "2.9999", "B+"),
    ("90000000.00", "50", "A+"), ("90000000.00", "0", "B+"),
]
# §3.3: silver ≥ 5万, gold ≥ 30万, diamond ≥ 100万 (the default of vip.diamond).
TIER_BOUNDARIES = [("0", None), ("49999.99", None), ("50000", "silver"), ("299999.99", "silver"),
                   ("300000", "gold"), ("999999.99", "gold"), ("1000000", "diamond")]


@pytest.fixture
def branches(db):
    """The demo branches and version 1 of the rules (PostgreSQL tables are emptied between
    tests, so the migration's seeded row is written again)."""
    with db.transaction() as s:
        registry_import.import_csv(s, kind="branches", data=FILES["branches"].read_bytes(), actor=ADMIN, now=NOW)
        classification.ensure_default(s, now=NOW)


def add_client(db, client_id, assets, turnover="1", branch="HZ01", **extra):
    with db.transaction() as s:
        registry.create_client(s, values={"client_id": client_id, "name": client_id, "branch": branch,
                                          "assets": Decimal(assets), "turnover": Decimal(turnover), **extra},
                               actor=ADMIN, now=NOW)


def set_assets(db, client_id, assets):
    with db.transaction() as s:
        registry.update_client(s, values={"client_id": client_id, "assets": Decimal(assets)}, actor=ADMIN, now=NOW)


def evaluate(db, as_of):
    with db.transaction() as s:
        return classification.evaluate(s, as_of=as_of, actor=HQ, now=NOW)


def client(db, client_id) -> Client:
    with db.transaction() as s:
        return s.get(Client, client_id)


def new_rules(db, effective_from, **changes):
    with db.transaction() as s:
        return classification.create_rule_set(s, actor=HQ, now=NOW, effective_from=effective_from,
                                              approved_by="林卫东 (HQ decision 2025-12)", **changes)


def kinds(result):
    return [(c.client_id, c.kind, c.before, c.after) for c in result.changes]


# -- classes and tiers ---------------------------------------------------------------------
@pytest.mark.sqlite
def test_each_of_the_eleven_classes_at_its_boundaries(db, branches):
    assert {expected for _, _, expected in BOUNDARIES} == set(classification.CLASSES)  # all eleven are covered
    for number, (assets, turnover, _) in enumerate(BOUNDARIES):
        add_client(db, f"K{number:02}", assets, turnover)
    result = evaluate(db, date(2025, 6, 1))
    assert result.evaluated == len(BOUNDARIES)
    got = {c.client_id: c.after for c in result.changes if c.kind == classification.CLASS_CHANGED}
    assert got == {f"K{n:02}": expected for n, (_, _, expected) in enumerate(BOUNDARIES)}
    assert client(db, "K00").classified_on == date(2025, 6, 1)


@pytest.mark.sqlite
def test_tier_thresholds(db, branches):
    for number, (assets, _) in enumerate(TIER_BOUNDARIES):
        add_client(db, f"T{number}", assets)
    result = evaluate(db, date(2025, 6, 1))
    upgrades = {c.client_id: (c.after, c.assets) for c in result.changes if c.kind == classification.TIER_UPGRADED}
    assert upgrades == {f"T{n}": (tier, Decimal(assets)) for n, (assets, tier) in enumerate(TIER_BOUNDARIES) if tier}
    evaluated = [client(db, f"T{n}") for n in range(len(TIER_BOUNDARIES))]
    assert [c.evaluated_tier for c in evaluated] == [t for _, t in TIER_BOUNDARIES]
    # Evaluated, not granted: the VIP case welcomes the client (and gets an approval) first.
    assert {(c.vip_tier, c.tier_since) for c in evaluated} == {(None, None)}


@pytest.mark.sqlite
def test_the_diamond_threshold_is_configurable_by_a_new_rule_version(db, branches):
    add_client(db, "OLD", "1500000", vip_tier="diamond", tier_since=date(2025, 12, 5))  # activated by its case
    evaluate(db, date(2025, 12, 1))
    assert client(db, "OLD").evaluated_tier == "diamond"  # 150万 ≥ the default 100万

    new_rules(db, date(2026, 1, 1), vip_thresholds={"silver": "50000", "gold": "300000", "diamond": "2000000"})
    add_client(db, "NEW", "1500000")
    result = evaluate(db, date(2026, 1, 1))
    assert ("NEW", classification.TIER_UPGRADED, None, "gold") in kinds(result)
    # The existing diamond is now below the threshold: it keeps the tier while grace runs.
    assert ("OLD", classification.GRACE_STARTED, "diamond", "diamond") in kinds(result)
    old = client(db, "OLD")
    assert (old.vip_tier, old.evaluated_tier, old.downgrade_grace_until) == ("diamond", "gold", date(2026, 4, 1))


@pytest.mark.sqlite
@pytest.mark.parametrize("bad", [
    {"vip_thresholds": {"silver": "50000", "gold": "40000", "diamond": "1000000"}},
    {"turnover_threshold": "0"},
    {"bands": [{"min_assets": "10", "active": "A", "inactive": "B"}]},
    {"bands": [{"min_assets": "0", "active": "Z", "inactive": "B"}]},
    {"downgrade_grace_months": -1},
])
def test_a_rule_version_that_makes_no_sense_is_refused(db, branches, bad):
    with pytest.raises(InvalidInput) as refused:
        new_rules(db, date(2026, 1, 1), **bad)
    assert refused.value.details["field"] == next(iter(bad))


# -- downgrade grace -------------------------------------------------------------------------
def shanghai(*args: int) -> datetime:
    return datetime(*args, 9, tzinfo=SHANGHAI)


@pytest.mark.sqlite
def test_a_client_below_their_tier_keeps_it_while_grace_runs_and_the_evaluation_never_downgrades(
        database_url, db, branches):
    add_client(db, "FALL", "400000", vip_tier="gold", tier_since=date(2026, 2, 2))
    add_client(db, "BACK", "400000", vip_tier="gold", tier_since=date(2026, 2, 2))
    assert kinds(evaluate(db, date(2026, 2, 2))) == [("BACK", "class_changed", None, "D-"),
                                                     ("FALL", "class_changed", None, "D-")]
    set_assets(db, "FALL", "200000")
    set_assets(db, "BACK", "250000")

    # Each month's evaluation runs on "today" (the CLI's default date), moved by time-machine.
    with time_machine.travel(shanghai(2026, 3, 2), tick=False):
        march = bpm(database_url, "registry", "evaluate")
    assert march.exit_code == 0, march.output
    assert march.stdout.splitlines() == [
        "BACK grace_started: gold -> gold (grace until 2026-06-02) [company v1]",
        "FALL grace_started: gold -> gold (grace until 2026-06-02) [company v1]",
        "2 client(s) evaluated as of 2026-03-02: 2 change(s)",
    ]
    assert (client(db, "FALL").vip_tier, client(db, "FALL").downgrade_grace_until) == ("gold", date(2026, 6, 2))

    set_assets(db, "BACK", "310000")  # new money: back above gold during grace
    with time_machine.travel(shanghai(2026, 4, 1), tick=False):
        april = bpm(database_url, "registry", "evaluate")
    assert april.stdout.splitlines()[:-1] == ["BACK grace_cleared: gold -> gold [company v1]"]
    assert client(db, "FALL").vip_tier == "gold"  # still in grace

    with time_machine.travel(shanghai(2026, 6, 1), tick=False):
        assert bpm(database_url, "registry", "evaluate").stdout.splitlines()[:-1] == []  # one day before the end
    with time_machine.travel(shanghai(2026, 6, 2), tick=False):
        june = bpm(database_url, "registry", "evaluate")
        again = bpm(database_url, "registry", "evaluate")
    assert june.stdout.splitlines()[:-1] == [
        "FALL grace_expired: gold -> silver (grace until 2026-06-02) [company v1]"]
    assert again.stdout.splitlines()[:-1] == []  # said once: the case has been told
    # The downgrade is the case's, after its pre-downgrade contact, on its effective date: until
    # then FALL is served as gold, and the pending downgrade stays on record.
    fell, back = client(db, "FALL"), client(db, "BACK")
    assert (fell.vip_tier, fell.tier_since, fell.evaluated_tier, fell.downgrade_grace_until) == (
        "gold", date(2026, 2, 2), "silver", date(2026, 6, 2))
    assert (back.vip_tier, back.tier_since, back.evaluated_tier, back.downgrade_grace_until) == (
        "gold", date(2026, 2, 2), "gold", None)


@pytest.mark.sqlite
def test_the_grace_period_comes_from_the_rules(db, branches):
    new_rules(db, date(2026, 1, 1), downgrade_grace_months=0)
    add_client(db, "X", "400000", vip_tier="gold", tier_since=date(2025, 3, 3))
    evaluate(db, date(2026, 1, 5))
    set_assets(db, "X", "20000")
    # No grace: the downgrade is pending at once (its case still contacts the client first).
    february = evaluate(db, date(2026, 2, 2))
    assert [(c.kind, c.before, c.after, c.grace_until) for c in february.changes] == [
        (classification.CLASS_CHANGED, "D-", "F", None),
        (classification.GRACE_STARTED, "gold", "gold", date(2026, 2, 2))]
    assert kinds(evaluate(db, date(2026, 3, 2))) == []  # pending already: nothing to start again
    x = client(db, "X")
    assert (x.vip_tier, x.tier_since, x.evaluated_tier, x.downgrade_grace_until) == (
        "gold", date(2025, 3, 3), None, date(2026, 2, 2))


# -- versions ------------------------------------------------------------------------------
@pytest.mark.sqlite
def test_a_new_version_applies_from_its_date_and_old_evaluations_keep_their_version(db, branches):
    add_client(db, "EARLY", "600000", turnover="3.5")
    add_client(db, "LATE", "600000", turnover="3.5")
    evaluate(db, date(2025, 12, 1))
    with db.transaction() as s:
        v1 = s.execute(select(ClassRuleSet).where(ClassRuleSet.version == 1)).scalar_one()
        v1_values = (v1.turnover_threshold, v1.bands, v1.vip_thresholds)
    assert (client(db, "EARLY").classification, client(db, "EARLY").class_rule_set_id) == ("C", v1.id)

    # HQ re-sets the threshold at year-end (seed 第六条): version 2 from 2026-01-01.
    v2 = new_rules(db, date(2026, 1, 1), turnover_threshold="4")
    assert (v2.version, v2.turnover_threshold, v2.bands) == (2, Decimal(4), v1_values[1])
    with db.transaction() as s:
        v1_after = s.get(ClassRuleSet, v1.id)
        assert (v1_after.turnover_threshold, v1_after.bands, v1_after.vip_thresholds) == v1_values
        assert v1_after.effective_to == date(2026, 1, 1)
    # Writing a version touches no client: EARLY's December result stays v1's.
    assert (client(db, "EARLY").classification, client(db, "EARLY").class_rule_set_id) == ("C", v1.id)

    assert kinds(evaluate(db, date(2025, 12, 31))) == []  # still v1 on the last day of the year
    january = evaluate(db, date(2026, 1, 1))
    assert [(c.client_id, c.before, c.after, c.rules) for c in january.changes] == [
        ("EARLY", "C", "D", "company v2"), ("LATE", "C", "D", "company v2")]
    assert client(db, "LATE").class_rule_set_id == v2.id

    # An older evaluation date never overwrites a newer result.
    stale = evaluate(db, date(2025, 12, 15))
    assert (stale.evaluated, stale.skipped, stale.changes) == (0, 2, [])
    assert client(db, "LATE").classification == "D"

    with pytest.raises(InvalidInput) as backdated:
        new_rules(db, date(2026, 1, 1), turnover_threshold="5")
    assert backdated.value.details["field"] == "effective_from"


@pytest.mark.sqlite
def test_a_branch_version_overrides_the_company_rules_for_that_branch_only(db, branches):
    add_client(db, "HZ", "180000", turnover="1.9", branch="HZ01")
    add_client(db, "SX", "180000", turnover="1.9", branch="SX01")
    with db.transaction() as s:
        classification.create_rule_set(s, actor=HQ, now=NOW, scope="SX01", effective_from=date(2026, 1, 1),
                                       approved_by="经纪业务管理总部批复", turnover_threshold="1.5")
    result = evaluate(db, date(2026, 1, 1))
    assert [(c.client_id, c.after, c.rules) for c in result.changes if c.kind == classification.CLASS_CHANGED] == [
        ("HZ", "D-", "company v1"), ("SX", "C-", "SX01 v1")]


@pytest.mark.sqlite
def test_only_hq_brokerage_management_sets_the_standard(db, branches):
    clerk = Actor("s104", frozenset({"counter_staff", "compliance"}), "HZ01")
    with pytest.raises(PermissionDenied), db.transaction() as s:
        classification.create_rule_set(s, actor=clerk, now=NOW, effective_from=date(2026, 1, 1), approved_by="me")
    with pytest.raises(PermissionDenied), db.transaction() as s:
        classification.evaluate(s, as_of=date(2026, 1, 1), actor=clerk, now=NOW)


@pytest.mark.sqlite
def test_without_effective_rules_the_evaluation_says_so(db, branches):
    add_client(db, "X", "1")
    with pytest.raises(RuleSetNotFound) as missing:
        evaluate(db, date(1999, 12, 31))
    assert str(missing.value) == "no classification rules are effective on 1999-12-31"


# -- what an evaluation touches --------------------------------------------------------------
@pytest.mark.sqlite
def test_an_evaluation_only_updates_client_rows_and_running_it_twice_changes_nothing(db, branches):
    add_client(db, "A", "6200000", turnover="4.2")
    add_client(db, "B", "45000", turnover="0.4")
    first = evaluate(db, date(2025, 6, 2))
    assert kinds(first) == [("A", "class_changed", None, "A+"), ("A", "tier_upgraded", None, "diamond"),
                            ("B", "class_changed", None, "F")]
    assert kinds(evaluate(db, date(2025, 6, 2))) == []
    # A later month that finds the same tier again starts nothing either: that tier has its
    # case already (or had it refused), whatever the case has made of it so far.
    assert kinds(evaluate(db, date(2025, 7, 1))) == []
    assert (client(db, "A").vip_tier, client(db, "A").evaluated_tier) == (None, "diamond")
    with db.transaction() as s:
        for model in (ProcessInstance, Task, Notification):
            assert s.execute(select(func.count()).select_from(model)).scalar_one() == 0
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "classification.evaluated")).scalars()
    assert event.actor == "s001"
    assert event.data["as_of"] == "2025-06-02"
    assert [c["kind"] for c in event.data["changes"]] == ["class_changed", "tier_upgraded", "class_changed"]
    assert event.data["changes"][1]["assets"] == "6200000.00"  # the evidence: the assets the rules were applied to


@pytest.mark.sqlite
def test_cli_evaluate_with_a_date(database_url, db, branches):
    add_client(db, "C08", "65000", turnover="9")
    result = bpm(database_url, "registry", "evaluate", "--as-of", "2025-06-16")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "C08 class_changed: - -> E [company v1]",
        "C08 tier_upgraded: - -> silver [company v1]",
        "1 client(s) evaluated as of 2025-06-16: 2 change(s)",
    ]
    bad = bpm(database_url, "registry", "evaluate", "--as-of", "16/06/2025")
    assert bad.exit_code == 2
