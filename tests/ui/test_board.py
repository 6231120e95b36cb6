"""The supervisors' board through Flask's test client: its numbers against a recount of the
tasks one by one, the reader's scope, the drill-down links, the exports and their audit
trail, and who may open it. Over the demo's nine cases at the fixed Wednesday morning."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from urllib.parse import parse_qsl, urlsplit

import pytest
from openpyxl import load_workbook
from sqlalchemy import select

from engine.access import identity
from engine.brokerage import board_snapshot
from engine.calendars import SHANGHAI
from engine.models import ACTIVE_TASK_STATES, AuditEvent, Task, User
from engine.process import board as boards
from engine.process import tasks
from engine.sla import clock as sla_clock
from tests.ui.test_pages import sign_in

pytestmark = pytest.mark.sqlite

STATES = ("on_track", "at_risk", "breached", "paused", "none")


def _actor(s, username):
    return identity.actor_for(s, s.execute(select(User).where(User.username == username)).scalar_one())


def _recount(db, rt, username, key_of):
    """Each open task the supervisor may see, one at a time, by its own SLA state."""
    with db.transaction() as s:
        person = _actor(s, username)
        counts: dict[str, Counter[str]] = {}
        for task in s.execute(select(Task).where(Task.status.in_(ACTIVE_TASK_STATES))).scalars():
            if not tasks.can_see(task, person) or tasks.recused_from_case(s, task.instance_id, person):
                continue
            state = sla_clock.state(task, rt.now())[0]
            for key in key_of(task):
                counts.setdefault(key, Counter())[state] += 1
                counts[key]["open"] += 1
        return counts


def _board_counts(db, rt, username, by):
    with db.transaction() as s:
        found = boards.board(s, actor=_actor(s, username), by=by, now=rt.now())
    return {row.key: Counter({"open": row.open, "on_track": row.on_track, "at_risk": row.at_risk,
                              "breached": row.breached, "paused": row.paused, "none": row.no_deadline})
            for row in found.rows}, found.total


@pytest.mark.parametrize("username", ["s002", "s101", "s301"])
@pytest.mark.parametrize(("by", "key_of"), [
    ("branch", lambda t: [t.branch_code or ""]),
    ("person", lambda t: [t.assignee or ""]),
    ("process", lambda t: [t.process_key]),
    ("step", lambda t: [f"{t.process_key}/{t.element_id}"]),
    ("group", lambda t: ([] if t.assignee else t.candidate_groups) or ([""] if t.assignee else [])),
])
def test_the_boards_numbers_equal_a_recount_task_by_task(db, rt, demo_cases_loaded, username, by, key_of):
    expected = _recount(db, rt, username, key_of)
    shown, total = _board_counts(db, rt, username, by)
    assert {k: +v for k, v in shown.items()} == {k: +v for k, v in expected.items()}
    everything = _recount(db, rt, username, lambda t: ["all"])["all"]
    assert (total.open, total.breached, total.at_risk) == (everything["open"], everything["breached"],
                                                          everything["at_risk"])


def test_a_branch_head_counts_their_branch_and_headquarters_the_firm(db, rt, demo_cases_loaded):
    branches, _ = _board_counts(db, rt, "s101", "branch")
    assert set(branches) <= {"HZ01", ""} and branches["HZ01"]["open"] > 0
    firm, _ = _board_counts(db, rt, "s002", "branch")
    assert {"HZ01", "NB01", "SX01"} <= set(firm)


def test_the_board_page_links_each_number_to_the_tasks_behind_it(client, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    html = client.get("/board?by=branch").get_data(as_text=True)
    assert "按营业部统计的在办事项" in html
    row = re.search(r'<tr data-board-row="NB01".*?</tr>', html, re.S).group(0)
    breached = re.search(r'<a class="sla sla-breached" href="([^"]+)"[^>]*>.*?(\d+)</a>', row, re.S)
    assert breached, "NB01 has the overdue periodic callback"
    url, number = breached.group(1).replace("&amp;", "&"), int(breached.group(2))
    assert dict(parse_qsl(urlsplit(url).query)) == {"tab": "team", "branch": "NB01", "due": "overdue"}
    listed = client.get(url).get_data(as_text=True)
    assert len(re.findall(r"data-task-row", listed)) == number
    assert "CB-20260910-0107" in listed


@pytest.mark.parametrize("username", ["s002", "s101"])
def test_the_board_page_reads_the_minutes_snapshot_and_says_as_of_when(client, db, rt, demo_cases_loaded,
                                                                       username):
    """Counted 40 s before the page is asked for, the board shows the snapshot's moment and its
    numbers, the same as counting live at that moment (the page refreshes itself)."""
    from datetime import timedelta

    counted_at = rt.now() - timedelta(seconds=40)
    with db.transaction() as s:
        board_snapshot.build(s, now=counted_at)
        live = boards.board(s, actor=_actor(s, username), by="branch", now=counted_at)
    sign_in(client, username, "demo")
    html = client.get("/board?by=branch").get_data(as_text=True)
    assert f'data-as-of="{counted_at.isoformat()}"' in html
    assert "看板每分钟统计一次" in html and 'hx-trigger="every 60s"' in html
    tiles = re.search(r'<dl class="totals".*?</dl>', html, re.S).group(0)
    assert re.search(rf">{live.total.open}</a></dd>", tiles) and re.search(rf">{live.total.breached}</a>", tiles)
    for row in live.rows:
        cells = re.search(rf'<tr data-board-row="{row.key}".*?</tr>', html, re.S).group(0)
        assert re.search(rf'<td class="num"><a href="[^"]*">{row.open}</a></td>', cells), row.key


def test_the_board_is_refused_to_staff_who_supervise_nobody(client, demo_cases_loaded):
    sign_in(client, "s003", "demo")
    answer = client.get("/board")
    assert answer.status_code == 403
    assert "督办看板" not in client.get("/").get_data(as_text=True)  # and not offered in the header


def test_an_unknown_dimension_or_format_is_a_clear_400(client, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    assert client.get("/board?by=colour").status_code == 400
    assert client.get("/board?format=pdf").status_code == 400


def test_the_board_exports_as_csv_with_a_bom_and_as_xlsx_each_audited(client, db, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    shown = client.get("/board?by=process").get_data(as_text=True)
    answer = client.get("/board?by=process&format=csv")
    assert answer.status_code == 200 and answer.mimetype == "text/csv"
    assert answer.data.startswith("\ufeff".encode())
    assert "attachment" in answer.headers["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(answer.data.decode("utf-8-sig"))))
    assert rows[0][:3] == ["流程", "编号", "办理中"] and rows[-1][0] == "合计"
    for name, *_ in rows[1:-1]:
        assert name in shown
    assert sum(int(r[2]) for r in rows[1:-1]) == int(rows[-1][2])

    workbook = client.get("/board?by=process&format=xlsx")
    assert workbook.status_code == 200
    sheet = load_workbook(io.BytesIO(workbook.data)).active
    assert [list(r) for r in sheet.iter_rows(values_only=True)][1:] == \
        [[c if c != "" else None for c in [r[0], r[1], *map(int, r[2:8]), r[8]]] for r in rows[1:]]
    with db.transaction() as s:
        exported = s.execute(select(AuditEvent).where(AuditEvent.kind == "board.exported")
                             .order_by(AuditEvent.id)).scalars().all()
    assert [(e.actor, e.data["format"], e.data["by"], e.data["rows"]) for e in exported] == \
        [("s002", "csv", "process", len(rows) - 2), ("s002", "xlsx", "process", len(rows) - 2)]


def test_the_board_shows_the_overdue_figure_beside_its_counts(client, rt, demo_cases_loaded, auth):
    """Regulatory overdue, closed late this month and how long work has been overdue: the
    numbers of GET /figures/overdue-tasks for the same person and this month, on the board's rows."""
    month = rt.now().astimezone(SHANGHAI).strftime("%Y-%m-01")
    figure = client.get(f"/api/v1/figures/overdue-tasks?by=branch&from={month}", headers=auth("s002")).json
    sign_in(client, "s002", "demo")
    html = client.get("/board?by=branch").get_data(as_text=True)
    rows = {r["key"]["branch"]: r for r in figure["rows"]}
    assert rows, "the demo has overdue work"
    for branch, row in rows.items():
        cells = re.search(rf'<tr data-board-row="{branch}".*?</tr>', html, re.S).group(0)
        assert f'<td class="num regulatory">{row["regulatory_overdue"]}</td>' in cells
        assert f'<td class="num">{row["closed_late"]}</td>' in cells
        for bucket in row["ageing"]:
            if bucket["count"]:  # named in working days: 0–2 个工作日 3, >10 个工作日 1
                low, high = bucket["from_days"], bucket["to_days"]
                name = f">{low - 1}" if high is None else f"{low}–{high}"
                assert re.search(rf"{name.replace('>', '&gt;')} 个工作日 {bucket['count']}\b", cells), (branch, bucket)
    tiles = re.search(r'<dl class="totals".*?</dl>', html, re.S).group(0)
    assert f"<dd>{figure['total']['regulatory_overdue']}</dd>" in tiles


