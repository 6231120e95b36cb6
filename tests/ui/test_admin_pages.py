"""The process owners' deadline pages through Flask's test client, over the demo's open cases
on its Wednesday morning (26 November 2026 is not yet known: 2027 is missing): who may open
them, a policy's refusals shown beside their fields with nothing saved, the preview that
predicts exactly what the save then does, the calendar's year view, import (pasted and
uploaded), marking a year complete and one-day corrections with what each moved, and the
schedules' next slots and runs."""

from __future__ import annotations

import io
import re
from datetime import date, datetime, timedelta
from html import unescape

import pytest
import time_machine
from sqlalchemy import func, or_, select

from engine.calendars import SHANGHAI
from engine.models import (
    ACTIVE_TASK_STATES,
    AuditEvent,
    CalendarDay,
    Schedule,
    Setting,
    SlaPolicy,
    Task,
    TaskKind,
    Timer,
    TimerKind,
    TimerStatus,
)
from engine.timers import firing
from tests.ui.test_pages import sign_in, token_of

STAFF = "s003"  # a call-centre agent: no process_owner role
OWNER = "s001"
MAJOR = "complaint.investigate.major"  # the shipped policy of the demo's two open investigations

NOTICE_2027 = ("date,kind,name\n2027-01-01,holiday,元旦\n"
               + "".join(f"2027-02-{d:02d},holiday,春节\n" for d in range(5, 12))
               + "2027-01-31,workday,春节调休\n2027-02-20,workday,春节调休\n")


def _owner(app):
    client = app.test_client()
    sign_in(client, OWNER, "demo")
    return client, token_of(client.get("/sla"))


def _policy_form(client, key):
    """The edit form's fields as the page fills them in."""
    html = client.get(f"/sla/{key}").get_data(as_text=True)
    form = re.search(r'<form method="post" action="/sla/[^"]+" id="policy-form".*?</form>', html, re.S).group(0)
    data = {m.group(1): m.group(2) for m in re.finditer(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form)}
    for name in ("active", "pausable"):
        if not re.search(rf'name="{name}" value="true" checked', form):
            data.pop(name, None)
    for select_name, body in re.findall(r'<select[^>]*name="([^"]+)"[^>]*>(.*?)</select>', form, re.S):
        chosen = re.search(r'<option value="([^"]*)" selected', body)
        data[select_name] = chosen.group(1) if chosen else ""
    data["match_data"] = re.search(r'<textarea[^>]*name="match_data"[^>]*>(.*?)</textarea>', form, re.S).group(1)
    return data


def _open_dues(db):
    with db.transaction() as s:
        return {t.id: t.due_at for t in s.execute(select(Task).where(Task.status.in_(ACTIVE_TASK_STATES))).scalars()}


def _count(db, model, *where):
    with db.transaction() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where))


def _events(db, *kinds):
    with db.transaction() as s:
        return s.scalar(select(func.max(AuditEvent.id)).where(AuditEvent.kind.in_(kinds))) or 0


def _beijing(moment):
    return moment.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")


# -- who may open them ----------------------------------------------------------------------------
def test_staff_get_403_on_every_deadline_page_and_form_and_nothing_changes(app, db, demo_cases_loaded):
    client = app.test_client()
    sign_in(client, STAFF, "demo")
    token = token_of(client.get("/"))
    last = _events(db, "sla.policy_saved", "calendar.day_set", "calendar.year_imported",
                   "calendar.year_marked_complete")
    home = client.get("/").get_data(as_text=True)
    assert 'href="/sla"' not in home and 'href="/calendar"' not in home and 'href="/schedules"' not in home
    for url in ("/sla", f"/sla/{MAJOR}", "/sla/brand.new", "/calendar", "/calendar?year=2027", "/schedules",
                "/sla?new=x"):
        assert client.get(url).status_code == 403, url
    posts = {f"/sla/{MAJOR}": {"name": "x", "target_amount": "1", "target_unit": "WD", "action": "save"},
             "/calendar/import": {"year": "2027", "table": NOTICE_2027, "complete": "true"},
             "/calendar/complete": {"year": "2026"},
             "/calendar/day": {"day": "2026-12-31", "kind": "holiday", "day_name": "假"}}
    for url, form in posts.items():
        answer = client.post(url, data={**form, "csrf_token": token})
        assert answer.status_code == 403, url
    assert _count(db, CalendarDay, CalendarDay.day >= date(2027, 1, 1)) == 0
    assert _events(db, "sla.policy_saved", "calendar.day_set", "calendar.year_imported",
                   "calendar.year_marked_complete") == last


