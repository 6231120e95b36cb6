"""The process owners' pages for deadlines: the SLA policies (list, edit with a preview
before saving), the business calendar (a year at a glance, a year's notice imported as one
table, a year marked complete, one day corrected; each change says which open tasks and
schedules moved) and the schedules (next slots, last runs and their results).

Each page is a form posted back to the server. A policy is checked by the API's own request
schema and then by the engine (``sla_admin.validate_policy``), so a refusal is the one the
API gives, shown beside its field. Who may do what is decided by the engine's services
(each of them refuses anyone without the process_owner role), as for the API.
"""

from __future__ import annotations

import calendar as pycalendar
import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_babel import gettext, ngettext
from flask_login import login_required
from marshmallow import ValidationError

from api.context import bpm
from api.errors import field_errors, status_for
from api.schemas import PolicySchema
from engine import errors
from engine.access.masking import mask_text
from engine.calendars import EARLIEST_DAY, LATEST_DAY, SHANGHAI, Unit
from engine.process import catalogue
from engine.sla import admin as sla_admin
from engine.sla.milestones import ACTIONS
from engine.timers import schedules
from worklist_ui.session import actor

# Blank milestone rows the policy form offers below the policy's own.
SPARE_MILESTONES = 2
# Moved tasks listed on a page; the counts and figures cover them all.
LISTED_MOVES = 50
# The policy form's fields, in the order its error summary lists them.
POLICY_FIELDS = ("name", "position", "active", "process_key", "element_id", "lane", "min_priority", "match_data",
                 "target_amount", "target_unit", "business_hours", "pausable", "anchor_variable", "milestones")


def install(pages: Blueprint) -> None:
    """Add the pages to the pages' blueprint (its sign-in, CSRF, errors, templates)."""
    routes: list[tuple[str, str, Any, list[str]]] = [
        ("/sla", "sla_policies", sla_list, ["GET"]),
        ("/sla/<string(maxlength=128):key>", "sla_policy", sla_edit, ["GET", "POST"]),
        ("/calendar", "calendar", calendar_page, ["GET"]),
        ("/calendar/import", "calendar_import", calendar_import, ["POST"]),
        ("/calendar/complete", "calendar_complete", calendar_complete, ["POST"]),
        ("/calendar/day", "calendar_day", calendar_day, ["POST"]),
        ("/schedules", "schedules", schedules_page, ["GET"]),
    ]
    for rule, endpoint, view, methods in routes:
        pages.add_url_rule(rule, endpoint=endpoint, view_func=login_required(view), methods=methods)


# -- words -------------------------------------------------------------------------------------
def unit_names() -> dict[str, str]:
    return {"CD": gettext("calendar days"), "CH": gettext("calendar hours"), "CMIN": gettext("calendar minutes"),
            "CM": gettext("calendar months"), "WD": gettext("working days"), "TD": gettext("trading days"),
            "WH": gettext("working hours")}


def action_names() -> dict[str, str]:
    return {"notify": gettext("Notify"), "raise_priority": gettext("Raise the priority"),
            "reassign": gettext("Reassign to"), "escalate": gettext("Escalate to")}


def rule_names() -> dict[str, str]:
    return {"first_working_day_of_month": gettext("First working day of each month"),
            "first_working_day_of_quarter": gettext("First working day of each quarter"),
            "every_working_day": gettext("Every working day"), "every_trading_day": gettext("Every trading day")}


def field_names() -> dict[str, str]:
    return {"name": gettext("Name"), "position": gettext("Order"), "active": gettext("Active"),
            "process_key": gettext("Process"), "element_id": gettext("Step"), "lane": gettext("Lane"),
            "min_priority": gettext("Minimum priority"), "match_data": gettext("Case data"),
            "target_amount": gettext("Target"), "target_unit": gettext("Unit"),
            "business_hours": gettext("Business hours"), "pausable": gettext("May pause"),
            "anchor_variable": gettext("Counts from (variable)"), "milestones": gettext("Milestones"),
            "table": gettext("Table"), "year": gettext("Year"), "day": gettext("Day"), "kind": gettext("Kind"),
            "day_name": gettext("Name"), "trading": gettext("Trading")}