@pytest.mark.parametrize("username", ["s002", "s101"])
def test_the_trend_counts_each_week_as_the_tasks_themselves_tell(db, rt, demo_cases_loaded, username):
    from datetime import timedelta

    with db.transaction() as s:
        person = _actor(s, username)
        weeks = boards.trend(s, actor=person, now=rt.now())
        every = [t for t in s.execute(select(Task).where(Task.due_at.is_not(None))).scalars()
                 if (tasks.can_see(t, person) or (t.status not in ACTIVE_TASK_STATES and tasks.supervised_branch(person)
                                                  in (None, t.branch_code) and not tasks.is_excluded(t, person)))
                 and not tasks.recused_from_case(s, t.instance_id, person)]
    assert len(weeks) == 12 and weeks[-1].start <= rt.now() < weeks[-1].start + timedelta(weeks=1)
    for week in weeks:
        end = week.start + timedelta(weeks=1)
        done = [t for t in every if t.status == "completed" and week.start <= t.completed_at < end]
        breaches = [t for t in every if (moment := t.breached_at or (
            t.due_at if t.completed_at is None or t.completed_at > t.due_at else None)) is not None
            and week.start <= moment < end and moment <= rt.now()]
        assert (week.breached, week.completed, week.on_time) == (
            len(breaches), len(done), sum(1 for t in done if t.completed_at <= t.due_at)), week.start
    assert any(w.completed for w in weeks) and any(w.breached for w in weeks)