def test_the_owners_header_links_the_three_pages(app, demo_cases_loaded):
    client, _ = _owner(app)
    html = client.get("/processes").get_data(as_text=True)
    for href, words in (("/sla", "时限策略"), ("/calendar", "工作日历"), ("/schedules", "定时任务")):
        assert re.search(rf'<a href="{href}"[^>]*>{words}</a>', html), href


def test_a_form_without_its_csrf_token_is_refused(app, db, demo_cases_loaded):
    client, _ = _owner(app)
    assert client.post("/calendar/day", data={"day": "2026-12-31", "kind": "holiday"}).status_code == 400
    assert client.post(f"/sla/{MAJOR}", data={"action": "preview"}).status_code == 400
    with db.transaction() as s:
        assert s.get(CalendarDay, date(2026, 12, 31)).working is True


# -- SLA policies -------------------------------------------------------------------------------
def test_the_policy_list_shows_every_policy_in_matching_order(app, db, demo_cases_loaded):
    client, _ = _owner(app)
    html = client.get("/sla").get_data(as_text=True)
    with db.transaction() as s:
        keys = list(s.execute(select(SlaPolicy.key).order_by(SlaPolicy.position, SlaPolicy.id)).scalars())
    assert keys and re.findall(r'<tr data-policy="([^"]+)"', html) == keys
    row = re.search(rf'<tr data-policy="{re.escape(MAJOR)}">.*?</tr>', html, re.S).group(0)
    assert "10 个工作日" in row and "complaint" in row and "investigate" in row


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"target_unit": "weeks"}, "target_unit", "Must be one of"),
    ({"target_amount": "lots"}, "target_amount", "Not a valid number"),
    ({"target_amount": "0"}, "target_amount", "an SLA target must be a positive number"),
    ({"position": "first"}, "position", "Not a valid integer"),
    ({"business_hours": "night-shift"}, "business_hours", "no business hours named 'night-shift'"),
    ({"milestones-0-action": "reassign", "milestones-0-to": ""}, "milestones/0/to", "needs 'to'"),
    ({"milestones-0-action": "escalate", "milestones-0-to": "client:service_group"}, "milestones/0/to",
     "cannot reach the client's group"),
    ({"milestones-1-action": "sms"}, "milestones/1/action", "Must be one of"),
    ({"milestones-0-at": "half"}, "milestones/0/at", "Not a valid number"),
    ({"milestones-0-at": "7"}, "milestones/0/at", "Must be greater than 0 and less than or equal to 5"),
    ({"match_data": "severity"}, "match_data", "变量=值"),
    ({"anchor_variable": "9lives"}, "anchor_variable", "a variable name"),
    ({"name": ""}, "name", "Length must be between 1 and 256"),
], ids=["unit", "amount-text", "amount-zero", "position", "hours", "reassign-to-nobody", "to-the-client",
        "action", "at-text", "at-too-far", "match-data", "anchor", "name"])
def test_a_bad_policy_is_refused_beside_its_field_with_the_apis_reason_and_nothing_saved(
        app, db, demo_cases_loaded, change, field, message):
    client, token = _owner(app)
    form = {**_policy_form(client, MAJOR), **change, "csrf_token": token}
    before, last = _open_dues(db), _events(db, "sla.policy_saved")
    for action in ("preview", "save"):
        answer = client.post(f"/sla/{MAJOR}", data={**form, "action": action})
        assert answer.status_code in (400, 422), (action, answer.status_code)
        html = answer.get_data(as_text=True)
        beside = re.search(rf'<p class="field-error" id="err-{field.replace("/", "-")}">([^<]*)</p>', html)
        assert beside is not None and message in unescape(beside.group(1)), (field, beside)
        assert 'class="error-summary"' in html and f'data-field="{field}"' in html
        assert 'id="preview"' not in html
    assert _open_dues(db) == before and _events(db, "sla.policy_saved") == last
    with db.transaction() as s:
        assert s.execute(select(SlaPolicy.target_amount).where(SlaPolicy.key == MAJOR)).scalar_one() == 10