def span(delta: timedelta | None) -> str:
    """A signed shift in days, hours and minutes: "+1 天 4 小时", "−30 分钟", "0"."""
    if delta is None:
        return "–"
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0"
    value = abs(seconds)
    days, rest = divmod(value, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [ngettext("%(num)d day", "%(num)d days", days) if days else "",
             ngettext("%(num)d hour", "%(num)d hours", hours) if hours else "",
             ngettext("%(num)d minute", "%(num)d minutes", minutes) if minutes or not (days or hours) else ""]
    return ("+" if seconds > 0 else "−") + " ".join(p for p in parts if p)


def weekdays() -> list[str]:
    return [gettext("Mon"), gettext("Tue"), gettext("Wed"), gettext("Thu"), gettext("Fri"), gettext("Sat"),
            gettext("Sun")]


def weekday(moment: datetime) -> str:
    """The Beijing weekday of a moment, in words."""
    return weekdays()[moment.astimezone(SHANGHAI).weekday()]


def _words() -> dict[str, Any]:
    return {"UNIT_NAMES": unit_names(), "ACTION_NAMES": action_names(), "RULE_NAMES": rule_names(),
            "FIELD_NAMES": field_names(), "span": span, "weekday": weekday}


def _engine_errors(exc: errors.BpmError) -> dict[str, str]:
    """An engine refusal by the field it names (the whole input when it names none)."""
    if isinstance(exc, (errors.DataInvalid, errors.FormValidationError)):
        return {e.field: mask_text(e.message) for e in exc.errors}
    return {str(exc.details.get("field") or ""): mask_text(exc.message)}


# -- SLA policies ------------------------------------------------------------------------------
POLICY_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,128}")


def sla_list() -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        found = sla_admin.list_policies(db, actor=actor())
    new = request.args.get("new")
    if new is not None:
        new = new.strip()
        if POLICY_KEY.fullmatch(new):
            return redirect(url_for("pages.sla_policy", key=new))
        return render_template("sla_policies.html", policies=found, new_key=new, new_error=gettext(
            "A key is 1 to 128 letters, digits, dots, dashes or underscores"), **_words()), 400
    return render_template("sla_policies.html", policies=found, new_key="", new_error=None, **_words())


@dataclass
class PolicyForm:
    """The policy form's values as typed (shown again as they were) and the body the API
    takes, built from them."""

    values: dict[str, Any]
    milestones: list[dict[str, str]]  # every row shown, blank ones included
    body: dict[str, Any]
    rows: list[int]  # the form row of each milestone sent (blank rows are not sent)
    errors: dict[str, str]  # what the form itself could not read


def _number(raw: str, kind: type) -> Any:
    """The number typed, as the API's JSON would carry it; anything else as it was typed,
    so the request schema refuses it in its own words."""
    text = raw.strip()
    if kind is int and re.fullmatch(r"[+-]?\d{1,12}", text):
        return int(text)
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            return text
        return value if math.isfinite(value) else text
    return text


def _policy_values(policy: Any) -> tuple[dict[str, Any], list[dict[str, str]]]:
    if policy is None:
        values = {"name": "", "position": "100", "active": True, "process_key": "", "element_id": "", "lane": "",
                  "min_priority": "", "match_data": "", "target_amount": "", "target_unit": "WD",
                  "business_hours": "default", "pausable": True, "anchor_variable": ""}
        return values, []
    values = {"name": policy.name, "position": str(policy.position), "active": policy.active,
              "process_key": policy.process_key or "", "element_id": policy.element_id or "",
              "lane": policy.lane or "",
              "min_priority": "" if policy.min_priority is None else str(policy.min_priority),
              "match_data": "\n".join(f"{k}={v}" for k, v in (policy.match_data or {}).items()),
              "target_amount": f"{policy.target_amount.normalize():f}", "target_unit": policy.target_unit,
              "business_hours": policy.business_hours, "pausable": policy.pausable,
              "anchor_variable": policy.anchor_variable or ""}
    rows = [{"at": f"{m['at']:g}", "action": m["action"], "to": m.get("to") or "",
             "by": "" if m.get("by") is None else str(m["by"])} for m in policy.milestones or []]
    return values, rows


