"""The settings registry: every tunable once, documented from the same source, stored
overrides checked and audited, per-case defaults what the service functions use."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import delete, select

from engine.access.identity import Actor
from engine.brokerage import figures, periodic_callbacks, settings
from engine.brokerage.services import callback, complaint, retention, vip
from engine.calendars import Unit
from engine.errors import InvalidInput, PermissionDenied
from engine.models import AuditEvent, Setting
from tests.support.cli import bpm

pytestmark = pytest.mark.store_independent

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"
OWNER = Actor("owner", frozenset({"process_owner"}))


@pytest.fixture
def clean_settings(db):
    """bpm_setting is kept between tests (conftest): leave no override behind."""
    def clean() -> None:
        with db.transaction() as s:
            s.execute(delete(Setting).where(Setting.key.in_([k for k, t in settings.TUNABLES.items() if t.stored])
                                            | Setting.key.like(f"{settings.ACTIVE_CLIENTS}.%")))
    clean()
    yield
    clean()


def test_every_key_and_every_variable_is_registered_once():
    keys = [t.key for t in settings._ALL]
    variables = [t.variable for t in settings._ALL if t.variable]
    assert len(keys) == len(set(keys)) == len(settings.TUNABLES)
    assert len(variables) == len(set(variables))
    assert all(t.meaning.strip() and t.source in ("seed", "public", "assumed", "input") for t in settings._ALL)


def test_the_extension_limit_is_one_setting_read_by_the_figures_and_the_cases():
    tunable = settings.TUNABLES["complaint.extension.max"]
    assert (tunable.default, tunable.variable, tunable.stored) == ("15 WD", "extension_max_days", True)
    assert not [k for k in settings.TUNABLES if "extension_max" in k]
    assert complaint.classify({})["extension_max_days"] == 15
    assert complaint.classify({"extension_max_days": 10})["extension_max_days"] == 10


def test_every_stored_default_parses():
    for tunable in settings.TUNABLES.values():
        if tunable.stored:
            tunable.parse(tunable.default)


def test_the_service_functions_take_their_defaults_from_the_registry():
    assert complaint.settings_of({}) == {t.variable: settings.case_default(t) for t in settings.TUNABLES.values()
                                         if t.key.startswith("complaint.") and t.variable}
    assert vip.settings_of({})["diamond_threshold"] == settings.default("vip.diamond")
    assert vip.settings_of({})["risk_validity_months"] == settings.default("risk.validity_months")
    assert retention.settings_of({})["lapse_trading_days"] == settings.default("retention.lapse_trading_days")
    prepared = callback.prepare({"callback_type": "periodic", "client_id": "C01", "branch_code": "HZ01"}, {})
    assert (prepared["max_attempts"], prepared["retry_after"]) == (settings.default("callback.max_attempts"),
                                                                   settings.default("callback.retry_after"))


def test_the_settings_page_is_generated_from_the_registry():
    """docs/settings.md is `bpm settings list --markdown`: regenerate it when this fails."""
    assert DOCS.read_text(encoding="utf-8") == settings.markdown()
    for key in settings.TUNABLES:
        assert f"`{key}`" in settings.markdown()


def test_a_stored_override_is_checked_audited_and_read(db, rt, clean_settings):
    with db.transaction() as s:
        settings.set_value(s, key="complaint.sla.resolve.general", value=" 10 WD ", actor=OWNER, now=rt.now())
        settings.set_value(s, key=f"{settings.ACTIVE_CLIENTS}.2025.HZ01", value="120", actor=OWNER, now=rt.now())
    with db.transaction() as s:
        assert figures.load_config(s).resolve["general"] == settings.Target(10, Unit.WORKING_DAYS)
        assert figures.active_clients(s, year=2025, branch="HZ01") == 120
        assert periodic_callbacks.load_config(s).elderly_age == 65  # untouched: the default
        events = s.execute(select(AuditEvent.data).where(AuditEvent.kind == settings.AUDIT_KIND)
                           .order_by(AuditEvent.seq)).scalars().all()
    assert [(e["key"], e["before"], e["after"]) for e in events] == [
        ("complaint.sla.resolve.general", None, "10 WD"), (f"{settings.ACTIVE_CLIENTS}.2025.HZ01", None, "120")]


@pytest.mark.parametrize(("key", "value", "error"), [
    ("complaint.major_amount", "80000", "per-case default"),  # a case variable, not stored
    ("complaint.sla.resolve.general", "ten days", "amount and a unit"),
    ("complaint.extension.max", "15 CD", "WD"),
    ("figures.unknown", "1", "unknown setting"),
    (f"{settings.ACTIVE_CLIENTS}.20x5", "10", "unknown setting"),
])
def test_a_bad_setting_is_refused_and_nothing_is_stored(db, rt, clean_settings, key, value, error):
    with pytest.raises(InvalidInput, match=error), db.transaction() as s:
        settings.set_value(s, key=key, value=value, actor=OWNER, now=rt.now())
    with db.transaction() as s:
        assert s.get(Setting, key) is None


def test_settings_are_for_process_owners(db, rt, clean_settings):
    with pytest.raises(PermissionDenied), db.transaction() as s:
        settings.set_value(s, key="figures.satisfied_min", value="3", actor=Actor("li", frozenset({"clerks"})),
                           now=rt.now())


def test_bpm_settings_lists_every_tunable_with_its_stored_value(db, database_url, clean_settings):
    assert bpm(database_url, "settings", "set", "figures.satisfied_min", "3").exit_code == 0
    listed = bpm(database_url, "settings", "list")
    assert listed.exit_code == 0, listed.output
    for key in settings.TUNABLES:
        assert f"{key} = " in listed.output
    assert "figures.satisfied_min = 3 (default 4)" in listed.output
    assert bpm(database_url, "settings", "list", "--markdown").output == settings.markdown()
    refused = bpm(database_url, "settings", "set", "complaint.major_amount", "1")
    assert refused.exit_code == 1 and isinstance(refused.exception, InvalidInput)