def _preview_figures(html):
    count = re.search(r'id="preview-count" data-open="(\d+)" data-changed="(\d+)"', html)
    shifts = dict(re.findall(r'<dd data-shift="(\w+)">([^<]*)</dd>', html))
    moved = {int(i): (a, b) for i, a, b in re.findall(
        r'<tr data-moved-task="(\d+)">.*?<td>[^<]*<code>[^<]*</code></td>\s*<td>([^<]*)</td><td>([^<]*)</td>', html,
        re.S)}
    return int(count.group(1)), int(count.group(2)), shifts, moved


@pytest.mark.sqlite
def test_the_preview_shows_the_sample_due_date_and_predicts_what_the_save_then_does(app, db, demo_cases_loaded):
    client, token = _owner(app)
    form = {**_policy_form(client, MAJOR), "target_amount": "7", "milestones-0-at": "0.5",
            "milestones-0-action": "notify", "milestones-0-to": "assignee", "csrf_token": token}
    before, last = _open_dues(db), _events(db, "sla.policy_saved")
    preview = client.post(f"/sla/{MAJOR}", data={**form, "action": "preview"})
    assert preview.status_code == 200
    html = preview.get_data(as_text=True)
    assert 'id="preview"' in html and "预览：尚未保存任何内容" in html
    # Nothing is saved by a preview.
    assert _open_dues(db) == before and _events(db, "sla.policy_saved") == last
    # A task created now (Wednesday 25 November, 10:30 and a little) is due 7 working days later, at
    # the same time of day: Friday 4 December; its 50 % milestone falls 3.5 working days on, Monday
    # 30 November 14:30 and a little (half a day of 09:00–17:00 is four hours).
    due = re.search(r'<dd data-preview="due"><strong>([^<]+)</strong>', html).group(1)
    assert due.startswith("2026-12-04 10:3"), due
    first = re.search(r'<table class="board-table" id="preview-milestones">.*?<tbody>\s*<tr>(.*?)</tr>', html,
                      re.S).group(1)
    assert "50%" in first and "通知" in first and "2026-11-30 14:3" in first
    open_tasks, changed, shifts, moved = _preview_figures(html)
    # Every open step whose due date no diagram set is recomputed by a save (and so counted).
    assert open_tasks == _count(db, Task, Task.status.in_(ACTIVE_TASK_STATES), Task.kind == TaskKind.BPMN,
                                or_(Task.due_source.is_(None), Task.due_source != "diagram")) > 2
    assert changed == 2 and len(moved) == 2  # the two open investigations
    # 10 → 7 working days: due Monday 7 December → Wednesday 2nd, Friday 4th → Tuesday 1st.
    assert shifts == {"min": "−5 天", "median": "−4 天", "max": "−3 天"}

    fingerprint = re.search(r'name="previewed" value="([0-9a-f]+)"', html).group(1)
    saved = client.post(f"/sla/{MAJOR}", data={**form, "previewed": fingerprint, "action": "save"})
    assert saved.status_code == 302
    flashed = client.get(saved.headers["Location"]).get_data(as_text=True)
    assert "已保存：2 个未完成任务获得了新的截止时间" in flashed
    after = _open_dues(db)
    actual = {i: (_beijing(before[i]) if before[i] else "无", _beijing(after[i]) if after[i] else "无")
              for i in before if before[i] != after[i]}
    assert actual == moved  # the preview named exactly the tasks the save moved, from and to where it said
    assert sorted(after[i] - before[i] for i in actual) == [timedelta(days=-5), timedelta(days=-3)]
    with db.transaction() as s:
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "sla.policy_saved", AuditEvent.id > last)
                          ).scalar_one()
        assert event.actor == OWNER and event.data["target"] == "7 WD"