def _read_policy_form() -> PolicyForm:
    form = request.form
    text = {name: (form.get(name) or "").strip() for name in POLICY_FIELDS if name not in ("active", "pausable")}
    values: dict[str, Any] = {**text, "active": form.get("active") == "true",
                              "pausable": form.get("pausable") == "true", "match_data": form.get("match_data") or ""}
    problems: dict[str, str] = {}
    match_data: dict[str, str] = {}
    for number, line in enumerate(values["match_data"].splitlines(), start=1):
        if not line.strip():
            continue
        name, sign, value = line.partition("=")
        if not sign or not name.strip():
            problems["match_data"] = gettext("Line %(num)d: write each condition as variable=value", num=number)
            break
        match_data[name.strip()] = value.strip()
    milestones, rows, shown = [], [], []
    count = min(int(form.get("milestone_rows") or 0) if (form.get("milestone_rows") or "").isdigit() else 0, 50)
    for i in range(count):
        row = {f: (form.get(f"milestones-{i}-{f}") or "").strip() for f in ("at", "action", "to", "by")}
        shown.append(row)
        if not any(row.values()):
            continue
        milestone: dict[str, Any] = {"at": _number(row["at"], float) if row["at"] else None,
                                     "action": row["action"] or None, "to": row["to"] or None}
        if row["by"]:
            milestone["by"] = _number(row["by"], int)
        milestones.append(milestone)
        rows.append(i)
    body: dict[str, Any] = {
        "name": text["name"], "position": _number(text["position"], int) if text["position"] else 100,
        "active": values["active"], "process_key": text["process_key"] or None,
        "element_id": text["element_id"] or None, "lane": text["lane"] or None,
        "min_priority": _number(text["min_priority"], int) if text["min_priority"] else None,
        "match_data": match_data, "target_amount": text["target_amount"], "target_unit": text["target_unit"],
        "business_hours": text["business_hours"] or "default", "milestones": milestones,
        "pausable": values["pausable"], "anchor_variable": text["anchor_variable"] or None,
    }
    return PolicyForm(values, shown, body, rows, problems)


def _by_form_row(found: dict[str, str], rows: list[int]) -> dict[str, str]:
    """Errors about the milestones sent (``milestones/1/at``) named by the form's row."""
    named = {}
    for field, message in found.items():
        parts = field.split("/")
        if len(parts) >= 2 and parts[0] == "milestones" and parts[1].isdigit() and int(parts[1]) < len(rows):
            parts[1] = str(rows[int(parts[1])])
            field = "/".join(parts)
        named[field] = message
    return named


