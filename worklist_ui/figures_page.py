"""The supervisors' figures (``/board/figures``): the figures the API serves under
``/api/v1/figures``, on one page with a period and (at headquarters) a branch to choose —
complaints with the 12386 feedback, retention with its guard metric, new-account and periodic
callbacks against their targets, satisfaction, and the service groups' assessment with its
ranking. The same engine functions and the same access rule as the API."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from flask import Blueprint, abort, render_template, request
from flask_babel import gettext
from flask_login import login_required

from api.context import bpm
from engine.brokerage import figures
from worklist_ui.session import actor


def install(pages: Blueprint) -> None:
    """Add the figures page to the pages' blueprint."""
    pages.add_url_rule("/board/figures", endpoint="figures", view_func=login_required(figures_page),
                       methods=["GET"])


def _day(name: str) -> date | None:
    raw = (request.args.get(name) or "").strip()
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        abort(400, gettext("%(field)s is a date such as 2026-01-31", field=name))


def figures_page() -> Any:
    ctx = bpm()
    person = actor()
    now = ctx.runtime.now()
    first, last = _day("from"), _day("to")
    branch = (request.args.get("branch") or "").strip() or None
    scope = figures.scope_for(person, first=first, last=last, branch=branch, now=now)
    with ctx.db.reading() as db:
        config = figures.load_config(db)
        shown = {
            "complaints": figures.complaint_figures(db, scope=scope, now=now, config=config),
            "retention": figures.retention_figures(db, scope=scope, now=now),
            "new_accounts": figures.new_account_callbacks(db, scope=scope, now=now, config=config),
            "periodic": figures.periodic_callbacks(db, scope=scope, config=config),
            "satisfaction": figures.satisfaction(db, scope=scope, by="group" if scope.branch else "branch",
                                                 config=config),
            "assessment": figures.group_assessment(db, scope=scope, config=config),
        }
    # The period is [start, end): its last day is the one before ``end``.
    return render_template("figures.html", scope=scope, first=first, last=last, branch=branch, now=now,
                           last_day=scope.end - timedelta(microseconds=1),
                           fixed_branch=person.branch_code is not None and not person.is_admin,
                           severity_names=_severity_names(), **shown)


def _severity_names() -> dict[str, str]:
    return {"general": gettext("General"), "major": gettext("Major"), "regulator": gettext("Regulator-transferred"),
            "group": gettext("Group complaint"),
            "consultation": gettext("Consultation")}