def test_the_board_page_shows_the_trend_as_a_chart_and_a_table(client, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    html = client.get("/board").get_data(as_text=True)
    trend = re.search(r'<section class="trend".*?</section>', html, re.S).group(0)
    assert trend.count("<rect") == 12 and trend.count("data-week=") == 12
    assert 'role="img"' in trend and "按时办结率" in trend


def test_the_figures_page_shows_the_apis_figures_for_the_same_person(client, demo_cases_loaded, auth):
    api = {name: client.get(f"/api/v1/figures/{name}", headers=auth("s002")).json
           for name in ("complaints", "retention", "callbacks/new-accounts", "callbacks/periodic")}
    sign_in(client, "s002", "demo")
    answer = client.get("/board/figures")
    assert answer.status_code == 200
    html = answer.get_data(as_text=True)

    def fact(section: str, label: str) -> str:
        block = re.search(rf'<section class="card" id="{section}".*?</section>', html, re.S).group(0)
        return re.search(rf"<dt>{re.escape(label)}</dt><dd>([^<]*)</dd>", block).group(1)

    assert int(fact("retention", "申请数")) == api["retention"]["requests"]
    assert int(fact("retention", "底线合计（应为 0）")) == api["retention"]["guard_total"]
    assert int(fact("callbacks", "新开户数")) == api["callbacks/new-accounts"]["opened"]
    assert int(fact("callbacks", "已回访客户数")) == api["callbacks/periodic"]["clients_called"]
    assert int(fact("complaints", "应反馈")) == api["complaints"]["regulator_feedback"]["due"]
    total = re.search(r'<tr class="total">.*?</tr>', html, re.S).group(0)
    assert f'<td class="num">{api["complaints"]["total"]["responded"]}</td>' in total


def test_the_figures_page_takes_a_period_and_refuses_a_bad_date(client, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    html = client.get("/board/figures?from=2026-11-01&to=2026-11-30").get_data(as_text=True)
    assert "2026-11-01 至 2026-11-30" in html
    assert client.get("/board/figures?from=yesterday").status_code == 400
    sign_in(client, "s003", "demo")
    assert client.get("/board/figures").status_code == 403


def test_a_task_list_exports_as_on_screen_masked_and_recorded(client, db, demo_cases_loaded):
    sign_in(client, "s002", "demo")
    screen = client.get("/?tab=team&due=overdue").get_data(as_text=True)
    on_screen = re.findall(r'<tr data-task-row.*?</tr>', screen, re.S)
    answer = client.get("/?tab=team&due=overdue&format=csv")
    assert answer.status_code == 200 and answer.data.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(answer.data.decode("utf-8-sig"))))
    assert rows[0][:4] == ["案件", "流程", "步骤", "客户"]
    assert len(rows) - 1 == len(on_screen) > 0
    for row, html in zip(rows[1:], on_screen, strict=True):
        assert row[0] in html and row[7] == "已逾期"
        if row[3]:
            assert "*" in row[3] and row[3] in html  # the client's name masked exactly as shown
    whole = client.get("/?tab=team&format=csv").data.decode("utf-8-sig")
    assert not re.search(r"1[3-9]\d{9}|\d{17}[\dX]", whole)  # no phone or ID number in clear
    workbook = load_workbook(io.BytesIO(client.get("/?tab=team&due=overdue&format=xlsx").data)).active
    assert [[str(c or "") for c in r] for r in workbook.iter_rows(values_only=True)] == rows
    with db.transaction() as s:
        exported = s.execute(select(AuditEvent).where(AuditEvent.kind == "tasks.exported")
                             .order_by(AuditEvent.id)).scalars().all()
    assert [(e.actor, e.data["format"], e.data["rows"], e.data["filters"].get("due")) for e in exported] == [
        ("s002", "csv", len(on_screen), "overdue"), ("s002", "csv", exported[1].data["rows"], None),
        ("s002", "xlsx", len(on_screen), "overdue")]
    assert client.get("/?tab=done&format=csv").status_code == 400


