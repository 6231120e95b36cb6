"""Per-period client figures (``bpm_client_snapshot``) and their CSV import.

The service-group assessment (the brokerage's procedures: asset growth split into new money
and appreciation, turnover, referrals) needs per-client period data the workflow system does
not produce: the account system exports it, one row per client and period (usually a month),
and ``bpm figures import-snapshot FILE`` loads it.

Columns (``avg_assets`` and ``referrals`` may be left out):
``period_start,period_end,client_id,branch,service_group,assets_start,assets_end,net_inflow,
traded_amount,avg_assets,referrals``. Dates are ``YYYY-MM-DD`` and both inclusive; money in
yuan; ``service_group`` empty means the branch pool; ``avg_assets`` (日均总资产) empty means
the mean of the start and end assets; ``referrals`` empty means 0. ``branch`` and
``service_group`` must be in the client registry, the group one of that branch's: a row
under a code the assessment does not know would count for no branch or group the
supervisors can see, or for the wrong one, so it is rejected instead.

As for the registry files: every valid row is applied and every invalid one reported (line,
column, reason), each row in its own savepoint; rows are upserts by (period, client), so
importing a corrected file replaces the rows it names and importing it again changes nothing.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.audit import record_system_event
from engine.brokerage.registry_import import FileReport, RowError, decode, parse_date, parse_decimal
from engine.errors import BpmError, InvalidInput, PermissionDenied
from engine.models import Branch, ClientSnapshot, ServiceGroup

CREATED, UPDATED, UNCHANGED = "created", "updated", "unchanged"
REQUIRED = ("period_start", "period_end", "client_id", "branch", "assets_start", "assets_end", "net_inflow",
            "traded_amount")
MONEY = ("assets_start", "assets_end", "net_inflow", "traded_amount", "avg_assets")
CENT = Decimal("0.01")


def _whole(value: str) -> int:
    if not value.strip().isdigit():
        raise ValueError(f"{value!r} is not a whole number of 0 or more")
    return int(value)


COLUMNS: dict[str, Callable[[str], Any]] = {
    "period_start": parse_date, "period_end": parse_date, "client_id": str, "branch": str, "service_group": str,
    "assets_start": parse_decimal, "assets_end": parse_decimal, "net_inflow": parse_decimal,
    "traded_amount": parse_decimal, "avg_assets": parse_decimal, "referrals": _whole,
}


def _invalid(column: str, message: str) -> InvalidInput:
    return InvalidInput(message, field=column)


def _values(values: dict[str, Any]) -> dict[str, Any]:
    """The row's model values, checked; a value error names its column."""
    for column in REQUIRED:
        if values.get(column) is None:
            raise _invalid(column, f"{column} is required")
    if values["period_end"] < values["period_start"]:
        raise _invalid("period_end", "the period ends before it starts")
    for column in MONEY:
        if column != "net_inflow" and values.get(column) is not None and values[column] < 0:
            raise _invalid(column, f"{column} cannot be negative")
    money: dict[str, Decimal] = {c: values[c].quantize(CENT) for c in MONEY if values.get(c) is not None}
    # Without the account system's 日均总资产, the mean of the period's ends stands in for it.
    money.setdefault("avg_assets", ((money["assets_start"] + money["assets_end"]) / 2).quantize(CENT))
    return {"period_start": values["period_start"], "period_end": values["period_end"],
            "client_id": values["client_id"], "branch_code": values["branch"],
            "service_group_key": values.get("service_group"), "referrals": values.get("referrals") or 0, **money}


def _check_registry(session: Session, branch: str, group_key: str | None) -> None:
    """The branch and the group are the registry's (as for a client, engine.registry)."""
    if session.get(Branch, branch) is None:
        raise _invalid("branch", f"no branch {branch!r} in the client registry")
    if group_key is None:
        return
    group = session.get(ServiceGroup, group_key)
    if group is None:
        raise _invalid("service_group", f"no service group {group_key!r} in the client registry")
    if group.branch_code != branch:
        raise _invalid("service_group", f"service group {group_key} belongs to {group.branch_code}, not to {branch}")


