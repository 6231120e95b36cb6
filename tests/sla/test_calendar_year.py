"""A year's calendar imported from its official notice as one table, over the API and the
CLI; the coverage that says how far the calendar reaches and warns from 1 November while next
year is unknown; and a deadline across the Spring Festival computed on the imported days.

The 2027 table below is a test fixture shaped like the State Council's notices (a week of
Spring Festival holidays with weekend make-up days); it is not the official 2027 notice."""

from __future__ import annotations

from datetime import date, datetime

import pytest
import time_machine
from sqlalchemy import select

from engine.calendars import SHANGHAI, Unit
from engine.models import AuditEvent, CalendarDay, Notification
from engine.sla import admin as sla_admin
from engine.sla.calendar_store import CALENDARS
from tests.support.api import API, assert_problem
from tests.support.cli import run_entry_point

pytestmark = pytest.mark.sqlite

NOTICE_2027 = [
    {"date": "2027-01-01", "kind": "holiday", "name": "元旦"},
    *({"date": f"2027-02-{d:02d}", "kind": "holiday", "name": "春节"} for d in range(5, 12)),
    {"date": "2027-01-31", "kind": "workday", "name": "春节调休"},
    {"date": "2027-02-20", "kind": "workday", "name": "春节调休"},
    *({"date": f"2027-10-0{d}", "kind": "holiday", "name": "国庆节"} for d in range(1, 8)),
]


def _put(client, headers, body, year=2027):
    return client.put(f"{API}/calendar/years/{year}", json=body, headers=headers)


def test_a_years_notice_is_imported_whole_and_the_calendar_knows_every_day(client, db, auth):
    answer = _put(client, auth("owner"), {"days": NOTICE_2027, "complete": True})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.json
    assert (body["year"], body["holidays"], body["workdays"]) == (2027, 15, 2)
    assert body["last"] == "2027-12-31" and 2027 in body["complete_years"]
    with db.transaction() as s:
        days = {d.day: d for d in s.execute(select(CalendarDay).where(CalendarDay.day >= date(2027, 1, 1))).scalars()}
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "calendar.year_imported")).scalars()
    assert len(days) == 365
    assert (days[date(2027, 2, 8)].working, days[date(2027, 2, 8)].name) == (False, "春节")
    sunday = days[date(2027, 1, 31)]  # a make-up working day: work, but the exchanges are closed
    assert (sunday.working, sunday.trading, sunday.name) == (True, False, "春节调休")
    assert (days[date(2027, 3, 1)].working, days[date(2027, 3, 1)].trading) == (True, True)  # ordinary Monday
    assert (days[date(2027, 3, 6)].working, days[date(2027, 3, 6)].trading) == (False, False)  # ordinary Saturday
    assert event.actor == "owner" and event.data["holidays"] == 15 and event.data["complete"] is True


def test_a_deadline_across_the_spring_festival_counts_the_imported_days(client, db, auth):
    assert _put(client, auth("owner"), {"days": NOTICE_2027}).status_code == 200
    with db.transaction() as s:
        calendar = CALENDARS.get(s, "default")
    start = datetime(2027, 2, 4, 10, 0, tzinfo=SHANGHAI)  # Thursday before the holiday week
    due = calendar.add(start, 3, Unit.WORKING_DAYS)
    # Friday 5 to Thursday 11 February are holidays: three working days run to Tuesday 16.
    assert due.at.astimezone(SHANGHAI).date() == date(2027, 2, 16) and not due.incomplete
    trading = calendar.add(datetime(2027, 2, 19, 10, tzinfo=SHANGHAI), 1, Unit.TRADING_DAYS)
    # Saturday 20 is a make-up working day but not a trading day: one trading day runs to Monday 22.
    assert trading.at.astimezone(SHANGHAI).date() == date(2027, 2, 22)


def test_bad_rows_are_refused_each_by_its_place_and_nothing_is_stored(client, db, auth):
    rows = [{"date": "2027-02-08", "kind": "holiday", "name": "春节"},
            {"date": "2028-01-01", "kind": "holiday", "name": "元旦"},
            {"date": "2027-02-09", "kind": "vacation", "name": "春节"},
            {"date": "2027-02-08", "kind": "holiday", "name": "春节"},
            {"date": "2027-03-03", "kind": "workday", "name": "调休"}]
    body = assert_problem(_put(client, auth("owner"), {"days": rows}), 422, "invalid_request")
    assert [e["field"] for e in body["errors"]] == ["days/2/kind"]  # the request schema's own check first
    rows[2]["kind"] = "holiday"
    body = assert_problem(_put(client, auth("owner"), {"days": rows}), 422, "data_invalid")
    assert [e["field"] for e in body["errors"]] == ["days/1/date", "days/3/date", "days/4/kind"]
    with db.transaction() as s:
        assert s.execute(select(CalendarDay).where(CalendarDay.day >= date(2027, 1, 1))).first() is None
    assert_problem(_put(client, auth("owner"), {"days": []}, year=1900), 400, "invalid_input")


def test_only_a_process_owner_imports_a_year(client, auth):
    assert_problem(_put(client, auth("li"), {"days": NOTICE_2027}), 403, "forbidden")
    assert client.put(f"{API}/calendar/years/2027", json={"days": NOTICE_2027}).status_code == 401


def test_from_the_first_of_november_the_coverage_warns_while_next_year_is_unknown(client, auth):
    with time_machine.travel(datetime(2026, 10, 31, 12, tzinfo=SHANGHAI), tick=False):
        assert client.get(f"{API}/calendar/coverage", headers=auth("li")).json["warning"] is None
    with time_machine.travel(datetime(2026, 11, 1, 9, tzinfo=SHANGHAI), tick=False):
        warning = client.get(f"{API}/calendar/coverage", headers=auth("boss")).json["warning"]
        assert "2027" in warning and "import-year 2027" in warning
        assert _put(client, auth("owner"), {"days": NOTICE_2027}).json["warning"] is None


