"""CSV import of branches, staff, service groups and clients.

Every valid row is applied and every invalid one is reported (line, column, reason): each
row runs in its own savepoint, so a bad row never loses the good ones, and rows are
upserts by key, so importing the same file again changes nothing. Files are UTF-8 (a BOM
is fine) or GB18030, the encoding Excel uses for Chinese CSV.

Columns (a column absent from the file leaves that field as it is; an empty cell clears it):

* branches: ``code,name,city``
* staff: ``username,name,staff_no,branch,job_roles,back_office`` (roles separated by ``;``;
  ``branch`` empty for HQ; ``back_office`` true/false, empty: from the roles)
* groups: ``key,branch,name,members,lead`` (members: usernames separated by ``;``)
* clients: ``client_id,name,branch,service_group,birth_date,id_number,phone,account_number,
  assets,turnover,risk_level,c1_lowest,operating_habit,account_status,vip_tier,tier_since,
  downgrade_grace_until`` (``service_group`` empty: the branch pool; ``account_status``
  active, dormant, suspended or closed, empty: active; VIP columns count only for new clients, see
  ``engine.registry.VIP_FIELDS``)
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.masking import mask_text
from engine.audit import record_system_event
from engine.brokerage import registry
from engine.errors import BpmError, InvalidInput, PermissionDenied

KINDS = ("branches", "staff", "groups", "clients")  # the order a multi-file import applies them in


def _str(value: str) -> str:
    return value


def _list(value: str) -> list[str]:
    return [part.strip() for part in value.replace("；", ";").split(";") if part.strip()]


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "yes", "y", "1", "是"):
        return True
    if lowered in ("false", "no", "n", "0", "否"):
        return False
    raise ValueError(f"{value!r} is not true or false")


def parse_decimal(value: str) -> Decimal:
    """A CSV cell as a finite number; thousands separators are allowed. ValueError says why not."""
    try:
        number = Decimal(value.strip().replace(",", ""))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{value!r} is not a number")
    return number


def parse_date(value: str) -> date:
    """A CSV cell as an ISO date (YYYY-MM-DD). ValueError says why not."""
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{value!r} is not a date (YYYY-MM-DD)") from None


Parser = Callable[[str], Any]


@dataclass(frozen=True)
class Layout:
    key: str
    required: tuple[str, ...]
    columns: Mapping[str, Parser]
    upsert: Callable[..., registry.Saved]


LAYOUTS: dict[str, Layout] = {
    "branches": Layout("code", ("code", "name", "city"), {"code": _str, "name": _str, "city": _str},
                       registry.upsert_branch),
    "staff": Layout("username", ("username", "job_roles"),
                    {"username": _str, "name": _str, "staff_no": _str, "branch": _str, "job_roles": _list,
                     "back_office": _bool}, registry.upsert_staff),
    "groups": Layout("key", ("key", "branch", "members"),
                     {"key": _str, "branch": _str, "name": _str, "members": _list, "lead": _str},
                     registry.upsert_service_group),
    "clients": Layout("client_id", ("client_id", "name", "branch"),
                      {"client_id": _str, "name": _str, "branch": _str, "service_group": _str,
                       "birth_date": parse_date, "id_number": _str, "phone": _str, "account_number": _str,
                       "assets": parse_decimal, "turnover": parse_decimal, "risk_level": _str, "c1_lowest": _bool,
                       "operating_habit": _str, "account_status": _str, "vip_tier": _str, "tier_since": parse_date,
                       "downgrade_grace_until": parse_date},
                      registry.upsert_client),
}


@dataclass(frozen=True)
class RowError:
    line: int
    column: str | None
    reason: str

    def __post_init__(self) -> None:
        # A reason may quote the cell it refused, and a client file is full of identifiers.
        object.__setattr__(self, "reason", mask_text(self.reason))

    def format(self, source: str) -> str:
        return f"{source}:{self.line} {self.column or '-'}: {self.reason}"


@dataclass
class FileReport:
    kind: str
    source: str
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[RowError] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.source} ({self.kind}): {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged, {len(self.rejected)} rejected")


@dataclass
class ImportReport:
    files: list[FileReport] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return sum(len(f.rejected) for f in self.files)


def decode(data: bytes | str) -> str:
    """A CSV file's text: UTF-8 (with or without a BOM), else GB18030 (Excel's Chinese CSV);
    UnicodeDecodeError when it is neither."""
    if isinstance(data, str):
        return data.removeprefix("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("gb18030")


def import_csv(session: Session, *, kind: str, data: bytes | str, actor: Actor, now: datetime,
               source: str = "") -> FileReport:
    """Apply one CSV file of ``kind`` (see :data:`KINDS`); never raises for a bad row."""
    if not actor.is_admin:
        raise PermissionDenied("importing into the client registry needs the admin role")
    layout = LAYOUTS[kind]
    report = FileReport(kind=kind, source=source or f"{kind}.csv")
    try:
        text = decode(data)
    except UnicodeDecodeError:
        report.rejected.append(RowError(1, None, "the file is neither UTF-8 nor GB18030 text"))
        return report
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        report.rejected.append(RowError(1, None, "the file is empty (a header line is needed)"))
        return report
    columns = [c.strip() for c in header]
    problems = [RowError(1, c, "missing column") for c in layout.required if c not in columns]
    problems += [RowError(1, c or None, f"unknown column; expected some of {', '.join(layout.columns)}")
                 for c in columns if c not in layout.columns]
    problems += [RowError(1, c, "column appears twice") for c in sorted({c for c in columns if columns.count(c) > 1})]
    if problems:  # a file whose header is wrong would put every value in the wrong field
        report.rejected.extend(problems)
        return report

    seen: dict[str, int] = {}
    last_line = reader.line_num
    for cells in reader:
        line, last_line = last_line + 1, reader.line_num
        if not any(c.strip() for c in cells):
            continue
        values, error = _parse(layout, columns, cells, line)
        if error is not None:
            report.rejected.append(error)
            continue
        key = str(values.get(layout.key) or "")
        if key in seen:
            report.rejected.append(RowError(line, layout.key, f"{key} already appears on line {seen[key]}"))
            continue
        seen[key] = line
        try:
            with session.begin_nested():
                outcome = layout.upsert(session, values=values, actor=actor, now=now).outcome
        except BpmError as exc:
            column = exc.details.get("field")
            report.rejected.append(RowError(line, column if column in columns else None, exc.message))
            continue
        except IntegrityError as exc:  # a constraint the checks above missed, e.g. a concurrent insert
            report.rejected.append(RowError(line, None, f"refused by the database: {exc.orig}"))
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    record_system_event(session, kind="registry.imported", actor=actor.username, at=now,
                        data={"kind": kind, "source": report.source, "created": report.created,
                              "updated": report.updated, "unchanged": report.unchanged,
                              "rejected": [[e.line, e.column, e.reason] for e in report.rejected]})
    return report


def _parse(layout: Layout, columns: list[str], cells: list[str], line: int) -> tuple[dict[str, Any], RowError | None]:
    if len(cells) > len(columns):
        return {}, RowError(line, None, f"{len(cells)} cells but the header has {len(columns)} columns")
    values: dict[str, Any] = {}
    for column, cell in zip(columns, cells + [""] * (len(columns) - len(cells)), strict=True):
        cell = cell.strip()
        if cell == "":
            values[column] = None
            continue
        try:
            values[column] = layout.columns[column](cell)
        except ValueError as exc:
            return {}, RowError(line, column, str(exc))
    if not values.get(layout.key):
        return {}, RowError(line, layout.key, f"{layout.key} is required")
    return values, None


def import_files(session: Session, *, files: Mapping[str, tuple[str, bytes | str]], actor: Actor,
                 now: datetime) -> ImportReport:
    """Several files at once, ``{kind: (file name, content)}``, applied in :data:`KINDS`
    order so clients can name the groups imported with them."""
    unknown = set(files) - set(KINDS)
    if unknown:
        raise InvalidInput(f"unknown import kinds: {', '.join(sorted(unknown))}; known: {', '.join(KINDS)}")
    report = ImportReport()
    for kind in KINDS:
        if kind in files:
            source, data = files[kind]
            report.files.append(import_csv(session, kind=kind, data=data, actor=actor, now=now, source=source))
    return report
