"""The supervisors' board (``/board``): open work by branch, service group, person, process
or step, each number linking to the task list that makes it up; the current view exports as
CSV (UTF-8 with a BOM, which Excel on Chinese Windows opens) or XLSX, each export audited."""

from __future__ import annotations

import csv
import io
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, render_template, request, url_for
from flask_babel import gettext
from flask_login import login_required
from openpyxl import Workbook

from api.context import bpm
from engine.audit import record_system_event
from engine.calendars import SHANGHAI
from engine.process import board as boards
from worklist_ui.i18n import beijing, duration
from worklist_ui.session import actor

FORMATS = ("html", "csv", "xlsx")


def _dimension_names() -> dict[str, str]:
    return {"branch": gettext("Branch"), "group": gettext("Service group"), "person": gettext("Person"),
            "process": gettext("Process"), "step": gettext("Step")}


def _unnamed(by: str) -> str:
    """A row whose key is empty: tasks tied to no branch, offered to no group, held by nobody."""
    return {"branch": gettext("No branch"), "group": gettext("Claimed (no group queue)"),
            "person": gettext("Not claimed")}.get(by, "–")


def drill_down(row: boards.BoardRow, **extra: str) -> str:
    """The task list behind a number: the supervisor's list with the row's filters."""
    return url_for("pages.inbox") + "?" + urlencode({"tab": "team", **row.filters, **extra})


def install(pages: Blueprint) -> None:
    """Add the board to the pages' blueprint (its sign-in, CSRF, errors and templates)."""
    pages.add_url_rule("/board", endpoint="board", view_func=login_required(board), methods=["GET"])


def board() -> Any:
    by = request.args.get("by") or "branch"
    process = request.args.get("process") or None
    fmt = request.args.get("format") or "html"
    if fmt not in FORMATS:
        abort(400, gettext("format is one of html, csv, xlsx"))
    ctx = bpm()
    person = actor()
    now = ctx.runtime.now()
    with ctx.db.transaction() as db:
        found = boards.board(db, actor=person, by=by, now=now, process_key=process)
        if fmt != "html":
            record_system_event(db, kind="board.exported", actor=person.username, at=now,
                                data={"by": by, "process": process, "format": fmt, "rows": len(found.rows)})
    for row in found.rows:
        row.name = row.name or _unnamed(by)
    if fmt == "csv":
        return _csv(found)
    if fmt == "xlsx":
        return _xlsx(found)
    return render_template("board.html", board=found, by=by, process=process, now=now,
                           dimensions=_dimension_names(), drill_down=drill_down,
                           lateness=lambda moment: duration((now - moment).total_seconds()))


def _table(found: boards.Board) -> tuple[list[str], list[list[Any]]]:
    header = [_dimension_names()[found.dimension], gettext("Id"), gettext("Open"), gettext("On track"),
              gettext("At risk"), gettext("Breached"), gettext("Paused"), gettext("No deadline"),
              gettext("Longest breached since (Beijing time)")]
    rows = [[r.name, r.key, r.open, r.on_track, r.at_risk, r.breached, r.paused, r.no_deadline,
             beijing(r.oldest_breach) if r.oldest_breach else ""] for r in found.rows]
    total = found.total
    rows.append([gettext("Total"), "", total.open, total.on_track, total.at_risk, total.breached, total.paused,
                 total.no_deadline, beijing(total.oldest_breach) if total.oldest_breach else ""])
    return header, rows


def _filename(found: boards.Board, suffix: str) -> str:
    return f"board-{found.dimension}-{found.as_of.astimezone(SHANGHAI):%Y%m%d-%H%M}.{suffix}"


def _csv(found: boards.Board) -> Response:
    header, rows = _table(found)
    out = io.StringIO()
    out.write("\ufeff")  # the BOM: Excel on Chinese Windows reads the file as UTF-8, not GBK
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return Response(out.getvalue(), mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{_filename(found, "csv")}"'})


def _xlsx(found: boards.Board) -> Response:
    header, rows = _table(found)
    book = Workbook(write_only=True)
    sheet = book.create_sheet(title=_dimension_names()[found.dimension][:31])
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return Response(out.getvalue(), mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{_filename(found, "xlsx")}"'})
