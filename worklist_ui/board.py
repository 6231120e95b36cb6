"""The supervisors' board (``/board``): open work by branch, service group, person, process
or step, each number linking to the task list that makes it up; the current view exports as
CSV (UTF-8 with a BOM, which Excel on Chinese Windows opens) or XLSX, each export audited."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, abort, render_template, request, stream_with_context, url_for
from flask_babel import gettext
from flask_login import login_required
from openpyxl import Workbook

from api.context import bpm
from engine.audit import record_system_event
from engine.brokerage import board_snapshot as snapshots
from engine.brokerage import figures
from engine.calendars import SHANGHAI
from engine.process import board as boards
from engine.process import tasks, worklist
from worklist_ui.i18n import beijing, duration, label, tier_name
from worklist_ui.session import actor

FORMATS = ("html", "csv", "xlsx")


def _dimension_names() -> dict[str, str]:
    return {"branch": gettext("Branch"), "group": gettext("Service group"), "person": gettext("Person"),
            "process": gettext("Process"), "step": gettext("Step")}


def _unnamed(by: str) -> str:
    """A row whose key is empty: tasks tied to no branch, offered to no group, held by nobody."""
    return {"branch": gettext("No branch"), "group": gettext("Claimed (no group queue)"),
            "person": gettext("Not claimed")}.get(by, "–")


def drill_downs() -> Callable[..., str]:
    """``drill_down(row, **extra)``: the task list behind a number, the supervisor's list with
    the row's filters (the list's address is looked up once: a firm's board has thousands of links)."""
    inbox = url_for("pages.inbox") + "?"

    def drill_down(row: boards.BoardRow, **extra: str) -> str:
        return inbox + urlencode({"tab": "team", **row.filters, **extra})

    return drill_down


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
    with ctx.db.reading() as db:
        # From the minute's snapshot when there is one (engine.brokerage.board_snapshot); the
        # overdue figure and the trend only for the page (an export is the table's counts).
        shown = snapshots.view(db, actor=person, by=by, now=now, process_key=process, with_figures=fmt == "html")
    found = shown.board
    if fmt != "html":
        with ctx.db.transaction() as db:
            record_system_event(db, kind="board.exported", actor=person.username, at=now,
                                data={"by": by, "process": process, "format": fmt, "rows": len(found.rows)})
    for row in found.rows:
        row.name = row.name or _unnamed(by)
    if fmt == "csv":
        return _csv(found)
    if fmt == "xlsx":
        return _xlsx(found)
    return render_template("board.html", board=found, by=by, process=process, now=now, late=shown.late,
                           weeks=shown.weeks, chart=_chart(shown.weeks), from_snapshot=shown.from_snapshot,
                           dimensions=_dimension_names(), drill_down=drill_downs(), bucket_name=bucket_name,
                           lateness=lambda moment: duration((now - moment).total_seconds()))


def bucket_name(bucket: figures.Bucket) -> str:
    """0–2 个工作日, >10 个工作日: an ageing bucket by the whole working days overdue it holds."""
    if bucket.to_days is None:
        return gettext(">%(last)s WD", last=bucket.from_days - 1)
    if bucket.from_days == bucket.to_days:
        return gettext("%(low)s WD", low=bucket.from_days)
    return gettext("%(low)s–%(high)s WD", low=bucket.from_days, high=bucket.to_days)


def _chart(weeks: list[boards.Week]) -> dict[str, Any]:
    """Coordinates of the trend chart (an SVG drawn by the template): a bar per week for the
    breaches opened, and a line for the on-time rate (0–100 % on the same height)."""
    width, height, gap = 36, 120, 8
    top = max([w.breached for w in weeks] + [1])
    bars = [{"x": i * (width + gap), "h": round(w.breached / top * height), "n": w.breached}
            for i, w in enumerate(weeks)]
    points = " ".join(f"{i * (width + gap) + width / 2:.0f},{height - (w.on_time_rate or 0) * height:.0f}"
                      for i, w in enumerate(weeks) if w.on_time_rate is not None)
    return {"bars": bars, "line": points, "width": len(weeks) * (width + gap), "height": height,
            "bar_width": width, "top": top}