def upsert(session: Session, *, values: dict[str, Any], actor: Actor, now: datetime) -> str:
    """Create or replace one client's row of one period; says which (or that nothing changed)."""
    new = _values(values)
    _check_registry(session, new["branch_code"], new["service_group_key"])
    row = session.execute(select(ClientSnapshot).where(
        ClientSnapshot.period_start == new["period_start"], ClientSnapshot.period_end == new["period_end"],
        ClientSnapshot.client_id == new["client_id"])).scalar_one_or_none()
    if row is not None and all(getattr(row, k) == v for k, v in new.items()):
        return UNCHANGED
    outcome = UPDATED if row is not None else CREATED
    if row is None:
        row = ClientSnapshot()
        session.add(row)
    for name, value in new.items():
        setattr(row, name, value)
    row.imported_at, row.imported_by = now, actor.username
    session.flush()
    return outcome


def import_csv(session: Session, *, data: bytes | str, actor: Actor, now: datetime, source: str = "") -> FileReport:
    """Apply one snapshot file; never raises for a bad row."""
    if not actor.is_admin:
        raise PermissionDenied("importing client figures needs the admin role")
    report = FileReport(kind="snapshot", source=source or "snapshot.csv")
    try:
        text = decode(data)
    except UnicodeDecodeError:
        report.rejected.append(RowError(1, None, "the file is neither UTF-8 nor GB18030 text"))
        return report
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = [c.strip() for c in next(reader, [])]
    problems = [RowError(1, c, "missing column") for c in REQUIRED if c not in columns]
    problems += [RowError(1, c or None, f"unknown column; expected some of {', '.join(COLUMNS)}")
                 for c in columns if c not in COLUMNS]
    problems += [RowError(1, c, "column appears twice") for c in sorted({c for c in columns if columns.count(c) > 1})]
    if problems:  # a wrong header would put every value in the wrong field
        report.rejected.extend(problems)
        return report
    seen: dict[tuple[Any, ...], int] = {}
    last_line = reader.line_num
    for cells in reader:
        line, last_line = last_line + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue
        values, error = _parse(columns, cells, line)
        if error is not None:
            report.rejected.append(error)
            continue
        key = (values.get("period_start"), values.get("period_end"), values["client_id"])
        if key in seen:
            report.rejected.append(RowError(line, "client_id", f"this client and period are on line {seen[key]}"))
            continue
        seen[key] = line
        try:
            with session.begin_nested():
                outcome = upsert(session, values=values, actor=actor, now=now)
        except BpmError as exc:
            column = exc.details.get("field")
            report.rejected.append(RowError(line, column if column in columns else None, exc.message))
            continue
        except IntegrityError as exc:  # e.g. a concurrent import of the same row
            report.rejected.append(RowError(line, None, f"refused by the database: {exc.orig}"))
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    record_system_event(session, kind="figures.snapshot_imported", actor=actor.username, at=now,
                        data={"source": report.source, "created": report.created, "updated": report.updated,
                              "unchanged": report.unchanged,
                              "rejected": [[e.line, e.column, e.reason] for e in report.rejected]})
    return report


def _parse(columns: list[str], cells: list[str], line: int) -> tuple[dict[str, Any], RowError | None]:
    if len(cells) > len(columns):
        return {}, RowError(line, None, f"{len(cells)} cells but the header has {len(columns)} columns")
    values: dict[str, Any] = {}
    for column, cell in zip(columns, cells + [""] * (len(columns) - len(cells)), strict=True):
        try:
            values[column] = COLUMNS[column](cell.strip()) if cell.strip() else None
        except ValueError as exc:
            return {}, RowError(line, column, str(exc))
    if not values.get("client_id"):
        return {}, RowError(line, "client_id", "client_id is required")
    return values, None