def _fingerprint(body: dict[str, Any]) -> str:
    """What was previewed, so a save of something else is previewed first."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str, ensure_ascii=False).encode()).hexdigest()


def sla_edit(key: str) -> Any:
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        existing = sla_admin.get_policy(db, key, actor=person)
        hours = sla_admin.business_hours_names(db)
    if request.method == "GET":
        values, rows = _policy_values(existing)
        return _policy_page(key, existing, hours, values, rows)
    form = _read_policy_form()
    found = dict(form.errors)
    loaded: dict[str, Any] = {}
    try:
        loaded = PolicySchema().load(form.body)
    except ValidationError as exc:
        for entry in field_errors(exc.messages):
            found.setdefault(entry["field"], entry["message"])
    if found:
        return _policy_page(key, existing, hours, form.values, form.milestones,
                            field_errors=_by_form_row(found, form.rows)), 422
    data = {**loaded, "key": key}
    wanted = request.form.get("action")
    previewed = request.form.get("previewed") == _fingerprint(form.body)
    try:
        if wanted == "save" and previewed:
            with ctx.db.transaction() as db:
                _, count = sla_admin.upsert_policy(db, ctx.runtime, data=data, actor=person)
            flash(ngettext("Saved: %(num)d open task got a new due date",
                           "Saved: %(num)d open tasks got a new due date", count))
            return redirect(url_for("pages.sla_policy", key=key))
        with ctx.db.transaction() as db:
            preview = sla_admin.preview_policy(db, ctx.runtime, data=data, actor=person, now=ctx.runtime.now())
    except errors.BpmError as exc:
        if isinstance(exc, errors.PermissionDenied):
            raise
        return _policy_page(key, existing, hours, form.values, form.milestones,
                            field_errors=_by_form_row(_engine_errors(exc), form.rows)), status_for(exc)
    if wanted == "save":
        flash(gettext("The policy changed since its preview: check the new preview, then save"), "warning")
    return _policy_page(key, existing, hours, form.values, form.milestones, preview=preview,
                        fingerprint=_fingerprint(form.body))


def _policy_page(key: str, existing: Any, hours: list[str], values: dict[str, Any], milestones: list[dict[str, str]],
                 *, field_errors: dict[str, str] | None = None, preview: Any = None,
                 fingerprint: str | None = None) -> str:
    # The rows typed, without the blank ones at the end (the spares offered last time), then new spares.
    typed = list(milestones)
    while typed and not any(typed[-1].values()):
        typed.pop()
    rows = [*typed, *({"at": "", "action": "", "to": "", "by": ""} for _ in range(SPARE_MILESTONES))]
    found = field_errors or {}
    # An error about a whole row, or about a field the form has no input for, is still shown.
    placed = {*POLICY_FIELDS, *(f"milestones/{i}/{f}" for i in range(len(rows)) for f in ("at", "action", "to", "by"))}
    return render_template("sla_policy.html", key=key, existing=existing, hours=hours, values=values,
                           milestones=rows, errors=found, loose={f: m for f, m in found.items() if f not in placed},
                           preview=preview, fingerprint=fingerprint, units=[u.value for u in Unit], actions=ACTIONS,
                           listed_moves=LISTED_MOVES, **_words())


# -- the calendar ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    day: date
    kind: str  # trading, weekend, holiday, makeup, closed, weekend_trading, unknown
    name: str | None


def _cell(day: date, row: Any) -> Cell:
    weekday = day.weekday() < 5
    if row is None:
        return Cell(day, "unknown", None)
    if not row.working:
        return Cell(day, "weekend" if not weekday and not row.name else "holiday", row.name)
    if row.trading:
        return Cell(day, "trading" if weekday else "weekend_trading", row.name)
    return Cell(day, "closed" if weekday else "makeup", row.name)


def _months(year: int, rows: dict[date, Any]) -> list[tuple[int, list[list[Cell | None]]]]:
    """Twelve month grids, weeks from Monday, each day as the calendar knows it."""
    grid = pycalendar.Calendar(firstweekday=0)
    return [(month, [[None if d.month != month else _cell(d, rows.get(d)) for d in week]
                     for week in grid.monthdatescalendar(year, month)])
            for month in range(1, 13)]


def _year_arg(raw: str | None, default: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.strip().isdigit() or not EARLIEST_DAY.year <= int(raw) <= LATEST_DAY.year:
        raise errors.InvalidInput(gettext("A year is a number from %(first)d to %(last)d",
                                          first=EARLIEST_DAY.year, last=LATEST_DAY.year), field="year")
    return int(raw)


def _calendar_context(year: int) -> dict[str, Any]:
    ctx = bpm()
    now = ctx.runtime.now()
    with ctx.db.transaction() as db:
        rows = sla_admin.year_days(db, year=year, actor=actor())
        cover = sla_admin.coverage(db, now=now)
    following = now.astimezone(SHANGHAI).year + 1
    counts = {kind: sum(1 for d, r in rows.items() if _cell(d, r).kind == kind)
              for kind in ("holiday", "makeup", "closed")}
    return {"year": year, "months": _months(year, rows), "cover": cover, "known": len(rows),
            "days_in_year": 366 if pycalendar.isleap(year) else 365, "complete": year in cover.complete_years,
            "following": following, "following_complete": following in cover.complete_years,
            "next_year_unknown": cover.last is None or cover.last < date(following, 12, 31),
            "counts": counts, "earliest": EARLIEST_DAY.year, "latest": LATEST_DAY.year,
            "weekdays": weekdays(), "listed_moves": LISTED_MOVES, **_words()}


def _calendar(year: int, *, form: dict[str, Any] | None = None, found: dict[str, str] | None = None,
              **more: Any) -> str:
    found = found or {}
    return render_template("calendar.html", **_calendar_context(year), form=form or {}, errors=found,
                           line_errors=[(f, m) for f, m in found.items() if f.startswith("line ")], **more)


def calendar_page() -> Any:
    today = bpm().runtime.now().astimezone(SHANGHAI)
    year = _year_arg(request.args.get("year"), today.year)
    return _calendar(year)


def _after_change(year: int, change: Any, message: str) -> Any:
    """The calendar again, with what the change moved."""
    return _calendar(year, change=change, message=message)


def _refused(year: int, exc: errors.BpmError, form: dict[str, Any]) -> Any:
    if isinstance(exc, errors.PermissionDenied):
        raise exc
    return _calendar(year, form=form, found=_engine_errors(exc)), status_for(exc)


@dataclass(frozen=True)
class Change:
    tasks: list[sla_admin.TaskMove]
    schedules: list[schedules.SlotMove]


def _recompute(db: Any) -> Change:
    ctx = bpm()
    now = ctx.runtime.now()
    return Change(sla_admin.recompute_moves(db, ctx.runtime, now=now),
                  schedules.recompute_moves(db, ctx.runtime, now=now))


def _shown_year() -> int:
    today = bpm().runtime.now().astimezone(SHANGHAI)
    try:
        return _year_arg(request.form.get("shown"), today.year)
    except errors.InvalidInput:
        return today.year


def calendar_import() -> Any:
    ctx = bpm()
    person = actor()
    catalogue.require_owner(person)  # before the upload is read
    shown = _shown_year()
    table, complete = request.form.get("table") or "", request.form.get("complete") == "true"
    form: dict[str, Any] = {"import_year": request.form.get("year") or "", "table": table, "complete": complete}
    try:
        year = _year_arg(request.form.get("year"), 0)
        if not year:
            raise errors.InvalidInput(gettext("Say which year the table is for"), field="year")
        text = table
        upload = request.files.get("file")
        if upload is not None and upload.filename:
            raw = upload.read(sla_admin.MAX_YEAR_TABLE_CHARS * 4 + 1)
            if len(raw) > sla_admin.MAX_YEAR_TABLE_CHARS * 4:
                raise errors.InvalidInput(gettext("The file is too large for a year's notice"), field="table")
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise errors.InvalidInput(gettext("The file is not UTF-8 text: save it as CSV UTF-8"),
                                          field="table") from None
        rows = sla_admin.parse_year_table(text)
        with ctx.db.transaction() as db:
            done = sla_admin.import_year_table(db, year=year, rows=rows, complete=complete, actor=person,
                                               now=ctx.runtime.now())
            change = _recompute(db)
    except errors.BpmError as exc:
        return _refused(shown, exc, form)
    return _after_change(year, change, gettext(
        "%(year)d imported: %(holidays)d holiday(s), %(workdays)d make-up working day(s)",
        year=year, holidays=done.holidays, workdays=done.workdays))


def calendar_complete() -> Any:
    ctx = bpm()
    catalogue.require_owner(actor())
    shown = _shown_year()
    try:
        year = _year_arg(request.form.get("year"), shown)
        with ctx.db.transaction() as db:
            sla_admin.mark_year_complete(db, year=year, actor=actor(), now=ctx.runtime.now())
    except errors.BpmError as exc:
        return _refused(shown, exc, {})
    # Marking a year complete changes no day: nothing moves.
    return _after_change(year, Change([], []), gettext("%(year)d marked complete: the calendar holds its official "
                                                       "notice", year=year))


DAY_KINDS = ("holiday", "workday")


def calendar_day() -> Any:
    ctx = bpm()
    catalogue.require_owner(actor())
    shown = _shown_year()
    form = {"day": request.form.get("day") or "", "kind": request.form.get("kind") or "",
            "day_name": request.form.get("day_name") or "", "trading": request.form.get("trading") or ""}
    try:
        try:
            day = date.fromisoformat(form["day"].strip())
        except ValueError:
            raise errors.InvalidInput(gettext("Give the day as YYYY-MM-DD"), field="day") from None
        if form["kind"] not in DAY_KINDS:
            raise errors.InvalidInput(gettext("Choose holiday or working day"), field="kind")
        if form["trading"] not in ("", "yes", "no"):
            raise errors.InvalidInput(gettext("Choose whether the exchanges open"), field="trading")
        name = form["day_name"].strip() or None
        if name is not None and len(name) > 64:
            raise errors.InvalidInput(gettext("A name is at most 64 characters"), field="day_name")
        with ctx.db.transaction() as db:
            sla_admin.set_day(db, day=day, working=form["kind"] == "workday",
                              trading=None if not form["trading"] else form["trading"] == "yes", name=name,
                              actor=actor(), now=ctx.runtime.now())
            change = _recompute(db)
    except errors.BpmError as exc:
        return _refused(shown, exc, form)
    return _after_change(day.year, change, gettext("%(day)s saved", day=day.isoformat()))


# -- schedules ---------------------------------------------------------------------------------
def schedules_page() -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        found = schedules.overview(db, actor=actor(), now=ctx.runtime.now())
    return render_template("schedules.html", schedules=found, mask=mask_text, **_words())
