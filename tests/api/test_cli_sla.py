"""``bpm calendar``, ``bpm sla`` and ``bpm timer``: the administrator's commands for the
business calendar, SLA policies and waiting timers.

Commands run in-process through click's CliRunner (``api.cli.main``) against the test
database; error cases go through the console entry point ``api.cli.run`` (as the installed
``bpm`` script does), which turns engine errors into one line on stderr.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from sqlalchemy import func, select

from engine.calendars import SHANGHAI
from engine.models import AuditEvent, CalendarDay, ProcessInstance, SlaPolicy, Task, Timer
from engine.process import instances, tasks
from engine.sla import admin as sla_admin
from engine.timers import firing
from tests.support.cli import bpm, run_entry_point

MONDAY_9 = datetime(2026, 3, 2, 9, tzinfo=SHANGHAI)
POLICY = {"key": "review.register", "name": "登记 2 个工作日", "position": 10, "process_key": "review",
          "element_id": "register", "target_amount": 2, "target_unit": "WD",
          "milestones": [{"at": 0.5, "action": "notify", "to": "candidates"}]}


def sh(*args: int) -> datetime:
    return datetime(*args, tzinfo=SHANGHAI)


def start(db, rt, people, key="R-1"):
    with db.transaction() as s:
        return instances.start(s, rt, process_key="review", business_key=key, actor=people.clerk,
                               data={"priority": 50, "due_at": None}).id


def register_task(db, key="R-1"):
    with db.transaction() as s:
        return s.execute(select(Task).where(Task.business_key == key, Task.element_id == "register")).scalar_one()


def save_policy(db, rt, people, **changes):
    with db.transaction() as s:
        sla_admin.upsert_policy(s, rt, data={**POLICY, **changes}, actor=people.owner)


# -- bpm calendar ---------------------------------------------------------------------------
@pytest.mark.sqlite
def test_set_day_adds_next_years_holiday_and_coverage_reports_it(database_url, db):
    before = bpm(database_url, "calendar", "coverage")
    assert before.exit_code == 0, before.output
    assert before.stdout.strip() == ("known: 2004-01-01 .. 2026-12-31; open tasks flagged calendar_incomplete: 0; "
                                     "years imported whole: none")

    result = bpm(database_url, "calendar", "set-day", "2027-01-01", "--holiday", "元旦")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "2027-01-01 saved; 0 open task(s) got a new due date; 0 schedule(s) moved"
    after = bpm(database_url, "calendar", "coverage")
    assert after.stdout.strip() == ("known: 2004-01-01 .. 2027-01-01; open tasks flagged calendar_incomplete: 0; "
                                    "years imported whole: none")

    with db.transaction() as s:
        day = s.get(CalendarDay, date(2027, 1, 1))
        assert (day.working, day.trading, day.name) == (False, False, "元旦")
        assert (day.source, day.updated_by) == ("admin", "cli")
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "calendar.day_set")).scalars()
    assert event.actor == "cli"
    assert event.data == {"day": "2027-01-01", "before": None,
                          "after": {"working": False, "trading": False, "name": "元旦"}}


@pytest.mark.sqlite
def test_set_day_recomputes_open_due_dates_and_marks_make_up_days(database_url, db, rt, people, review):
    save_policy(db, rt, people)
    with time_machine.travel(MONDAY_9, tick=False):
        start(db, rt, people)
        assert register_task(db).due_at == sh(2026, 3, 4, 9)
        result = bpm(database_url, "calendar", "set-day", "2026-03-03", "--holiday", "临时假日")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "2026-03-03 saved; 1 open task(s) got a new due date; 0 schedule(s) moved"
        assert register_task(db).due_at == sh(2026, 3, 5, 9)

        makeup = bpm(database_url, "calendar", "set-day", "2026-03-07", "--workday", "调休")
        assert makeup.exit_code == 0, makeup.output
        opened = bpm(database_url, "calendar", "set-day", "2026-03-08", "--workday", "特别交易日", "--trading")
        assert opened.exit_code == 0, opened.output
    with db.transaction() as s:
        saturday, sunday = s.get(CalendarDay, date(2026, 3, 7)), s.get(CalendarDay, date(2026, 3, 8))
        assert (saturday.working, saturday.trading, saturday.name) == (True, False, "调休")  # exchanges closed
        assert (sunday.working, sunday.trading) == (True, True)  # an explicit override


@pytest.mark.sqlite
def test_coverage_counts_tasks_whose_due_date_needed_unknown_days(database_url, db, rt, people, review):
    save_policy(db, rt, people, target_amount=1)
    with time_machine.travel(sh(2026, 12, 31, 9), tick=False):
        start(db, rt, people)
    result = bpm(database_url, "calendar", "coverage")
    assert result.stdout.strip() == ("known: 2004-01-01 .. 2026-12-31; open tasks flagged calendar_incomplete: 1; "
                                     "years imported whole: none")


# -- bpm sla load ---------------------------------------------------------------------------
@pytest.mark.sqlite
def test_sla_load_saves_a_file_of_policies_and_says_how_many_tasks_changed(database_url, db, rt, people, review,
                                                                           tmp_path):
    with time_machine.travel(MONDAY_9, tick=False):
        start(db, rt, people)
        assert register_task(db).due_at is None  # no policy yet
        path = tmp_path / "policies.json"
        path.write_text(json.dumps([
            POLICY,
            {"key": "vip", "name": "钻石客户 1 个工作日", "position": 1, "process_key": "review",
             "match_data": {"vip_tier": "diamond"}, "target_amount": "1", "target_unit": "WD"},
        ], ensure_ascii=False), encoding="utf-8")
        result = bpm(database_url, "sla", "load", path)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "2 policies saved; 1 open task(s) recomputed"
        task = register_task(db)
        assert task.due_at == sh(2026, 3, 4, 9) and task.due_source == "policy"

        again = bpm(database_url, "sla", "load", path)
        assert again.exit_code == 0 and again.stdout.strip() == "2 policies saved; 0 open task(s) recomputed"

        path.write_text(json.dumps([{**POLICY, "target_amount": 3}]), encoding="utf-8")
        single = bpm(database_url, "sla", "load", path)
        assert single.stdout.strip() == "1 policy saved; 1 open task(s) recomputed"
        assert register_task(db).due_at == sh(2026, 3, 5, 9)
    with db.transaction() as s:
        saved = [(p.key, p.position, p.updated_by) for p in
                 s.execute(select(SlaPolicy).order_by(SlaPolicy.position)).scalars()]
        waiting = s.execute(select(func.count()).select_from(Timer)
                            .where(Timer.kind == "sla", Timer.status == "waiting")).scalar_one()
    assert saved == [("vip", 1, "cli"), ("review.register", 10, "cli")]
    assert waiting == 1  # the one milestone of the current due date; earlier ones were cancelled


# -- bpm timer reschedule -------------------------------------------------------------------
START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # Monday 09:00 in Shanghai


def _to_waiting_for_ack(db, rt, people, key="R-1"):
    instance_id = start(db, rt, people, key)
    for data in ({"amount": 10, "summary": "小额"}, {"approved": True}):
        with db.transaction() as s:
            task = tasks.inbox(s, actor=people.clerk, query=tasks.InboxQuery(business_key=key), now=rt.now())[0][0]
            tasks.complete(s, rt, task_id=task.id, actor=people.clerk, data=data)
    return instance_id


@pytest.mark.sqlite
def test_timer_reschedule_moves_a_waiting_timer_and_it_fires_then(database_url, db, rt, people, review):
    with time_machine.travel(START, tick=False) as clock:
        instance_id = _to_waiting_for_ack(db, rt, people)
        with db.transaction() as s:
            timer_id = s.execute(select(Timer.id).where(Timer.instance_id == instance_id)).scalar_one()
        result = bpm(database_url, "timer", "reschedule", timer_id, "2026-03-05T09:00:00+08:00")
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == f"timer {timer_id} now due 2026-03-05T09:00:00+08:00"

        clock.move_to(sh(2026, 3, 5, 9, 0, 1))  # ten days before the diagram's 15
        assert firing.fire_due(db, rt) == 1
    with db.transaction() as s:
        assert s.get(ProcessInstance, instance_id).status == "completed"
        (event,) = s.execute(select(AuditEvent).where(AuditEvent.kind == "timer.rescheduled")).scalars()
    assert event.actor == "cli" and datetime.fromisoformat(event.data["to"]) == sh(2026, 3, 5, 9)


# -- errors: one line, non-zero, no traceback -----------------------------------------------
@pytest.mark.sqlite
def test_calendar_errors_are_one_line(database_url, db, monkeypatch, capsys):
    def run(*args):
        return run_entry_point(monkeypatch, capsys, *args, BPM_DATABASE_URL=database_url)

    code, out, err = run("calendar", "set-day", "2027-01-01")
    assert (code, err.strip()) == (2, "error: give exactly one of --holiday NAME or --workday NAME")
    code, out, err = run("calendar", "set-day", "2027-01-01", "--holiday", "元旦", "--workday", "调休")
    assert code == 2 and err.startswith("error: give exactly one")
    code, out, err = run("calendar", "set-day", "2027-01-01", "--holiday", "元旦", "--trading")
    assert (code, err.strip()) == (1, "error: invalid_input: a trading day must be a working day")
    code, out, err = run("calendar", "set-day", "2027-02-30", "--holiday", "元旦")
    assert code == 2 and "'2027-02-30' does not match the format" in err
    assert "Traceback" not in out + err
    with db.transaction() as s:
        assert s.get(CalendarDay, date(2027, 1, 1)) is None  # nothing stored


@pytest.mark.sqlite
@pytest.mark.parametrize(("content", "message"), [
    ("[{\"key\": \"a\",", "not JSON"),
    ("{\"key\": \"a\"}", "a JSON list"),
    ("[\"a\"]", "a JSON list"),
    ("[{\"name\": \"no key\", \"target_amount\": 1, \"target_unit\": \"WD\"}]", "key"),
    ("[{\"key\": \"a\", \"name\": \"n\", \"target_amount\": \"lots\", \"target_unit\": \"WD\"}]", "target_amount"),
    ("[{\"key\": \"a\", \"name\": \"n\", \"target_amount\": 1, \"target_unit\": \"weeks\"}]", "target_unit"),
    ("[{\"key\": \"a\", \"name\": \"n\", \"target_amount\": 1, \"target_unit\": \"WD\","
     " \"milestones\": [{\"at\": 0.5, \"action\": \"sms\"}]}]", "action"),
    ("[{\"key\": \"a\", \"name\": \"n\", \"target_amount\": 1, \"target_unit\": \"WD\","
     " \"milestones\": [{\"at\": 1, \"action\": \"reassign\"}]}]", "needs 'to'"),
    ("[{\"key\": \"a\", \"name\": \"n\", \"target_amount\": 1, \"target_unit\": \"WD\","
     " \"milestones\": [{\"at\": 1, \"action\": \"notify\", \"to\": \"client:service_group\"}]}]",
     "cannot reach the client's group"),
])
def test_sla_load_of_a_bad_file_is_one_line_and_saves_nothing(database_url, db, monkeypatch, capsys, tmp_path,
                                                               content, message):
    path = tmp_path / "policies.json"
    good = {"key": "good", "name": "好", "target_amount": 1, "target_unit": "WD"}
    # A good policy first: the file is loaded whole or not at all.
    path.write_text(content.replace("[", f"[{json.dumps(good)}, ", 1) if content.startswith("[{") else content,
                    encoding="utf-8")
    code, out, err = run_entry_point(monkeypatch, capsys, "sla", "load", path, BPM_DATABASE_URL=database_url)
    assert code == 1, (out, err)
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in out + err
    with db.transaction() as s:
        assert s.execute(select(func.count()).select_from(SlaPolicy)).scalar_one() == 0


@pytest.mark.sqlite
def test_sla_load_of_a_missing_file_is_a_usage_error(database_url, db, monkeypatch, capsys, tmp_path):
    code, out, err = run_entry_point(monkeypatch, capsys, "sla", "load", tmp_path / "nope.json",
                                     BPM_DATABASE_URL=database_url)
    assert code == 2 and "does not exist" in err and "Traceback" not in out + err


@pytest.mark.sqlite
def test_timer_reschedule_errors_are_one_line(database_url, db, rt, people, review, monkeypatch, capsys):
    def run(*args):
        return run_entry_point(monkeypatch, capsys, *args, BPM_DATABASE_URL=database_url)

    assert run("timer", "reschedule", 999, "2026-12-01T09:00:00+08:00")[2].strip() == "error: not_found: no timer 999"
    code, out, err = run("timer", "reschedule", 1, "next tuesday")
    assert (code, err.strip()) == (2, "error: 'next tuesday' is not an ISO 8601 date-time")
    code, out, err = run("timer", "reschedule", 1, "2026-12-01T09:00:00")
    assert (code, err.strip()) == (2, "error: give the time with an offset, e.g. +08:00")

    with time_machine.travel(START, tick=False) as clock:
        instance_id = _to_waiting_for_ack(db, rt, people)
        with db.transaction() as s:
            timer_id = s.execute(select(Timer.id).where(Timer.instance_id == instance_id)).scalar_one()
        clock.move_to(START + timedelta(days=15, seconds=1))
        assert firing.fire_due(db, rt) == 1
        code, out, err = run("timer", "reschedule", timer_id, "2026-12-01T09:00:00+08:00")
    assert code == 1 and err.startswith("error: instance_not_running:")
    assert "Traceback" not in out + err