def test_a_save_of_something_other_than_the_preview_is_previewed_again_not_saved(app, db, demo_cases_loaded):
    client, token = _owner(app)
    form = {**_policy_form(client, MAJOR), "target_amount": "7", "csrf_token": token}
    last = _events(db, "sla.policy_saved")
    html = client.post(f"/sla/{MAJOR}", data={**form, "action": "preview"}).get_data(as_text=True)
    fingerprint = re.search(r'name="previewed" value="([0-9a-f]+)"', html).group(1)
    changed = client.post(f"/sla/{MAJOR}", data={**form, "target_amount": "3", "previewed": fingerprint,
                                                 "action": "save"})
    assert changed.status_code == 200
    assert "策略在预览后有改动" in changed.get_data(as_text=True) and 'id="preview"' in changed.get_data(as_text=True)
    assert _events(db, "sla.policy_saved") == last


def test_a_new_policy_is_created_from_the_list_and_a_bad_key_is_refused(app, db, demo_cases_loaded):
    client, token = _owner(app)
    bad = client.get("/sla?new=has spaces")
    assert bad.status_code == 400 and 'id="err-new-key"' in bad.get_data(as_text=True)
    opened = client.get("/sla?new=complaint.register.vip")
    assert opened.status_code == 302 and opened.headers["Location"].endswith("/sla/complaint.register.vip")
    form = {"name": "VIP 登记 1 个工作日", "position": "5", "active": "true", "process_key": "complaint",
            "element_id": "register", "match_data": "tier=diamond", "target_amount": "1", "target_unit": "WD",
            "business_hours": "default", "pausable": "true", "milestone_rows": "2", "csrf_token": token}
    html = client.post("/sla/complaint.register.vip", data={**form, "action": "preview"}).get_data(as_text=True)
    fingerprint = re.search(r'name="previewed" value="([0-9a-f]+)"', html).group(1)
    assert client.post("/sla/complaint.register.vip",
                       data={**form, "previewed": fingerprint, "action": "save"}).status_code == 302
    with db.transaction() as s:
        policy = s.execute(select(SlaPolicy).where(SlaPolicy.key == "complaint.register.vip")).scalar_one()
        assert (policy.position, policy.match_data, policy.updated_by) == (5, {"tier": "diamond"}, OWNER)


# -- the calendar -------------------------------------------------------------------------------
def test_the_year_view_marks_holidays_make_up_days_and_trading_apart_with_a_legend(app, db, demo_cases_loaded):
    client, _ = _owner(app)
    html = client.get("/calendar").get_data(as_text=True)
    assert len(re.findall(r'<table class="month" data-month="\d+">', html)) == 12
    with db.transaction() as s:
        days = {d.day: d for d in s.execute(select(CalendarDay).where(CalendarDay.day >= date(2026, 1, 1),
                                                                     CalendarDay.day <= date(2026, 12, 31))).scalars()}
    kinds = dict(re.findall(r'data-day="([\d-]+)" data-kind="(\w+)"', html))
    assert len(kinds) == 365
    for day, row in days.items():
        expected = ("trading" if row.trading else ("makeup" if day.weekday() >= 5 else "closed")) if row.working \
            else ("holiday" if row.name else "weekend")
        assert kinds[day.isoformat()] == expected, day
    assert kinds["2026-10-01"] == "holiday" and "makeup" in kinds.values()
    makeup = next(d for d, k in kinds.items() if k == "makeup")
    cell = re.search(rf'data-day="{makeup}".*?</td>', html, re.S).group(0)
    assert "班" in cell and "调休上班日：上班，交易所休市" in cell  # a word, not colour alone
    legend = re.search(r'<ul class="legend" id="legend">.*?</ul>', html, re.S).group(0)
    for words in ("节假日：不上班、不开市", "调休上班日：上班，交易所休市", "工作日且开市", "日历中没有"):
        assert words in legend
    # 25 November: 2027 is not known, so the coverage warns.
    assert 'id="coverage-warning"' in html and "日历尚未收录 2027 年" in html
    assert 'id="next-year-warning"' in html


@pytest.mark.parametrize(("url", "reason"), [("/calendar?year=abc", "年份是 1990 至 2099 之间的数字"),
                                             ("/calendar?year=1900", "年份是 1990 至 2099 之间的数字")])
def test_a_bad_year_in_the_address_is_a_clear_400(app, demo_cases_loaded, url, reason):
    client, _ = _owner(app)
    answer = client.get(url)
    assert answer.status_code == 400 and reason in answer.get_data(as_text=True)


