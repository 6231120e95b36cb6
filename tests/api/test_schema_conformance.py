"""The OpenAPI document describes what the server does: schemathesis runs every phase
(examples, coverage, fuzzing, and the stateful phase over the links it infers) with every
check against the demo, in-process, as an administrator, on PostgreSQL and on SQLite.
Zero server errors, zero spec violations.

The run is schemathesis's own engine (the one its command line drives), reached through its
Python API: the pytest integration (``schemathesis.pytest.from_fixture``) does not run under
the installed pytest 9 (it sets ``Function._nodeid``, which pytest 9 no longer has), and the
engine is the only in-process way to get the coverage and stateful phases as well.

Examples are bounded (:data:`MAX_EXAMPLES` per operation and phase, :data:`STATEFUL_STEPS` a
scenario) and the run is deterministic, so a store takes well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.configuration
import pytest
import schemathesis
from schemathesis.config._checks import POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES
from schemathesis.engine import Status, events, from_schema
from schemathesis.transport.wsgi import WSGITransport

from engine.access import identity

MAX_EXAMPLES = 4
STATEFUL_STEPS = 8

# positive_data_acceptance: a request the document allows must not be refused. These
# operations have rules OpenAPI 3.0 cannot state, so a generated request the schema allows
# can break one and be refused, correctly, with the 4xx named here (a problem document with
# the reason, which response_schema_conformance checks). Every other operation keeps the
# check's own list.
BUSINESS_RULES: dict[tuple[str, str], tuple[tuple[int, ...], str]] = {
    ("GET", "/api/v1/calendar/days"): ((400,), "from on or before to, at most a year apart"),
    **{("GET", f"/api/v1/figures/{name}"): ((400,), "the period ends on or after it starts (from defaults to "
                                                    "1 January, to to today); the periodic quota is per calendar year")
       for name in ("overdue-tasks", "complaints", "retention", "callbacks/new-accounts", "callbacks/periodic",
                    "satisfaction", "group-assessment")},
    ("POST", "/api/v1/classification/rule-sets"): (
        (400,), "bands rise from 0, silver < gold < diamond, the scope is a branch that exists, and effective_from "
                "is after the latest version's"),
    ("POST", "/api/v1/deployments"): ((422,), "a bundle must hold BPMN diagrams the deploy lint accepts"),
    ("POST", "/api/v1/messages"): ((422,), "the Idempotency-Key header and message_id, when both are sent, agree"),
    ("PUT", "/api/v1/calendar/days/{day}"): ((400,), "a trading day is a working day"),
    ("PUT", "/api/v1/calendar/hours/{name}"): (
        (400,), "periods are increasing and do not overlap; tz names a time zone"),
    ("PUT", "/api/v1/sla/policies/{key}"): (
        (400,), "the target is positive and at most ten years in its unit, business_hours names hours that "
                "exist, a reassign or escalate milestone names whom"),
    ("POST", "/api/v1/sla/policies/{key}/preview"): (
        (400,), "the target is positive and at most ten years in its unit, business_hours names hours that "
                "exist, a reassign or escalate milestone names whom"),
}


# Checks that cannot apply to one operation, and why.
NOT_APPLICABLE: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/api/v1/registry/import"): (
        "negative_data_rejection",
        "its body is multipart files, and a part is bytes on the wire: a part the generator makes 'not binary' "
        "(text, a number) arrives as a file holding that text, the same as a valid CSV file would; the import "
        "then reports each unreadable file or row in its answer (tests/api/test_registry.py)"),
}


def _config(token: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "headers": {"Authorization": f"Bearer {token}"},
        "generation": {
            "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none",
            # U+0000: every string field's pattern says the server refuses it (api/guard.py),
            # but OpenAPI 3.0 cannot constrain the names inside free-form objects (case
            # variables, message payloads; it has no propertyNames), so a generated name
            # holding U+0000 would be schema-valid and refused. tests/api/test_hostile_input.py
            # sends U+0000 in every place a request carries text.
            "allow-x00": False,
        },
        "phases": {"stateful": {"max-steps": STATEFUL_STEPS}},
        # Each run stands alone: nothing replayed from, or written for, an earlier one.
        "cache": {"enabled": False},
        "operations": [
            {"include-name": f"{method} {path}", "checks": {"positive_data_acceptance": {
                "expected-statuses": [*POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES, *map(str, statuses)]}}}
            for (method, path), (statuses, _) in BUSINESS_RULES.items()
        ] + [
            {"include-name": f"{method} {path}", "checks": {check: {"enabled": False}}}
            for (method, path), (check, _) in NOT_APPLICABLE.items()
        ],
    })


@pytest.fixture
def hypothesis_home(tmp_path: Path) -> Iterator[None]:
    """Hypothesis keeps what it learns (the literals it found in the source) in its home
    directory, by default .hypothesis/ in the checkout: the test's own directory instead."""
    hypothesis.configuration.set_hypothesis_home_dir(tmp_path / "hypothesis")
    yield
    hypothesis.configuration.set_hypothesis_home_dir(None)  # back to its own default