TASK_COLUMNS = ("Case", "Process", "Step", "Client", "Class", "Tier", "Due (Beijing time)", "Deadline", "Priority",
                "Waiting for", "Branch")


def export_tasks(query: Any, filters: dict[str, str], fmt: str) -> Response:
    """A task list as a file, rows as the list shows them (client names masked, times in
    Beijing time, states in words). The CSV streams through one cursor a batch at a time,
    however long the list; the export is recorded first (who, which filters, how many rows),
    so a download cut short is on record too."""
    ctx = bpm()
    person = actor()
    now = ctx.runtime.now()
    with ctx.db.transaction() as db:
        rows = boards.count_all(db, actor=person, query=query, now=now)
        record_system_event(db, kind="tasks.exported", actor=person.username, at=now,
                            data={"filters": filters, "format": fmt, "rows": rows})
    header = [gettext(column) for column in TASK_COLUMNS]
    # The language and the SLA phrases are the reader's: take them while the request is here.
    phrase = _states()
    stem = f"tasks-{now.astimezone(SHANGHAI):%Y%m%d-%H%M}"

    def batches() -> Iterator[list[list[Any]]]:
        with ctx.db.transaction() as db:
            for batch in tasks.each(db, actor=person, query=query, now=now):
                yield [_task_cells(row, phrase) for row in worklist.rows_of(db, batch, now=now)]

    if fmt == "csv":
        return csv_file(f"{stem}.csv", header, batches(), stream=True)
    return xlsx_file(f"{stem}.xlsx", "tasks", header, batches())


def csv_file(filename: str, header: list[str], batches: Iterable[list[list[Any]]], *,
             stream: bool = False) -> Response:
    """A CSV download in UTF-8 with a BOM (Excel on Chinese Windows then reads it as UTF-8, not
    GBK); ``stream`` sends each batch as it comes instead of building the file first."""
    def text() -> Iterator[str]:
        out = io.StringIO()
        out.write("\ufeff")
        writer = csv.writer(out)
        writer.writerow(header)
        for batch in batches:
            writer.writerows(batch)
            yield out.getvalue()
            out.seek(0)
            out.truncate()
        yield out.getvalue()

    body: Any = stream_with_context(text()) if stream else "".join(text())
    return Response(body, mimetype="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def xlsx_file(filename: str, title: str, header: list[str], batches: Iterable[list[list[Any]]]) -> Response:
    """An XLSX download of one sheet (openpyxl's write-only mode: rows go to disk as added)."""
    book = Workbook(write_only=True)
    sheet = book.create_sheet(title=title[:31])
    sheet.append(header)
    for batch in batches:
        for row in batch:
            sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return Response(out.getvalue(), mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _states() -> dict[str, str]:
    return {"on_track": gettext("On track"), "at_risk": gettext("At risk"), "breached": gettext("Breached"),
            "paused": gettext("Paused"), "none": gettext("No deadline")}


def _task_cells(row: Any, phrase: dict[str, str]) -> list[Any]:
    task = row.task
    return [task.business_key, label(row.process_name), label(task.name) or task.element_id, row.client_name or "",
            row.client_class or "", tier_name(row.vip_tier) if row.vip_tier else "",
            beijing(task.due_at) if task.due_at else "", phrase.get(row.sla_state, row.sla_state), task.priority,
            row.waiting_for, task.branch_code or ""]


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
    return csv_file(_filename(found, "csv"), header, [rows])


def _xlsx(found: boards.Board) -> Response:
    header, rows = _table(found)
    return xlsx_file(_filename(found, "xlsx"), _dimension_names()[found.dimension], header, [rows])