@pytest.mark.sqlite
def test_importing_a_pasted_notice_shows_the_tasks_and_schedules_it_moved(app, db, demo_cases_loaded):
    client, token = _owner(app)
    before = _open_dues(db)
    with db.transaction() as s:
        slot = s.execute(select(Timer.due_at).join(Schedule, Schedule.key == Timer.element_id).where(
            Timer.kind == TimerKind.SCHEDULE, Timer.status == TimerStatus.WAITING,
            Schedule.key == "callback-periodic")).scalar_one()
    assert _beijing(slot) == "2027-01-01 10:00"  # computed before 2027 is known: New Year's Day
    answer = client.post("/calendar/import", data={"year": "2027", "table": NOTICE_2027, "complete": "true",
                                                   "shown": "2026", "csrf_token": token})
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert "已导入 2027 年：8 个节假日，2 个调休上班日" in html
    row = re.search(r'<tr data-moved-schedule="callback-periodic">.*?</tr>', html, re.S).group(0)
    assert "2027-01-01 10:00" in row and "2027-01-04 10:00" in row and "+3 天" in row
    after = _open_dues(db)
    moved_in_db = {i for i in before if before[i] != after[i]}
    listed = {int(i) for i in re.findall(r'<tr data-moved-task="(\d+)">', html)}
    assert listed == moved_in_db
    counts = re.search(r'id="moved-counts" data-tasks="(\d+)" data-schedules="(\d+)"', html)
    assert int(counts.group(1)) == len(moved_in_db) and int(counts.group(2)) >= 1
    # The page now shows 2027, known whole and complete; the warning is gone.
    assert 'data-day="2027-01-31" data-kind="makeup"' in html and 'data-day="2027-02-08" data-kind="holiday"' in html
    assert 'id="coverage-warning"' not in html and 'id="next-year-warning"' not in html
    with db.transaction() as s:
        assert s.get(Setting, "calendar_year_complete:2027") is not None


def test_an_uploaded_csv_is_imported_like_a_pasted_one(app, db, demo_cases_loaded):
    client, token = _owner(app)
    upload = (io.BytesIO(("\ufeff" + NOTICE_2027).encode("utf-8")), "2027.csv")
    answer = client.post("/calendar/import", data={"year": "2027", "file": upload, "shown": "2026",
                                                   "csrf_token": token}, content_type="multipart/form-data")
    assert answer.status_code == 200, answer.get_data(as_text=True)[:2000]
    with db.transaction() as s:
        assert s.get(CalendarDay, date(2027, 2, 8)).working is False
        assert s.get(Setting, "calendar_year_complete:2027") is None  # the box was not ticked: a draft


@pytest.mark.parametrize(("form", "status", "field", "reason"), [
    ({"year": "abc", "table": NOTICE_2027}, 400, "year", "年份是 1990 至 2099 之间的数字"),
    ({"year": "", "table": NOTICE_2027}, 400, "year", "请说明表格对应的年份"),
    ({"year": "2027", "table": ""}, 400, "table", "the table has no rows"),
    ({"year": "2027", "table": "date,kind,name\n2027-01-01,holiday\n"}, 422, "line 2", "a row is date,kind,name"),
    ({"year": "2027", "table": "2027-02-30,holiday,春节\n"}, 422, "line 1", "is not a date"),
    ({"year": "2027", "table": "2027-01-01,holiday,元旦\n2027-02-09,vacation,春节\n"}, 422, "line 2",
     "kind is holiday or workday"),
    ({"year": "2027", "table": "2027-03-03,workday,调休\n"}, 422, "line 1", "a make-up working day falls on a weekend"),
    ({"year": "2027", "table": "2028-01-01,holiday,元旦\n"}, 422, "line 1", "is not a day of 2027"),
    ({"year": "2027", "table": "x" * 70000}, 400, "table", "longer than"),
], ids=["year-text", "no-year", "empty", "two-cells", "bad-date", "bad-kind", "weekday-makeup", "other-year",
        "huge"])