@pytest.fixture
def wsgi_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work around a schemathesis bug: the ignored_auth check re-sends a request without its
    credentials through the WSGI transport with the network session's settings
    (``max_redirects``, ``verify``, ...), which Werkzeug's test client refuses (TypeError).
    The in-process call has no use for them."""
    send = WSGITransport.send

    def without_network_settings(self: WSGITransport, case: Any, *, session: Any = None, **kwargs: Any) -> Any:
        if session is None:
            for name in ("max_redirects", "verify", "cert", "proxies"):
                kwargs.pop(name, None)
        return send(self, case, session=session, **kwargs)

    monkeypatch.setattr(WSGITransport, "send", without_network_settings)


def _failures(schema: Any) -> tuple[list[str], list[str], set[str]]:
    """Run every phase; the failed checks, the engine's errors, and the phases that ran."""
    failures: list[str] = []
    errors: list[str] = []
    ran: set[str] = set()
    for event in from_schema(schema).execute():
        if isinstance(event, events.PhaseFinished) and event.status != Status.SKIP:
            ran.add(event.phase.name.value)
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE and check.failure_info is not None:
                        case = recorder.cases[case_id].value
                        interaction = recorder.interactions.get(case_id)
                        status = interaction.response.status_code if interaction and interaction.response else None
                        failures.append(f"{check.name}: {case.method} {case.formatted_path} query={case.query} "
                                        f"body={str(case.body)[:300]} -> {status}: "
                                        f"{check.failure_info.failure.message[:400]}")
        if isinstance(event, (events.NonFatalError, events.FatalError)):
            errors.append(f"{getattr(event, 'label', '')}: {event.value!r}"[:600])
    return failures, errors, ran


@pytest.mark.sqlite
def test_the_server_does_what_its_openapi_document_says(app, db, rt, demo_app, wsgi_probes, hypothesis_home):
    with db.transaction() as s:
        token = identity.issue_token(s, username="admin", now=rt.now())
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app, config=_config(token))

    failures, errors, ran = _failures(schema)

    assert not errors, "\n".join(errors)
    assert not failures, f"{len(failures)} failed check(s):\n" + "\n".join(sorted(set(failures))[:60])
    assert {"examples", "coverage", "fuzzing", "stateful"} <= ran


def test_every_check_runs():
    """All of schemathesis's checks are on (its "--checks all"), and only positive data
    acceptance is given statuses beyond its own, for the operations BUSINESS_RULES names."""
    config = _config("token").projects.default
    checks = config.checks
    assert all(getattr(checks, name).enabled for name in (
        "not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance",
        "response_headers_conformance", "positive_data_acceptance", "negative_data_rejection", "use_after_free",
        "ensure_resource_availability", "missing_required_header", "ignored_auth", "unsupported_method",
        "allow_header_conformance", "object_level_authorization"))
    assert checks.positive_data_acceptance.expected_statuses == POSITIVE_DATA_ACCEPTANCE_EXPECTED_STATUSES