def test_a_branch_head_escalates_selected_tasks_from_the_team_list(client, db, demo_cases_loaded):
    """The page's bulk form: each escalated task gets its escalation task; a refusal is told."""
    from tests.ui.test_pages import token_of

    sign_in(client, "s101", "demo")
    page = client.get("/?tab=team")
    with db.transaction() as s:
        escalated = select(Task.escalated_task_id).where(Task.escalated_task_id.is_not(None))
        mine = s.execute(select(Task.id).where(Task.branch_code == "HZ01", Task.status.in_(ACTIVE_TASK_STATES),
                                               Task.kind != "escalation", Task.id.not_in(escalated))
                         .order_by(Task.id)).scalars().all()
    assert mine
    answer = client.post("/tasks/supervise?tab=team", follow_redirects=True, data={
        "csrf_token": token_of(page), "action": "escalate", "to": "hq_complaint_dept", "reason": "营业部处理不了",
        "task": [str(mine[0]), str(mine[0] + 100000)]})
    body = answer.get_data(as_text=True)
    assert "已升级 1 项任务" in body and f"#{mine[0] + 100000}" in body
    with db.transaction() as s:
        escalations = s.execute(select(Task).where(Task.escalated_task_id == mine[0])).scalars().all()
    assert [e.candidate_groups for e in escalations] == [["hq_complaint_dept"]]