def test_a_bad_import_is_refused_with_its_reason_and_nothing_stored(app, db, demo_cases_loaded, form, status, field,
                                                                    reason):
    client, token = _owner(app)
    last = _events(db, "calendar.year_imported")
    answer = client.post("/calendar/import", data={**form, "complete": "true", "shown": "2026", "csrf_token": token})
    assert answer.status_code == status
    html = answer.get_data(as_text=True)
    assert f'data-field="{field}"' in html and reason in html
    assert _count(db, CalendarDay, CalendarDay.day >= date(2027, 1, 1)) == 0
    assert _events(db, "calendar.year_imported") == last


@pytest.mark.parametrize(("data", "reason"), [
    ("2027-01-01,holiday,元旦\n".encode("gb18030"), "文件不是 UTF-8 文本"),
    (b"2027-01-01,holiday,x\n" * 20000, "文件过大"),
], ids=["gb18030", "huge"])
def test_an_upload_that_is_not_utf8_or_too_large_is_refused(app, db, demo_cases_loaded, data, reason):
    client, token = _owner(app)
    upload = (io.BytesIO(data), "2027.csv")
    answer = client.post("/calendar/import", data={"year": "2027", "file": upload, "csrf_token": token},
                         content_type="multipart/form-data")
    assert answer.status_code == 400 and reason in answer.get_data(as_text=True)
    assert _count(db, CalendarDay, CalendarDay.day >= date(2027, 1, 1)) == 0


def test_a_draft_year_is_marked_complete_and_an_unknown_year_cannot_be(app, db, demo_cases_loaded):
    client, token = _owner(app)
    refused = client.post("/calendar/complete", data={"year": "2027", "csrf_token": token})
    assert refused.status_code == 400 and "the calendar knows 0 of the 365 days of 2027" in \
        refused.get_data(as_text=True)
    assert client.post("/calendar/import", data={"year": "2027", "table": NOTICE_2027,
                                                 "csrf_token": token}).status_code == 200
    with db.transaction() as s:
        assert s.get(Setting, "calendar_year_complete:2027") is None
    marked = client.post("/calendar/complete", data={"year": "2027", "shown": "2027", "csrf_token": token})
    assert marked.status_code == 200 and "已将 2027 年标记为完整" in marked.get_data(as_text=True)
    with db.transaction() as s:
        assert s.get(Setting, "calendar_year_complete:2027").value.startswith(f"{OWNER} ")
        event = s.execute(select(AuditEvent).where(AuditEvent.kind == "calendar.year_marked_complete")).scalar_one()
        assert event.actor == OWNER and event.data == {"year": 2027}


def test_a_single_day_correction_shows_the_tasks_it_moved(app, db, demo_cases_loaded):
    client, token = _owner(app)
    before = _open_dues(db)
    # Monday 30 November made a holiday: the investigations' due dates move a working day later.
    answer = client.post("/calendar/day", data={"day": "2026-11-30", "kind": "holiday", "day_name": "测试假日",
                                                "shown": "2026", "csrf_token": token})
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)
    assert 'data-day="2026-11-30" data-kind="holiday"' in html and "测试假日" in html
    after = _open_dues(db)
    moved = {i for i in before if before[i] != after[i]}
    assert moved and {int(i) for i in re.findall(r'<tr data-moved-task="(\d+)">', html)} == moved
    for task_id in moved:
        row = re.search(rf'<tr data-moved-task="{task_id}">.*?</tr>', html, re.S).group(0)
        assert _beijing(before[task_id]) in row and _beijing(after[task_id]) in row
    with db.transaction() as s:
        assert (s.get(CalendarDay, date(2026, 11, 30)).working, s.get(CalendarDay, date(2026, 11, 30)).name) == \
            (False, "测试假日")