def test_a_single_day_entered_a_year_ahead_does_not_stretch_the_coverage(db, rt, people):
    with db.transaction() as s:
        sla_admin.set_day(s, day=date(2027, 6, 1), working=False, trading=False, name="测试", actor=people.owner,
                          now=rt.now())
    with db.transaction() as s:
        cover = sla_admin.coverage(s, now=rt.now())
    assert cover.last == date(2026, 12, 31)
    assert cover.warning is not None


def test_the_cli_imports_a_years_csv_and_names_a_bad_line(database_url, db, monkeypatch, capsys, tmp_path):
    notice = tmp_path / "2027.csv"
    notice.write_text("date,kind,name\n" + "".join(f"{r['date']},{r['kind']},{r['name']}\n" for r in NOTICE_2027),
                      encoding="utf-8")
    code, out, err = run_entry_point(monkeypatch, capsys, "calendar", "import-year", "2027", notice,
                                     BPM_DATABASE_URL=database_url)
    assert code == 0, err
    assert out.startswith("2027: 15 holiday(s), 2 make-up working day(s), 365 days written")
    bad = tmp_path / "bad.csv"
    bad.write_text("date,kind,name\n2027-02-08,holiday,春节\n2027-02-09,vacation,春节\n", encoding="utf-8")
    code, _, err = run_entry_point(monkeypatch, capsys, "calendar", "import-year", "2027", bad,
                                   BPM_DATABASE_URL=database_url)
    assert code == 2 and f"{bad}:3: kind is holiday or workday" in err


def test_the_seeded_holidays_have_their_chinese_names(db):
    with db.transaction() as s:
        names = {d: s.get(CalendarDay, d).name for d in (date(2026, 2, 17), date(2026, 10, 1), date(2025, 1, 1))}
    assert names == {date(2026, 2, 17): "春节", date(2026, 10, 1): "国庆节", date(2025, 1, 1): "元旦"}


def _admins(db, rt) -> None:
    """Two administrators (one reads English), one who left, and a process owner who is not one."""
    from engine.access import identity

    with db.transaction() as s:
        identity.ensure_group(s, key="admin")
        identity.create_user(s, username="root_zh", display_name="管理员甲", now=rt.now(), groups=["admin"])
        identity.create_user(s, username="root_en", display_name="Admin B", now=rt.now(),
                             groups=["admin"]).locale = "en"
        identity.create_user(s, username="root_gone", display_name="离职管理员", now=rt.now(),
                             groups=["admin"]).active = False


def _warnings(db) -> list[tuple[str, str, str]]:
    with db.transaction() as s:
        return [(n.recipient, n.subject, f"{n.created_at.astimezone(SHANGHAI):%m-%d}") for n in s.execute(
            select(Notification).where(Notification.subject.contains("2027")).order_by(Notification.id)).scalars()]


def test_administrators_are_told_once_a_day_from_november_until_next_year_is_imported(client, db, rt, people, auth):
    """The scheduled job (every working day at 09:00) writes one notification per active
    administrator per Beijing day to the outbox, in their language, from 1 November while 2027
    is unknown; a second run the same day adds nothing; importing the year stops it."""
    from engine.timers import firing, schedules

    _admins(db, rt)
    zh = "[日历] 2027 年节假日安排尚未导入"
    en = "[calendar] the public holidays of 2027 are not imported yet"
    with time_machine.travel(datetime(2026, 10, 30, 8, tzinfo=SHANGHAI), tick=False) as clock:
        with db.transaction() as s:
            schedules.create(s, rt, key="calendar-warning", process_key="job:" + sla_admin.COVERAGE_JOB,
                             rule="every_working_day", at_time="09:00", actor=people.owner)
        clock.move_to(datetime(2026, 10, 30, 9, 0, 1, tzinfo=SHANGHAI))
        assert firing.fire_due(db, rt) == 1
        assert _warnings(db) == []  # October: nothing yet
        clock.move_to(datetime(2026, 11, 2, 9, 0, 1, tzinfo=SHANGHAI))  # 1 November is a Sunday
        assert firing.fire_due(db, rt) == 1
        assert _warnings(db) == [("root_en", en, "11-02"), ("root_zh", zh, "11-02")]
        with db.transaction() as s:  # run again the same day (by hand, or a late slot): nothing new
            assert sla_admin.warn_administrators(s, now=rt.now()) == []
        clock.move_to(datetime(2026, 11, 3, 9, 0, 1, tzinfo=SHANGHAI))
        assert firing.fire_due(db, rt) == 1
        assert _warnings(db)[2:] == [("root_en", en, "11-03"), ("root_zh", zh, "11-03")]
        with db.transaction() as s:
            (body,) = s.execute(select(Notification.body).where(Notification.recipient == "root_zh")
                                .order_by(Notification.id.desc()).limit(1)).scalars()
        assert "bpm calendar import-year 2027" in body and "北京时间 2026-11-03" in body
        assert _put(client, auth("owner"), {"days": NOTICE_2027, "complete": True}).status_code == 200
        clock.move_to(datetime(2026, 11, 4, 9, 0, 1, tzinfo=SHANGHAI))
        assert firing.fire_due(db, rt) == 1
        assert len(_warnings(db)) == 4  # imported complete: no more warnings
    with db.transaction() as s:
        sent = s.execute(select(AuditEvent.data).where(AuditEvent.kind == "calendar.warning_sent")).scalars().all()
    assert [d["to"] for d in sent] == [["root_en", "root_zh"]] * 2
