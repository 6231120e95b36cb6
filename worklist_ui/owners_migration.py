"""The process owners' comparison and migration pages: the draft editor's comparison with the
deployed version (JSON for the canvas), and a process's page for moving running cases to
another version (choose cases, dry run, migrate, report). Each case is tried or moved in its
own transaction (``api.migrations``), as the API and ``bpm migrate`` do; who may is decided
by the engine (``catalogue.require_owner``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, jsonify, render_template, request
from flask_babel import gettext
from flask_login import login_required

from api import migrations
from api.context import bpm
from api.views.migrations import diff_dict
from engine import errors
from engine.process import catalogue, migration, version_diff
from worklist_ui.owners import _body, _json
from worklist_ui.session import actor


def install(pages: Blueprint) -> None:
    """Add the pages to the pages' blueprint (its sign-in, CSRF, errors, templates)."""
    pages.add_url_rule("/processes/<string:key>/draft/diff", endpoint="draft_diff",
                       view_func=login_required(draft_diff), methods=["POST"])
    pages.add_url_rule("/processes/<string:key>/migration", endpoint="migration",
                       view_func=login_required(migration_page), methods=["GET", "POST"])


def draft_diff(key: str) -> Any:
    """The canvas's diagram (not saved) against the deployed version, for the editor to list
    and mark on the canvas."""
    def run() -> Any:
        ctx = bpm()
        person = actor()
        catalogue.require_owner(person)  # before the upload is read
        data = _body(key)
        with ctx.db.transaction() as db:
            against, compared, found = version_diff.diff(db, ctx.runtime, key, actor=person, draft_xml=data)
        body = diff_dict(against, compared, found)
        body["summary"] = gettext("Against version %(num)d: %(added)d added, %(removed)d removed, "
                                  "%(changed)d changed", num=against, added=body["added"],
                                  removed=body["removed"], changed=body["changed"])
        return jsonify(body)
    return _json(run)


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def migration_page(key: str) -> Any:
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        found = catalogue.get(db, key, actor=person)
    versions = [v.version for v in found.versions]
    source = request.form if request.method == "POST" else request.args
    to_version = _int(source.get("to_version")) or found.latest.version
    from_version = _int(source.get("from_version"))
    for number in (to_version, from_version):
        if number is not None and number not in versions:
            raise errors.ProcessNotFound(gettext("Process %(key)s has no version %(num)d", key=key, num=number))
    report = None
    status = 200
    if request.method == "POST":
        chosen = [int(v) for v in request.form.getlist("case") if v.isdigit()]
        dry_run = request.form.get("action") != "migrate"
        everything = request.form.get("all") == "1"
        if everything:
            # Every running case not on the target (on ``from_version`` when chosen), as
            # ``POST /processes/{key}/migrations`` without ids: up to its limit a submit.
            report = migrations.run(ctx.db, ctx.runtime, person, key, to_version,
                                    migration.Selection(from_version=from_version), dry_run=dry_run)
        elif not chosen:
            flash(gettext("Select the cases first"), "warning")
            status = 400
        elif len(set(chosen)) > migration.MAX_CASES:
            flash(gettext("At most %(num)d cases at once", num=migration.MAX_CASES), "warning")
            status = 400
        else:
            report = migrations.run(ctx.db, ctx.runtime, person, key, to_version,
                                    migration.Selection(instance_ids=tuple(chosen)), dry_run=dry_run)
    with ctx.db.transaction() as db:
        cases = migration.running_cases(db, key, actor=person, not_on=to_version, on=from_version)
        _, _, changes = version_diff.diff(db, ctx.runtime, key, actor=person, version=to_version,
                                          against=_previous(versions, to_version))
    selected = {o.instance_id for o in report.outcomes} if report else set()
    # The outcomes as the API gives them: their words may quote a case's data, masked the same way.
    outcomes = [migrations.outcome_dict(o) for o in report.outcomes] if report else []
    return render_template("migration.html", process=found, versions=versions, to_version=to_version,
                           from_version=from_version, max_cases=migration.MAX_CASES,
                           cases=cases, report=report, outcomes=outcomes, selected=selected, changes=changes,
                           against=_previous(versions, to_version)), status


def _previous(versions: list[int], version: int) -> int:
    """The version before ``version`` (itself for version 1): what the target changed."""
    older = [v for v in versions if v < version]
    return max(older) if older else version