@pytest.mark.parametrize(("form", "field", "reason"), [
    ({"day": "2026-02-30", "kind": "holiday"}, "day", "日期格式为 YYYY-MM-DD"),
    ({"day": "1900-01-01", "kind": "holiday"}, "", "the day must lie between 1990-01-01 and 2099-12-31"),
    ({"day": "2026-12-31", "kind": "party"}, "kind", "请选择节假日或工作日"),
    ({"day": "2026-12-31", "kind": "holiday", "trading": "yes"}, "", "a trading day must be a working day"),
    ({"day": "2026-12-31", "kind": "holiday", "trading": "maybe"}, "trading", "请选择交易所是否开市"),
    ({"day": "2026-12-31", "kind": "holiday", "day_name": "长" * 65}, "day_name", "名称最多 64 个字符"),
], ids=["no-such-date", "too-early", "kind", "trading-holiday", "trading-value", "long-name"])
def test_a_bad_day_correction_is_a_clear_400_and_changes_nothing(app, db, demo_cases_loaded, form, field, reason):
    client, token = _owner(app)
    last = _events(db, "calendar.day_set")
    answer = client.post("/calendar/day", data={**form, "shown": "2026", "csrf_token": token})
    assert answer.status_code == 400
    html = answer.get_data(as_text=True)
    assert f'data-field="{field}"' in html and reason in html
    assert _events(db, "calendar.day_set") == last


# -- schedules ----------------------------------------------------------------------------------
@pytest.mark.sqlite
def test_the_schedules_page_shows_next_slots_in_beijing_time_and_a_jobs_last_run(app, db, rt, demo_cases_loaded):
    client, _ = _owner(app)
    html = client.get("/schedules").get_data(as_text=True)
    section = re.search(r'<section class="card" data-schedule="vip-monthly".*?</section>', html, re.S).group(0)
    slots = re.findall(r"<li>(\d{4}-\d\d-\d\d \d\d:\d\d) (周.)</li>", section)
    # The first working day of each month at 09:00 (2027 is not known yet: 1 January counts as one).
    assert slots == [("2026-12-01 09:00", "周二"), ("2027-01-01 09:00", "周五"), ("2027-02-01 09:00", "周一")]
    assert "每月第一个工作日" in section and "作业" in section and "从未" in section
    periodic = re.search(r'<section class="card" data-schedule="callback-periodic".*?</section>', html, re.S).group(0)
    assert "每季度第一个工作日" in periodic and "2027-01-01 10:00" in periodic

    # The monthly evaluation runs at its slot; the page then shows when, and what it reported.
    with time_machine.travel(datetime(2026, 12, 1, 9, 0, 5, tzinfo=SHANGHAI), tick=False):
        firing.fire_due(db, rt)
    with db.transaction() as s:
        result = s.execute(select(AuditEvent.data).where(AuditEvent.kind == "schedule.job_run")).scalar_one()["result"]
    with time_machine.travel(datetime(2026, 12, 1, 9, 30, tzinfo=SHANGHAI), tick=False):
        client, _ = _owner(app)
        html = client.get("/schedules").get_data(as_text=True)
    section = re.search(r'<section class="card" data-schedule="vip-monthly".*?</section>', html, re.S).group(0)
    run = re.search(r'<tr data-run="vip-monthly-20261201">.*?</tr>', section, re.S).group(0)
    assert "2026-12-01 09:00" in run
    for key, value in result.items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        assert f"<code>{key}={shown or '–'}</code>" in unescape(run)
    assert re.findall(r"<li>(\d{4}-\d\d-\d\d \d\d:\d\d)", section)[0] == "2027-01-01 09:00"
    assert re.search(r"<dd data-last-run>2026-12-01 09:00</dd>", section)


def test_a_tampered_milestone_row_count_or_an_overlong_key_is_no_server_error(app, db, demo_cases_loaded):
    client, token = _owner(app)
    form = {**_policy_form(client, MAJOR), "csrf_token": token, "action": "preview"}
    for rows in ("abc", "-1", "99999999999999999999"):
        answer = client.post(f"/sla/{MAJOR}", data={**form, "milestone_rows": rows})
        assert answer.status_code == 200 and 'id="preview"' in answer.get_data(as_text=True), rows
    assert client.get("/sla/" + "k" * 129).status_code == 404


def test_the_pages_read_in_english_when_chosen(app, demo_cases_loaded):
    client, token = _owner(app)
    client.post("/language", data={"locale": "en", "next": "/calendar", "csrf_token": token})
    html = client.get("/calendar").get_data(as_text=True)
    assert "Business calendar" in html and "Make-up working day: work, exchanges closed" in html
    assert "The calendar does not know 2027 yet" in html
    assert "First working day of each month" in client.get("/schedules").get_data(as_text=True)
    assert "working days" in client.get("/sla").get_data(as_text=True)
